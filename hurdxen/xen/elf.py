"""A kernel's ELF facts as Xen's loader sees them: PT_LOAD segments, the physical span, every note area decoded
with Xen's note table, the `__xen_guest` string. Reads bounded bytes (a gzip bomb or a lying header stops here)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from hurdxen.core import elfnotes
from hurdxen.core.errors import HurdxenError

MASK64 = (1 << 64) - 1
MAX_KERNEL = 256 << 20  # a GNU Mach kernel is a few MiB; a gzip bomb stops here


class XenNoteType(IntEnum):
    """XEN_ELFNOTE_* from xen/include/public/elfnote.h."""

    ENTRY = 1
    HYPERCALL_PAGE = 2
    VIRT_BASE = 3
    PADDR_OFFSET = 4
    XEN_VERSION = 5
    GUEST_OS = 6
    GUEST_VERSION = 7
    LOADER = 8
    PAE_MODE = 9
    FEATURES = 10
    BSD_SYMTAB = 11
    HV_START_LOW = 12
    L1_MFN_VALID = 13
    SUSPEND_CANCEL = 14
    INIT_P2M = 15
    MOD_START_PFN = 16
    SUPPORTED_FEATURES = 17
    PHYS32_ENTRY = 18


STRING_NOTES = frozenset(
    {
        XenNoteType.XEN_VERSION,
        XenNoteType.GUEST_OS,
        XenNoteType.GUEST_VERSION,
        XenNoteType.LOADER,
        XenNoteType.PAE_MODE,
        XenNoteType.FEATURES,
        XenNoteType.BSD_SYMTAB,
    }
)
# Xen 4.17's note table has no entry for L1_MFN_VALID: it logs "unknown" and skips it.
NOTES_XEN_IGNORES = frozenset({XenNoteType.L1_MFN_VALID})


@dataclass(frozen=True)
class LoadSegment:
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: str


@dataclass(frozen=True)
class XenNote:
    """One ELF note as found; `name` and `value` decoded with Xen's table when it is a Xen note."""

    origin: str  # "section .note.Xen" or "segment 3"
    owner: str
    type: int
    name: str  # XEN_ELFNOTE_* name, "" when not a Xen note type
    value: str | int | tuple[int, ...] | None
    desc: bytes
    misowned: bool  # in a Xen note section but not owned by "Xen": Xen skips it

    @property
    def used_by_xen(self) -> bool:
        return self.owner == "Xen" and self.name != "" and XenNoteType(self.type) not in NOTES_XEN_IGNORES

    def value_text(self) -> str:
        if isinstance(self.value, str):
            return repr(self.value).replace("'", '"')
        if isinstance(self.value, int):
            return hex(self.value)
        if isinstance(self.value, tuple):
            return "[" + ", ".join(hex(v) for v in self.value) + "]"
        return self.desc.hex()


@dataclass(frozen=True)
class KernelElf:
    """What the loader and the checks read from one kernel ELF."""

    bits: int
    machine: str
    class_bits: int
    little: bool
    e_entry: int
    loads: tuple[LoadSegment, ...]
    pstart: int
    pend: int
    note_segments: tuple[tuple[XenNote, ...], ...]
    note_sections: tuple[tuple[XenNote, ...], ...]
    xen_guest: bytes | None


def _cstr(b: bytes) -> bytes:
    return elfnotes.cstr(b)


