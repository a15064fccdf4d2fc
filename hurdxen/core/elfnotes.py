"""One bounded reader of ELF note areas (the Xen notes of kernels and pv-grub2 images).

ELF files come from mirrors, packages and users: a note's `namesz`/`descsz` header is a claim, not a size. Notes are
read by the bytes actually present (a claimed 4 GiB descriptor yields the bytes that exist, flagged `truncated`), the
number of notes and the bytes of note areas read per file are capped, and every failure is a `HurdxenError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hurdxen.core.errors import HurdxenError

NOTE_HEADER = 12  # namesz, descsz, type: three 4-byte words in both ELF classes (Xen's notes are 4-byte aligned)
MAX_NOTES = 4096  # per note area; a real kernel has about twenty
MAX_AREAS = 1024  # note sections plus note segments per file
MAX_AREA_BYTES = 64 << 20  # bytes of note areas read per file (overlapping areas count each time)


@dataclass(frozen=True)
class Note:
    owner: str  # the name as a C string, the way Xen's elf_strval compares it ("Xen")
    name: bytes  # the name bytes present (up to namesz)
    type: int
    desc: bytes  # the descriptor bytes present (up to descsz)
    namesz: int  # as claimed by the header
    descsz: int  # as claimed by the header

    @property
    def truncated(self) -> bool:
        """The area ends before the name or descriptor the header claims."""
        return len(self.name) < self.namesz or len(self.desc) < self.descsz


def cstr(b: bytes) -> bytes:
    return b.split(b"\0", 1)[0]


def parse_notes(blob: bytes, little: bool, where: str = "ELF note area") -> tuple[Note, ...]:
    """Every note in `blob`; the last may be truncated. Work is linear in len(blob), whatever the headers say."""
    order: Literal["little", "big"] = "little" if little else "big"
    notes: list[Note] = []
    off = 0
    while off + NOTE_HEADER <= len(blob):
        if len(notes) >= MAX_NOTES:
            raise HurdxenError(
                f"{where}: more than {MAX_NOTES} notes", hint="a crafted ELF file? a kernel has a few dozen notes"
            )
        namesz, descsz, ntype = (int.from_bytes(blob[off + i : off + i + 4], order) for i in (0, 4, 8))
        name_off = off + NOTE_HEADER
        desc_off = name_off + ((namesz + 3) & ~3)
        name = blob[name_off : min(name_off + namesz, len(blob))]
        desc = blob[desc_off : min(desc_off + descsz, len(blob))] if desc_off < len(blob) else b""
        notes.append(Note(cstr(name).decode("latin-1"), name, ntype, desc, namesz, descsz))
        off = desc_off + ((descsz + 3) & ~3)  # always > the previous offset: the header alone is 12 bytes
    return tuple(notes)


class AreaBudget:
    """Caps the note areas read from one file: their count and their total bytes."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.areas = 0
        self.bytes = 0

    def take(self, data: bytes, offset: int, size: int) -> bytes:
        """data[offset:offset+size] as present in the file, counted against the budget."""
        self.areas += 1
        if offset < 0 or size < 0:
            raise HurdxenError(f"{self.where}: a note area at offset {offset} size {size}", hint="a crafted ELF file?")
        blob = data[offset : offset + size]
        self.bytes += len(blob)
        if self.areas > MAX_AREAS or self.bytes > MAX_AREA_BYTES:
            raise HurdxenError(
                f"{self.where}: more than {MAX_AREAS} note areas or {MAX_AREA_BYTES >> 20} MiB of notes",
                hint="a crafted ELF file? a kernel's notes take a few hundred bytes",
            )
        return blob
