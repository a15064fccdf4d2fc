"""What the rootdisk step is given, checked on the host before it runs: the installed root's tarball (every member
safe, as safeextract checks any archive from outside: no absolute or `..` name, no link leading out of the tree, so
nothing the step unpacks or writes through a link lands outside the disk's tree), the places the recipe writes into
it (kernel, GRUB menu, files, translator nodes: not below a file or a link, not onto a directory) and whether it
all fits in the filesystem's size. Each refusal is one line naming the disk and what to change.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hurdxen.core import safeextract
from hurdxen.core.errors import HurdxenError, printable
from hurdxen.pipeline import manifest
from hurdxen.pipeline.context import Context
from hurdxen.stages.toolchain.chain import TREE, TreeSpec

MIB = 1 << 20
UNQUOTABLE = re.compile(r'["\\\x00-\x1f\x7f]')
INODE_RATIO = 4096  # mke2fs.conf's "small" type (3 to 512 MiB): one inode per 4 KiB
SLACK = 1 * MIB  # superblock copies, group descriptors, bitmaps, reserved GDT blocks


def written_paths(options: Mapping[str, str]) -> list[str]:
    """The disk paths the step writes over the tree (all absolute; the schema allows no `.` or `..` in them)."""
    lines = [*options["FILES"].splitlines(), *options["TRANSLATORS"].splitlines()]
    return [options["KERNEL_PATH"], options["GRUB_CONFIG"], *(ln.split()[0] for ln in lines if ln.strip())]


def members(spec: TreeSpec, ctx: Context) -> list[tarfile.TarInfo]:
    """The members of every layer's tree (the step unpacks them with GNU tar), each checked; a stale or missing
    producer is left to chain.build, which names it."""
    out: list[tarfile.TarInfo] = []
    for la in spec.layers:
        m = manifest.read_task(ctx.artifacts, la.producer.task)
        if m.identity != la.producer.identity(ctx):
            continue
        tree = m.output(TREE)
        out += safeextract.check(tree, f"{spec.task}: {la.producer.task}'s {TREE} output {tree}")
    return out


def placement(spec: TreeSpec, kinds: Mapping[str, str], paths: Iterable[str]) -> None:
    for path in paths:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            above = "/".join(parts[:i])
            if kinds.get(above, "dir") != "dir":
                raise HurdxenError(
                    f"{spec.task}: the recipe writes {printable(path)} but the tree's /{printable(above)} is a "
                    f"{kinds[above]}",
                    hint="change the path in recipes/rootdisk.toml or the tree its producer installs",
                )
        if kinds.get("/".join(parts)) in ("dir", "symlink"):
            raise HurdxenError(
                f"{spec.task}: the recipe writes {printable(path)} over a {kinds['/'.join(parts)]} of the tree",
                hint="change the path in recipes/rootdisk.toml or the tree its producer installs",
            )


def fits(spec: TreeSpec, ctx: Context, tree: list[tarfile.TarInfo], options: Mapping[str, str]) -> None:
    """A lower bound of what the filesystem needs (data blocks, indirect blocks, inode tables): a tree that cannot fit
    is refused here in one line, not by mke2fs deep in the step (which still catches a near miss)."""
    block = int(options["BLOCK_SIZE"])
    size = int(options["SIZE_MIB"]) * MIB
    sizes = [m.size if m.isreg() and not m.islnk() else block if m.isdir() else 0 for m in tree]
    sizes += [_upstream_size(f, ctx) for f in spec.upstream_files]
    sizes += [len(v.encode()) for k, v in options.items() if k.startswith("ROOTDISK_FILE_") or k == "GRUB_MENU"]
    per_block = block // 4
    data = sum(-(-s // block) + (max(0, -(-s // block) - 12) + per_block - 1) // per_block for s in sizes) * block
    need = data + size // INODE_RATIO * int(options["INODE_SIZE"]) + SLACK
    inodes = len(tree) + len(written_paths(options)) + 11
    if need > size or inodes > size // INODE_RATIO:
        raise HurdxenError(
            f"{spec.task}: the tree needs at least {-(-need // MIB)} MiB and {inodes} inodes, more than a "
            f"{size // MIB} MiB filesystem holds ({size // INODE_RATIO} inodes)",
            hint=f"raise disks.{spec.name}.size_mib in recipes/rootdisk.toml",
        )


def _upstream_size(f: Any, ctx: Context) -> int:
    path: Path = manifest.read_task(ctx.artifacts, f.producer.task).output(f.output, verify=False)
    return path.stat().st_size


def names(spec: TreeSpec, tree: list[tarfile.TarInfo]) -> None:
    """The step quotes each name in debugfs's command file ("…"): a quote, backslash or control character in a name
    would end the word or the line and let the tree add commands of its own."""
    for m in tree:
        if UNQUOTABLE.search(m.name):
            raise HurdxenError(
                f"{spec.task}: the tree holds {printable(m.name)!r}, "
                "a name with a quote, backslash or control character",
                hint="the Hurd's root needs no such name; rename it in the stage that installs it",
            )


def before_step(spec: TreeSpec, ctx: Context) -> None:
    tree = members(spec, ctx)
    if not tree:
        return
    names(spec, tree)
    options = dict(spec.options)
    kinds = {m.name: "dir" if m.isdir() else "symlink" if m.issym() else "file" for m in tree}
    placement(spec, kinds, written_paths(options))
    fits(spec, ctx, tree, options)