def _decode_notes(
    blob: bytes, origin: str, little: bool, class_bits: int, xen_section: bool, label: str = "kernel"
) -> tuple[XenNote, ...]:
    order: Literal["little", "big"] = "little" if little else "big"
    notes: list[XenNote] = []
    for n in elfnotes.parse_notes(blob, little, f"{label}: {origin}"):
        # Xen compares the owner as a C string (elf_strval), not by namesz.
        owner, desc = n.owner, n.desc
        misowned = xen_section and owner != "Xen"
        xen_like = owner == "Xen" or misowned
        name = ""
        value: str | int | tuple[int, ...] | None = None
        if xen_like and n.type in XenNoteType._value2member_map_:
            t = XenNoteType(n.type)
            name = t.name
            if t in STRING_NOTES:
                value = _cstr(desc).decode("latin-1")
            elif n.descsz in (1, 2, 4, 8):
                value = int.from_bytes(desc, order)
            elif t in (XenNoteType.SUPPORTED_FEATURES, XenNoteType.L1_MFN_VALID):
                unit = 4 if t is XenNoteType.SUPPORTED_FEATURES else class_bits // 8
                # by the bytes present, never by the header's descsz
                value = tuple(int.from_bytes(desc[i : i + unit], order) for i in range(0, len(desc) - unit + 1, unit))
            else:
                value = 0  # elf_note_numeric() reads other sizes as 0
        notes.append(XenNote(origin, owner, n.type, name, value, desc, misowned))
    return tuple(notes)


def read_elf(data: bytes, label: str) -> KernelElf:
    try:
        elf = ELFFile(io.BytesIO(data))  # type: ignore[no-untyped-call]
        class_bits = elf.elfclass
        little = elf.little_endian
        machine = str(elf.header["e_machine"])
        e_entry = int(elf.header["e_entry"])
        loads: list[LoadSegment] = []
        seg_notes: list[tuple[XenNote, ...]] = []
        budget = elfnotes.AreaBudget(label)
        for i, seg in enumerate(elf.iter_segments()):  # type: ignore[no-untyped-call]
            ptype = seg["p_type"]
            if ptype == "PT_LOAD":
                pf = int(seg["p_flags"])
                loads.append(
                    LoadSegment(
                        vaddr=int(seg["p_vaddr"]),
                        paddr=int(seg["p_paddr"]),
                        filesz=int(seg["p_filesz"]),
                        memsz=int(seg["p_memsz"]),
                        flags=("R" if pf & 4 else "-") + ("W" if pf & 2 else "-") + ("X" if pf & 1 else "-"),
                    )
                )
            # libelf skips note segments with p_offset 0 (an old binutils bug).
            elif ptype == "PT_NOTE" and int(seg["p_offset"]) != 0:
                off, size = int(seg["p_offset"]), int(seg["p_filesz"])
                area = budget.take(data, off, size)
                seg_notes.append(_decode_notes(area, f"segment {i}", little, class_bits, False, label))
        sec_notes: list[tuple[XenNote, ...]] = []
        xen_guest: bytes | None = None
        for sec in elf.iter_sections():  # type: ignore[no-untyped-call]
            off, size = int(sec["sh_offset"]), int(sec["sh_size"])
            if sec["sh_type"] == "SHT_NOTE":
                area = budget.take(data, off, size)
                sec_notes.append(
                    _decode_notes(area, f"section {sec.name}", little, class_bits, sec.name == ".note.Xen", label)
                )
            if sec.name == "__xen_guest" and xen_guest is None:
                # libelf reads a C string from the section start, not bounded by sh_size.
                xen_guest = _cstr(data[off:])
    except (ELFError, ValueError, KeyError) as e:
        raise HurdxenError(f"{label}: not a readable ELF kernel ({e})", hint="is this the kernel image?") from e
    loadable = [s for s in loads if s.flags != "---"]
    pstart = min((s.paddr for s in loadable), default=MASK64)
    pend = max(((s.paddr + s.memsz) & MASK64 for s in loadable), default=0)
    bits = {"EM_386": 32, "EM_X86_64": 64}.get(machine, 0)
    return KernelElf(
        bits, machine, class_bits, little, e_entry, tuple(loads), pstart, pend,
        tuple(seg_notes), tuple(sec_notes), xen_guest,
    )  # fmt: skip


def gunzip(raw: bytes, label: str) -> tuple[bytes, bool]:
    """The kernel's bytes (gunzipped, bounded, when it is a .gz) and whether it was."""
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    from hurdxen.core import safeextract

    return safeextract.gunzip(raw, label, MAX_KERNEL), True
