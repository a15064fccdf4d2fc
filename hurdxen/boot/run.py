"""The boot harness: Xen in QEMU (TCG), driven through its serial console.

- Guest and pv-grub2 cases share one QEMU + Xen + Linux dom0 (a *session*): the dom0's init (data/boot/init.sh)
  reads commands on its console (Xen passes serial input to dom0): `create NAME` boots a guest from the configs and
  files packed into the initramfs, `destroy NAME` removes it (a crashed guest is kept by `on_crash = "preserve"`
  until its diagnostics are in the log); QEMU is stopped once every case is judged. One guest runs at a time, so
  the slice of the serial log between its `create` and `destroy` is its log, and its verdict is judged on that
  slice alone — each line by its source (hurdxen/bootlog.py: Xen's, the guest's, the toolstack's). The session
  log keeps the raw serial bytes (a guest's PV console relayed hex-encoded); each case's log is its own lines,
  decoded, control characters escaped.
- A `dom0` case (the quick path: GNU Mach itself as Xen's dom0) is one short QEMU run of its own.

Every file QEMU opens is staged under a plain temporary name: QEMU splits `-initrd` at spaces and commas, so the
project path may hold anything.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from hurdxen.boot import log as bootlog
from hurdxen.boot.cases import (
    BootCase,
    BootReport,
    BootResult,
    Verdict,
    case_log,
    expectations_met,
    find_ending,
    judge,
    matched,
)
from hurdxen.boot.images import (
    BLOCK_SCRIPT,
    DEFAULT_SOURCE_DATE_EPOCH,
    CpioEntry,
    Dom0Result,
    HypervisorResult,
    gzip_n,
    write_cpio,
)
from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.core.monitor import Monitor, NullMonitor
from hurdxen.core.quoting import XlValue, xl_value

XEN_APPEND = "console=com1 com1=115200,8n1 guest_loglvl=all noreboot"
# 384 MB: the toolstack, and the guests' files in the initramfs (a disk case carries its 24 MB disk image; 256 MB
# ran out with two of them beside the other cases' files).
DOM0_MEM = "dom0_mem=384M,max:384M"
# Nothing the toolstack needs: no PCI, no KASLR, no audit, no speculation mitigations, no read-only kernel data
# (its W+X check alone costs ~0.8 s under TCG). Measured: the dom0 comes up ~30 % sooner. loglevel=3 keeps
# ACPI's complaints about the missing PCI config space off the console (a kernel panic still shows).
DOM0_ARGS = "console=hvc0 earlyprintk=xen loglevel=3 rodata=off mitigations=off nokaslr pci=off audit=0"
QUICK_DOM0_MEM = "dom0_mem=128M"
DOM0_SETTLE = 5.0  # seconds a dom0 case is watched after its banner passed, for a panic or crash to show
DOM0_READY = "hurdxen-dom0: ready"
DOM0_BOOT_TIMEOUT = 180.0  # seconds for Xen and the Linux dom0 to come up (TCG on a loaded machine)
MAX_LOG = 64 << 20  # a guest that floods the console cannot fill the disk or the memory
MAX_CASE_TEXT = 4 << 20  # what one case's verdict is judged on (a flood is judged on its start, then times out)
SAFE_PATH = re.compile(r"[A-Za-z0-9/_.+-]+")
CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ------------------------------------------------------------------ staging and the QEMU command line


@contextlib.contextmanager
def staging() -> Iterator[Path]:
    """A temporary directory whose path QEMU can take as it is (no space, comma or other special character)."""
    base = tempfile.gettempdir()
    if not SAFE_PATH.fullmatch(base):
        base = "/tmp"
    d = Path(tempfile.mkdtemp(prefix="hurdxen-boot-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stage(d: Path, name: str, src: Path) -> Path:
    """`src` under the plain name `d/name` (a symlink: QEMU opens it, the bytes are not copied)."""
    if not src.is_file():
        raise HurdxenError(f"boot: {src} is missing", hint="build it first")
    link = d / name
    link.symlink_to(src.resolve())
    return link


def qemu_command(hypervisor: Path, modules: Sequence[tuple[Path, str]], append: str) -> list[str]:
    """QEMU booting Xen (multiboot) with `modules` ((file, command line) pairs: dom0 kernel first); the serial
    console on stdin/stdout. Every path must be a staged one."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise HurdxenError("boot: qemu-system-x86_64 is not installed", hint="apt-get install qemu-system-x86")
    for p in (hypervisor, *(m for m, _ in modules)):
        if not SAFE_PATH.fullmatch(str(p)):
            raise HurdxenError(f"boot: {p} is not a staged path", hint="pass files through bootrun.stage")
    mods = ",".join(f"{m} {args}".strip().replace(",", ",,") for m, args in modules)
    return [
        qemu, "-accel", "tcg", "-cpu", "qemu64", "-m", "1024", "-smp", "1",
        "-display", "none", "-monitor", "none", "-parallel", "none", "-nic", "none", "-no-reboot",
        "-serial", "stdio",
        "-kernel", str(hypervisor), "-append", append, "-initrd", mods,
    ]  # fmt: skip


