"""`hurdxen ramdisk`: dump a hurd-modules ramdisk, or check its ld.so against an installed Hurd (a root tree or an
ext2 image, read with debugfs). Everything printed from the file is escaped."""

from __future__ import annotations

import argparse
import contextlib
import os
import posixpath
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from hurdxen.core.errors import HurdxenError, printable
from hurdxen.core.fsutil import TMP_PREFIX, sha256_bytes
from hurdxen.stages.hurd_modules.elf import ElfInfo, inspect_elf, ldso_version, variant_for
from hurdxen.stages.hurd_modules.format import Record, parse_ramdisk
from hurdxen.stages.hurd_modules.ramdisk import MAX_SYMLINK_HOPS, resolve_in_root


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise HurdxenError(f"cannot read {path}: {e.strerror}", hint="check the path and its permissions") from None


def dump(path: Path) -> str:
    """A human-readable listing of a ramdisk; raises HurdxenError on a malformed one."""
    data = _read_file(path)
    rd = parse_ramdisk(data, str(path))
    out = [f"{path}: {rd.size} bytes, sha256 {sha256_bytes(data)}, {len(rd.records)} modules"]
    for r in rd.records:
        m = r.module
        out.append(
            f"  [{r.index}] {m.name}: offset {r.mod_start}..{r.mod_end} ({r.size} bytes), sha256 {sha256_bytes(m.data)}"
        )
        out.append(f"      cmdline @{r.cmdline_offset}: {m.cmdline}")
        try:
            info = inspect_elf(m.data, f"module {r.index}")
            out.append(f"      {info.summary()}")
            if info.ldso_version:
                out.append(f"      ld.so glibc version: {info.ldso_version}")
        except HurdxenError as e:
            out.append(f"      {e.message}")
    out.extend(f"  warning: {w}" for w in rd.warnings)
    # command lines and names come from the file: escape controls so none can rewrite the terminal or forge lines
    return "\n".join(printable(line, 8192) for line in out) + "\n"


def _ramdisk_ldso(data: bytes, where: str) -> tuple[Record, ElfInfo]:
    rd = parse_ramdisk(data, where)
    for r in rd.records:
        with contextlib.suppress(HurdxenError):
            info = inspect_elf(r.module.data, f"{where} module {r.index}")
            if info.ldso_version is not None and info.elf_type == "ET_DYN":
                return r, info
    raise HurdxenError(f"{where} holds no ld.so (no module carries a 'Debian GLIBC' banner)")


def _debugfs(image: Path, request: str) -> tuple[str, str]:
    env = dict(os.environ, DEBUGFS_PAGER="__none__", PAGER="__none__")
    try:
        p = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:
        raise HurdxenError("debugfs not found", hint="install e2fsprogs") from None
    # debugfs exits 0 even when the lookup fails: its stderr says what went wrong.
    errors = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if p.returncode != 0 or errors:
        raise HurdxenError(
            f"debugfs {request!r} on {image}: {'; '.join(errors) or f'exit {p.returncode}'}",
            hint="give an ext2/3/4 image (not partitioned) of a Hurd root with libc0.3 installed",
        )
    return p.stdout, p.stderr


