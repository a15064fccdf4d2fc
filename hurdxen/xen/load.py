"""Xen's loader semantics, in Python: which notes count, how `__xen_guest` is tokenised, Xen's defaults and its
address checks — what libelf (Xen 4.17's `xen/common/libelf/libelf-dominfo.c`) would set in `elf_dom_parms`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from hurdxen.xen.elf import MASK64, NOTES_XEN_IGNORES, KernelElf, XenNote, XenNoteType

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


class PaeMode(StrEnum):
    """libelf's XEN_PAE_* values."""

    NO = "no"
    YES = "yes"
    EXTCR3 = "extended-cr3"
    BIMODAL = "bimodal"


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


def xen_parse(elf: KernelElf, accept: Callable[[XenNote], bool]) -> XenParams:
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
