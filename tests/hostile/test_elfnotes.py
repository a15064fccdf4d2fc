"""Hostile ELF files: notes that lie about their sizes, too many notes, random bytes — bounded work, one line."""

from __future__ import annotations

import contextlib
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hurdxen.core import elfnotes
from hurdxen.core.errors import HurdxenError
from hurdxen.stages.pvgrub2 import elf as pvgrub_elf
from hurdxen.xen import verify as xenverify
from tests.hostile import craft

EXPECT = xenverify.KernelExpectation(bits=32, pae=True, strict=False)


def test_good_stand_in_reads_its_notes() -> None:
    report = xenverify.inspect_kernel_bytes(craft.elf32(craft.xen_notes_good()), EXPECT, "k")
    assert report.params.guest_os == "Mach" and report.params.pae_text == "yes"


def test_huge_descsz_is_read_by_the_bytes_present() -> None:
    """descsz = 0xFFFFFFF0 on a SUPPORTED_FEATURES note spun for 52 s of CPU before: now linear in the file."""
    hostile = craft.note(b"Xen", 17, b"\xff" * 8, descsz=0xFFFFFFF0)
    start = time.process_time()
    report = xenverify.inspect_kernel_bytes(craft.elf32(craft.xen_notes_good() + hostile), EXPECT, "k")
    assert time.process_time() - start < 5
    (n,) = [n for n in report.notes if n.type == 17 and n.origin.startswith("section")]
    assert len(n.desc) < 64


def test_parser_marks_truncation() -> None:
    (n,) = elfnotes.parse_notes(craft.note(b"Xen", 9, b"yes\0", descsz=12)[:20], True)
    assert n.truncated and n.desc == b"yes\0" and n.descsz == 12


def test_xenverify_and_pvgrub_read_the_same_notes(tmp_path: Path) -> None:
    k = tmp_path / "k"
    k.write_bytes(craft.elf32(craft.xen_notes_good()))
    facts = pvgrub_elf.elf_facts(k)
    report = xenverify.inspect_kernel_bytes(k.read_bytes(), EXPECT, "k")
    seen = {n.type: n.desc for n in report.notes if n.owner == "Xen"}
    assert {t: d for t, d in facts.xen_notes.items()} == seen


def test_too_many_notes_refused() -> None:
    many = craft.note(b"Xen", 1, b"") * (elfnotes.MAX_NOTES + 1)
    with pytest.raises(HurdxenError, match="notes"):
        xenverify.inspect_kernel_bytes(craft.elf32(many), EXPECT, "k")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.booleans())
def test_random_note_bytes(blob: bytes, little: bool) -> None:
    start = time.process_time()
    try:
        notes = elfnotes.parse_notes(blob, little)
    except HurdxenError:
        return
    assert sum(len(n.desc) + len(n.name) for n in notes) <= len(blob)
    assert time.process_time() - start < 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=400))
def test_random_elf_bytes_never_raise_anything_else(tail: bytes, cut: int) -> None:
    """Random bytes after a valid ELF header (and random truncations) give a report or a HurdxenError."""
    base = craft.elf32(craft.xen_notes_good())
    data = base[:cut] + tail if cut < len(base) else base + tail
    start = time.process_time()
    with contextlib.suppress(HurdxenError):
        xenverify.inspect_kernel_bytes(data, EXPECT, "k")
    assert time.process_time() - start < 2


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=300), st.binary(min_size=1, max_size=8))
def test_corrupted_header_fields(pos: int, junk: bytes) -> None:
    """Overwrite bytes anywhere in a good stand-in (header, program/section tables, notes)."""
    data = bytearray(craft.elf32(craft.xen_notes_good()))
    pos %= len(data)
    data[pos : pos + len(junk)] = junk
    with contextlib.suppress(HurdxenError):
        xenverify.inspect_kernel_bytes(bytes(data), EXPECT, "k")


def test_lying_section_count_refused_in_one_line() -> None:
    with pytest.raises(HurdxenError):
        xenverify.inspect_kernel_bytes(craft.elf32(craft.xen_notes_good(), shnum_lie=0xFFFF), EXPECT, "k")


def test_note_header_layout() -> None:
    assert struct.calcsize("<III") == elfnotes.NOTE_HEADER