class Console:
    """A QEMU process and its serial console: everything it prints goes to `log` and to memory."""

    def __init__(self, cmd: list[str], log: Path, monitor: Monitor, label: str) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log, "wb")  # noqa: SIM115 (closed in close())
        self._buf = bytearray()
        self._arrivals: list[tuple[int, float]] = []  # (buffer length after a chunk, when it came)
        self._lock = threading.Lock()
        self._mon, self._label = monitor, label
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            with self._lock:
                if len(self._buf) < MAX_LOG:
                    self._buf += chunk
                    self._arrivals.append((len(self._buf), time.monotonic()))
                    self._log.write(chunk)
                    self._log.flush()
            self._mon.output(self._label, chunk)

    def mark(self) -> int:
        """Where the line being printed now starts: a case's slice begins at a line start, so a line a guest had
        half printed (`(d1) ` then `[xl:next] …`) cannot start the next case's slice with its second half."""
        with self._lock:
            return self._buf.rfind(b"\n") + 1

    def since(self, mark: int) -> bytes:
        with self._lock:
            return bytes(self._buf[mark:])

    def arrival(self, offset: int) -> float:
        """When the byte at `offset` came (time.monotonic())."""
        with self._lock:
            i = bisect.bisect_right(self._arrivals, (offset, float("inf")))
            return self._arrivals[min(i, len(self._arrivals) - 1)][1] if self._arrivals else time.monotonic()

    @property
    def exited(self) -> bool:
        return self.proc.poll() is not None

    def send(self, line: str) -> None:
        if self.proc.stdin is None or self.exited:
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def wait_for(self, pattern: str, since: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pattern.encode() in self.since(since):
                return True
            if self.exited:
                time.sleep(0.2)  # the reader may still hold the last bytes
                return pattern.encode() in self.since(since)
            time.sleep(0.05)
        return False

    def close(self, grace: float = 5.0) -> str:
        """Stop QEMU (after `grace` seconds); QEMU's own error output."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        if self.proc.stderr:
            self.proc.stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
        return err.strip()[-500:]


# ------------------------------------------------------------------ guests packed into the dom0 initramfs


def guest_config(case: BootCase, root: str = "/guests") -> str:
    d = f"{root}/{case.name}"
    # A fixed uuid: xl otherwise asks libuuid for a random one, which waits ~3 s for entropy in a fresh dom0.
    uid = uuid.uuid5(uuid.NAMESPACE_URL, f"hurdxen-boot:{case.name}")
    values: list[tuple[str, XlValue]] = [("name", case.name), ("uuid", str(uid)), ("type", "pv"),
                                         ("memory", case.memory_mb), ("vcpus", 1)]  # fmt: skip
    if case.kind == "pvgrub":
        values.append(("kernel", f"{d}/pvgrub"))
    else:
        values.append(("kernel", f"{d}/kernel"))
        if case.ramdisk:
            values.append(("ramdisk", f"{d}/ramdisk"))
    if case.cmdline and case.kind != "pvgrub":
        values.append(("extra", case.cmdline))
    if case.disk:
        # dom0's hotplug script (hurdxen/data/boot/hurdxen-block.sh) puts the image on a loop device for blkback.
        spec = f"format=raw, vdev={case.disk_vdev}, access=rw, script={BLOCK_SCRIPT}, target={d}/disk"
        values.append(("disk", [spec]))
    values += [("on_crash", "preserve"), ("on_poweroff", "preserve"), ("on_reboot", "preserve")]
    return "".join(f"{k} = {xl_value(v)}\n" for k, v in values)


def guests_cpio(cases: Sequence[BootCase], mtime: int) -> bytes:
    entries = []
    for c in cases:
        entries.append(CpioEntry(f"guests/{c.name}.cfg", stat.S_IFREG | 0o644, guest_config(c).encode()))
        files = {"pvgrub": c.pvgrub} if c.kind == "pvgrub" else {"kernel": c.kernel, "ramdisk": c.ramdisk}
        files["disk"] = c.disk
        for n, p in files.items():
            if p is not None:
                entries.append(CpioEntry(f"guests/{c.name}/{n}", stat.S_IFREG | 0o644, _read_guest_file(p)))
    return gzip_n(write_cpio(entries, mtime))


def _read_guest_file(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise HurdxenError(f"boot: cannot read {p} ({e.strerror})", hint="build the artefact first") from e


# ------------------------------------------------------------------ running cases


def _watch(case: BootCase, con: Console, since: int, started: float) -> tuple[Verdict, str, Any, dict[str, float]]:
    """Poll the case's output until its verdict is known (or the timeout, or QEMU's end). A case with
    `alive_after` is judged on as time passes once its expected lines are in (`met`: when they were seen)."""
    seen, met = -1, None
    while True:
        time.sleep(0.1)
        now = time.monotonic()
        over = now - started > case.timeout or con.exited
        raw = con.since(since)[:MAX_CASE_TEXT]
        if len(raw) == seen and not over and met is None:
            continue  # nothing new to judge (a pending crash report settles with new output or the timeout)
        seen = len(raw)
        text = bootlog.canonical(raw, complete=not over)
        if met is None and case.alive_after and expectations_met(case, text):
            met = now
        verdict = judge(case, text, over, now - met if met is not None else 0.0)
        if verdict is not None:
            v, reason, ending = verdict
            if con.exited and v == "fail":
                reason = f"qemu exited; {reason}"
            return v, reason, ending, _timeline(case, con, since, started)


TIMELINE_MARKS = (("xl", "Waiting for domain"), ("dom0", "created {name}"), ("xl", "Domain"))


def _timeline(case: BootCase, con: Console, since: int, started: float) -> dict[str, float]:
    """When each expected line (and the toolstack's steps) came, in seconds after the case started."""
    raw = con.since(since)
    log = case_log(case, bootlog.canonical(raw))
    guest = ("other",) if case.kind == "dom0" else ("domu", "console")
    marks = [(src, m.format(name=case.name)) for src, m in TIMELINE_MARKS]
    out: dict[str, float] = {}
    for _, end, b in bootlog.raw_lines(raw):
        ln = bootlog.parse_line(bootlog.canonical_line(b))
        if not log.own(ln):
            continue
        hits = [p for p in case.expect if ln.source in guest and p in ln.body]
        hits += [ln.text[: len(ln.text) - len(ln.body)] + m for src, m in marks if src == ln.source and
                 ln.body.startswith(m)]  # fmt: skip
        for h in hits:
            out.setdefault(h, con.arrival(since + end) - started)
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def _result(case: BootCase, v: Verdict, reason: str, ending: Any, seconds: float, log: Path, raw: bytes,
            timeline: dict[str, float]) -> BootResult:  # fmt: skip
    # A guest case's log is its own lines of its slice of the session log (which keeps everything), framed and
    # decoded: the relayed console as text, control characters escaped.
    text = bootlog.canonical(raw)
    fsutil.write_atomic(log, case_log(case, text).own_text().encode())
    return BootResult(case, v, seconds, log, matched(case, text), reason, tuple(timeline.items()), ending)


def run_session(
    cases: Sequence[BootCase],
    hypervisor: Path,
    dom0: Dom0Result,
    log_dir: Path,
    label: str = "session",
    mtime: int = DEFAULT_SOURCE_DATE_EPOCH,
    monitor: Monitor | None = None,
) -> tuple[list[BootResult], dict[str, Any]]:
    """Boot Xen and the dom0 once, then each guest case in turn; the session's serial log is `<label>.log`, each
    case's slice of it `<case>.log`."""
    mon = monitor or NullMonitor()
    session_log = log_dir / f"{label}.log"
    start = time.monotonic()
    mon.begin(f"boot:{label} (Xen + dom0 for {', '.join(c.name for c in cases)})")
    results: list[BootResult] = []
    with staging() as d:
        initrd = d / "dom0-initrd.img"
        # Linux unpacks concatenated (compressed) cpio archives in order: the dom0 userland, then the guests.
        fsutil.write_atomic(initrd, dom0.initrd.read_bytes() + guests_cpio(cases, mtime))
        cmd = qemu_command(
            stage(d, "xen", hypervisor),
            [(stage(d, "dom0-kernel", dom0.kernel), DOM0_ARGS), (initrd, "")],
            f"{XEN_APPEND} {DOM0_MEM}",
        )
        con = Console(cmd, session_log, mon, f"boot:{label}")
        try:
            up = con.wait_for(DOM0_READY, 0, DOM0_BOOT_TIMEOUT)
            ready = time.monotonic() - start
            for case in cases:
                results.append(_guest_case(case, con, up, log_dir, mon))
        finally:
            err = con.close(grace=0)  # every verdict is in: no need to wait for the dom0 to power off
    seconds = time.monotonic() - start
    mon.end(f"boot:{label}", seconds)
    if not up:
        tail = bootlog.canonical(con.since(0))[-300:].strip().replace("\n", " | ")
        why = f"the dom0 did not come up in {DOM0_BOOT_TIMEOUT:.0f} s ({err or 'no qemu error'}); last output: {tail}"
        results = [
            BootResult(r.case, "fail", r.seconds, r.log, (), why, r.timeline, None) for r in results
        ]  # fmt: skip
    summary = {"label": label, "log": str(session_log), "cases": [c.name for c in cases],
               "seconds": round(seconds, 1), "dom0_ready_s": round(ready, 1) if up else None}  # fmt: skip
    return results, summary


def _guest_case(case: BootCase, con: Console, up: bool, log_dir: Path, mon: Monitor) -> BootResult:
    log = log_dir / f"{case.name}.log"
    since = con.mark()
    started = time.monotonic()
    if not up:
        return _result(case, "fail", "no dom0", None, 0.0, log, b"", {})
    mon.begin(f"boot:{case.name}")
    con.send(f"create {case.name}")
    v, reason, ending, timeline = _watch(case, con, since, started)
    seconds = time.monotonic() - started
    # The guest's diagnostics are in the log by now (a verdict on a crash waits for them): remove it. The dom0
    # destroys it while it creates the next guest; its log ends here, before the next guest's first line.
    raw = con.since(since)
    con.send(f"destroy {case.name}")
    mon.end(f"boot:{case.name} {v}" + (f": {reason}" if reason and v != "pass" else ""), seconds)
    return _result(case, v, reason, ending, seconds, log, raw, timeline)


def run_dom0_case(
    case: BootCase, hypervisor: Path, log_dir: Path, monitor: Monitor | None = None
) -> tuple[BootResult, dict[str, Any]]:
    """The quick path: GNU Mach started as Xen's dom0 in a QEMU of its own."""
    assert case.kernel is not None
    mon = monitor or NullMonitor()
    log = log_dir / f"{case.name}.log"
    mon.begin(f"boot:{case.name}")
    started = time.monotonic()
    with staging() as d:
        mods = [(stage(d, "kernel", case.kernel), case.cmdline)]
        if case.ramdisk:
            mods.append((stage(d, "ramdisk", case.ramdisk), ""))
        cmd = qemu_command(stage(d, "xen", hypervisor), mods, f"{XEN_APPEND} {QUICK_DOM0_MEM}")
        con = Console(cmd, log.with_suffix(".serial"), mon, f"boot:{case.name}")
        try:
            v, reason, ending, timeline = _watch(case, con, 0, started)
            if v == "pass" and ending is None:
                v, reason, ending = _settle(
                    case,
                    con,
                    min(DOM0_SETTLE, max(0.0, case.timeout - (time.monotonic() - started))),
                    (v, reason, ending),
                )
        finally:
            err = con.close(grace=0)
    seconds = time.monotonic() - started
    if err and v == "fail":
        reason = f"{reason}; qemu: {err}"
    mon.end(f"boot:{case.name} {v}", seconds)
    result = _result(case, v, reason, ending, seconds, log, log.with_suffix(".serial").read_bytes(), timeline)
    log.with_suffix(".serial").unlink(missing_ok=True)
    return result, {"label": case.name, "log": str(log), "cases": [case.name], "seconds": round(seconds, 1)}


def _settle(
    case: BootCase, con: Console, seconds: float, verdict: tuple[Verdict, str, Any]
) -> tuple[Verdict, str, Any]:
    """A banner check that passed: watch the kernel a little longer, so that a panic or crash right after the
    banner shows in the case's detail (the verdict stays a pass)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not con.exited:
        time.sleep(0.2)
        text = bootlog.canonical(con.since(0)[:MAX_CASE_TEXT], complete=True)
        if find_ending(case, text, False)[0] is not None:
            break
    again = judge(case, bootlog.canonical(con.since(0)[:MAX_CASE_TEXT], complete=True), False)
    return again if again is not None and again[0] == verdict[0] else verdict


def run_boot_checks(
    cases: Sequence[BootCase],
    hypervisor: HypervisorResult,
    dom0: Dom0Result | None,
    log_dir: Path,
    mtime: int = DEFAULT_SOURCE_DATE_EPOCH,
    monitor: Monitor | None = None,
    jobs: int | None = None,
    sessions: int = 1,
) -> BootReport:
    """Run every case; verdicts in case order, `jobs` QEMUs at a time (TCG uses one host core per QEMU). The guest
    cases are shared out over `sessions` sessions (each boots Xen and the dom0 once: more sessions cost CPU and save
    wall time when cores are free); the quick dom0 cases run beside them."""
    names = [c.name for c in cases]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        raise HurdxenError(f"boot: case names must be unique ({', '.join(sorted(dups))})")
    for c in cases:
        if not CASE_NAME.fullmatch(c.name):
            raise HurdxenError(f"boot: case name {c.name!r} is not a plain file name", hint="use letters, digits, -_.")
    guests = [c for c in cases if c.kind != "dom0"]
    if guests and dom0 is None:
        raise HurdxenError("boot: guest cases need the dom0 kernel and initrd", hint="build_dom0 first")
    log_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or min(2, os.cpu_count() or 1))
    by_name: dict[str, BootResult] = {}
    runs: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = []
        n = max(1, min(sessions, len(guests)))
        parts = share_out(guests, n)
        for i in range(n if guests else 0):
            assert dom0 is not None
            label = "session" if n == 1 else f"session-{i + 1}"
            part = parts[i]
            futures.append(pool.submit(run_session, part, hypervisor.xen, dom0, log_dir, label, mtime, monitor))
        for c in cases:
            if c.kind == "dom0":
                futures.append(pool.submit(_one, c, hypervisor.xen, log_dir, monitor))
        for f in futures:
            res, summary = f.result()
            runs.append(summary)
            by_name.update((r.case.name, r) for r in res)
    return BootReport(tuple(by_name[n] for n in names), hypervisor.summary(), dom0.summary() if dom0 else {},
                      tuple(runs))  # fmt: skip


# A guest case without an alive window takes about this long from `create` to its verdict (measured: 0.6–2.8 s).
GUEST_SECONDS = 2.0


def share_out(guests: Sequence[BootCase], n: int) -> list[list[BootCase]]:
    """The guest cases over `n` sessions: longest first (an `alive_after` window dominates a case) onto the least
    loaded session, so two alive windows do not queue in one session; each session keeps the recipe's order."""
    loads: list[float] = [0.0] * n
    parts: list[list[BootCase]] = [[] for _ in range(n)]
    for c in sorted(guests, key=lambda c: -c.alive_after):  # stable: equal cases keep the recipe's order
        i = loads.index(min(loads))
        parts[i].append(c)
        loads[i] += GUEST_SECONDS + c.alive_after
    order = {c.name: k for k, c in enumerate(guests)}
    return [sorted(p, key=lambda c: order[c.name]) for p in parts]


def _one(
    case: BootCase, hypervisor: Path, log_dir: Path, monitor: Monitor | None
) -> tuple[list[BootResult], dict[str, Any]]:
    result, summary = run_dom0_case(case, hypervisor, log_dir, monitor)
    return [result], summary


def print_report(report: BootReport, monitor: Monitor) -> None:
    """The verdict table, then each ending's headline and Xen's crash lines, as notes through the monitor."""
    from rich.console import Console as RichConsole

    buf = io.StringIO()
    RichConsole(file=buf, force_terminal=sys.stderr.isatty(), width=160).print(report.table())
    monitor.note(buf.getvalue().rstrip("\n"))
    for r in report.results:
        if r.ending is None:
            continue
        monitor.note(f"{r.case.name}: {r.ending.headline}")
        for ln in r.ending.crash.lines[:12] if r.ending.crash is not None else ():
            monitor.note(f"  (XEN) {ln}")
