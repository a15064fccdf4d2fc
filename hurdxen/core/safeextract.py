"""The one way hurdxen unpacks archives from outside: source tarballs, git exports, .deb data, release bundles.

Every member is checked before anything is written: only regular files, directories, symlinks whose target stays
inside the tree and hardlinks to an earlier regular member; no absolute or `..` names, no path through a symlink,
no duplicate; limits on the total size, the member count and the expansion ratio, and on any single read (a pax
header claiming gigabytes). Then tarfile's `data` filter extracts, as a second line of defence (Python 3.11.7's
filter alone lets some link tricks through). Every refusal is one `HurdxenError` naming the archive and the member.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from hurdxen.core.errors import HurdxenError, printable

MAX_SYMLINK_HOPS = 40  # Linux's MAXSYMLINKS
MAX_NAME = 4096  # PATH_MAX
MAX_COMPONENT = 255  # NAME_MAX
MAX_SINGLE_READ = 64 << 20  # tarfile reads pax/GNU long-name headers whole: cap what one header may claim
HINT = "do not use this archive; fetch it again from a trusted source, or check the pin"

AbsoluteLinks = Literal["refuse", "in-tree"]  # "in-tree": a .deb's /x link means <tree>/x, rewritten relative


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 4 << 30  # total of the members' sizes
    max_members: int = 200_000
    max_ratio: int = 200  # unpacked size / archive size, checked once past `ratio_floor`
    ratio_floor: int = 64 << 20


DEFAULT = Limits()


class _Reader:
    """A read-only stream that refuses one oversized read and counts what was decompressed."""

    def __init__(self, f: IO[bytes], where: str) -> None:
        self.f = f
        self.where = where

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > MAX_SINGLE_READ:
            raise HurdxenError(f"{self.where}: a header claims {n} bytes", hint=HINT)
        return self.f.read(n)

    def seek(self, off: int, whence: int = 0) -> int:
        return self.f.seek(off, whence)

    def tell(self) -> int:
        return self.f.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def _decompressor(raw: IO[bytes], where: str) -> IO[bytes]:
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw)
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        raise HurdxenError(f"{where}: zstd-compressed tar is not read here", hint="use a gzip or xz archive")
    return raw


def _parts(name: str) -> list[str] | None:
    """The path's components without `.`/empty ones; None when absolute."""
    if name.startswith("/"):
        return None
    return [p for p in name.split("/") if p not in ("", ".")]


@dataclass
class _Entry:
    kind: Literal["dir", "file", "link"]
    target: str = ""


def _refuse(where: str, name: str, why: str) -> HurdxenError:
    return HurdxenError(f"{where}: unsafe member {printable(name)!r}: it {why}", hint=HINT)


def _resolve_link(where: str, name: str, parts: list[str], target: str, tree: dict[str, _Entry]) -> None:
    """Follow `target` from the link's directory through the archive's own links; refuse any step above the root."""
    absolute = target.startswith("/")
    stack = [] if absolute else parts[:-1]
    todo = [p for p in target.split("/") if p not in ("", ".")]
    hops = 0
    while todo:
        comp = todo.pop(0)
        if comp == "..":
            if not stack:
                raise _refuse(where, name, f"is a symlink to {printable(target)!r}, outside the tree")
            stack.pop()
            continue
        stack.append(comp)
        entry = tree.get("/".join(stack))
        if entry is not None and entry.kind == "link":
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise _refuse(where, name, "is a symlink loop")
            stack.pop()
            if entry.target.startswith("/"):
                stack = []
            todo = [p for p in entry.target.split("/") if p not in ("", ".")] + todo


def _rebase(parts: list[str], target: str) -> str:
    """An absolute link target as the same place relative to the link (the tree standing for `/`)."""
    up = [".."] * (len(parts) - 1)
    return "/".join(up + [p for p in target.split("/") if p not in ("", ".")]) or "."


