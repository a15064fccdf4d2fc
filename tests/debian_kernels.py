"""Debian's prebuilt GNU Mach Xen kernels, pinned by package, version and sha256 and fetched like every Debian input
(hurdxen.sources.fetch: the suite's signed index, then snapshot.debian.org once the archive has dropped the version).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline.context import make_context
from hurdxen.pipeline.recipes import load
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import fetch as sources

MIRROR = "http://deb.debian.org/debian/"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DebianKernel:
    key: str
    url: str  # where the archive had it when it was pinned (package, version, arch and suite come from it)
    sha256: str  # of the .deb, from the suite's Packages index
    kernel: str  # path of the kernel inside the package
    suite: str = "bookworm"

    def pin(self) -> sources.DebPin:
        package, version, arch = Path(self.url).name.removesuffix(".deb").split("_")
        epoch = "2:" if package.startswith("gnumach") else ""
        table = {"package": package, "version": epoch + version, "arch": arch, "suite": self.suite}
        return sources.DebPin.from_recipe(
            {**table, "archive": MIRROR.rstrip("/"), "sha256": self.sha256}, f"tests.debian_kernels.{self.key}"
        )


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
        "sid",
    ),
    # trixie main/binary-amd64 Packages.
    "amd64": DebianKernel(
        "amd64",
        MIRROR + "pool/main/g/gnumach/gnumach-image-1.8-xen-amd64_1.8+git20250702-1_amd64.deb",
        "4dbb73555a559b94c7fe1368db1c53329c41ad40c726584f7f64aadc591471e5",
        "boot/gnumach-1.8-xen-amd64.gz",
        "trixie",
    ),
}


def fetch_kernel(key: str) -> Path:
    """The unpacked kernel for `key`, from the project's cache (network only when the cache lacks the .deb)."""
    k = KERNELS[key]
    shared = make_context(load(REPO, overrides={})).cache
    cache = sources.Cache(shared.root, shared.network)  # no lock: these are the tests' pins, not the project's
    try:
        tree = sources_deb.extract_deb(sources_deb.fetch_deb(k.pin(), cache), cache)
    except sources.Unreachable as e:
        pytest.skip(f"cannot fetch {k.url}: {e.message}")
    except HurdxenError as e:
        pytest.fail(e.render())  # a signature or hash mismatch is a real failure, never a skip
    return tree / k.kernel
