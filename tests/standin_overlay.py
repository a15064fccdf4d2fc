"""Stand-in boot modules for `doit boot` on the default recipes where the Hurd's packages cannot be fetched.

    python tests/standin_overlay.py DIR >> hurdxen.local.toml

builds them with the host gcc into DIR and prints the overlay tables that pin them as the hurd-modules files:
hurd-i386's ext2fs.static is the module that terminates a child task and then itself (tests/standins/terminate32.c),
whose lines recipes/boot.toml's `xen-pae-standin-task-terminate` case expects (the other 32-bit cases only need it
to load); hurd-amd64's makes Mach traps with `syscall` (tests/standins/traps64.c), whose lines the
`xen-amd64-standin-traps` case expects. Stand-ins prove the kernel's paths (boot, user mode, task teardown), not
the Hurd's.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from elfstandins import ElfFactory

from hurdxen.stages.hurd_modules.elf import variant_for

LIBC = "2.41-6"  # the version in the stand-in ld.so's banner


def standin_modules(elves: ElfFactory) -> dict[str, dict[str, bytes]]:
    """hurd-modules variant -> module name -> its bytes."""
    return {
        "hurd-i386": {"ext2fs.static": elves.terminate32(), variant_for(32).ldso: elves.ldso(32, LIBC)},
        "hurd-amd64": {"ext2fs.static": elves.traps64(), variant_for(64).ldso: elves.ldso(64, LIBC)},
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
