"""`hurdxen` command: tools users run on files outside a build (inspect a kernel, dump a ramdisk, check recipes).
The build itself is `doit`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from hurdxen.core.errors import HurdxenError

# subcommand -> (module, function, one-line help); each takes the remaining argv and returns an exit code.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "recipes": ("hurdxen.cli", "recipes_cli", "validate the recipes (and overlay) and print them"),
    "verify-release": (
        "hurdxen.release.verify",
        "verify_cli",
        "check a downloaded release bundle (directory or tarball)",
    ),
    "inspect-kernel": ("hurdxen.xen.verify", "cli", "decode a kernel's Xen notes and say what Xen would do with it"),
    "ramdisk": ("hurdxen.stages.hurd_modules.tools", "cli", "dump a hurd-modules ramdisk or check it against a Hurd"),
    "canary": ("hurdxen.canary", "cli", "build with floating inputs (GNU Mach master, newest packages); report drift"),
    "cache": ("hurdxen.cache.cli", "cli", "the shared stage cache (OCI registry): ls, verify, prune"),
    "pins": ("hurdxen.pins", "cli", "update: move the Debian pins to the newest signed versions, rewrite the lock"),
}


def recipes_cli(argv: list[str]) -> int:
    from hurdxen.pipeline import recipes

    p = argparse.ArgumentParser(prog="hurdxen recipes", description=SUBCOMMANDS["recipes"][2])
    p.add_argument("--root", type=Path, default=Path.cwd(), help="project directory (default: .)")
    p.add_argument("--reference", action="store_true", help="print the recipe reference (Markdown) from the schemas")
    args = p.parse_args(argv)
    if args.reference:
        print(recipes.reference(), end="")
        return 0
    r = recipes.load(args.root, overrides={})
    from hurdxen import tasks

    tasks.check_specs(r)  # the same checks doit makes before any task: one validator, one answer
    for shown in sorted(r.files.values()):
        print(f"{shown}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: hurdxen COMMAND [ARGS]\n\ncommands:")
        for name, (_, _, text) in sorted(SUBCOMMANDS.items()):
            print(f"  {name:16} {text}")
        print("\nThe build itself runs with `doit` (see `doit list`).")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown command {name!r} (hint: `hurdxen --help` lists them)", file=sys.stderr)
        return 2
    module, func, _ = SUBCOMMANDS[name]
    fn: Callable[[list[str]], int] = getattr(importlib.import_module(module), func)
    try:
        return fn(rest)
    except HurdxenError as e:
        print(e.render(), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
