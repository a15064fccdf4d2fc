"""Hostile archives (a mirror, a cache or a bundle download controls them): each refused with one line before
anything is written, nothing outside the work area touched. Sources, git exports, .debs and memdisks alike."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from hurdxen.core import safeextract
from hurdxen.core.errors import HurdxenError
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import fetch as sources
from hurdxen.sources import git as sources_git
from hurdxen.stages.gnumach import source as gnumach_source
from tests.hostile.craft import Member, ar_bytes, tar_bytes
from tests.hostile.harness import Canaries, refused

R, D, S, H = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

# (id, members built from the canary paths, words the refusal must contain)
Case = tuple[str, Callable[[Canaries], list[Member]], str]
CASES: list[Case] = [
    (
        "hardlink-to-host-file",
        lambda c: [Member("src/a", b"x"), Member("src/b", type=H, linkname=str(c.file))],
        "hardlink",
    ),
    ("hardlink-dotdot", lambda c: [Member("src/b", type=H, linkname="../../../../../../" + str(c.file))], "hardlink"),
    ("hardlink-to-later-member", lambda c: [Member("b", type=H, linkname="a"), Member("a", b"x")], "hardlink"),
    ("hardlink-to-dir", lambda c: [Member("d", type=D), Member("b", type=H, linkname="d")], "hardlink"),
    (
        "hardlink-to-symlink",
        lambda c: [Member("l", type=S, linkname="x"), Member("b", type=H, linkname="l")],
        "hardlink",
    ),
    ("hardlink-to-itself", lambda c: [Member("b", type=H, linkname="b")], "hardlink"),
    (
        "char-device",
        lambda c: [Member("dev/null", type=tarfile.CHRTYPE, extra={"devmajor": 1, "devminor": 3})],
        "character device",
    ),
    (
        "block-device",
        lambda c: [Member("dev/sda", type=tarfile.BLKTYPE, extra={"devmajor": 8, "devminor": 0})],
        "block device",
    ),
    ("fifo", lambda c: [Member("run/fifo", type=tarfile.FIFOTYPE)], "FIFO"),
    ("contiguous-file", lambda c: [Member("c", type=tarfile.CONTTYPE)], "contiguous"),
    ("traversal", lambda c: [Member("../../x", b"x")], "`..`"),
    ("traversal-inner", lambda c: [Member("a/../../x", b"x")], "`..`"),
    ("absolute-name", lambda c: [Member(str(c.root / "new"), b"x")], "absolute name"),
    ("symlink-absolute", lambda c: [Member("src/link", type=S, linkname=str(c.dir))], "absolute path"),
    ("symlink-dotdot", lambda c: [Member("src/link", type=S, linkname="../../../../../../..")], "outside the tree"),
    (
        "symlink-then-write-through",
        lambda c: [Member("src/link", type=S, linkname="../x"), Member("src/link/passwd", b"pwned")],
        "symlink",
    ),
    (
        "symlink-escape-write-through",
        lambda c: [Member("src/link", type=S, linkname=str(c.dir)), Member("src/link/shadow", b"x")],
        "symlink",
    ),
    (
        "symlink-chain-escape",
        lambda c: [Member("sub/d", type=S, linkname=".."), Member("x", type=S, linkname="sub/d/../..")],
        "outside the tree",
    ),
    (
        "symlink-late-escape",
        lambda c: [Member("x", type=S, linkname="sub/d/.."), Member("sub/d", type=S, linkname="..")],
        "outside the tree",
    ),
    ("symlink-loop", lambda c: [Member("a", type=S, linkname="b/x"), Member("b", type=S, linkname="a/x")], "loop"),
    ("duplicate-file-then-link", lambda c: [Member("a", b"x"), Member("a", type=S, linkname=str(c.file))], "twice"),
    ("file-below-file", lambda c: [Member("a", b"x"), Member("a/b", b"y")], "a file"),
    ("root-as-symlink", lambda c: [Member(".", type=S, linkname=str(c.dir))], "root"),
    ("long-component", lambda c: [Member("a/" + "n" * 300, b"x")], "NAME_MAX"),
    ("long-path", lambda c: [Member("/".join(["d" * 200] * 30), b"x")], "PATH_MAX"),
]


def _archive(tmp_path: Path, members: list[Member], mode: str = "w:gz") -> Path:
    p = tmp_path / "evil.tar.gz"
    p.write_bytes(tar_bytes(members, mode))
    return p


@pytest.mark.parametrize(("case", "build", "words"), CASES, ids=[c[0] for c in CASES])
def test_hostile_tarball_refused_before_writing(
    case: str, build: Callable[[Canaries], list[Member]], words: str, canary: Canaries, tmp_path: Path
) -> None:
    archive = _archive(tmp_path, build(canary))
    dest = tmp_path / "work" / "src"
    with pytest.raises(HurdxenError) as e:
        safeextract.extract(archive, dest)
    line = refused(e)
    assert "evil.tar.gz" in line and words in line
    assert not dest.exists(), "something was written before the refusal"


def test_gnumach_source_tarball_hardlink_to_host_file(canary: Canaries, tmp_path: Path) -> None:
    """The issue's case: extracting gnumach's source changed a host file's mode, owner and mtime through a link."""
    archive = _archive(
        tmp_path, [Member("gnumach-1.8/a", b"x"), Member("gnumach-1.8/b", type=H, linkname=str(canary.file))]
    )
    with pytest.raises(HurdxenError) as e:
        gnumach_source._extract_tarball(archive, tmp_path / "export")
    assert "gnumach source tarball evil.tar.gz: unsafe member 'gnumach-1.8/b'" in refused(e)


