"""Readers of outside bytes through the user commands: `hurdxen inspect-kernel`, `hurdxen ramdisk dump`, InRelease.
Crafted files end in a report or one line, in bounded time, with nothing from the file printed raw. Property tests:
random bytes never raise anything but HurdxenError (ELF notes are in test_elfnotes.py)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hurdxen.core import safeextract
from hurdxen.core.errors import HurdxenError
from hurdxen.sources import debindex
from hurdxen.stages.hurd_modules import ramdisk
from tests.hostile import craft
from tests.hostile.harness import CONTROL, one_line, refused, run_cli

CODE = Path(__file__).resolve().parents[2]


def kernel(tmp_path: Path, notes: bytes, name: str = "gnumach") -> Path:
    p = tmp_path / name
    p.write_bytes(craft.elf32(notes))
    return p


def test_descsz_claim_does_not_spin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """descsz = 0xFFFFFFF0 on a SUPPORTED_FEATURES note: 52 s of CPU before, now read by the bytes present."""
    k = kernel(tmp_path, craft.xen_notes_good() + craft.note(b"Xen", 17, b"\xff" * 8, descsz=0xFFFFFFF0))
    start = time.process_time()
    code, out, err = run_cli(["inspect-kernel", str(k), "--bits", "32"], capsys)
    assert time.process_time() - start < 5 and "Traceback" not in err
    assert code in (0, 1) and "SUPPORTED_FEATURES" in out


def test_note_strings_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = kernel(tmp_path, craft.xen_notes_good() + craft.note(b"Xen", 6, b"Mach\x1b[2J\nverdict     ok\0"))
    _code, out, _err = run_cli(["inspect-kernel", str(k)], capsys)
    assert "\x1b" not in out and not CONTROL.search(out)
    assert sum(ln.startswith("verdict") for ln in out.splitlines()) == 1


def test_gzip_bomb_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """300 MiB from 300 small gzip members (gzip(1) reads concatenated members): stopped at 256 MiB."""
    zeros = gzip.compress(bytes(1 << 20), 9)
    p = tmp_path / "gnumach.gz"
    p.write_bytes(gzip.compress(craft.elf32(craft.xen_notes_good())) + zeros * 300)
    assert p.stat().st_size < 400_000
    code, _, err = run_cli(["inspect-kernel", str(p)], capsys)
    assert code == 1 and "gzip data unpacks past 256 MiB" in one_line(err)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "not an ELF file"),
        (b"\x7fELF" + b"\xff" * 60, "not a readable ELF kernel"),
        (craft.elf32(craft.xen_notes_good())[:80], "not a readable ELF kernel"),
        (gzip.compress(b"MZ not elf"), "not an ELF file"),
        (b"\x1f\x8b\x08\x00\x00", "corrupt gzip"),
        (craft.elf32(craft.note(b"Xen", 1, b"") * 5000), "more than 4096 notes"),
    ],
    ids=["empty", "bad-header", "truncated", "gzip-not-elf", "gzip-truncated", "many-notes"],
)
def test_hostile_kernel_one_line(data: bytes, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "k"
    p.write_bytes(data)
    code, out, err = run_cli(["inspect-kernel", str(p)], capsys)
    assert code == 1 and out == "" and words in one_line(err)


def test_lying_section_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "k"
    p.write_bytes(craft.elf32(craft.xen_notes_good(), shnum_lie=0xFFFF))
    code, _out, err = run_cli(["inspect-kernel", str(p)], capsys)
    assert code == 1 and "not a readable ELF kernel" in one_line(err)


# ------------------------------------------------------------------------------------------------ ramdisks


def good_ramdisk(cmdline: str = "ext2fs.static --host-priv-port=${host-port}") -> bytes:
    return ramdisk.build_ramdisk([ramdisk.Module("ext2fs.static", cmdline, b"\x7fELF" + bytes(100))])


def test_ramdisk_cmdline_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A command line with ESC and a newline would forge dump lines: printed escaped, one line per record."""
    p = tmp_path / "rd"
    p.write_bytes(good_ramdisk("ext2fs.static \x1b]0;pwned\x07\n  [1] fake: ok"))
    code, out, _err = run_cli(["ramdisk", "dump", str(p)], capsys)
    assert code == 0 and not CONTROL.search(out)
    assert not any(ln.startswith("  [1]") for ln in out.splitlines())