def read_from_image(image: Path, path: str) -> bytes:
    """A file from an ext2/3/4 image via debugfs, following symlinks at the image's root."""
    if '"' in path or "\n" in path:
        raise HurdxenError(f"cannot look up {path!r} with debugfs (quote or newline in the path)")
    cur = "/" + posixpath.normpath(path).lstrip("/")
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX + "debugfs-") as tmp:
        out = Path(tmp) / "out"
        for _ in range(MAX_SYMLINK_HOPS):
            st, _ = _debugfs(image, f'stat "{cur}"')
            kind = re.search(r"Type: (\S+)", st)
            size = re.search(r"\bSize: (\d+)", st)
            if kind is None or size is None:
                raise HurdxenError(
                    f"cannot read the inode of {cur} in {image} (unexpected debugfs output)",
                    hint="check that debugfs (e2fsprogs) works on this image",
                )
            if kind.group(1) == "symlink":
                fast = re.search(r'Fast link dest: "(.*)"', st)
                if fast:
                    target = fast.group(1)
                else:
                    # A long target lives in a data block, which `dump` reads like a file.
                    _debugfs(image, f'dump "{cur}" "{out}"')
                    target = out.read_bytes().decode(errors="surrogateescape")
                cur = posixpath.normpath(posixpath.join(posixpath.dirname(cur), target))
                continue
            if kind.group(1) != "regular":
                raise HurdxenError(
                    f"{cur} in {image} is a {kind.group(1)}, not a regular file", hint="is libc0.3 installed?"
                )
            _debugfs(image, f'dump "{cur}" "{out}"')
            data = out.read_bytes()
            if len(data) != int(size.group(1)):
                raise HurdxenError(
                    f"debugfs read {len(data)} of {size.group(1)} bytes of {cur} from {image}",
                    hint="the image may be damaged; run e2fsck -n on it",
                )
            return data
    raise HurdxenError(f"{path} in {image}: too many levels of symbolic links", hint="fix the symlink loop")


def check_against(ramdisk_path: Path, root_or_image: Path) -> str:
    """Compare the ramdisk's ld.so with the installed one of a Hurd tree or ext2 image; raise on a mismatch."""
    where = str(ramdisk_path)
    rec, info = _ramdisk_ldso(_read_file(ramdisk_path), where)
    variant = variant_for(info.bits)
    rel = f"lib/{variant.ldso}"
    if root_or_image.is_dir():
        installed = resolve_in_root(root_or_image, rel)
        if not installed.is_file():
            raise HurdxenError(f"/{rel} in {root_or_image} is not a regular file", hint="is libc0.3 installed there?")
        theirs = installed.read_bytes()
    elif root_or_image.is_file():
        theirs = read_from_image(root_or_image, "/" + rel)
    else:
        raise HurdxenError(f"{root_or_image} does not exist", hint="give a Hurd root directory or an ext2 disk image")
    their_version = ldso_version(theirs, f"/{rel} of {root_or_image}")
    ours_sha, theirs_sha = sha256_bytes(rec.module.data), sha256_bytes(theirs)
    if their_version != info.ldso_version:
        raise HurdxenError(
            f"ramdisk ld.so is glibc {info.ldso_version} but /{rel} in {root_or_image} is glibc "
            f"{their_version or '(no banner)'}",
            hint="rebuild the ramdisk with the system's libc0.3 version, or upgrade the system's libc0.3",
        )
    if ours_sha != theirs_sha:
        raise HurdxenError(
            f"ramdisk ld.so and /{rel} in {root_or_image} are both glibc {info.ldso_version} but differ "
            f"(sha256 {ours_sha[:16]}… vs {theirs_sha[:16]}…)",
            hint="a rebuild of the same version? take both from the same libc0.3 package",
        )
    return f"ok: ramdisk ld.so (record {rec.index}, glibc {info.ldso_version}) matches /{rel} in {root_or_image}\n"


def cli(argv: list[str]) -> int:
    """`dump FILE` | `check FILE --against ROOT_OR_IMAGE`."""
    ap = argparse.ArgumentParser(prog="hurdxen ramdisk", description="Inspect hurd-modules ramdisks.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="list records, command lines, sizes, hashes")
    d.add_argument("file", type=Path)
    c = sub.add_parser("check", help="compare the ramdisk's ld.so with an installed Hurd's")
    c.add_argument("file", type=Path)
    c.add_argument("--against", type=Path, required=True, metavar="ROOT_OR_IMAGE")
    args = ap.parse_args(argv)
    actions: dict[str, Callable[[], str]] = {
        "dump": lambda: dump(args.file),
        "check": lambda: check_against(args.file, args.against),
    }
    try:
        sys.stdout.write(actions[args.cmd]())
    except HurdxenError as e:
        print(e.render(), file=sys.stderr)
        return 1
    return 0