def test_gnumach_source_strips_the_top_directory(tmp_path: Path) -> None:
    archive = _archive(tmp_path, [Member("g-1/", type=D), Member("g-1/a", b"x"), Member("g-1/l", type=S, linkname="a")])
    gnumach_source._extract_tarball(archive, tmp_path / "export")
    assert (tmp_path / "export" / "a").read_bytes() == b"x" and os.readlink(tmp_path / "export" / "l") == "a"


def test_mig_tarball_checked_before_gnu_tar(canary: Canaries, tmp_path: Path) -> None:
    archive = _archive(tmp_path, [Member("mig/x", type=S, linkname=str(canary.dir))])
    with pytest.raises(HurdxenError) as e:
        safeextract.check(archive, "mig orig tarball evil.tar.gz", strip_single_top=True)
    assert "mig orig tarball" in refused(e)


def test_setuid_and_world_writable_bits_dropped(tmp_path: Path) -> None:
    """Allowed members, dangerous modes: the data filter takes setuid and group/other write away."""
    archive = _archive(tmp_path, [Member("d", type=D, mode=0o777), Member("d/su", b"#!", mode=0o4777)])
    safeextract.extract(archive, tmp_path / "out")
    mode = (tmp_path / "out" / "d" / "su").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_IWOTH | stat.S_IWGRP)


def test_links_inside_the_tree_are_kept(tmp_path: Path) -> None:
    members = [Member("a/f", b"x"), Member("a/l", type=S, linkname="f"), Member("b/l", type=S, linkname="../a/f"),
               Member("a/h", type=H, linkname="a/f")]  # fmt: skip
    safeextract.extract(_archive(tmp_path, members), tmp_path / "out")
    assert (tmp_path / "out" / "b" / "l").read_bytes() == b"x"
    assert (tmp_path / "out" / "a" / "h").stat().st_ino == (tmp_path / "out" / "a" / "f").stat().st_ino


def _bomb(size: int, name: str = "zeros") -> bytes:
    """A gzip tar of one member of `size` zero bytes, compressed on the fly (no `size` bytes in memory)."""
    info = tarfile.TarInfo(name)
    info.size = size
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(info.tobuf(format=tarfile.GNU_FORMAT))]
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        out.append(z.compress(chunk))
    out.append(z.compress(bytes(2 * tarfile.BLOCKSIZE)))
    out.append(z.flush())
    return b"".join(out)


def test_gzip_bomb_refused_by_ratio(tmp_path: Path, canary: Canaries) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(_bomb(80 << 20))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(HurdxenError) as e:
        safeextract.extract(bomb, tmp_path / "out")
    assert "unpacked size" in refused(e)
    assert not (tmp_path / "out").exists()


def test_header_claiming_gigabytes_refused_without_reading(tmp_path: Path) -> None:
    """A member header says 1.5 GiB and the stream ends: refused at the header, nothing decompressed first."""
    info = tarfile.TarInfo("big")
    info.size = 3 << 29
    p = tmp_path / "claim.tar.gz"
    p.write_bytes(zlib.compress(info.tobuf(format=tarfile.GNU_FORMAT), wbits=31))
    start = time.monotonic()
    with pytest.raises(HurdxenError) as e:
        safeextract.extract(p, tmp_path / "out")
    assert "1536 MiB" in refused(e) and time.monotonic() - start < 5


