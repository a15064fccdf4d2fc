"""Check a GNU Mach kernel the way Xen's PV domain builder will read it, before anyone boots it.

The decisions mirror Xen 4.17's libelf (`xen/common/libelf/libelf-dominfo.c`), the toolstack's
`xc_dom_*` code (domU) and `xen/arch/x86/pv/dom0_build.c` (dom0): which notes count, how the
`__xen_guest` string is tokenised, how PAE and the address window are derived. Messages quote
what the Xen host would print, so a user can match a report with a failed boot.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from hurdxen import elfnotes
from hurdxen.errors import HurdxenError, printable
from hurdxen.fsutil import sha256_bytes

PATCH = "recipes/patches/gnumach/0001-xen-elfnote-owner-and-pae-mode.patch"

MASK64 = (1 << 64) - 1
PAGE_SIZE = 4096
# Xen's compat (32-bit PV) area starts here unless the kernel asks for more room (HV_START_LOW).
COMPAT_VIRT_START = 0xF5800000
# The 64-bit hypervisor's own slice of a PV guest's address space.
XEN_VIRT_START_64 = 0xFFFF800000000000
XEN_VIRT_END_64 = 0xFFFF880000000000

DOMU_NOT_PAE = "xc_dom_compat_check: guest type xen-3.0-x86_32 not supported by xen kernel, sorry: Invalid kernel"
DOM0_MISMATCH = "Mismatch between Xen and DOM0 kernel"
GRUB_NOT_PAE = "error: incompatible architecture: 1."


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

# elf_xen_feature_names[]: only these are known; an unknown *required* one ("!x") fails the parse.
XEN_FEATURES = (
    "writable_page_tables",
    "writable_descriptor_tables",
    "auto_translated_physmap",
    "supervisor_mode_kernel",
    "pae_pgdir_above_4gb",
    "hvm_callback_vector",
    "dom0",
)


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class PaeMode(StrEnum):
    """libelf's XEN_PAE_* values."""

    NO = "no"
    YES = "yes"
    EXTCR3 = "extended-cr3"
    BIMODAL = "bimodal"


@dataclass(frozen=True)
class KernelExpectation:
    """What the pipeline meant to build or download. `bits`/`pae` None: not checked.

    strict: the pipeline compiled this kernel with its own patches, so its notes must be right.
    guest_memory_mib: the smallest guest the kernel must fit (Xen's padding check counts pages).
    """

    bits: Literal[32, 64] | None = None
    pae: bool | None = None
    strict: bool = False
    guest_memory_mib: int = 512


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
class XenParams:
    """The subset of libelf's `struct elf_dom_parms` the checks need, after Xen's defaults."""

    source: Literal["notes", "__xen_guest", "none"]
    guest_os: str
    guest_ver: str
    xen_ver: str
    loader: str
    pae: PaeMode
    pae_text: str  # the PAE value as written in whatever Xen read ("" when absent)
    virt_base: int
    elf_paddr_offset: int
    virt_offset: int
    virt_kstart: int
    virt_kend: int
    virt_entry: int
    virt_hypercall: int | None
    hv_start_low: int | None
    p2m_base: int | None
    phys_entry: int | None
    features_supported: tuple[str, ...]
    features_required: tuple[str, ...]
    bsd_symtab: bool
    unmapped_initrd: bool
    guest_type: str  # as xc_dom_guest_type() names it on a PV32-capable 64-bit Xen
    libelf_error: str | None  # the first "ERROR: …" libelf would log; None if it accepts the image


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    message: str
    on_xen: str  # what the user sees on the Xen host (or in pv-grub2) if this is ignored
    hint: str | None = None


