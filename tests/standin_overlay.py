"""Stand-in boot modules in place of the real Hurd's, for the boot cases that boot hurd-i386 or hurd-amd64 (xen-pae,
xen-amd64, the standalone pv-grub2 images) on a machine without the from-source Hurd or debian-ports (the benchmark).

    python tests/standin_overlay.py DIR >> hurdxen.local.toml

builds them with the host gcc into DIR and prints the overlay tables that pin them as those variants' files:
hurd-i386's ext2fs.static is hurdxen/data/standins/terminate32.c, hurd-amd64's traps64.c, each ld.so the stand-in
ld.so (libc version `stand-in`, no glibc). The stand-in cases need no overlay: they boot the hurd-modules stage's
own stand-in variants (source = "standin", recipes/hurd-modules.toml). Stand-ins prove the kernel's paths (boot,
user mode, task teardown), not the Hurd's; a bundle made with this overlay ships them as hurd-i386's modules, so
it is for measuring only.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from elfstandins import ElfFactory

from hurdxen.stages.hurd_modules.elf import STANDIN_LIBC, variant_for

LIBC = STANDIN_LIBC  # the version in the stand-in ld.so's banner: no glibc's


def standin_modules(elves: ElfFactory) -> dict[str, dict[str, bytes]]:
    """hurd-modules variant -> module name -> its bytes."""
    return {
        "hurd-i386": {"ext2fs.static": elves.terminate32(), variant_for(32).ldso: elves.ldso_standin(32)},
        "hurd-amd64": {"ext2fs.static": elves.traps64(), variant_for(64).ldso: elves.ldso_standin(64)},
    }


def write_overlay(dest: Path) -> str:
    """Write the modules under `dest`; the overlay's [hurd-modules.variants.*.files] tables, as TOML (pinned files
    win over the variant's source, and need the libc version their ld.so says)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for variant, modules in standin_modules(ElfFactory(dest)).items():
        # opt_in = false: pinned files need no debian-ports, so `doit build` builds every variant again
        out += [f"[hurd-modules.variants.{variant}]", f'libc_version = "{LIBC}"', "opt_in = false", ""]
        for name, data in modules.items():
            path = dest / variant / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            out += [
                f'[hurd-modules.variants.{variant}.files."{name}"]',
                f'path = "{path.resolve()}"',
                f'sha256 = "{hashlib.sha256(data).hexdigest()}"',
                "",
            ]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/standin_overlay.py DIR >> hurdxen.local.toml")
    print(write_overlay(Path(sys.argv[1])))