def _table(*records: tuple[int, int, int, int]) -> bytes:
    return b"".join(struct.pack("<IIII", *r) for r in records)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "no terminator"),
        (b"\x01" * 15, "truncated record table"),
        (_table(*[(40000, 40001, 40000, 0)] * 2000) + bytes(20000), "more than 1024 records"),
        (_table((16, 20, 40, 0), (0, 0, 0, 0)) + bytes(100), "inside the record table"),
        (_table((32, 0xFFFFFFFF, 40, 0), (0, 0, 0, 0)) + bytes(64), "past the end of the file"),
        (_table((40, 48, 40, 0), (0, 0, 0, 0)) + bytes(8) + b"a\0xxxxxx", "overlaps"),
        (_table((48, 52, 32, 0), (0, 0, 0, 0)) + b"\xff\xfe\0" + bytes(40), "not UTF-8"),
        (_table((36, 40, 32, 0), (0, 0, 0, 0)) + b"x" * 9000, "not NUL-terminated within 4096"),
    ],
    ids=["empty", "short", "many-records", "start-in-table", "end-past-eof", "overlap", "cmdline-utf8", "no-nul"],
)
def test_hostile_ramdisk_one_line(data: bytes, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "rd"
    p.write_bytes(data)
    start = time.process_time()
    code, out, err = run_cli(["ramdisk", "dump", str(p)], capsys)
    assert code == 1 and out == "" and words in one_line(err), err
    assert time.process_time() - start < 5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_ramdisks(data: bytes) -> None:
    start = time.process_time()
    with contextlib.suppress(HurdxenError):
        ramdisk.parse_ramdisk(data, "rd")
    assert time.process_time() - start < 2  # CPU time, not a wall-clock deadline: fine on a loaded machine


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=8))
def test_corrupted_ramdisks(pos: int, junk: bytes) -> None:
    data = bytearray(good_ramdisk())
    pos %= len(data)
    data[pos : pos + len(junk)] = junk
    with contextlib.suppress(HurdxenError):
        ramdisk.parse_ramdisk(bytes(data), "rd")


# ------------------------------------------------------------------------------------------------ tar reader


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_tar_bytes(data: bytes) -> None:
    start = time.process_time()
    with contextlib.suppress(HurdxenError):
        safeextract.read_tar_bytes(data, "memdisk")
    assert time.process_time() - start < 2


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=3000), st.binary(min_size=1, max_size=16), st.sampled_from(["w", "w:gz"]))
def test_corrupted_tars(pos: int, junk: bytes, mode: str) -> None:
    """Byte flips in a valid archive (headers, checksums, sizes, gzip stream): a result or one HurdxenError."""
    members = [craft.Member("a/b", b"x" * 700), craft.Member("a/l", type=b"2", linkname="b"), craft.Member("c", b"y")]
    data = bytearray(craft.tar_bytes(members, mode))
    pos %= len(data)
    data[pos : pos + len(junk)] = junk
    with contextlib.suppress(HurdxenError):
        safeextract.read_tar_bytes(bytes(data), "memdisk")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet="ab./", min_size=1, max_size=12),
            st.sampled_from([b"0", b"5", b"2", b"1"]),
            st.text(alphabet="ab./", max_size=12),
        ),
        max_size=8,
    )
)
def test_random_member_trees_never_escape(tmp_path_factory: pytest.TempPathFactory, members: list) -> None:  # type: ignore[type-arg]
    """Any mix of names, dirs, symlinks and hardlinks: refused, or extracted with every path inside the tree."""
    base = tmp_path_factory.mktemp("prop")
    dest = base / "tree"
    archive = base / "a.tar"
    archive.write_bytes(craft.tar_bytes([craft.Member(n, b"x", type=t, linkname=ln) for n, t, ln in members], "w"))
    try:
        safeextract.extract(archive, dest)
    except HurdxenError:
        return
    real = os.path.realpath(dest)
    for top, dirs, files in os.walk(dest):
        for n in dirs + files:
            p = os.path.join(top, n)
            # inside the tree (a link to `.` is the tree itself), or a dangling link
            assert os.path.commonpath([os.path.realpath(p), real]) == real or not os.path.exists(p)
    assert sorted(p.name for p in base.iterdir()) == ["a.tar", "tree"]