@dataclass(frozen=True)
class KernelReport:
    path: str
    sha256: str
    gzipped: bool
    elf_bits: int
    machine: str
    e_entry: int
    load_segments: tuple[LoadSegment, ...]
    notes: tuple[XenNote, ...]
    xen_guest: str | None
    xen_guest_fields: tuple[tuple[str, str], ...]
    params: XenParams
    params_owner_fixed: XenParams | None  # what Xen would read once the note owner is fixed
    expectation: KernelExpectation
    findings: tuple[Finding, ...] = field(default=())

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def verdict(self) -> str:
        if self.errors:
            return "REFUSED"
        return "OK with warnings" if self.warnings else "OK"

    def to_json(self) -> dict[str, Any]:
        # Addresses as hex strings: 64-bit values do not survive JSON readers that use doubles.
        return {
            "path": self.path,
            "sha256": self.sha256,
            "gzipped": self.gzipped,
            "elf": {
                "bits": self.elf_bits,
                "machine": self.machine,
                "entry": hex(self.e_entry),
                "load_segments": [
                    {
                        "vaddr": hex(s.vaddr),
                        "paddr": hex(s.paddr),
                        "filesz": s.filesz,
                        "memsz": s.memsz,
                        "flags": s.flags,
                    }
                    for s in self.load_segments
                ],
            },
            "notes": [
                {
                    "origin": n.origin,
                    "owner": n.owner,
                    "type": n.type,
                    "name": n.name,
                    "value": n.value if isinstance(n.value, str) else n.value_text(),
                    "used_by_xen": n.used_by_xen,
                }
                for n in self.notes
            ],
            "xen_guest": self.xen_guest,
            "source": self.params.source,
            "effective": _params_json(self.params),
            "effective_if_owner_fixed": (
                _params_json(self.params_owner_fixed) if self.params_owner_fixed is not None else None
            ),
            "expectation": {
                "bits": self.expectation.bits,
                "pae": self.expectation.pae,
                "strict": self.expectation.strict,
                "guest_memory_mib": self.expectation.guest_memory_mib,
            },
            "verdict": self.verdict,
            "findings": [
                {"severity": str(f.severity), "code": f.code, "message": f.message, "on_xen": f.on_xen, "hint": f.hint}
                for f in self.findings
            ],
        }


def _hex_or_none(v: int | None) -> str | None:
    return None if v is None else hex(v)


def _params_json(p: XenParams) -> dict[str, Any]:
    return {
        "source": p.source,
        "guest_os": p.guest_os,
        "guest_ver": p.guest_ver,
        "xen_ver": p.xen_ver,
        "loader": p.loader,
        "pae": str(p.pae),
        "pae_text": p.pae_text,
        "virt_base": hex(p.virt_base),
        "elf_paddr_offset": hex(p.elf_paddr_offset),
        "virt_kstart": hex(p.virt_kstart),
        "virt_kend": hex(p.virt_kend),
        "virt_entry": hex(p.virt_entry),
        "virt_hypercall": _hex_or_none(p.virt_hypercall),
        "hv_start_low": _hex_or_none(p.hv_start_low),
        "p2m_base": _hex_or_none(p.p2m_base),
        "phys_entry": _hex_or_none(p.phys_entry),
        "features_supported": list(p.features_supported),
        "features_required": list(p.features_required),
        "guest_type": p.guest_type,
        "libelf_error": p.libelf_error,
    }


# --------------------------------------------------------------------------------------------
# ELF reading


@dataclass(frozen=True)
class _Elf:
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


