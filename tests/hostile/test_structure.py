"""Bad structure: an unparseable Depends, a module at a non-page-aligned offset, a signed index read once per pin.
One line each, no traceback, no warnings spewed by a library, bounded time."""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path

import pytest
from aptrepo import AptRepo, GpgKey
from httpserver import TestServer

from hurdxen import pins
from hurdxen.core.errors import HurdxenError
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import debindex
from hurdxen.sources import fetch as sources
from hurdxen.stages.hurd_modules import tools as ramdisk_tools
from tests.hostile.harness import Canaries, one_line, refused

WHERE = "hurd-modules.variants.hurd-i386.debian: hurd 1:0.9.git20250420-1"


@pytest.mark.parametrize(
    "depends",
    ["((broken, libc0.3 (>= 2.41)", "libc0.3 (>= 2.41", "libc0.3 (>= !!)", "libc0.3 (>= 2.41), |", "\x1b[2J"],
    ids=["parens", "unclosed", "bad-version", "empty-alternative", "escape"],
)
def test_an_unparseable_hurd_depends_is_refused(
    depends: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """It silently disabled the hurd → libc0.3 check and printed python-debian's warnings: now one line."""
    with caplog.at_level(logging.DEBUG), pytest.raises(HurdxenError) as e:
        pins.relations(depends, WHERE)
    line = refused(e)
    assert line.startswith(f"error: {WHERE}: its Depends field cannot be parsed"), line
    assert not caplog.records and capsys.readouterr() == ("", "")
    assert pins.relations("libc0.3 (>= 2.41-6), libdaemon0 | ext2fs", WHERE)[0][0]["version"] == (">=", "2.41-6")


def test_ramdisk_dump_refuses_a_non_page_aligned_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], canary: Canaries
) -> None:
    rec = struct.Struct("<IIII")
    data = rec.pack(100, 104, 32, 0) + rec.pack(0, 0, 0, 0) + b"ab\0" + b"\0" * 65 + b"\x7fELF"
    path = tmp_path / "rd"
    path.write_bytes(data)
    assert ramdisk_tools.cli(["dump", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert "module at offset 100 is not aligned to 4096 bytes" in one_line(out.err)


def test_a_signed_index_is_parsed_once_for_every_pin(
    tmp_path: Path, apt_signing_key: GpgKey, http_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 75 MB index took 77.5 s: it was decompressed and parsed once per pin. Now once per index."""
    splits: list[int] = []
    monkeypatch.setattr(debindex, "_PARSED", {})  # an index another test parsed in this process
    real = debindex.PackagesIndex.of.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        debindex.PackagesIndex, "of", classmethod(lambda cls, text: splits.append(1) or real(cls, text))
    )
    with AptRepo(tmp_path / "repo", apt_signing_key) as repo:
        for n in range(4):
            repo.add_deb(f"pkg{n}", "1.0-1", "amd64", {f"usr/share/p{n}": b"x"})
        repo.publish("bookworm", "main", "amd64")
        base = http_server.serve_dir("/debian", repo.archive)
        cache = sources.Cache(tmp_path / "cache", sources.Network(timeout=10))
        start = time.monotonic()
        for n in range(4):
            pin = sources.DebPin(
                f"pkg{n}", "1.0-1", "amd64", "bookworm", base, "x.debian", keyring=str(repo.keyring_path)
            )
            assert sources_deb.fetch_deb(pin, cache).is_file()
        assert len(splits) == 1, splits
        assert time.monotonic() - start < 30
