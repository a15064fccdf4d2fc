"""Boot check: a real Xen hypervisor in QEMU (TCG) boots the built kernels, ramdisks and pv-grub2 images.

Three parts:
- the test hypervisor, built from Debian's Xen orig tarball with 32-bit PV support (`build_hypervisor`);
- a Linux dom0: Debian's kernel plus a small deterministic initramfs with the Xen toolstack (`build_dom0`), whose
  init starts xenstored/xenconsoled and runs `xl create` for every guest config it finds in /guests;
- the runner (`run_boot_checks`): one QEMU per case, serial console to `<log_dir>/<case>.log`, stopped as soon as the
  verdict is known (every expected pattern seen, a refusal or known failure seen, or the timeout).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from hurdxen import fsutil
from hurdxen.errors import HurdxenError
from hurdxen.executors import Executor, Mount, Step
from hurdxen.monitor import Monitor, NullMonitor

DEFAULT_SOURCE_DATE_EPOCH = 1700000000

# ---------------------------------------------------------------------------------------------------------------
# The test hypervisor


XEN_CONFIG = (("CONFIG_EXPERT", "y"), ("CONFIG_PV32", "y"), ("CONFIG_VERBOSE_DEBUG", "y"))


@dataclass(frozen=True)
class HypervisorSpec:
    """Xen built from a pinned orig tarball with the options the Hurd needs (32-bit PV, guest console on serial)."""

    url: str
    sha256: str
    config: tuple[tuple[str, str], ...] = XEN_CONFIG
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH
    jobs: int = 2

    def identity(self, image: str) -> str:
        d = {k: v for k, v in self.__dict__.items() if k != "jobs"}
        return fsutil.identity("xen-hypervisor", d, image, _script_digest("build-xen.sh"))[:16]


@dataclass(frozen=True)
class HypervisorResult:
    xen: Path  # uncompressed ELF, for QEMU's -kernel
    config: Path  # the hypervisor's .config
    identity: str
    sha256: str
    seconds: float
    reused: bool

    def summary(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "sha256": self.sha256,
            "seconds": round(self.seconds, 1),
            "reused": self.reused,
        }


def _script(name: str) -> str:
    return resources.files("hurdxen").joinpath("data", "boot", name).read_text()


def _script_digest(name: str) -> str:
    return fsutil.sha256_bytes(_script(name).encode())


def build_hypervisor(
    spec: HypervisorSpec,
    tarball: Path,
    out_dir: Path,
    executor: Executor,
    image: str,
    log_dir: Path,
    monitor: Monitor | None = None,
) -> HypervisorResult:
    """Build `xen/xen` into `out_dir` (replaced atomically); reuse it when `out_dir` holds a build of this identity."""
    ident = spec.identity(image)
    stamp = out_dir / "hypervisor.json"
    if stamp.is_file() and (out_dir / "xen").is_file():
        with contextlib.suppress(ValueError, KeyError):
            data = json.loads(stamp.read_text())
            if data["identity"] == ident:
                return HypervisorResult(out_dir / "xen", out_dir / "xen.config", ident, data["sha256"], 0.0, True)
    if not tarball.is_file():
        raise HurdxenError(f"boot: Xen source tarball {tarball} is missing", hint="fetch the sources first")
    start = time.monotonic()
    with fsutil.atomic_dir(out_dir) as tmp:
        step = Step(
            name="boot:hypervisor",
            script=_script("build-xen.sh"),
            image=image,
            mounts=(
                Mount(tarball.parent, "TARBALL", "/src"),
                Mount(tmp, "OUT", "/out", writable=True),
            ),
            env=(
                ("XEN_TARBALL", tarball.name),
                ("XEN_CONFIG", " ".join(f"{k}={v}" for k, v in spec.config)),
                ("SOURCE_DATE_EPOCH", str(spec.source_date_epoch)),
                ("JOBS", str(spec.jobs)),
            ),
        )
        executor.run(step, log_dir / "hypervisor.log", monitor)
        if not (tmp / "xen").is_file():
            raise HurdxenError("boot:hypervisor: the build left no xen/xen", hint=f"see {log_dir / 'hypervisor.log'}")
        digest = fsutil.sha256_file(tmp / "xen")
        fsutil.write_json_atomic(tmp / "hypervisor.json", {"identity": ident, "sha256": digest, "url": spec.url})
    return HypervisorResult(out_dir / "xen", out_dir / "xen.config", ident, digest, time.monotonic() - start, False)


# ---------------------------------------------------------------------------------------------------------------
# Deterministic initramfs (newc cpio)


@dataclass(frozen=True)
class CpioEntry:
    name: str  # path inside the archive, without a leading "/"
    mode: int  # full st_mode (type + permissions)
    data: bytes = b""  # file contents, or the target of a symlink


def _cpio_header(ino: int, e: CpioEntry, mtime: int) -> bytes:
    name = e.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, mtime, len(e.data), 0, 0, 0, 0, len(name), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name
    return head + b"\0" * (-len(head) % 4)


def write_cpio(entries: Iterable[CpioEntry], mtime: int) -> bytes:
    """A newc archive: names sorted, parents before children, uid/gid 0, one mtime, inodes numbered in order."""
    by_name: dict[str, CpioEntry] = {}
    for e in entries:
        name = e.name.strip("/")
        if not name:
            continue
        by_name[name] = CpioEntry(name, e.mode, e.data)
        parts = name.split("/")
        for i in range(1, len(parts)):
            by_name.setdefault("/".join(parts[:i]), CpioEntry("/".join(parts[:i]), stat.S_IFDIR | 0o755))
    out = io.BytesIO()
    for ino, name in enumerate(sorted(by_name, key=lambda n: n.split("/")), start=1):
        e = by_name[name]
        out.write(_cpio_header(ino, e, mtime))
        out.write(e.data)
        out.write(b"\0" * (-len(e.data) % 4))
    out.write(_cpio_header(0, CpioEntry("TRAILER!!!", 0), 0))
    data = out.getvalue()
    return data + b"\0" * (-len(data) % 512)


def tree_entries(root: Path, prefix: str = "") -> list[CpioEntry]:
    """Entries for every file, directory and symlink below `root`, with normalised permissions."""
    entries = []
    for p in sorted(root.rglob("*")):
        name = prefix + str(p.relative_to(root))
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            entries.append(CpioEntry(name, stat.S_IFLNK | 0o777, os.readlink(p).encode()))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(CpioEntry(name, stat.S_IFDIR | 0o755))
        elif stat.S_ISREG(st.st_mode):
            perm = 0o755 if st.st_mode & 0o111 else 0o644
            entries.append(CpioEntry(name, stat.S_IFREG | perm, p.read_bytes()))
    return entries


def gzip_n(data: bytes) -> bytes:
    """gzip -n: no name, mtime 0."""
    return gzip.compress(data, compresslevel=6, mtime=0)


# ---------------------------------------------------------------------------------------------------------------
# dom0: Debian's kernel and an initramfs with the Xen toolstack

DOM0_MODULES = ("xen-evtchn", "xen-privcmd", "xen-gntdev", "xen-gntalloc", "xenfs")
DOM0_PROGRAMS = (
    "/usr/lib/xen-4.17/bin/xl",
    "/usr/lib/xen-4.17/bin/xenconsoled",
    "/usr/lib/xen-4.17/bin/xen-init-dom0",
    "/usr/lib/xen-4.17/bin/xenstored",
)
# glibc loads libgcc_s with dlopen (pthread_cancel): xl aborts without it.
DOM0_FILES = ("/lib/x86_64-linux-gnu/libgcc_s.so.1",)
XL_CONF = 'autoballoon = "off"\n'


@dataclass(frozen=True)
class Dom0Spec:
    kernel_release: str = "6.1.0-50-amd64"  # must match containers/boot-dom0's KERNEL_PACKAGE
    modules: tuple[str, ...] = DOM0_MODULES
    programs: tuple[str, ...] = DOM0_PROGRAMS
    files: tuple[str, ...] = DOM0_FILES
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH

    def identity(self, image: str) -> str:
        return fsutil.identity(
            "dom0",
            self.__dict__,
            image,
            _script_digest("collect-dom0.sh"),
            _script_digest("init.sh"),
            XL_CONF,
            CPIO_FORMAT,
        )[:16]


CPIO_FORMAT = 2  # bump when write_cpio's output (or what build_dom0 writes) changes


def uncompressed_kernel(bzimage: bytes) -> bytes | None:
    """The ELF vmlinux inside a bzImage (xz or gzip payload), or None. Xen boots it as a PV dom0 as it is, which
    spares the hypervisor decompressing ~8 MB under TCG (≈ 8 s of every run)."""
    import lzma
    import zlib

    for magic, make in (
        (b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
        (b"\x1f\x8b\x08\x00", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    ):
        at = bzimage.find(magic)
        while at >= 0:
            with contextlib.suppress(lzma.LZMAError, zlib.error, EOFError):
                out = make().decompress(bzimage[at:])
                if out[:4] == b"\x7fELF":
                    return out
            at = bzimage.find(magic, at + 1)
    return None


@dataclass(frozen=True)
class Dom0Result:
    kernel: Path  # the dom0 kernel QEMU loads: vmlinux (uncompressed ELF) or, failing that, vmlinuz
    initrd: Path  # dom0-initrd.img (gzip'd newc cpio)
    identity: str
    initrd_sha256: str
    seconds: float
    reused: bool

    def summary(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "initrd_sha256": self.initrd_sha256,
            "seconds": round(self.seconds, 1),
            "reused": self.reused,
        }


def build_dom0(
    spec: Dom0Spec, out_dir: Path, executor: Executor, image: str, log_dir: Path, monitor: Monitor | None = None
) -> Dom0Result:
    """Collect the dom0 files in the boot-dom0 image, then write `dom0-initrd.img` deterministically."""
    ident = spec.identity(image)
    stamp = out_dir / "dom0.json"
    if stamp.is_file() and (out_dir / "dom0-initrd.img").is_file() and (out_dir / "vmlinuz").is_file():
        with contextlib.suppress(ValueError, KeyError):
            data = json.loads(stamp.read_text())
            if data["identity"] == ident:
                return Dom0Result(
                    _dom0_kernel(out_dir), out_dir / "dom0-initrd.img", ident, data["initrd_sha256"], 0.0, True
                )
    start = time.monotonic()
    with fsutil.atomic_dir(out_dir) as tmp:
        collect = tmp / "collect"
        collect.mkdir()
        step = Step(
            name="boot:dom0",
            script=_script("collect-dom0.sh"),
            image=image,
            mounts=(Mount(collect, "OUT", "/out", writable=True),),
            env=(
                ("KERNEL_RELEASE", spec.kernel_release),
                ("DOM0_MODULES", " ".join(spec.modules)),
                ("DOM0_PROGRAMS", " ".join(spec.programs)),
                ("DOM0_FILES", " ".join(spec.files)),
            ),
        )
        executor.run(step, log_dir / "dom0.log", monitor)
        rootfs = collect / "rootfs"
        entries = tree_entries(rootfs)
        entries.append(CpioEntry("init", stat.S_IFREG | 0o755, _script("init.sh").encode()))
        entries.append(CpioEntry("etc/xen/xl.conf", stat.S_IFREG | 0o644, XL_CONF.encode()))
        for d in ("proc", "sys", "dev", "run", "tmp", "var", "guests", "etc"):
            entries.append(CpioEntry(d, stat.S_IFDIR | 0o755))
        initrd = gzip_n(write_cpio(entries, spec.source_date_epoch))
        fsutil.write_atomic(tmp / "dom0-initrd.img", initrd)
        vmlinux = uncompressed_kernel((collect / "vmlinuz").read_bytes())
        if vmlinux is not None:
            fsutil.write_atomic(tmp / "vmlinux", vmlinux)
        os.replace(collect / "vmlinuz", tmp / "vmlinuz")
        shutil.rmtree(collect)
        digest = fsutil.sha256_bytes(initrd)
        fsutil.write_json_atomic(tmp / "dom0.json", {"identity": ident, "initrd_sha256": digest})
    return Dom0Result(
        _dom0_kernel(out_dir), out_dir / "dom0-initrd.img", ident, digest, time.monotonic() - start, False
    )


def _dom0_kernel(d: Path) -> Path:
    return d / "vmlinux" if (d / "vmlinux").is_file() else d / "vmlinuz"


# ---------------------------------------------------------------------------------------------------------------
# Cases, verdicts and the runner

Kind = Literal["guest", "pvgrub", "dom0"]
Verdict = Literal["pass", "fail", "known-failure", "expected-refusal"]

XEN_APPEND = "console=com1 com1=115200,8n1 guest_loglvl=all noreboot"
# 256 MB is plenty for the toolstack and boots faster than the usual 512 MB (less memory for Linux to set up).
DOM0_MEM = "dom0_mem=256M,max:256M"
DOM0_ARGS = "console=hvc0 earlyprintk=xen quiet"
QUICK_DOM0_MEM = "dom0_mem=128M"

# Seen in any case: the run went wrong in a way no case expects.
FAIL_PATTERNS = (
    "Kernel panic - not syncing",
    "Panic on CPU",
    "bootstrap_create: No bootstrap code loaded",
)
# Progress marks recorded in each result's timeline.
MILESTONES = ("Linux version", "hurdxen-dom0: toolstack up")
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")


@dataclass(frozen=True)
class KnownFailure:
    pattern: str  # substring of the serial log that marks the failure
    reason: str  # why it fails today, for the report


@dataclass(frozen=True)
class BootCase:
    """One boot: `guest` (kernel + ramdisk via the Linux dom0), `pvgrub` (a pv-grub2 image as the guest kernel),
    or `dom0` (the quick path: the kernel itself started as dom0, good for the banner only).

    Patterns are plain substrings of the serial log (ANSI colour codes removed)."""

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
        }


@dataclass(frozen=True)
class BootResult:
    case: BootCase
    verdict: Verdict
    seconds: float
    log: Path
    matched: tuple[str, ...]
    reason: str = ""
    timeline: tuple[tuple[str, float], ...] = ()  # (pattern or milestone, seconds after QEMU started) as first seen

    @property
    def ok(self) -> bool:
        return self.verdict != "fail"

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
            "timeline": {k: round(v, 1) for k, v in self.timeline},
        }


@dataclass(frozen=True)
class BootReport:
    results: tuple[BootResult, ...]
    hypervisor: dict[str, Any] = field(default_factory=dict)
    dom0: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def summary(self) -> dict[str, Any]:
        """JSON-able, for the manifest."""
        return {
            "ok": self.ok,
            "hypervisor": self.hypervisor,
            "dom0": self.dom0,
            "cases": [r.summary() for r in self.results],
        }

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title="boot check")
        for col in ("case", "kind", "verdict", "seconds", "detail"):
            t.add_column(col)
        colours = {"pass": "green", "expected-refusal": "green", "known-failure": "yellow", "fail": "red"}
        for r in self.results:
            detail = r.reason or ", ".join(r.matched)
            t.add_row(r.case.name, r.case.kind, f"[{colours[r.verdict]}]{r.verdict}[/]", f"{r.seconds:.1f}", detail)
        return t


def judge(case: BootCase, text: str, finished: bool) -> tuple[Verdict, str] | None:
    """The verdict for the serial output so far, or None while it is still open.

    Order matters: a case passes only if all its expected patterns appear before the first failure pattern.
    `finished` means no more output will come (QEMU exited, the dom0 init said it is done, or the timeout)."""
    if case.expect_refusal and case.expect_refusal in text:
        return "expected-refusal", case.expect_refusal
    if case.known_failure and case.known_failure.pattern in text:
        return "known-failure", case.known_failure.reason
    fail_at, failed = _failed(case, text)
    found = [find_output(text, p) for p in case.expect]
    plain = not case.expect_refusal and not case.known_failure
    if plain and all(i >= 0 for i in found) and (fail_at < 0 or max(found, default=0) < fail_at):
        return "pass", ""
    if failed:
        return "fail", failed
    if case.expect_refusal and f"hurdxen-dom0: created {case.name}" in text:
        return "fail", f"the guest was created; expected the refusal {case.expect_refusal!r}"
    if finished:
        missing = [p for p in case.expect if find_output(text, p) < 0]
        if case.known_failure and not missing:
            return "pass", f"the known failure ({case.known_failure.reason}) no longer shows"
        if case.expect_refusal:
            return "fail", f"no refusal {case.expect_refusal!r}"
        return "fail", "missing: " + "; ".join(missing)
    return None


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


def qemu_command(
    case: BootCase, hypervisor: Path, dom0: Dom0Result | None, initrd: Path | None, log: Path
) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise HurdxenError("boot: qemu-system-x86_64 is not installed", hint="apt-get install qemu-system-x86")
    if case.kind == "dom0":
        assert case.kernel is not None
        mods = [f"{case.kernel} {case.cmdline}"]
        if case.ramdisk:
            mods.append(str(case.ramdisk))
        append = f"{XEN_APPEND} {QUICK_DOM0_MEM}"
    else:
        assert dom0 is not None and initrd is not None
        mods = [f"{dom0.kernel} {DOM0_ARGS}", str(initrd)]
        append = f"{XEN_APPEND} {DOM0_MEM}"
    for m in mods:
        if "," in m.split(" ")[0]:
            raise HurdxenError(f"boot: {m.split(' ')[0]} has a comma in its path", hint="QEMU splits -initrd at commas")
    return [
        qemu, "-accel", "tcg", "-cpu", "qemu64", "-m", "1024", "-smp", "1",
        "-display", "none", "-monitor", "none", "-parallel", "none", "-nic", "none", "-no-reboot",
        "-serial", f"file:{log}",
        "-kernel", str(hypervisor), "-append", append,
        "-initrd", ",".join(m.replace(",", ",,") for m in mods),
    ]  # fmt: skip


def guest_config(case: BootCase, root: str = "/guests") -> str:
    d = f"{root}/{case.name}"
    lines = [f'name = "{case.name}"', 'type = "pv"', f"memory = {case.memory_mb}", "vcpus = 1"]
    if case.kind == "pvgrub":
        lines.append(f'kernel = "{d}/pvgrub"')
    else:
        lines.append(f'kernel = "{d}/kernel"')
        if case.ramdisk:
            lines.append(f'ramdisk = "{d}/ramdisk"')
    if case.cmdline and case.kind != "pvgrub":
        lines.append(f'extra = "{case.cmdline}"')
    lines += ['on_crash = "preserve"', 'on_poweroff = "preserve"', 'on_reboot = "preserve"']
    return "\n".join(lines) + "\n"


def guests_cpio(cases: Sequence[BootCase], wait_seconds: int, mtime: int) -> bytes:
    entries = [CpioEntry("guests/wait", stat.S_IFREG | 0o644, f"{wait_seconds}\n".encode())]
    for c in cases:
        entries.append(CpioEntry(f"guests/{c.name}.cfg", stat.S_IFREG | 0o644, guest_config(c).encode()))
        files = {"pvgrub": c.pvgrub} if c.kind == "pvgrub" else {"kernel": c.kernel, "ramdisk": c.ramdisk}
        for n, p in files.items():
            if p is not None:
                entries.append(CpioEntry(f"guests/{c.name}/{n}", stat.S_IFREG | 0o644, _read_guest_file(p)))
    return gzip_n(write_cpio(entries, mtime))


def _read_guest_file(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise HurdxenError(f"boot: cannot read {p} ({e.strerror})", hint="build the artefact first") from e


def run_case(
    case: BootCase,
    hypervisor: Path,
    dom0: Dom0Result | None,
    log_dir: Path,
    work_dir: Path,
    mtime: int = DEFAULT_SOURCE_DATE_EPOCH,
    monitor: Monitor | None = None,
) -> BootResult:
    """Boot one case in its own QEMU; stop it as soon as the verdict is known."""
    mon = monitor or NullMonitor()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{case.name}.log"
    log.unlink(missing_ok=True)
    initrd = None
    if case.kind != "dom0":
        if dom0 is None:
            raise HurdxenError(f"boot: case {case.name} needs the dom0 kernel and initrd", hint="build_dom0 first")
        work_dir.mkdir(parents=True, exist_ok=True)
        initrd = work_dir / f"{case.name}-initrd.img"
        # Linux unpacks concatenated (compressed) cpio archives in order: dom0 userland, then this case's guest.
        fsutil.write_atomic(initrd, dom0.initrd.read_bytes() + guests_cpio([case], int(case.timeout) + 5, mtime))
    cmd = qemu_command(case, hypervisor, dom0, initrd, log)
    mon.begin(f"boot:{case.name}")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    verdict: tuple[Verdict, str] | None = None
    seen = 0
    marks = [*MILESTONES, f"hurdxen-dom0: created {case.name}", *case.expect]
    if case.expect_refusal:
        marks.append(case.expect_refusal)
    if case.known_failure:
        marks.append(case.known_failure.pattern)
    timeline: dict[str, float] = {}
    try:
        while verdict is None:
            time.sleep(0.1)
            raw = log.read_bytes() if log.exists() else b""
            if len(raw) > seen:
                mon.output(f"boot:{case.name}", raw[seen:])
                seen = len(raw)
            text = _ANSI.sub(b"", raw).decode(errors="replace")
            for m in marks:
                if m not in timeline and (find_output(text, m) >= 0 if m in case.expect else m in text):
                    timeline[m] = time.monotonic() - start
            exited = proc.poll() is not None
            timed_out = time.monotonic() - start > case.timeout
            finished = exited or timed_out or "hurdxen-dom0: done" in text
            verdict = judge(case, text, finished)
            if verdict is None and finished:  # judge always decides when finished
                verdict = ("fail", "no verdict")
            if verdict is not None and verdict[0] == "fail" and timed_out:
                verdict = ("fail", f"timeout after {case.timeout:.0f} s; " + verdict[1])
            if verdict is not None and exited and proc.returncode not in (0, None) and verdict[0] == "fail":
                out = proc.stdout.read().decode(errors="replace").strip() if proc.stdout else ""
                verdict = ("fail", f"qemu exited with {proc.returncode}: {out[-300:]}; " + verdict[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    seconds = time.monotonic() - start
    mon.end(f"boot:{case.name} {verdict[0]}", seconds)
    text = _ANSI.sub(b"", log.read_bytes() if log.exists() else b"").decode(errors="replace")
    matched = tuple(p for p in case.expect if find_output(text, p) >= 0)
    if initrd is not None:
        initrd.unlink(missing_ok=True)
    return BootResult(case, verdict[0], seconds, log, matched, verdict[1], tuple(timeline.items()))


def run_boot_checks(
    cases: Sequence[BootCase],
    hypervisor: HypervisorResult,
    dom0: Dom0Result | None,
    log_dir: Path,
    work_dir: Path | None = None,
    mtime: int = DEFAULT_SOURCE_DATE_EPOCH,
    monitor: Monitor | None = None,
    jobs: int | None = None,
) -> BootReport:
    """Run every case (one QEMU each, `jobs` at a time: QEMU's TCG uses one host core per guest CPU), return the
    verdicts in case order; the serial logs stay in `log_dir/<case>.log`."""
    names = [c.name for c in cases]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        raise HurdxenError(f"boot: case names must be unique ({', '.join(sorted(dups))})")
    for c in cases:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", c.name):
            raise HurdxenError(f"boot: case name {c.name!r} is not a plain file name", hint="use letters, digits, -_.")
    work = work_dir or log_dir / ".work"
    jobs = max(1, jobs or min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_case, c, hypervisor.xen, dom0, log_dir, work, mtime, monitor) for c in cases]
        results = tuple(f.result() for f in futures)
    return BootReport(results, hypervisor.summary(), dom0.summary() if dom0 else {})


def print_report(report: BootReport) -> None:
    from rich.console import Console

    Console(stderr=True).print(report.table())


# ---------------------------------------------------------------------------------------------------------------
# The stage: recipes/boot.toml, inputs from the gnumach, hurd-modules and pvgrub2 stages

STAGE = "boot"
REPORT = "boot-report.json"  # artifacts/boot/boot-report.json: {"ok", "hypervisor", "dom0", "cases": [...]}


@dataclass(frozen=True)
class CaseSpec:
    """A case as the recipe names it: artefacts by stage name, resolved to files by `resolve_case`."""

    name: str
    kind: Kind
    kernel: str | None
    ramdisk: str | None
    pvgrub: str | None
    expect: tuple[str, ...]
    expect_refusal: str | None
    known_failure: KnownFailure | None
    cmdline: str
    memory_mb: int
    timeout: float


@dataclass(frozen=True)
class BootRecipe:
    image: str
    dom0_image: str
    hypervisor: HypervisorSpec
    dom0: Dom0Spec
    jobs: int
    cases: tuple[CaseSpec, ...]


def recipe_from(data: Any, source_date_epoch: int, shown: str = "recipes/boot.toml") -> BootRecipe:
    """The validated recipe (schema checked by hurdxen.recipes) as specs."""
    xen = data["xen"]
    config = tuple(tuple(kv.split("=", 1)) for kv in xen.get("config", [f"{k}={v}" for k, v in XEN_CONFIG]))
    hv = HypervisorSpec(xen["url"], xen["sha256"], config, source_date_epoch)
    d = data["dom0"]
    dom0 = Dom0Spec(d["kernel_release"], tuple(d.get("modules", DOM0_MODULES)), source_date_epoch=source_date_epoch)
    run = data.get("run", {})
    cases = []
    for i, c in enumerate(data["cases"]):
        kind: Kind = c.get("kind") or ("pvgrub" if "pvgrub" in c else "guest")
        need = {"guest": "kernel", "dom0": "kernel", "pvgrub": "pvgrub"}[kind]
        if need not in c:
            raise HurdxenError(f"{shown}: cases[{i}] ({c['name']}): a {kind} case needs `{need}`")
        kf = c.get("known_failure")
        cases.append(
            CaseSpec(
                c["name"], kind, c.get("kernel"), c.get("ramdisk"), c.get("pvgrub"), tuple(c.get("expect", ())),
                c.get("expect_refusal"), KnownFailure(kf["pattern"], kf["reason"]) if kf else None,
                c.get("cmdline", "console=hyp0 root=device:hd0s1"), int(c.get("memory", run.get("memory", 128))),
                float(c.get("timeout", run.get("timeout", 120))),
            )
        )  # fmt: skip
    names = [c.name for c in cases]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise HurdxenError(f"{shown}: cases: duplicate names {', '.join(dups)}", hint="each case needs its own name")
    return BootRecipe(data["image"], data["dom0_image"], hv, dom0, int(run.get("jobs", 2)), tuple(cases))


def hypervisor_dir(ctx: Any, spec: HypervisorSpec, image: str) -> Path:
    return Path(ctx.cache.root) / "boot" / f"xen-{spec.identity(image)}"


def dom0_dir(ctx: Any, spec: Dom0Spec, image: str) -> Path:
    return Path(ctx.cache.root) / "boot" / f"dom0-{spec.identity(image)}"


def case_inputs(ctx: Any, case: CaseSpec) -> dict[str, Path]:
    """The artefact files a case boots, by role (kernel, ramdisk, pvgrub)."""
    from hurdxen import gnumach, hurdmodules, ramdisk

    files: dict[str, Path] = {}
    if case.kernel and case.kind != "pvgrub":
        # The .gz every kernel stage publishes (compiled and prebuilt alike): the same file whether or not it has
        # been built yet, which keeps the check's dependencies stable. Xen unpacks it in no time.
        files["kernel"] = gnumach.out_dir(ctx, case.kernel) / f"{gnumach.kernel_name(case.kernel)}.gz"
    if case.ramdisk:
        files["ramdisk"] = hurdmodules.out_dir(ctx, case.ramdisk) / ramdisk.RAMDISK_NAME
    if case.pvgrub:
        files["pvgrub"] = Path(ctx.artifacts) / "pvgrub2" / case.pvgrub / f"pv-grub-{case.pvgrub}"
    return files


def resolve_case(ctx: Any, case: CaseSpec) -> BootCase:
    files = case_inputs(ctx, case)
    for role, path in files.items():
        if not path.is_file():
            raise HurdxenError(
                f"boot:{case.name}: the {role} {path} is missing",
                hint="build it first (`doit build`), or drop the case from recipes/boot.toml",
            )
    return BootCase(
        case.name, case.kind, files.get("kernel"), files.get("ramdisk"), files.get("pvgrub"), case.expect,
        case.expect_refusal, case.known_failure, case.cmdline, case.memory_mb, case.timeout,
    )  # fmt: skip


def stage_hypervisor(recipe: BootRecipe, ctx: Any) -> HypervisorResult:
    from hurdxen.sources import TarballPin, fetch_tarball

    tag = ctx.image_tag(recipe.image)
    pin = TarballPin("xen orig tarball", recipe.hypervisor.url, recipe.hypervisor.sha256, "boot.xen.url")
    tarball = fetch_tarball(pin, ctx.cache)
    return build_hypervisor(
        recipe.hypervisor, tarball, hypervisor_dir(ctx, recipe.hypervisor, tag), ctx.executor(), tag,
        Path(ctx.artifacts) / "logs" / STAGE, ctx.monitor(),
    )  # fmt: skip


def stage_dom0(recipe: BootRecipe, ctx: Any) -> Dom0Result:
    if ctx.executor_kind != "docker":
        raise HurdxenError(
            "boot:dom0 needs the docker executor (the dom0 files come from the boot-dom0 image)",
            hint="unset HURDXEN_EXECUTOR=host for the boot stage",
        )
    tag = ctx.image_tag(recipe.dom0_image)
    return build_dom0(
        recipe.dom0, dom0_dir(ctx, recipe.dom0, tag), ctx.executor(), tag, Path(ctx.artifacts) / "logs" / STAGE,
        ctx.monitor(),
    )  # fmt: skip


def stage_check(recipe: BootRecipe, ctx: Any, only: Sequence[str] = ()) -> BootReport:
    """Entry point of `doit boot`: hypervisor and dom0 (cached), every case, verdict table, manifest.

    Raises HurdxenError when a case fails (a known failure or an expected refusal is not a failure)."""
    cases = [resolve_case(ctx, c) for c in recipe.cases if not only or c.name in only]
    hv = stage_hypervisor(recipe, ctx)
    dom0 = stage_dom0(recipe, ctx) if any(c.kind != "dom0" for c in cases) else None
    out = Path(ctx.artifacts) / STAGE
    report = run_boot_checks(
        cases, hv, dom0, Path(ctx.artifacts) / "logs" / STAGE, out / ".work", ctx.source_date_epoch, ctx.monitor(),
        recipe.jobs,
    )  # fmt: skip
    print_report(report)
    summary = report.summary()
    for c, r in zip(cases, summary["cases"], strict=True):
        r["inputs"] = {
            role: {"path": str(p), "sha256": fsutil.sha256_file(p)}
            for role, p in (("kernel", c.kernel), ("ramdisk", c.ramdisk), ("pvgrub", c.pvgrub))
            if p is not None
        }
    fsutil.write_json_atomic(out / REPORT, summary)  # read by the bundle's boot gate
    failed = [r for r in report.results if not r.ok]
    if failed:
        first = failed[0]
        raise HurdxenError(
            f"boot: {len(failed)} of {len(report.results)} cases failed; {first.case.name}: {first.reason}",
            hint=f"serial logs in {first.log.parent}; verdicts in {out / REPORT}",
        )
    return report
