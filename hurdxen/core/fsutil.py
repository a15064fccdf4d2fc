"""Atomic file and directory writes, so an interrupted stage never leaves a partial artefact visible."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hurdxen.core.errors import HurdxenError

TMP_PREFIX = ".tmp-"


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC or EDQUOT, however deep it was raised."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def disk_full(what: str, where: Path | str) -> HurdxenError:
    where = Path(where)
    return HurdxenError(
        f"{what}: no space left on the disk holding {where} (nothing partial was kept)",
        hint=f"free some space there (`df -h {where}`), or point HURDXEN_CACHE / HURDXEN_ARTIFACTS at a larger disk",
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_NESTING = re.compile(rb"[\[\]{}]")


def loads_json_bounded(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from outside (a lock, a server's answer): ValueError when it is not JSON or nests deeper than
    `max_depth` (Python's parser recurses: 100,000 `[` ended in RecursionError)."""
    depth = 0
    for m in _JSON_NESTING.finditer(_JSON_STRING.sub(b'""', data)):
        depth += 1 if m.group() in b"[{" else -1
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
    return json.loads(data)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def identity(*parts: Any) -> str:
    """A stable hash of JSON-able parts: a stage's identity from its inputs, options and image."""
    return hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `final`; on success it replaces `final` in one rename.

    On failure (or SIGKILL) only a `.tmp-*` directory is left, which `sweep_tmp` removes later;
    the previous `final` stays as it was until the new one is complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, final: Path) -> None:
    """Put directory `new` at `final`. The old one is moved aside first, then removed."""
    old: Path | None = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}.{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(new, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sweep_tmp(root: Path) -> None:
    """Remove leftovers of interrupted atomic writes below `root`."""
    if not root.exists():
        return
    for p in root.rglob(TMP_PREFIX + "*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


@contextlib.contextmanager
def scratch_dir(parent: Path, name: str) -> Iterator[Path]:
    """A working directory for one step, removed afterwards whatever happens."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + name.replace(":", "-") + ".", dir=parent))
    # Steps run as another user and may mount this read-only: mkdtemp's 0700 would lock them out.
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