def _read_elf(data: bytes, label: str) -> _Elf:
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
    return _Elf(
        bits, machine, class_bits, little, e_entry, tuple(loads), pstart, pend,
        tuple(seg_notes), tuple(sec_notes), xen_guest,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# libelf-dominfo.c, in Python


def parse_guest_info(s: bytes) -> list[tuple[str, str]]:
    """Tokenise a `__xen_guest` string exactly like elf_xen_parse_guest_info (31-char names, 127-char values)."""

    def star(i: int) -> int:
        return s[i] if i < len(s) else 0

    pairs: list[tuple[str, str]] = []
    h = 0
    while star(h):
        name = bytearray()
        value = bytearray()
        while True:
            if len(name) >= 31 or star(h) == 0:
                break
            c = star(h)
            if c == ord(","):
                h += 1
                break
            if c == ord("="):
                h += 1
                while True:
                    if len(value) >= 127 or star(h) == 0:
                        break
                    if star(h) == ord(","):
                        h += 1
                        break
                    value.append(star(h))
                    h += 1
                break
            name.append(c)
            h += 1
        pairs.append((name.decode("latin-1"), value.decode("latin-1")))
    return pairs


def _strtoull(text: str) -> int:
    """C strtoull(text, NULL, 0): leading space, sign, 0x/0 prefixes, stops at the first bad digit."""
    s = text.lstrip(" \t\n\r\f\v")
    neg = False
    if s[:1] in "+-" and s[:1]:
        neg = s[0] == "-"
        s = s[1:]
    base = 10
    if s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    n = 0
    for ch in s.lower():
        if ch not in digits:
            break
        n = n * base + digits.index(ch)
    if n > MASK64:
        return MASK64
    return (-n) & MASK64 if neg else n


def _parse_features(text: str) -> tuple[set[str], set[str], str | None]:
    """elf_xen_parse_features: (supported, required, first unknown required feature)."""
    supported: set[str] = set()
    required: set[str] = set()
    for raw in text.split("|"):
        feature = raw[:63]
        if feature.startswith("!"):
            if feature[1:] in XEN_FEATURES:
                supported.add(feature[1:])
                required.add(feature[1:])
            else:
                return supported, required, feature
        elif feature in XEN_FEATURES:
            supported.add(feature)
    return supported, required, None


@dataclass
class _Parms:
    guest_os: str = ""
    guest_ver: str = ""
    xen_ver: str = ""
    loader: str = ""
    pae: PaeMode = PaeMode.NO
    pae_text: str = ""
    virt_base: int | None = None
    paddr_offset: int | None = None
    virt_entry: int | None = None
    virt_hypercall: int | None = None
    hv_start_low: int | None = None
    p2m_base: int | None = None
    phys_entry: int | None = None
    supported: set[str] = field(default_factory=set)
    required: set[str] = field(default_factory=set)
    bsd_symtab: bool = False
    unmapped_initrd: bool = False
    error: str | None = None


def _apply_note(p: _Parms, n: XenNote) -> bool:
    """elf_xen_parse_note; False when libelf would reject the whole image."""
    t = XenNoteType(n.type)
    v = n.value
    s = v if isinstance(v, str) else ""
    num = v if isinstance(v, int) else 0
    if t is XenNoteType.LOADER:
        p.loader = s
    elif t is XenNoteType.GUEST_OS:
        p.guest_os = s
    elif t is XenNoteType.GUEST_VERSION:
        p.guest_ver = s
    elif t is XenNoteType.XEN_VERSION:
        p.xen_ver = s
    elif t is XenNoteType.PAE_MODE:
        p.pae_text = s
        if s == "yes":
            p.pae = PaeMode.EXTCR3
        if "bimodal" in s:
            p.pae = PaeMode.BIMODAL
    elif t is XenNoteType.BSD_SYMTAB:
        p.bsd_symtab = p.bsd_symtab or s == "yes"
    elif t is XenNoteType.VIRT_BASE:
        p.virt_base = num
    elif t is XenNoteType.ENTRY:
        p.virt_entry = num
    elif t is XenNoteType.INIT_P2M:
        p.p2m_base = num
    elif t is XenNoteType.MOD_START_PFN:
        p.unmapped_initrd = num != 0
    elif t is XenNoteType.PADDR_OFFSET:
        p.paddr_offset = num
    elif t is XenNoteType.HYPERCALL_PAGE:
        p.virt_hypercall = num
    elif t is XenNoteType.HV_START_LOW:
        p.hv_start_low = num
    elif t is XenNoteType.PHYS32_ENTRY:
        p.phys_entry = num & 0xFFFFFFFF
    elif t is XenNoteType.FEATURES:
        sup, req, bad = _parse_features(s)
        p.supported |= sup
        p.required |= req
        if bad is not None:
            p.error = f"unknown required feature {bad!r} in the FEATURES note"
            return False
    return True


def _apply_guest_info(p: _Parms, pairs: Iterable[tuple[str, str]]) -> None:
    for name, value in pairs:
        if name == "LOADER":
            p.loader = value
        if name == "GUEST_OS":
            p.guest_os = value
        if name == "GUEST_VER":  # gnumach writes GUEST_VERSION=, which Xen ignores
            p.guest_ver = value
        if name == "XEN_VER":
            p.xen_ver = value
        if name == "PAE":
            p.pae_text = value
            if value == "yes[extended-cr3]":
                p.pae = PaeMode.EXTCR3
            elif value.startswith("yes"):
                p.pae = PaeMode.YES
        if name == "BSD_SYMTAB":
            p.bsd_symtab = True
        if name == "VIRT_BASE":
            p.virt_base = _strtoull(value)
        if name == "VIRT_ENTRY":
            p.virt_entry = _strtoull(value)
        if name == "ELF_PADDR_OFFSET":
            p.paddr_offset = _strtoull(value)
        if name == "HYPERCALL_PAGE":
            p.virt_hypercall = (_strtoull(value) << 12) & MASK64
        if name == "FEATURES":
            sup, req, bad = _parse_features(value)
            p.supported |= sup
            p.required |= req
            if bad is not None:
                break  # libelf stops parsing the string here and ignores the failure
    if p.virt_base is not None and p.virt_hypercall is not None:
        p.virt_hypercall = (p.virt_hypercall + p.virt_base) & MASK64


def _xen_parse(elf: _Elf, accept: Callable[[XenNote], bool]) -> XenParams:
    """elf_xen_parse + elf_xen_note_check + elf_xen_addr_calc_check for a PV guest."""
    p = _Parms()
    count = 0
    note_start = False  # libelf's parms->elf_note_start: set by scanning any note area
    for stage in (elf.note_segments, elf.note_sections):
        if count or p.error:
            break  # sections are only a fallback when no note segment held a Xen note
        for notes in stage:
            note_start = True
            for n in notes:
                if not accept(n) or not n.name or XenNoteType(n.type) in NOTES_XEN_IGNORES:
                    continue
                if not _apply_note(p, n):
                    break
                count += 1
    source: Literal["notes", "__xen_guest", "none"] = "notes" if count else "none"
    guest_info = False
    if count == 0 and elf.xen_guest is not None:
        note_start = False
        guest_info = True
        source = "__xen_guest"
        _apply_guest_info(p, parse_guest_info(elf.xen_guest))

    err = p.error
    if err is None and not note_start and not guest_info and elf.machine in ("EM_386", "EM_X86_64"):
        err = "Not a Xen-ELF image: No ELF notes or '__xen_guest' section found"
    if err is None and not (p.loader.startswith("generic") or p.guest_os.startswith("linux")):
        err = (
            "Will only load images built for the generic loader or Linux images"
            f" (Not '{p.loader}' and '{p.guest_os}') or with PHYS32_ENTRY set"
        )
    if err is None and not p.xen_ver.startswith("xen-3.0"):
        err = f"Xen will only load images built for Xen v3.0 (Not '{p.xen_ver}')"
    if err is None and p.paddr_offset is not None and p.virt_base is None:
        err = "ELF_PADDR_OFFSET set, VIRT_BASE unset"

    virt_base = 0 if p.virt_base is None else p.virt_base
    # Legacy __xen_guest kernels default ELF_PADDR_OFFSET to VIRT_BASE; note-based ones to 0.
    paddr_offset = p.paddr_offset if p.paddr_offset is not None else (0 if note_start else virt_base)
    virt_offset = (virt_base - paddr_offset) & MASK64
    kstart = (elf.pstart + virt_offset) & MASK64
    kend = (elf.pend + virt_offset) & MASK64
    entry = p.virt_entry if p.virt_entry is not None else elf.e_entry
    if err is None and (kstart > kend or entry < kstart or entry > kend or virt_base > kstart):
        err = "ELF start or entries are out of bounds"
    if err is None and p.p2m_base is not None and kstart <= p.p2m_base < kend:
        err = "P->M table base is out of bounds"

    if elf.machine == "EM_X86_64":
        guest_type = "xen-3.0-x86_64"
    elif elf.machine == "EM_386":
        guest_type = "xen-3.0-x86_32" if p.pae is PaeMode.NO else "xen-3.0-x86_32p"
    else:
        guest_type = "xen-3.0-unknown"
    return XenParams(
        source=source,
        guest_os=p.guest_os,
        guest_ver=p.guest_ver,
        xen_ver=p.xen_ver,
        loader=p.loader,
        pae=p.pae,
        pae_text=p.pae_text,
        virt_base=virt_base,
        elf_paddr_offset=paddr_offset,
        virt_offset=virt_offset,
        virt_kstart=kstart,
        virt_kend=kend,
        virt_entry=entry,
        virt_hypercall=p.virt_hypercall,
        hv_start_low=p.hv_start_low,
        p2m_base=p.p2m_base,
        phys_entry=p.phys_entry,
        features_supported=tuple(sorted(p.supported)),
        features_required=tuple(sorted(p.required)),
        bsd_symtab=p.bsd_symtab,
        unmapped_initrd=p.unmapped_initrd,
        guest_type=guest_type,
        libelf_error=err,
    )


# --------------------------------------------------------------------------------------------
# checks


def _bits_word(bits: int) -> str:
    return {32: "32-bit i386", 64: "64-bit x86-64"}.get(bits, "non-x86")


def _name_bits(path: str) -> tuple[str, int] | None:
    """The variant a file name claims (Debian: -486/-686-pae are 32-bit, -amd64 is 64-bit)."""
    base = Path(path).name.lower()
    for marker, bits in (("amd64", 64), ("x86_64", 64), ("x86-64", 64), ("486", 32), ("686", 32), ("i386", 32)):
        if marker in base:
            return marker, bits
    return None


def _problems(elf: _Elf, p: XenParams, exp: KernelExpectation, path: str) -> list[Finding]:
    """What goes wrong on the Xen host if it reads `p`. Severity here is the plain one; callers adjust."""
    out: list[Finding] = []
    err = Severity.ERROR
    if p.libelf_error is not None:
        out.append(
            Finding(
                err,
                "libelf",
                f"Xen's ELF loader rejects the kernel: {p.libelf_error}",
                f"Xen logs `ERROR: {p.libelf_error}`; xl create fails (domU), Xen panics building dom0",
                "check the kernel's Xen notes / __xen_guest string",
            )
        )
        return out

    # Ordered like the domain builder: guest type (compat check), then allocation, then the rest.
    if elf.bits == 32:
        if p.pae is PaeMode.NO:
            # A note that starts with "yes" was meant as PAE: that is the note bug, not a non-PAE build.
            if p.source == "notes" and p.pae_text.startswith("yes"):
                cause = (
                    f"the PAE_MODE note is {p.pae_text!r}; Xen's loader accepts only exactly 'yes' (or a value "
                    "containing 'bimodal') there and reads anything else as no PAE"
                )
                hint = f'write PAE_MODE "yes" ({PATCH})'
            else:
                where = "the PAE_MODE note" if p.source == "notes" else p.source
                cause = f"{where} says PAE={p.pae_text or '(absent)'}"
                hint = "use the xen-pae variant (configure --enable-pae)"
            on_xen = f"domU: `{DOMU_NOT_PAE}`; dom0: `{DOM0_MISMATCH}`; 32-bit pv-grub2: `{GRUB_NOT_PAE}`"
            if exp.pae is True:
                out.append(Finding(err, "not-pae", f"kernel is not PAE but PAE was expected: {cause}", on_xen, hint))
            else:
                out.append(
                    Finding(
                        Severity.WARNING,
                        "not-pae",
                        f"non-PAE 32-bit kernel ({cause}); 64-bit Xen runs 32-bit PV guests only with PAE",
                        on_xen,
                        "use the xen-pae variant unless the host runs a 32-bit non-PAE hypervisor (Xen < 4.3)",
                    )
                )
        elif exp.pae is False:
            out.append(
                Finding(
                    err,
                    "pae-unexpected",
                    f"kernel is PAE ({p.source}: {p.pae_text!r}) but the non-PAE variant was expected",
                    f"it boots as {p.guest_type}; the artefact is labelled with the wrong variant",
                    "check --enable-pae/--disable-pae in the variant's configure options",
                )
            )
    hexs = hex
    span = (p.virt_kend - p.virt_base) & MASK64
    pad = (p.virt_kstart - p.virt_base) & MASK64
    limit = exp.guest_memory_mib << 20
    if p.virt_kstart % PAGE_SIZE:
        out.append(
            Finding(
                err,
                "kstart-align",
                f"kernel start {hexs(p.virt_kstart)} is not page aligned",
                f"xl create fails: `xc_dom_alloc_pad: segment boundary isn't page aligned ({hexs(p.virt_kstart)})`",
            )
        )
    elif span > limit:
        if pad > limit:
            why = (
                f"VIRT_BASE {hexs(p.virt_base)} (from {p.source}) lies {hexs(pad)} bytes below the kernel's "
                f"start {hexs(p.virt_kstart)} (linked there; ELF_PADDR_OFFSET {hexs(p.elf_paddr_offset)}): "
                "Xen must back that gap with guest memory"
            )
        else:
            why = f"the kernel spans {hexs(span)} bytes from VIRT_BASE, more than a {exp.guest_memory_mib} MiB guest"
        out.append(
            Finding(
                err,
                "padding",
                why,
                "domU: `xc_dom_chk_alloc_pages: segment padding too large (… pages)`; "
                "dom0: `Domain 0 allocation is too small for kernel image`",
                "VIRT_BASE must equal the link address (KERNELBASE) of this kernel; "
                f"with notes owned by 'Xen' ({PATCH}) Xen uses the VIRT_BASE note instead",
            )
        )
        return out  # the builder stops here; later checks would only repeat this cause
    if p.virt_hypercall is not None and not (
        p.virt_kstart <= p.virt_hypercall < p.virt_kend and p.virt_hypercall % PAGE_SIZE == 0
    ):
        out.append(
            Finding(
                err,
                "hypercall-page",
                f"hypercall page {hexs(p.virt_hypercall)} is not a page inside the kernel "
                f"({hexs(p.virt_kstart)}-{hexs(p.virt_kend)})",
                "Xen writes the hypercall stubs into another guest page; the first hypercall crashes the guest",
            )
        )
    if elf.bits == 32:
        hv_start = COMPAT_VIRT_START
        if p.hv_start_low is not None:
            hv_start = max(hv_start, p.hv_start_low)
        if p.virt_kend > hv_start:
            out.append(
                Finding(
                    err,
                    "xen-area",
                    f"kernel ends at {hexs(p.virt_kend)}, above the 32-bit hypervisor hole at {hexs(hv_start)}",
                    "dom0: `DOM0 image overlaps with Xen private area.`; domU creation fails",
                )
            )
    elif elf.bits == 64 and p.virt_base < XEN_VIRT_END_64 and p.virt_kend > XEN_VIRT_START_64:
        out.append(
            Finding(
                err,
                "xen-area",
                f"kernel window {hexs(p.virt_base)}-{hexs(p.virt_kend)} overlaps Xen's own area",
                "dom0: `DOM0 image overlaps with Xen private area.`; domU creation fails",
            )
        )

    return out


def _check(elf: _Elf, actual: XenParams, fixed: XenParams | None, exp: KernelExpectation, path: str) -> list[Finding]:
    findings: list[Finding] = []
    if elf.bits == 0 or elf.bits != elf.class_bits:
        findings.append(
            Finding(
                Severity.ERROR,
                "machine",
                f"ELF{elf.class_bits} {elf.machine} is not an x86 Xen PV kernel",
                f"domU: `xc_dom_guest_type: unknown image type`; dom0: `{DOM0_MISMATCH}`",
            )
        )
        return findings
    if exp.bits is not None and exp.bits != elf.bits:
        claim = _name_bits(path)
        named = ""
        if claim is not None and claim[1] != elf.bits:
            named = f" although its name says '{claim[0]}' ({_bits_word(claim[1])})"
        findings.append(
            Finding(
                Severity.ERROR,
                "bits",
                f"kernel is a {_bits_word(elf.bits)} ELF{named}, but a {_bits_word(exp.bits)} kernel was expected",
                f"Xen would start it as {actual.guest_type}, not as the {exp.bits}-bit guest the Hurd userland was "
                f"built for; a {exp.bits}-bit pv-grub2 refuses it (`error: incompatible architecture: …`)",
                "take the kernel from the package index of the matching architecture "
                "(Debian's bookworm amd64 index carries an x86-64 build under the -486 name)",
            )
        )

    actual_problems = _problems(elf, actual, exp, path)
    findings.extend(actual_problems)
    misowned = sorted({n.owner for sec in elf.note_sections + elf.note_segments for n in sec if n.misowned})
    if misowned and fixed is not None:
        lenient = Severity.ERROR if exp.strict else Severity.WARNING
        covered = " (and the fallback has problems, above)" if actual_problems else ""
        findings.append(
            Finding(
                lenient,
                "note-owner",
                f"the .note.Xen notes are owned by {', '.join(repr(o) for o in misowned)} instead of 'Xen' "
                "(gnumach's ELFNOTE macro quotes its parameter), so Xen ignores them and reads "
                f"__xen_guest{covered}",
                "`readelf -n` lists the notes under owner 'name'; Xen skips them and its verbose log shows "
                '`ELF: __xen_guest: "…"` instead of `ELF: note:` lines',
                f"apply {PATCH}",
            )
        )
        seen = {f.code for f in findings}
        for f in _problems(elf, fixed, exp, path):
            if f.code in seen or f.severity is Severity.INFO:
                continue
            findings.append(
                replace(
                    f,
                    severity=lenient if f.severity is Severity.ERROR else f.severity,
                    code="owner-fixed-" + f.code,
                    message=f"once the note owner is fixed, {f.message}",
                    hint=f.hint if f.hint and PATCH in f.hint else f"{PATCH} fixes this too",
                )
            )

    # Say when the two descriptions disagree: other loaders (old Xen, GRUB) may read the ignored one.
    if elf.xen_guest is not None and (fixed or actual).source == "notes":
        guest = _xen_parse(elf, lambda n: False)
        notes = fixed or actual
        diffs = [
            f"{label} {hex(a)} vs {hex(b)}"
            for label, a, b in (
                ("VIRT_BASE", notes.virt_base, guest.virt_base),
                ("ELF_PADDR_OFFSET", notes.elf_paddr_offset, guest.elf_paddr_offset),
            )
            if a != b
        ]
        if notes.pae is not guest.pae:
            diffs.append(f"PAE {notes.pae_text!r} (read as {notes.pae}) vs {guest.pae_text!r} (read as {guest.pae})")
        if diffs:
            findings.append(
                Finding(
                    Severity.INFO,
                    "notes-vs-xen-guest",
                    "notes and __xen_guest disagree (notes vs string): " + "; ".join(diffs),
                    "Xen reads the notes when any is owned by 'Xen'; the string matters only without them",
                )
            )
    return findings


# --------------------------------------------------------------------------------------------
# public API


MAX_KERNEL = 256 << 20  # a GNU Mach kernel is a few MiB; a gzip bomb stops here


def _gunzip(raw: bytes, label: str) -> tuple[bytes, bool]:
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    from hurdxen import safeextract

    return safeextract.gunzip(raw, label, MAX_KERNEL), True


def inspect_kernel_bytes(raw: bytes, expect: KernelExpectation, label: str = "<kernel>") -> KernelReport:
    """Decode and judge a kernel image (plain or gzip) held in memory."""
    data, gz = _gunzip(raw, label)
    if data[:4] != b"\x7fELF":
        raise HurdxenError(f"{label}: not an ELF file", hint="pass the gnumach kernel (gnumach, gnumach.gz)")
    elf = _read_elf(data, label)
    actual = _xen_parse(elf, lambda n: n.owner == "Xen")
    has_misowned = any(n.misowned for sec in elf.note_sections + elf.note_segments for n in sec)
    fixed = _xen_parse(elf, lambda n: n.owner == "Xen" or n.misowned) if has_misowned else None
    findings = _check(elf, actual, fixed, expect, label)
    notes = tuple(n for group in elf.note_segments + elf.note_sections for n in group)
    return KernelReport(
        path=label,
        sha256=sha256_bytes(raw),
        gzipped=gz,
        elf_bits=elf.class_bits,
        machine=elf.machine,
        e_entry=elf.e_entry,
        load_segments=elf.loads,
        notes=notes,
        xen_guest=None if elf.xen_guest is None else elf.xen_guest.decode("latin-1"),
        xen_guest_fields=tuple(parse_guest_info(elf.xen_guest)) if elf.xen_guest is not None else (),
        params=actual,
        params_owner_fixed=fixed,
        expectation=expect,
        findings=tuple(findings),
    )


def inspect_kernel(path: Path, expect: KernelExpectation) -> KernelReport:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise HurdxenError(f"cannot read kernel {path}: {e.strerror}", hint="check the path") from e
    return inspect_kernel_bytes(raw, expect, str(path))


def check_report(report: KernelReport) -> tuple[Finding, ...]:
    """Raise HurdxenError for the first error (one line, counting the rest); return the warnings."""
    errors = report.errors
    if errors:
        first = errors[0]
        more = f" (+{len(errors) - 1} more; run `hurdxen inspect-kernel` for all)" if len(errors) > 1 else ""
        raise HurdxenError(f"kernel {report.path}: {first.message} — on Xen: {first.on_xen}{more}", hint=first.hint)
    return report.warnings


def verify_kernel(path: Path, expect: KernelExpectation) -> tuple[Finding, ...]:
    return check_report(inspect_kernel(path, expect))


def _table(rows: Sequence[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_report(report: KernelReport) -> str:
    p = report.params
    lines = [
        f"kernel   {report.path}{' (gzip)' if report.gzipped else ''}",
        f"sha256   {report.sha256}",
        f"ELF      ELF{report.elf_bits} {report.machine}, entry {hex(report.e_entry)}",
    ]
    if report.load_segments:
        rows: list[tuple[str, ...]] = [("vaddr", "paddr", "filesz", "memsz", "flags")]
        rows += [(hex(s.vaddr), hex(s.paddr), hex(s.filesz), hex(s.memsz), s.flags) for s in report.load_segments]
        lines += ["PT_LOAD", *_table(rows)]
    if report.notes:
        rows = [("where", "owner", "type", "name", "value", "Xen uses")]
        for n in report.notes:
            rows.append(
                (n.origin, n.owner, str(n.type), n.name or "-", n.value_text(), "yes" if n.used_by_xen else "no")
            )
        lines += ["notes", *_table(rows)]
    else:
        lines.append("notes    (none)")
    lines.append(f"__xen_guest  {report.xen_guest if report.xen_guest is not None else '(none)'}")
    lines.append(f"Xen reads   {p.source}")
    params: list[tuple[str, ...]] = [
        ("guest_os", p.guest_os),
        ("xen_ver", p.xen_ver),
        ("loader", p.loader),
        ("pae", f"{p.pae} ({p.pae_text!r})" if p.pae_text else str(p.pae)),
        ("guest type", p.guest_type),
        ("virt_base", hex(p.virt_base)),
        ("paddr_offset", hex(p.elf_paddr_offset)),
        ("kernel", f"{hex(p.virt_kstart)} - {hex(p.virt_kend)}"),
        ("entry", hex(p.virt_entry)),
        ("hypercall", _hex_or_none(p.virt_hypercall) or "-"),
        ("features", "|".join(("!" if f in p.features_required else "") + f for f in p.features_supported) or "-"),
    ]
    lines += _table(params)
    exp = report.expectation
    lines.append(
        f"expected    bits={exp.bits or 'any'} pae={'any' if exp.pae is None else 'yes' if exp.pae else 'no'}"
        f" strict={'yes' if exp.strict else 'no'}"
    )
    for f in report.findings:
        lines.append(f"{f.severity.upper():7} [{f.code}] {f.message}")
        lines.append(f"        on Xen: {f.on_xen}")
        if f.hint:
            lines.append(f"        hint: {f.hint}")
    lines.append(f"verdict     {report.verdict}")
    # note strings, __xen_guest and the path come from the file: controls escaped, one line each
    return "\n".join(printable(line, 8192) for line in lines) + "\n"


def cli(argv: list[str]) -> int:
    """`hurdxen inspect-kernel FILE [--bits 32|64] [--pae yes|no] [--strict] [--json]`; 1 on errors."""
    ap = argparse.ArgumentParser(prog="hurdxen inspect-kernel", description="Check a GNU Mach kernel as Xen reads it")
    ap.add_argument("file", type=Path)
    ap.add_argument("--bits", type=int, choices=(32, 64))
    ap.add_argument("--pae", choices=("yes", "no"))
    ap.add_argument("--strict", action="store_true", help="kernel built by the pipeline: note bugs are errors")
    ap.add_argument("--memory-mib", type=int, default=512, help="guest memory the kernel must fit (default 512)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    bits: Literal[32, 64] | None = 32 if args.bits == 32 else 64 if args.bits == 64 else None
    expect = KernelExpectation(
        bits=bits,
        pae=None if args.pae is None else args.pae == "yes",
        strict=args.strict,
        guest_memory_mib=args.memory_mib,
    )
    try:
        report = inspect_kernel(args.file, expect)
    except HurdxenError as e:
        print(e.render(), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_report(report))
    return 1 if report.errors else 0


inspect_kernel_main = cli
