"""Boot check images: the test hypervisor (Xen built from Debian's orig tarball with 32-bit PV support, optionally
a debug build) and the Linux dom0 (Debian's kernel plus a deterministic initramfs holding the Xen toolstack).

Both are cached by identity under the cache directory; `hurdxen.boot.run` boots them in QEMU.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.core.monitor import Monitor
from hurdxen.pipeline.executors import Executor, Mount, Step

DEFAULT_SOURCE_DATE_EPOCH = 1700000000

# ---------------------------------------------------------------------------------------------------------------
# The test hypervisor


XEN_CONFIG = (("CONFIG_EXPERT", "y"), ("CONFIG_PV32", "y"), ("CONFIG_VERBOSE_DEBUG", "y"))
# A debug hypervisor (`[xen] debug = true`): its gdprintk lines say why Xen refuses a guest's page-table operation
# (xen/arch/x86/mm.c), at the cost of a slower Xen. Built beside the default one (its own identity and directory).
XEN_DEBUG_CONFIG = (("CONFIG_DEBUG", "y"),)


@dataclass(frozen=True)
class HypervisorSpec:
    """Xen built from a pinned orig tarball with the options the Hurd needs (32-bit PV, guest console on serial)."""

    url: str
    sha256: str
    config: tuple[tuple[str, str], ...] = XEN_CONFIG
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH
    jobs: int = 2
    debug: bool = False

    @property
    def build_config(self) -> tuple[tuple[str, str], ...]:
        """The Kconfig settings applied on top of defconfig: the recipe's, plus the debug ones when asked for."""
        if not self.debug:
            return self.config
        keys = {k for k, _ in XEN_DEBUG_CONFIG}
        return tuple(kv for kv in self.config if kv[0] not in keys) + XEN_DEBUG_CONFIG

    def identity(self, image: str) -> str:
        d: dict[str, Any] = {"url": self.url, "sha256": self.sha256, "config": self.build_config}
        d["source_date_epoch"] = self.source_date_epoch
        return fsutil.identity("xen-hypervisor", d, image, _script_digest("build-xen.sh"))[:16]


@dataclass(frozen=True)
class HypervisorResult:
    xen: Path  # uncompressed ELF, for QEMU's -kernel
    config: Path  # the hypervisor's .config
    identity: str
    sha256: str
    seconds: float
    reused: bool
    debug: bool = False  # CONFIG_DEBUG=y

    def summary(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "debug": self.debug,
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
                return HypervisorResult(
                    out_dir / "xen", out_dir / "xen.config", ident, data["sha256"], 0.0, True, spec.debug
                )
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
                ("XEN_CONFIG", " ".join(f"{k}={v}" for k, v in spec.build_config)),
                ("SOURCE_DATE_EPOCH", str(spec.source_date_epoch)),
                ("JOBS", str(spec.jobs)),
            ),
        )
        executor.run(step, log_dir / "hypervisor.log", monitor)
        if not (tmp / "xen").is_file():
            raise HurdxenError("boot:hypervisor: the build left no xen/xen", hint=f"see {log_dir / 'hypervisor.log'}")
        digest = fsutil.sha256_file(tmp / "xen")
        fsutil.write_json_atomic(tmp / "hypervisor.json", {"identity": ident, "sha256": digest, "url": spec.url})
    return HypervisorResult(
        out_dir / "xen", out_dir / "xen.config", ident, digest, time.monotonic() - start, False, spec.debug
    )


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

DOM0_MODULES = ("xen-evtchn", "xen-privcmd", "xen-gntdev", "xen-gntalloc", "xenfs", "loop", "xen-blkback")
DOM0_PROGRAMS = (
    "/usr/lib/xen-4.17/bin/xl",
    "/usr/lib/xen-4.17/bin/xenconsoled",
    "/usr/lib/xen-4.17/bin/xen-init-dom0",
    "/usr/lib/xen-4.17/bin/xenstored",
    # for the block hotplug script (a disk case's image goes to the guest through a loop device)
    "/usr/bin/xenstore-read",
    "/usr/bin/xenstore-write",
)
BLOCK_SCRIPT = "/etc/xen/scripts/hurdxen-block"  # hurdxen/data/boot/hurdxen-block.sh in the dom0
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
            _script_digest("hurdxen-block.sh"),
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
        block = _script("hurdxen-block.sh").encode()
        entries.append(CpioEntry(BLOCK_SCRIPT.lstrip("/"), stat.S_IFREG | 0o755, block))
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
