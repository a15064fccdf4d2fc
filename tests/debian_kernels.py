"""Debian's prebuilt GNU Mach Xen kernels, downloaded once by pinned URL + sha256 and unpacked with dpkg-deb.

Kept small on purpose: the project's sources module will replace this download code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from hurdxen.fsutil import atomic_dir, sha256_bytes, sha256_file, write_atomic

MIRROR = "http://deb.debian.org/debian/"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DebianKernel:
    key: str
    url: str
    sha256: str  # of the .deb, from the suite's Packages index
    kernel: str  # path of the kernel inside the package


KERNELS = {
    # bookworm main/binary-i386 Packages: the real 32-bit (PAE) kernel despite the -486 name.
    "i386-486": DebianKernel(
        "i386-486",
        MIRROR + "pool/main/g/gnumach/gnumach-image-1.8-xen-486_1.8+git20221224-2_i386.deb",
        "0d31a0bae1a8c99254150fc7b7bb061671e2ad5ab636d041ca01cda20a09ddc0",
        "boot/gnumach-1.8-xen-486.gz",
    ),
    # bookworm main/binary-amd64 Packages: same package name, but the ELF inside is x86-64.
    "amd64-486": DebianKernel(
        "amd64-486",
        MIRROR + "pool/main/g/gnumach/gnumach-image-1.8-xen-486_1.8+git20221224-2_amd64.deb",
        "078fbcb8e2b13f40a4226ec02fc0e544fc84d6d6a99174b5fe183d0f8d01739a",
        "boot/gnumach-1.8-xen-486.gz",
    ),
    # sid main/binary-i386 Packages: the first prebuilt 32-bit kernel that boots as a Xen 4.17 PV guest (bookworm's
    # 20221224 shuts itself down before any output, trixie's 20250702 spins silently). sid moves on: when this
    # version leaves the archive, update the pin from sid's (or a newer stable's) i386 index.
    "i386-486-sid": DebianKernel(
        "i386-486-sid",
        MIRROR + "pool/main/g/gnumach/gnumach-image-1.8-xen-486_1.8+git20261028-1_i386.deb",
        "6d485985651d4f141fad1617a12d3765b2a4b5f787a66e56a7a7016587494baf",
        "boot/gnumach-1.8-xen-486.gz",
    ),
    # trixie main/binary-amd64 Packages.
    "amd64": DebianKernel(
        "amd64",
        MIRROR + "pool/main/g/gnumach/gnumach-image-1.8-xen-amd64_1.8+git20250702-1_amd64.deb",
        "4dbb73555a559b94c7fe1368db1c53329c41ad40c726584f7f64aadc591471e5",
        "boot/gnumach-1.8-xen-amd64.gz",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("HURDXEN_CACHE") or REPO / "cache")


def fetch_kernel(key: str) -> Path:
    """The unpacked kernel for `key`; downloads and extracts only when the cache lacks it."""
    k = KERNELS[key]
    debs = cache_dir() / "debian-kernels"
    deb = debs / Path(k.url).name
    unpacked = debs / Path(k.url).name.removesuffix(".deb")
    kernel = unpacked / k.kernel
    if kernel.is_file():
        return kernel
    if deb.is_file() and sha256_file(deb) != k.sha256:
        deb.unlink()  # a stale or damaged cache entry: fetch it again
    if not deb.is_file():
        try:
            with urllib.request.urlopen(k.url, timeout=60) as r:
                data = r.read()
        except (urllib.error.URLError, TimeoutError) as e:
            pytest.skip(f"cannot download {k.url}: {e}")
        got = sha256_bytes(data)
        # A mismatch is a real failure (mirror or pin is wrong), never a skip.
        assert got == k.sha256, f"{k.url}: sha256 {got}, pinned {k.sha256}"
        write_atomic(deb, data)
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    with atomic_dir(unpacked) as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    return kernel
