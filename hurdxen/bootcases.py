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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hurdxen import bootdiag

Kind = Literal["guest", "pvgrub", "dom0"]
Verdict = Literal["pass", "fail", "known-failure", "expected-refusal", "xpass"]
EndKind = Literal["crash", "panic", "refusal", "shutdown", "timeout", "error"]
END_KINDS: tuple[str, ...] = ("crash", "panic", "refusal", "timeout")  # what a known failure can record

# Seen in any case: the run went wrong in a way no case expects.
FAIL_PATTERNS = (
    "Kernel panic - not syncing",
    "Panic on CPU",
    "bootstrap_create: No bootstrap code loaded",
)
SHUTDOWN_REASONS = {0: "poweroff", 1: "reboot", 2: "suspend", 3: "crash", 4: "watchdog", 5: "soft reset"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")


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

    Patterns are plain substrings of the serial log (ANSI colour codes removed). `symbols` is the unstripped
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

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "kernel": str(self.kernel) if self.kernel else None,
            "ramdisk": str(self.ramdisk) if self.ramdisk else None,
            "pvgrub": str(self.pvgrub) if self.pvgrub else None,
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


# ------------------------------------------------------------------ reading a case's output


def clean(raw: bytes) -> str:
    return ANSI.sub("", raw.decode(errors="replace"))


def find_output(text: str, pattern: str) -> int:
    """Where `pattern` first appears outside the hypervisor's own `(XEN)` lines (whose ELF loader dump quotes the
    kernel's notes, e.g. `GUEST_OS="GNU Mach"`), or -1."""
    i = text.find(pattern)
    while i >= 0:
        line_start = text.rfind("\n", 0, i) + 1
        if not text.startswith("(XEN)", line_start):
            return i
        i = text.find(pattern, i + 1)
    return -1


def _failed(case: BootCase, text: str) -> tuple[int, str]:
    """Where the first failure pattern is in `text`, and which (-1, "" when none)."""
    hits = [(text.find(p), p) for p in (f"hurdxen-dom0: xl create {case.name} failed", *FAIL_PATTERNS)]
    hits = [h for h in hits if h[0] >= 0]
    return min(hits) if hits else (-1, "")


def guest_domid(case: BootCase, text: str) -> int | None:
    if case.kind == "dom0":
        return 0
    # xl's "Waiting for domain NAME (domid N)" comes before the guest is unpaused; the init's line after it.
    n = re.escape(case.name)
    m = re.search(
        rf"\[xl:{n}\] Waiting for domain {n} \(domid (\d{{1,5}})\)|hurdxen-dom0: created {n} domid (\d{{1,5}})", text
    )
    return int(m.group(1) or m.group(2)) if m else None


_OTHER = re.compile(r"^(?:\(d(\d{1,5})\)|\[xl:([A-Za-z0-9_.-]+)\]|\[([A-Za-z0-9_.-]+)\])")


def own_lines(case: BootCase, text: str) -> str:
    """The lines of a guest case's slice of the session log that may be its own: a guest destroyed in the
    background can still print while the next one starts, so another domain's `(dN)` lines and another case's
    `[NAME]` / `[xl:NAME]` lines are dropped (and every `(dN)` line before this guest's domid is known)."""
    if case.kind == "dom0":
        return text
    domid = guest_domid(case, text)
    return "".join(ln for ln in text.splitlines(keepends=True) if is_own(case, domid, ln))


def is_own(case: BootCase, domid: int | None, line: str) -> bool:
    m = _OTHER.match(line)
    if m is None:
        return True
    if m.group(1) is not None:
        return domid is not None and int(m.group(1)) == domid
    return case.name in (m.group(2), m.group(3))


def _shutdown(case: BootCase, text: str) -> str | None:
    if case.kind == "dom0":  # GNU Mach itself is dom0: Xen says how it ended
        d = re.search(r"^\(XEN\) Hardware Dom0 (crashed|halted|shutdown)", text, re.M)
        return d.group(1) if d else None
    m = re.search(rf"\[xl:{re.escape(case.name)}\] .*has shut down, reason code (\d{{1,3}})", text)
    return SHUTDOWN_REASONS.get(int(m.group(1)), f"reason {m.group(1)}") if m else None


def _last_guest_line(case: BootCase, text: str, domid: int | None) -> str:
    prefixes = [f"[{case.name}] "] + ([f"(d{domid}) "] if domid else [])
    last = ""
    for ln in text.splitlines():
        if case.kind == "dom0" and not ln.startswith("(XEN)"):
            last = ln
        elif any(ln.startswith(p) for p in prefixes):
            last = ln.split(" ", 1)[1] if " " in ln else ""
    return last.strip()[: bootdiag.MAX_LINE]


def find_ending(case: BootCase, text: str, timed_out: bool) -> tuple[Ending | None, bool]:
    """How the case ended in `text` (None while it runs), and whether that ending is settled (all of its lines are
    in: the domain was reported shut down, or the case is over)."""
    domid = guest_domid(case, text)
    shutdown = _shutdown(case, text)
    settled = timed_out or shutdown is not None
    refusal = re.search(rf"hurdxen-dom0: xl create {re.escape(case.name)} failed(.*)", text)
    if refusal:
        lines = [ln.split("] ", 1)[1] for ln in text.splitlines() if ln.startswith(f"[xl:{case.name}] ")]
        why = next((ln for ln in lines if ln.startswith("xc_") or "error" in ln.lower()), refusal.group(1).strip())
        return Ending("refusal", "\n".join(lines), f"refused by the toolstack: {why[:300]}"), True
    crash = bootdiag.find_crash(text, domid) if domid is not None else None
    if crash is not None:
        crash = bootdiag.symbolize(crash, case.symbols)
        site = crash.site.render() if crash.site else f"{crash.rip or 0:x}"
        return Ending("crash", site, crash.headline(), crash=crash), settled
    panic = bootdiag.find_panic(text, domid)
    if panic is not None:
        panic = bootdiag.symbolize_panic(panic)
        trap = bootdiag.find_mach_trap(text, domid)
        if trap is None:
            return Ending("panic", panic.text, panic.headline(), panic=panic), True
        # GNU Mach reported a kernel trap, then panicked in kernel_trap: the trap says where.
        trap = bootdiag.symbolize(trap, case.symbols)
        site = trap.site.render() if trap.site else f"{trap.rip or 0:x}"
        why = f"{trap.headline()}; {panic.headline()}"
        return Ending("panic", f"{panic.text} [{site}]", why, crash=trap, panic=panic), True
    _, failed = _failed(case, text)
    if failed:
        return Ending("error", failed, failed), True
    if shutdown is not None:
        return Ending("shutdown", shutdown, f"the guest shut down ({shutdown})"), True
    if timed_out:
        last = _last_guest_line(case, text, domid)
        why = f"timeout; last guest line: {last!r}" if last else "timeout; no guest output"
        return Ending("timeout", last, why), True
    return None, False


def _expected_all(case: BootCase, text: str) -> bool:
    fail_at, _ = _failed(case, text)
    found = [find_output(text, p) for p in case.expect]
    return bool(case.expect) and all(i >= 0 for i in found) and (fail_at < 0 or max(found) < fail_at)


def expectations_met(case: BootCase, text: str) -> bool:
    """Every expected pattern is in the case's output so far, before the first failure pattern."""
    return _expected_all(case, own_lines(case, text))


def _passed(case: BootCase) -> tuple[Verdict, str, Ending | None]:
    if case.known_failure:
        return (
            "xpass",
            (
                f"passing further than recorded: every expected line showed, but recipes/boot.toml records the "
                f"known failure {case.known_failure.describe()} ({case.known_failure.reason}); update the case"
            ),
            None,
        )
    return "pass", "", None


def judge(
    case: BootCase, text: str, timed_out: bool, alive_for: float = 0.0
) -> tuple[Verdict, str, Ending | None] | None:
    """The verdict for the case's output so far, or None while it is still open.

    A case passes only if all its expected patterns appear before the first failure pattern and, with
    `alive_after`, nothing ended it in the `alive_for` seconds since (the caller's clock: judging is pure)."""
    text = own_lines(case, text)
    if case.expect_refusal and find_output(text, case.expect_refusal) >= 0:
        return "expected-refusal", case.expect_refusal, None
    after = ""
    if _expected_all(case, text):
        if not case.alive_after:
            return _passed(case)
        ending, settled = find_ending(case, text, False)
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
    missing = [p for p in case.expect if find_output(text, p) < 0]
    why = ending.headline + after + (f"; missing: {'; '.join(missing)}" if missing else "")
    if kf:
        return "fail", f"fails differently from its record ({kf.describe()}): {why}", ending
    return "fail", why, ending