def check_members(
    tar: tarfile.TarFile,
    where: str,
    limits: Limits,
    packed: int,
    strip_single_top: bool = False,
    absolute_links: AbsoluteLinks = "refuse",
) -> list[tarfile.TarInfo]:
    """Read every header and check the whole archive; return the members to extract, names normalised."""
    raw: list[tuple[tarfile.TarInfo, list[str]]] = []
    total = 0
    for m in tar:
        if len(raw) >= limits.max_members:
            raise HurdxenError(f"{where}: more than {limits.max_members} members", hint=HINT)
        total += max(m.size, 0) if m.isreg() else 0
        if total > limits.max_bytes or (total > limits.ratio_floor and total > limits.max_ratio * max(packed, 1)):
            raise _refuse(where, m.name, f"takes the unpacked size past {total >> 20} MiB (archive {packed >> 10} KiB)")
        if len(m.name) > MAX_NAME or len(m.linkname) > MAX_NAME:
            raise _refuse(where, m.name[:200], "has a name longer than PATH_MAX")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()) or m.type == tarfile.CONTTYPE:
            raise _refuse(where, m.name, f"is of type {_type_name(m)} (only files, directories and links are allowed)")
        parts = _parts(m.name)
        if parts is None:
            raise _refuse(where, m.name, "has an absolute name")
        if ".." in parts:
            raise _refuse(where, m.name, "has a `..` component")
        if any(len(p.encode(errors="surrogateescape")) > MAX_COMPONENT for p in parts):
            raise _refuse(where, m.name, "has a component longer than NAME_MAX")
        raw.append((m, parts))
    tops = {p[0] for _, p in raw if p}
    strip = strip_single_top and len(tops) == 1
    tree: dict[str, _Entry] = {}
    regular: set[str] = set()
    out: list[tarfile.TarInfo] = []
    for m, parts in raw:
        if strip:
            parts = parts[1:]
        key = "/".join(parts)
        if not parts:
            if not m.isdir():
                raise _refuse(where, m.name, "is the tree's root but not a directory")
            continue
        if key in tree and not (m.isdir() and tree[key].kind == "dir"):
            raise _refuse(where, m.name, "appears twice")
        upd: dict[str, object] = {"name": key, "deep": False}
        if m.issym():
            target = m.linkname
            if target.startswith("/"):
                if absolute_links == "refuse":
                    raise _refuse(where, m.name, f"is a symlink to the absolute path {printable(target)!r}")
                target = _rebase(parts, target)
                upd["linkname"] = target
            tree[key] = _Entry("link", target)
        elif m.islnk():
            lparts = _parts(m.linkname)
            lkey = "/".join(lparts[1:] if strip and lparts else lparts or [])
            if lparts is None or ".." in lparts or lkey not in regular:
                raise _refuse(
                    where, m.name, f"is a hardlink to {printable(m.linkname)!r}, not an earlier file of the archive"
                )
            upd["linkname"] = lkey
            tree[key] = _Entry("file")
            regular.add(key)
        else:
            tree[key] = _Entry("dir" if m.isdir() else "file")
            if m.isreg():
                regular.add(key)
        out.append(m.replace(**upd))  # type: ignore[arg-type]
    for key in tree:  # no member is written through a symlink or below a file
        parts = key.split("/")
        for i in range(1, len(parts)):
            above = tree.get("/".join(parts[:i]))
            if above is not None and above.kind != "dir":
                what = "a symlink" if above.kind == "link" else "a file"
                raise _refuse(where, key, f"lies below {printable('/'.join(parts[:i]))!r}, which is {what}")
    for key, entry in tree.items():
        if entry.kind == "link":
            _resolve_link(where, key, key.split("/"), entry.target, tree)
    return out


def _type_name(m: tarfile.TarInfo) -> str:
    names = {
        tarfile.CHRTYPE: "character device",
        tarfile.BLKTYPE: "block device",
        tarfile.FIFOTYPE: "FIFO",
        tarfile.CONTTYPE: "contiguous file",
    }
    return names.get(m.type, f"{m.type!r}")


@contextmanager
def _open_tar(f: IO[bytes], where: str) -> Iterator[tarfile.TarFile]:
    with _errors(where), tarfile.open(fileobj=_Reader(_decompressor(f, where), where), mode="r:") as tar:  # type: ignore[call-overload]
        yield tar


@contextmanager
def _errors(where: str) -> Iterator[None]:
    try:
        yield
    except HurdxenError:
        raise
    except tarfile.FilterError as e:  # the second line of defence caught what the checks did not
        raise HurdxenError(f"{where}: unsafe member refused ({printable(str(e))})", hint=HINT) from None
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as e:
        raise HurdxenError(f"{where}: not a readable archive ({printable(str(e))})", hint=HINT) from None


