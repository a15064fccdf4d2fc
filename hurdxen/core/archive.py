"""The one deterministic ustar writer (pv-grub2 memdisks, release tarballs): entries in the caller's order, owner
0:0, the caller's owner name, modes and mtime, no pax or GNU headers. Same entries → same bytes."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str  # as stored (a directory may end in "/")
    data: bytes | None  # None: a directory
    mode: int


def ustar(entries: Iterable[Entry], mtime: int, owner: str = "", pad_record: bool = True) -> bytes:
    """The archive; `pad_record=False` ends it right after the two zero blocks (tarfile pads to a 10 KiB record,
    bytes a memdisk embedded in an image does not need)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.uid = info.gid = 0
            info.uname = info.gname = owner
            info.mtime = mtime
            info.mode = e.mode
            if e.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
        end = tar.offset
    data = buf.getvalue()
    return data if pad_record else data[: end + 2 * tarfile.BLOCKSIZE]