def test_xz_bomb_refused(tmp_path: Path) -> None:
    import lzma

    p = tmp_path / "bomb.tar.xz"
    info = tarfile.TarInfo("zeros")
    info.size = 70 << 20
    c = lzma.LZMACompressor(preset=0)
    parts = [c.compress(info.tobuf()), *(c.compress(bytes(1 << 20)) for _ in range(70)), c.flush()]
    p.write_bytes(b"".join(parts))
    with pytest.raises(HurdxenError) as e:
        safeextract.extract(p, tmp_path / "out")
    assert "bomb.tar.xz" in refused(e)


def test_member_count_limit(tmp_path: Path) -> None:
    archive = _archive(tmp_path, [Member(f"f{i}", b"") for i in range(60)])
    with pytest.raises(HurdxenError) as e:
        safeextract.extract(archive, tmp_path / "out", limits=safeextract.Limits(max_members=50))
    assert "more than 50 members" in refused(e)


def test_pax_header_claiming_a_gigabyte(tmp_path: Path) -> None:
    """tarfile reads a pax header whole: a 1 GiB claim must not become a 1 GiB read."""
    hdr = tarfile.TarInfo("././@PaxHeader")
    hdr.type = tarfile.XHDTYPE
    hdr.size = 1 << 30
    p = tmp_path / "pax.tar"
    p.write_bytes(hdr.tobuf(format=tarfile.USTAR_FORMAT) + bytes(4096))
    with pytest.raises(HurdxenError) as e:
        safeextract.extract(p, tmp_path / "out")
    refused(e)


@pytest.mark.parametrize(
    "data",
    [b"\x1f\x8b\x08\x00garbage", b"\xfd7zXZ\x00broken", b"BZh9nope", b"\x28\xb5\x2f\xfdzstd", b"just text " * 100, b""],
    ids=["corrupt-gzip", "corrupt-xz", "corrupt-bz2", "zstd-tarball", "not-an-archive", "empty"],
)
def test_unreadable_archives(data: bytes, tmp_path: Path) -> None:
    p = tmp_path / "x.tar"
    p.write_bytes(data)
    try:
        safeextract.extract(p, tmp_path / "out")
    except HurdxenError as e:
        assert "x.tar" in refused(pytest.ExceptionInfo.from_exc_info((type(e), e, e.__traceback__)))
    else:
        assert data == b"", "only an empty file is an (empty) archive"


def test_truncated_member_data(tmp_path: Path) -> None:
    whole = tar_bytes([Member("a", b"x" * 5000)], "w")
    p = tmp_path / "cut.tar"
    p.write_bytes(whole[:2048])
    with pytest.raises(HurdxenError) as e:
        safeextract.extract(p, tmp_path / "out")
    refused(e)


# ------------------------------------------------------------------------------------------------ .deb


def _deb(data_tar: bytes, name: str = "data.tar.gz", extra: list[tuple[str, bytes]] | None = None) -> bytes:
    control = tar_bytes([Member("./control", b"Package: x\n")], "w:gz")
    return ar_bytes([("debian-binary", b"2.0\n"), ("control.tar.gz", control), (name, data_tar), *(extra or [])])


def test_deb_with_device_refused(tmp_path: Path, canary: Canaries) -> None:
    p = tmp_path / "x.deb"
    p.write_bytes(_deb(tar_bytes([Member("./dev/mem", type=tarfile.CHRTYPE)], "w:gz")))
    with pytest.raises(HurdxenError) as e:
        safeextract.extract_deb(p, tmp_path / "out")
    assert "x.deb data.tar.gz: unsafe member './dev/mem'" in refused(e)


def test_deb_hardlink_to_host_refused(tmp_path: Path, canary: Canaries) -> None:
    p = tmp_path / "x.deb"
    p.write_bytes(_deb(tar_bytes([Member("./usr/b", type=H, linkname=str(canary.file))], "w:xz")))
    with pytest.raises(HurdxenError) as e:
        safeextract.extract_deb(p, tmp_path / "out")
    assert "hardlink" in refused(e)