# ------------------------------------------------------------------------------------------------ InRelease


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage\n" * 100, b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: x\n", b"\0" * 70000],
    ids=["empty", "garbage", "unsigned-clearsign", "nuls"],
)
def test_hostile_inrelease(data: bytes) -> None:
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    if not keyring.is_file():
        pytest.skip("no Debian keyring")
    with pytest.raises(HurdxenError) as e:
        debindex.verify_inrelease(data, keyring, "http://mirror/dists/bookworm/InRelease")
    refused(e, hint=False)


COMPRESSORS = {".xz": lzma.compress, ".gz": gzip.compress, ".bz2": bz2.compress}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_index_bomb_stops_at_the_limit(suffix: str) -> None:
    """A signed Release vouches for an index's compressed bytes, not for what they expand to: 4 MiB of zeros against a
    1 MiB limit stops at the limit with one line, whatever the compressor (and concatenated streams count together)."""
    compress = COMPRESSORS[suffix]
    bomb = compress(b"\0" * (4 << 20))
    start = time.process_time()
    with pytest.raises(HurdxenError) as e:
        debindex.decompress(f"main/binary-amd64/Packages{suffix}", bomb, limit=1 << 20)
    assert time.process_time() - start < 5
    refused(e)
    assert "more than 1 MiB" in e.value.message
    two = compress(b"\0" * (600 << 10)) + compress(b"\0" * (600 << 10))
    with pytest.raises(HurdxenError, match="more than 1 MiB"):
        debindex.decompress(f"Packages{suffix}", two, limit=1 << 20)
    text = b"Package: a\nVersion: 1\n\n"
    assert debindex.decompress(f"Packages{suffix}", compress(text) + compress(text)) == text * 2
    with pytest.raises(HurdxenError, match="cannot decompress"):
        debindex.decompress(f"Packages{suffix}", compress(text * 50)[:-12])


def test_download_error_redacts_password(tmp_path: Path) -> None:
    """A mirror URL with credentials (from an overlay) never shows its password in an error."""
    from hurdxen.sources import fetch as sources

    with pytest.raises(HurdxenError) as e:
        sources.download(
            "http://user:s3cret@127.0.0.1:9/x", tmp_path, sources.Network(timeout=2), "mirror", "base.mirror"
        )
    line = refused(e)
    assert "s3cret" not in line and "user:***@127.0.0.1" in line


# ------------------------------------------------------------------------------------------------ the real commands


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(CODE)}
    return subprocess.run(
        [sys.executable, "-m", "hurdxen", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_cli_process_inspect_kernel_bomb(tmp_path: Path) -> None:
    k = kernel(tmp_path, craft.xen_notes_good() + craft.note(b"Xen", 17, b"", descsz=0xFFFFFFF0))
    p = _cli("inspect-kernel", str(k), timeout=30)
    assert p.returncode in (0, 1) and "Traceback" not in p.stderr


def test_cli_process_ramdisk_dump_escaped(tmp_path: Path) -> None:
    rd = tmp_path / "rd"
    rd.write_bytes(good_ramdisk("a\x1b[31m\nb"))
    p = _cli("ramdisk", "dump", str(rd))
    assert p.returncode == 0 and "\x1b" not in p.stdout and "a\\x1b[31m\\nb" in p.stdout


def test_cli_process_corrupt_ramdisk(tmp_path: Path) -> None:
    rd = tmp_path / "rd"
    rd.write_bytes(b"\x01" * 15)
    p = _cli("ramdisk", "dump", str(rd))
    assert p.returncode == 1 and p.stdout == "" and "truncated record table" in one_line(p.stderr)
