"""Inputs for the boot tests: Debian's prebuilt gnumach-xen kernels and a hurd-modules ramdisk of stand-in modules."""

from __future__ import annotations

import gzip
import hashlib
import struct
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ARCHIVE = "http://deb.debian.org/debian"
XEN_TARBALL_URL = ARCHIVE + "/pool/main/x/xen/xen_4.17.5+72-g01140da4e8.orig.tar.xz"
XEN_TARBALL_SHA256 = "53922f4d0a02c577f2ea9d63f65989cd88715779eebeed879ca1d314103ee06e"

EXT2FS_CMDLINE = (
    "ext2fs --multiboot-command-line=${kernel-command-line} --host-priv-port=${host-port} "
    "--device-master-port=${device-port} --exec-server-task=${exec-task} -T typed ${root} "
    "$(task-create) $(task-resume)"
)
EXEC_CMDLINE = "exec /hurd/exec $(exec-task=task-create)"


@dataclass(frozen=True)
class DebFile:
    package: str
    version: str
    arch: str
    suite: str
    filename: str  # pool path, from the suite's Packages index for that architecture
    sha256: str
    member: str  # the file wanted from the package


# The i386 index's package: bookworm's amd64 index has a same-named package that is really x86-64.
GNUMACH_486 = DebFile(
    "gnumach-image-1.8-xen-486", "2:1.8+git20221224-2", "i386", "bookworm",
    "pool/main/g/gnumach/gnumach-image-1.8-xen-486_1.8+git20221224-2_i386.deb",
    "0d31a0bae1a8c99254150fc7b7bb061671e2ad5ab636d041ca01cda20a09ddc0", "boot/gnumach-1.8-xen-486.gz",
)  # fmt: skip
GNUMACH_AMD64 = DebFile(
    "gnumach-image-1.8-xen-amd64", "2:1.8+git20250702-1", "amd64", "trixie",
    "pool/main/g/gnumach/gnumach-image-1.8-xen-amd64_1.8+git20250702-1_amd64.deb",
    "4dbb73555a559b94c7fe1368db1c53329c41ad40c726584f7f64aadc591471e5", "boot/gnumach-1.8-xen-amd64.gz",
)  # fmt: skip


def download(url: str, sha256: str, dest: Path) -> Path:
    """Fetch `url` into `dest` unless a file with that sha256 is already there."""
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(".tmp-" + dest.name)
    urllib.request.urlretrieve(url, tmp)
    got = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if got != sha256:
        tmp.unlink()
        raise RuntimeError(f"{url}: sha256 {got}, expected {sha256}")
    tmp.rename(dest)
    return dest


def kernel_from_deb(deb: DebFile, cache: Path) -> Path:
    """The uncompressed kernel ELF from a pinned Debian package."""
    out = cache / "boot-test" / f"{deb.package}_{deb.version.split(':')[-1]}_{deb.arch}"
    if out.is_file():
        return out
    path = download(f"{ARCHIVE}/{deb.filename}", deb.sha256, cache / "debs" / Path(deb.filename).name)
    tmp = out.with_name(".tmp-x-" + out.name)
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    tmp.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(path), str(tmp)], check=True)
    out.write_bytes(gzip.decompress((tmp / deb.member).read_bytes()))
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    return out


def without_pae(kernel: bytes) -> bytes:
    """The same kernel announcing a non-PAE guest (`PAE=no` in `__xen_guest`): what a non-PAE build looks like to
    the Xen toolstack, which must refuse it on a PAE hypervisor."""
    old = b"PAE=yes[extended-cr3],LOADER=generic,FEATURES=pae_pgdir_above_4gb"
    new = b"PAE=no,LOADER=generic"
    assert kernel.count(old) == 1, "no __xen_guest PAE entry to patch"
    return kernel.replace(old, new + b"\0" * (len(old) - len(new)))


def hurd_modules(modules: list[tuple[str, bytes]]) -> bytes:
    """The Xen boot ramdisk layout GNU Mach reads: {mod_start, mod_end, cmdline, reserved} u32 LE records from
    offset 0, ended by a zero record, then the NUL-terminated cmdlines, then the page-aligned modules."""
    head = 16 * (len(modules) + 1)
    cmdlines = b""
    cmd_off = []
    for cmd, _ in modules:
        cmd_off.append(head + len(cmdlines))
        cmdlines += cmd.encode() + b"\0"
    pos = (head + len(cmdlines) + 4095) & ~4095
    records, body = b"", bytearray(head + len(cmdlines))
    body[head:] = cmdlines
    for (_, data), coff in zip(modules, cmd_off, strict=True):
        body += b"\0" * (pos - len(body))
        records += struct.pack("<IIII", pos, pos + len(data), coff, 0)
        body += data
        pos = (len(body) + 4095) & ~4095
    records += struct.pack("<IIII", 0, 0, 0, 0)
    body[:head] = records
    return bytes(body)
