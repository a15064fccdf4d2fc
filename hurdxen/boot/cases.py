"""Boot cases and their verdicts.

A case passes when every expected line shows (in order, before anything that marks a failure) and, when it has
`alive_after`, the guest then keeps running that many seconds with no crash, panic, shutdown or failure line (a
guest that dies after its last line is judged by its ending). Otherwise it is judged when it ENDS: the guest
crashed (Xen's register dump), GNU Mach panicked, the toolstack refused it, the domain shut down, or the case timed
out. A recorded known failure is a signature of such an ending (the crash site, the panic text, the refusal, or the
last line before a timeout):

- the case ends as recorded: `known-failure` (accepted by the release gate when release.accept_known_failures);
- the case ends another way: `fail` ("fails differently from its record");
- the case passes its expectations: `xpass` ("passing further than recorded"). This FAILS the check, like pytest's
  strict xfail: the record no longer describes the kernel, and only a human can say what it should now expect —
  update the case in recipes/boot.toml (drop the known failure, or record the new ending).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hurdxen.boot import diag as bootdiag
from hurdxen.boot import log as bootlog
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest

Kind = Literal["guest", "pvgrub", "dom0"]
Verdict = Literal["pass", "fail", "known-failure", "expected-refusal", "xpass"]
EndKind = Literal["crash", "panic", "refusal", "shutdown", "timeout", "error"]
END_KINDS: tuple[str, ...] = ("crash", "panic", "refusal", "timeout")  # what a known failure can record

# Seen in any case: the run went wrong in a way no case expects; each is read from the source that prints it.
FAIL_PATTERNS: tuple[tuple[str, str], ...] = (
    ("linux", "Kernel panic - not syncing"),  # the dom0's Linux
    ("xen", "Panic on CPU"),  # the hypervisor
    ("guest", "bootstrap_create: No bootstrap code loaded"),  # GNU Mach found no boot module
    ("guest", "< lastnsec"),  # GNU Mach's clock went backwards (`warning: nsec … < lastnsec`, issue 20)
)
SHUTDOWN_REASONS = {0: "poweroff", 1: "reboot", 2: "suspend", 3: "crash", 4: "watchdog", 5: "soft reset"}


@dataclass(frozen=True)
class KnownFailure:
    """How a case is known to end today: `kind` (crash, panic, refusal, timeout) and a substring `match` of that
    ending's signature: the crash site (`function (file:line)`), the panic line, xl's refusal, or the last guest
    line before the timeout."""

    kind: str
    match: str
    reason: str

    def describe(self) -> str:
        return f"{self.kind} matching {self.match!r}"


@dataclass(frozen=True)
class BootCase:
    """One boot: `guest` (kernel + ramdisk via the Linux dom0), `pvgrub` (a pv-grub2 image as the guest kernel),
    or `dom0` (the quick path: the kernel itself started as dom0, good for the banner only).

    Patterns are plain substrings of the guest's own console lines (bootlog: ANSI colour codes removed, never
    the toolstack's or Xen's lines). `symbols` is the unstripped
    kernel that names a crash site."""

    name: str
    kind: Kind
    kernel: Path | None
    ramdisk: Path | None = None
    pvgrub: Path | None = None
    expect: tuple[str, ...] = ()
    expect_refusal: str | None = None  # the case passes as "expected-refusal" when this appears
    known_failure: KnownFailure | None = None
    cmdline: str = "console=hyp0 root=device:hd0s1"
    memory_mb: int = 128
    timeout: float = 90.0
    symbols: Path | None = None
    alive_after: float = 0.0  # seconds the guest must keep running after its expected lines to pass
    disk: Path | None = None  # a raw disk image, the guest's first Xen block device
    disk_vdev: str = "hda"  # its Xen name: hda is GNU Mach's hd0; hda1 (partition 1 of the image) its hd0s1

    def files(self) -> dict[str, Path]:
        """The files the case boots (and names a crash with), by role."""
        roles = (("kernel", self.kernel), ("ramdisk", self.ramdisk), ("pvgrub", self.pvgrub), ("disk", self.disk))
        return {role: p for role, p in (*roles, ("symbols", self.symbols)) if p is not None}

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "kernel": str(self.kernel) if self.kernel else None,
            "ramdisk": str(self.ramdisk) if self.ramdisk else None,
            "pvgrub": str(self.pvgrub) if self.pvgrub else None,
            "disk": str(self.disk) if self.disk else None,
            "expect": list(self.expect),
            "expect_refusal": self.expect_refusal,
            "known_failure": self.known_failure.__dict__ if self.known_failure else None,
            "alive_after": self.alive_after,
        }


@dataclass(frozen=True)
class Ending:
    """How a case ended, when it did not pass."""

    kind: EndKind
    signature: str  # what a known failure's `match` is compared with
    headline: str  # one line for the console and the report
    crash: bootdiag.Crash | None = None
    panic: bootdiag.Panic | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "signature": self.signature,
            "headline": self.headline,
            "crash": self.crash.summary() if self.crash else None,
            "panic": self.panic.summary() if self.panic else None,
        }


@dataclass(frozen=True)
class BootResult:
    case: BootCase
    verdict: Verdict
    seconds: float
    log: Path
    matched: tuple[str, ...]
    reason: str = ""
    timeline: tuple[tuple[str, float], ...] = ()  # (pattern or milestone, seconds after the case started)
    ending: Ending | None = None

    @property
    def ok(self) -> bool:
        return self.verdict not in ("fail", "xpass")

    def summary(self) -> dict[str, Any]:
        return {
            "case": self.case.name,
            "kind": self.case.kind,
            "verdict": self.verdict,
            "seconds": round(self.seconds, 1),
            "log": str(self.log),
            "matched": list(self.matched),
            "missing": [p for p in self.case.expect if p not in self.matched],
            "reason": self.reason,
            "ending": self.ending.summary() if self.ending else None,
            "known_failure": self.case.known_failure.__dict__ if self.case.known_failure else None,
            "timeline": {k: round(v, 1) for k, v in self.timeline},
        }


@dataclass(frozen=True)
class BootReport:
    results: tuple[BootResult, ...]
    hypervisor: dict[str, Any] = field(default_factory=dict)
    dom0: dict[str, Any] = field(default_factory=dict)
    sessions: tuple[dict[str, Any], ...] = ()  # per QEMU run: what it booted, how long, its serial log

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def summary(self) -> dict[str, Any]:
        """JSON-able, for the manifest."""
        return {
            "ok": self.ok,
            "hypervisor": self.hypervisor,
            "dom0": self.dom0,
            "sessions": list(self.sessions),
            "cases": [r.summary() for r in self.results],
        }

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title="boot check")
        for col in ("case", "kind", "verdict", "seconds", "detail"):
            t.add_column(col)
        colours = {"pass": "green", "expected-refusal": "green", "known-failure": "yellow", "fail": "red",
                   "xpass": "bold red"}  # fmt: skip
        for r in self.results:
            detail = r.reason or ", ".join(r.matched)
            t.add_row(r.case.name, r.case.kind, f"[{colours[r.verdict]}]{r.verdict}[/]", f"{r.seconds:.1f}", detail)
        return t


# The boot check's task and its one output: the report's `summary()` ({"ok", "hypervisor", "dom0", "sessions",
# "cases"}), named in the check's manifest. Defined here, not in boot.stage, so the release (beside the boot stage in
# the layers) reads it by name through the manifest reader too.
CHECK_TASK = "boot:check"
REPORT = "report"
REPORT_FILE = "boot-report.json"


def read_report(artifacts: Path) -> dict[str, Any] | None:
    """The boot check's report, read through its manifest (the output `report`, sha256 checked); None when the check
    has not run. A manifest or report that does not match is a HurdxenError naming `doit boot:check`."""
    stage, name = CHECK_TASK.split(":", 1)
    if not (Path(artifacts) / stage / name / manifest.MANIFEST).is_file():
        return None
    path = manifest.read_task(Path(artifacts), CHECK_TASK).output(REPORT)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HurdxenError(f"{CHECK_TASK}: cannot read {path}: {e}", hint=f"run `doit {CHECK_TASK}` again") from None
    if not isinstance(data, dict):
        raise HurdxenError(f"{CHECK_TASK}: {path} is not a report", hint=f"run `doit {CHECK_TASK}` again")
    return data


# ------------------------------------------------------------------ reading a case's output


def clean(raw: bytes) -> str:
    """The serial bytes as framed text (bootlog.canonical: split at newlines only, control characters escaped)."""
    return bootlog.canonical(raw)


def case_log(case: BootCase, text: str) -> bootlog.CaseLog:
    return bootlog.CaseLog.of(case.name, case.kind == "dom0", text)


def _source(log: bootlog.CaseLog, source: str) -> list[tuple[int, str]]:
    return {"linux": log.linux, "xen": log.xen, "guest": log.guest}[source]()


def _failed(case: BootCase, log: bootlog.CaseLog) -> tuple[int, str]:
    """Where the first failure line is, and which (-1, "" when none): each pattern read from its own source."""
    refused = f"xl create {case.name} failed"
    hits = [(i, f"hurdxen-dom0: {refused}") for i, body in log.dom0() if body.startswith(refused)][:1]
    for source, pattern in FAIL_PATTERNS:
        i = bootlog.first(_source(log, source), pattern)
        if i >= 0:
            hits.append((i, pattern))
    return min(hits) if hits else (-1, "")


def guest_domid(case: BootCase, text: str) -> int | None:
    """The guest's domid, from the toolstack's lines only (0 for a dom0 case)."""
    return case_log(case, text).domid


def own_lines(case: BootCase, text: str) -> str:
    """The lines of a guest case's slice of the session log that may be its own: a guest destroyed in the
    background can still print while the next one starts, so another domain's `(dN)` lines and another case's
    `[NAME]` / `[xl:NAME]` lines are dropped (and every `(dN)` line before this guest's domid is known)."""
    return case_log(case, text).own_text()


def matched(case: BootCase, text: str) -> tuple[str, ...]:
    guest = case_log(case, text).guest()
    return tuple(p for p in case.expect if bootlog.first(guest, p) >= 0)


def _shutdown(case: BootCase, log: bootlog.CaseLog) -> str | None:
    if case.kind == "dom0":  # GNU Mach itself is dom0: Xen says how it ended
        for _, body in log.xen():
            if d := re.match(r"Hardware Dom0 (crashed|halted|shutdown)", body):
                return d.group(1)
        return None
    for _, body in log.xl():
        if m := re.match(r"Domain \d{1,5} has shut down, reason code (\d{1,3})", body):
            return SHUTDOWN_REASONS.get(int(m.group(1)), f"reason {m.group(1)}")
    return None


def _last_guest_line(log: bootlog.CaseLog) -> str:
    guest = log.guest()
    return guest[-1][1].strip()[: bootdiag.MAX_LINE] if guest else ""


def _refusal(case: BootCase, log: bootlog.CaseLog) -> Ending | None:
    refused = f"xl create {case.name} failed"
    said = next((body[len(refused) :] for _, body in log.dom0() if body.startswith(refused)), None)
    if said is None:
        return None
    lines = [body for _, body in log.xl()]
    why = next((ln for ln in lines if ln.startswith("xc_") or "error" in ln.lower()), said.strip())
    return Ending("refusal", "\n".join(lines), f"refused by the toolstack: {why[:300]}")


def find_ending(case: BootCase, text: str, timed_out: bool) -> tuple[Ending | None, bool]:
    """How the case ended in `text` (None while it runs), and whether that ending is settled (all of its lines are
    in: the domain was reported shut down, or the case is over). Xen's crash report is read from Xen's lines for
    the toolstack's domid, a panic from the guest's own lines, a shutdown and a refusal from the toolstack's."""
    log = case_log(case, text)
    domid = log.domid
    shutdown = _shutdown(case, log)
    settled = timed_out or shutdown is not None
    refusal = _refusal(case, log)
    if refusal is not None:
        return refusal, True
    xen_text = "\n".join(log.lines[i].text for i, _ in log.xen())
    crash = bootdiag.find_crash(xen_text, domid) if domid is not None else None
    if crash is not None:
        crash = bootdiag.symbolize(crash, case.symbols)
        site = crash.site.render() if crash.site else f"{crash.rip or 0:x}"
        return Ending("crash", site, crash.headline(), crash=crash), settled
    guest = [body for _, body in log.guest()]
    panic = bootdiag.find_panic(guest)
    if panic is not None:
        panic = bootdiag.symbolize_panic(panic)
        trap = bootdiag.find_mach_trap(guest, domid)
        if trap is None:
            return Ending("panic", panic.text, panic.headline(), panic=panic), True
        # GNU Mach reported a kernel trap, then panicked in kernel_trap: the trap says where.
        trap = bootdiag.symbolize(trap, case.symbols)
        site = trap.site.render() if trap.site else f"{trap.rip or 0:x}"
        why = f"{trap.headline()}; {panic.headline()}"
        return Ending("panic", f"{panic.text} [{site}]", why, crash=trap, panic=panic), True
    _, failed = _failed(case, log)
    if failed:
        return Ending("error", failed, failed), True
    if shutdown is not None:
        return Ending("shutdown", shutdown, f"the guest shut down ({shutdown})"), True
    if timed_out:
        last = _last_guest_line(log)
        why = f"timeout; last guest line: {last!r}" if last else "timeout; no guest output"
        return Ending("timeout", last, why), True
    return None, False


def _expected_all(case: BootCase, log: bootlog.CaseLog) -> bool:
    fail_at, _ = _failed(case, log)
    guest = log.guest()
    found = [bootlog.first(guest, p) for p in case.expect]
    return bool(case.expect) and all(i >= 0 for i in found) and (fail_at < 0 or max(found) < fail_at)


def expectations_met(case: BootCase, text: str) -> bool:
    """Every expected pattern is in the guest's own lines so far, before the first failure line."""
    return _expected_all(case, case_log(case, text))


def _refusal_seen(case: BootCase, log: bootlog.CaseLog) -> bool:
    assert case.expect_refusal is not None
    return bootlog.first(log.xen() if case.kind == "dom0" else log.xl(), case.expect_refusal) >= 0


def _passed(case: BootCase, ending: Ending | None = None) -> tuple[Verdict, str, Ending | None]:
    if case.known_failure:
        return (
            "xpass",
            (
                f"passing further than recorded: every expected line showed, but recipes/boot.toml records the "
                f"known failure {case.known_failure.describe()} ({case.known_failure.reason}); update the case"
            ),
            None,
        )
    # A banner check (a dom0 case) may pass while the kernel then panics: the detail says so, it is not hidden.
    return "pass", (f"then {ending.headline}" if ending is not None else ""), ending


def judge(
    case: BootCase, text: str, timed_out: bool, alive_for: float = 0.0
) -> tuple[Verdict, str, Ending | None] | None:
    """The verdict for the case's output so far, or None while it is still open.

    A case passes only if all its expected patterns appear in its guest's lines before the first failure line
    and, with `alive_after`, nothing ended it in the `alive_for` seconds since (the caller's clock: judging is
    pure). Every line counts only from its own source (bootlog): a guest cannot print the toolstack's or Xen's."""
    log = case_log(case, text)
    if case.expect_refusal and _refusal_seen(case, log):
        return "expected-refusal", case.expect_refusal, None
    after = ""
    if _expected_all(case, log):
        ending, settled = find_ending(case, text, False)
        if not case.alive_after:
            return _passed(case, ending if ending is not None and ending.kind in ("crash", "panic") else None)
        if ending is None:
            if alive_for >= case.alive_after:
                return _passed(case)
            if timed_out:
                why = f"timed out {alive_for:.1f} s after the expected lines (alive_after {case.alive_after:g} s)"
                return "fail", why, None
            return None
        after = f" after every expected line (alive_after {case.alive_after:g} s)"
        settled = settled or timed_out
    else:
        ending, settled = find_ending(case, text, timed_out)
    if ending is None or not settled:
        return None
    if case.expect_refusal:
        return "fail", f"expected the refusal {case.expect_refusal!r}; {ending.headline}", ending
    kf = case.known_failure
    if kf and ending.kind == kf.kind and kf.match in ending.signature:
        return "known-failure", f"{kf.reason} [{ending.headline}]", ending
    found = matched(case, text)
    missing = [p for p in case.expect if p not in found]
    why = ending.headline + after + (f"; missing: {'; '.join(missing)}" if missing else "")
    if kf:
        return "fail", f"fails differently from its record ({kf.describe()}): {why}", ending
    return "fail", why, ending