def check(
    archive: Path, where: str | None = None, limits: Limits = DEFAULT, strip_single_top: bool = False
) -> list[tarfile.TarInfo]:
    """Check an archive that another tool will unpack (e.g. GNU tar inside a build step); return its members (names
    normalised), for a caller that checks more (what a step will write into the unpacked tree)."""
    label = where or archive.name
    with _errors(label), open(archive, "rb") as f, _open_tar(f, label) as tar:
        return check_members(tar, label, limits, archive.stat().st_size, strip_single_top)


def extract_stream(
    f: IO[bytes],
    packed: int,
    dest: Path,
    where: str,
    limits: Limits = DEFAULT,
    strip_single_top: bool = False,
    absolute_links: AbsoluteLinks = "refuse",
) -> list[str]:
    """Check, then extract, a (possibly compressed) tar stream into `dest`; return the extracted names."""
    with _open_tar(f, where) as tar:
        members = check_members(tar, where, limits, packed, strip_single_top, absolute_links)
        dest.mkdir(parents=True, exist_ok=True)
        with _errors(where):
            tar.extractall(dest, members=members, filter="data")
    return [m.name for m in members]


def extract(
    archive: Path,
    dest: Path,
    where: str | None = None,
    limits: Limits = DEFAULT,
    strip_single_top: bool = False,
    absolute_links: AbsoluteLinks = "refuse",
) -> list[str]:
    label = where or archive.name
    with _errors(label), open(archive, "rb") as f:
        return extract_stream(f, archive.stat().st_size, dest, label, limits, strip_single_top, absolute_links)


# ---------------------------------------------------------------------------------------------- .deb (ar) archives

AR_MAGIC = b"!<arch>\n"