def test_deb_absolute_symlink_stays_in_the_tree(tmp_path: Path, canary: Canaries) -> None:
    """dpkg packages use absolute links (/lib/x): unpacked, they point inside the tree, never at the host."""
    members = [
        Member("./lib/", type=D),
        Member("./lib/ld.so.1", b"ELF"),
        Member("./boot/k", type=S, linkname="/lib/ld.so.1"),
        Member("./etc/p", type=S, linkname=str(canary.file)),
    ]
    p = tmp_path / "x.deb"
    p.write_bytes(_deb(tar_bytes(members, "w:gz")))
    safeextract.extract_deb(p, tmp_path / "out")
    assert (tmp_path / "out" / "boot" / "k").read_bytes() == b"ELF"
    assert os.readlink(tmp_path / "out" / "boot" / "k") == "../lib/ld.so.1"
    assert not (tmp_path / "out" / "etc" / "p").exists()  # in-tree target that does not exist: dangling, harmless


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (b"!<arch>\n" + b"debian-binary   0           0     0     100644  99999     `\n2.0\n", "past the end"),
        (b"!<arch>\n" + b"debian-binary   0           0     0     100644  4         XX2.0\n", "corrupt ar header"),
        (
            b"!<arch>\n" + b"debian-binary   0           0     0     100644  4z        `\n2.0\n",
            "corrupt ar member size",
        ),
        (b"PK\x03\x04 not a deb", "no ar header"),
        (ar_bytes([("control.tar.gz", b"")]), "no debian-binary"),
        (ar_bytes([("debian-binary", b"2.0\n")]), "expected one data.tar"),
        (
            ar_bytes([("debian-binary", b"2.0\n"), ("data.tar.gz", b"\x1f\x8b\x08\x00garbage")]),
            "not a readable archive",
        ),
    ],
    ids=["ar-size-past-eof", "ar-bad-magic", "ar-bad-size", "not-ar", "no-debian-binary", "no-data", "corrupt-data"],
)
def test_corrupt_deb_one_line(blob: bytes, words: str, tmp_path: Path) -> None:
    """A .deb matching the signed index's name but corrupt: one line, no CalledProcessError."""
    cache = sources.Cache(tmp_path / "cache")
    p = tmp_path / "gnumach-image.deb"
    p.write_bytes(blob)
    with pytest.raises(HurdxenError) as e:
        sources_deb.extract_deb(p, cache)
    assert words in refused(e)
    assert not list((tmp_path / "cache" / "extracted").glob("[0-9a-f]*"))


def test_prebuilt_path_cannot_leave_the_package(tmp_path: Path, canary: Canaries) -> None:
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    os.symlink(canary.file, tree / "boot" / "gnumach.gz")
    for rel in ("../../../../x", "/etc/passwd", "boot/gnumach.gz"):
        with pytest.raises(HurdxenError) as e:
            safeextract.tree_path(tree, rel, "gnumach.prebuilt.debian-486.path")
        assert "gnumach.prebuilt.debian-486.path" in refused(e)


def test_git_mirror_symlink_to_host(tmp_path: Path, canary: Canaries) -> None:
    """A mirror serving a commit whose tree links out of itself: the export refuses it."""
    import git

    repo = git.Repo.init(tmp_path / "repo")
    os.symlink(str(canary.file), tmp_path / "repo" / "link")
    (tmp_path / "repo" / "f").write_text("x")
    repo.index.add(["link", "f"])
    commit = repo.index.commit("evil").hexsha
    pin = sources.GitPin("gnumach git", f"file://{tmp_path / 'repo'}", commit, "gnumach.source.git")
    with pytest.raises(HurdxenError) as e:
        sources_git.export_git(pin, sources.Cache(tmp_path / "cache"), tmp_path / "export")
    assert "gnumach git" in refused(e) and "absolute path" in str(e.value)


def test_memdisk_reader(tmp_path: Path) -> None:
    data = tar_bytes([Member("boot/grub/grub.cfg", b"x"), Member("l", type=S, linkname="/etc/passwd")], "w")
    with pytest.raises(HurdxenError) as e:
        safeextract.read_tar_bytes(data, "memdisk")
    assert "memdisk" in refused(e)
    ok = safeextract.read_tar_bytes(tar_bytes([Member("boot/grub/grub.cfg", b"x")], "w"), "memdisk")
    assert [(m.name, d) for m, d in ok] == [("boot/grub/grub.cfg", b"x")]


def test_stream_of_bytes_io(tmp_path: Path) -> None:
    f = io.BytesIO(tar_bytes([Member("a", b"x")], "w:gz"))
    assert safeextract.extract_stream(f, len(f.getvalue()), tmp_path / "o", "stream") == ["a"]