class _Window:
    """Bytes [start, start+size) of a file as a seekable stream."""

    def __init__(self, f: IO[bytes], start: int, size: int) -> None:
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def seek(self, off: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + off))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def ar_members(f: IO[bytes], size: int, where: str) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of each member of an ar archive; every header is checked against the file size."""
    f.seek(0)
    if f.read(8) != AR_MAGIC:
        raise HurdxenError(f"{where}: not a Debian package (no ar header)", hint=HINT)
    out: dict[str, tuple[int, int]] = {}
    off = 8
    while off + 60 <= size and len(out) < 64:
        f.seek(off)
        hdr = f.read(60)
        if hdr[58:60] != b"`\n":
            raise HurdxenError(f"{where}: corrupt ar header at offset {off}", hint=HINT)
        name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            msize = int(hdr[48:58].decode("ascii").strip())
        except ValueError:
            raise HurdxenError(f"{where}: corrupt ar member size at offset {off}", hint=HINT) from None
        if msize < 0 or off + 60 + msize > size:
            raise HurdxenError(f"{where}: ar member {printable(name)!r} runs past the end of the file", hint=HINT)
        out.setdefault(name, (off + 60, msize))
        off += 60 + msize + (msize & 1)
    return out


def extract_deb(deb: Path, dest: Path, where: str | None = None, limits: Limits = DEFAULT) -> list[str]:
    """The data.tar.* of a .deb into `dest`, like `dpkg-deb -x`, but checked first (absolute links made in-tree)."""
    label = where or deb.name
    size = deb.stat().st_size
    with _errors(label), open(deb, "rb") as f:
        members = ar_members(f, size, label)
        if not members.get("debian-binary"):
            raise HurdxenError(f"{label}: not a Debian package (no debian-binary member)", hint=HINT)
        data = [n for n in members if n.startswith("data.tar")]
        if len(data) != 1:
            raise HurdxenError(f"{label}: expected one data.tar member, found {len(data)}", hint=HINT)
        off, msize = members[data[0]]
        window = _Window(f, off, msize)
        if data[0].endswith(".zst"):
            with _zstd_to_tempfile(window, label, limits) as plain:
                return extract_stream(plain, msize, dest, f"{label} {data[0]}", limits, absolute_links="in-tree")
        return extract_stream(window, msize, dest, f"{label} {data[0]}", limits, absolute_links="in-tree")  # type: ignore[arg-type]


MAX_CONTROL = 16 << 20  # a .deb's control.tar unpacked (dpkg's own are a few KB)


def deb_control(deb: Path, where: str | None = None) -> dict[str, str]:
    """The fields of a .deb's `control` file (Package, Version, Architecture…), read within bounds: what a package
    says it is, whatever the name of the file or the hash it is cached under."""
    from debian import deb822

    label = where or deb.name
    limits = Limits(max_bytes=MAX_CONTROL, max_members=1000)
    with _errors(label), open(deb, "rb") as f:
        members = ar_members(f, deb.stat().st_size, label)
        names = [n for n in members if n.startswith("control.tar")]
        if not members.get("debian-binary") or len(names) != 1:
            raise HurdxenError(f"{label}: not a Debian package (no single control.tar member)", hint=HINT)
        window = _Window(f, *members[names[0]])
        if names[0].endswith(".zst"):
            with _zstd_to_tempfile(window, label, limits) as plain:
                data = plain.read(MAX_CONTROL + 1)
        else:
            data = _decompressor(window, label).read(MAX_CONTROL + 1)  # type: ignore[arg-type]
        if len(data) > MAX_CONTROL:
            raise HurdxenError(f"{label}: {names[0]} unpacks past {MAX_CONTROL >> 20} MiB", hint=HINT)
        for m, body in read_tar_bytes(data, f"{label} {names[0]}", limits):
            if m.isreg() and _parts(m.name) == ["control"]:
                fields = deb822.Deb822(body.decode(errors="replace"))
                return {k: str(v).strip()[:200] for k, v in fields.items()}
    raise HurdxenError(f"{label}: no control file in {names[0]}", hint=HINT)


@contextmanager
def _zstd_to_tempfile(src: _Window, where: str, limits: Limits) -> Iterator[IO[bytes]]:
    """Python 3.11 has no zstd: the `zstd` tool decompresses, capped at the size limit."""
    tool = shutil.which("zstd")
    if tool is None:
        raise HurdxenError(f"{where}: data.tar.zst needs the zstd tool", hint="install zstd")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as packed:
        shutil.copyfileobj(src, packed)
        packed.seek(0)
        proc = subprocess.Popen([tool, "-dcq"], stdin=packed, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        total = 0
        while chunk := proc.stdout.read(1 << 20):
            total += len(chunk)
            if total > limits.max_bytes + (1 << 20):
                proc.kill()
                proc.wait()
                raise HurdxenError(f"{where}: data.tar.zst unpacks past {limits.max_bytes >> 20} MiB", hint=HINT)
            out.write(chunk)
        if proc.wait() != 0:
            raise HurdxenError(f"{where}: corrupt data.tar.zst", hint=HINT)
        out.seek(0)
        yield out


# ---------------------------------------------------------------------------------------------- in memory


def gunzip(raw: bytes, where: str, limit: int = 1 << 30) -> bytes:
    """gzip data (one or more members) decompressed, refusing to produce more than `limit` bytes: a gzip bomb costs
    its sender nothing."""
    out = bytearray()
    rest = raw
    while rest:
        d = zlib.decompressobj(wbits=31)
        try:
            out += d.decompress(rest, limit + 1 - len(out))
        except zlib.error as e:
            raise HurdxenError(f"{where}: corrupt gzip data ({e})", hint="download or build the file again") from None
        if len(out) > limit:
            raise HurdxenError(f"{where}: gzip data unpacks past {limit >> 20} MiB", hint="a gzip bomb?")
        if not d.eof:
            raise HurdxenError(f"{where}: corrupt gzip data (truncated)", hint="download or build the file again")
        rest = d.unused_data
        if rest.strip(b"\0") == b"":  # gzip(1) ignores trailing zero padding
            break
    return bytes(out)


def read_tar_bytes(data: bytes, where: str, limits: Limits = DEFAULT) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Members of an in-memory tar (e.g. a memdisk) with their contents, checked like an extraction."""
    with _open_tar(io.BytesIO(data), where) as tar:
        members = check_members(tar, where, limits, len(data))
        out = []
        with _errors(where):
            for m in members:
                f = tar.extractfile(m) if m.isreg() else None
                out.append((m, f.read() if f else b""))
    return out


def tree_path(root: Path, rel: str, where: str) -> Path:
    """`root/rel`, refusing a path that leaves `root` by name or through a symlink."""
    parts = _parts(rel)
    if parts is None or ".." in parts or not parts:
        raise HurdxenError(f"{where}: path {printable(rel)!r} is not inside the tree", hint="give a relative path")
    path = root.joinpath(*parts)
    real, base = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise HurdxenError(f"{where}: {printable(rel)!r} leads outside {root} (a symlink)", hint=HINT)
    return Path(real)
