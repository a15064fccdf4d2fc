"""What pv-grub2 reads from ELF files: a kernel's or an image's class, machine and Xen notes (as GRUB's Xen loader
sees them), and the objects grub-mkimage appended to an image (modules, memdisk, prefix).

The notes come from the one bounded kernel reader, `xen.elf.read_elf` (a kernel's facts straight from the report
xenverify made of it, so a kernel is read once); this module only says what GRUB's loader makes of them.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.core.errors import HurdxenError
from hurdxen.xen import elf as xenelf
from hurdxen.xen.elf import XenNote
from hurdxen.xen.verify import KernelReport

# GRUB's include/grub/xen_file.h: what its Xen loader calls a kernel's architecture.
XEN_ARCH_I386 = 1  # 32-bit, no PAE
XEN_ARCH_I386_PAE = 2
XEN_ARCH_I386_PAE_BIMODE = 3
XEN_ARCH_X86_64 = 4

# Xen's public/elfnote.h
XEN_ELFNOTE_VIRT_BASE = 3
XEN_ELFNOTE_XEN_VERSION = 5
XEN_ELFNOTE_GUEST_OS = 6
XEN_ELFNOTE_LOADER = 8
XEN_ELFNOTE_PAE_MODE = 9

# GRUB's include/grub/kernel.h: objects after the kernel in the `mods` section.
OBJ_TYPE_ELF = 0
OBJ_TYPE_MEMDISK = 1
OBJ_TYPE_CONFIG = 2
OBJ_TYPE_PREFIX = 3
GRUB_MODULE_MAGIC = 0x676D696D  # "mimg"


@dataclass(frozen=True)
class ElfFacts:
    bits: int
    machine: str
    xen_notes: Mapping[int, bytes]  # owner "Xen" notes, type -> descriptor
    xen_guest: str | None  # the legacy __xen_guest string
    gzipped: bool

    @property
    def xen_arch(self) -> int | None:
        """The architecture GRUB's Xen loader (grub_xen_get_info) would see."""
        if self.bits == 64:
            return XEN_ARCH_X86_64 if self.machine == "EM_X86_64" else None
        pae = self.xen_notes.get(XEN_ELFNOTE_PAE_MODE)
        if pae is not None:
            mode = pae.rstrip(b"\0").decode(errors="replace")
            return {"yes": XEN_ARCH_I386_PAE, "bimodal": XEN_ARCH_I386_PAE_BIMODE}.get(mode, XEN_ARCH_I386)
        if self.xen_guest is not None:
            for item in self.xen_guest.split(","):
                if item.startswith("PAE=yes"):
                    return XEN_ARCH_I386_PAE
                if item.startswith("PAE=bimodal"):
                    return XEN_ARCH_I386_PAE_BIMODE
            return XEN_ARCH_I386
        return None


def _elf(f: Any) -> Any:
    """pyelftools' ELFFile (untyped), as Any."""
    from elftools.elf.elffile import ELFFile

    return ELFFile(f)  # type: ignore[no-untyped-call]


def _facts(notes: Iterable[XenNote], bits: int, machine: str, xen_guest: str | None, gz: bool) -> ElfFacts:
    """GRUB's view: the owner "Xen" notes, type -> descriptor (the first of each type)."""
    xen: dict[int, bytes] = {}
    for n in notes:
        if n.owner == "Xen":
            xen.setdefault(n.type, n.desc)
    return ElfFacts(bits, machine, xen, xen_guest, gz)


def report_facts(report: KernelReport) -> ElfFacts:
    """A kernel's facts from xenverify's report of it (the bytes already read and judged)."""
    return _facts(report.notes, report.elf_bits, report.machine, report.xen_guest, report.gzipped)


def elf_facts(path: Path) -> ElfFacts:
    """An ELF file's facts (a pv-grub2 image, or a kernel, plain or gzipped), by the one bounded reader."""
    label = str(path)
    data, gz = xenelf.gunzip(path.read_bytes(), label)  # bounded: a crafted .gz does not fill the memory
    if data[:4] != b"\x7fELF":
        raise HurdxenError(f"{path}: not an ELF file", hint="a Xen PV kernel is an ELF executable")
    elf = xenelf.read_elf(data, label)
    notes = (n for group in elf.note_segments + elf.note_sections for n in group)
    guest = None if elf.xen_guest is None else elf.xen_guest.decode("latin-1")
    return _facts(notes, elf.class_bits, elf.machine, guest, gz)


@dataclass(frozen=True)
class ImageObjects:
    modules: tuple[str, ...]  # names of the embedded ELF modules, in image order
    memdisk: bytes | None
    prefix: str | None
    config: bytes | None


def read_image_objects(path: Path) -> ImageObjects:
    """Walk the objects grub-mkimage appended to the kernel (its `mods` section): modules, memdisk, prefix."""
    with open(path, "rb") as f:
        elf = _elf(f)
        sec = elf.get_section_by_name("mods")
        if sec is None:
            raise HurdxenError(f"{path}: no `mods` section", hint="not an image made by grub-mkimage for Xen")
        data = sec.data()
        bits = elf.elfclass
    if bits == 64:
        magic, _pad, offset, size = struct.unpack_from("<IIQQ", data, 0)
    else:
        magic, offset, size = struct.unpack_from("<III", data, 0)
    if magic != GRUB_MODULE_MAGIC:
        raise HurdxenError(f"{path}: GRUB module area has no `mimg` magic", hint="not a grub-mkimage image")
    mods, memdisk, prefix, config = [], None, None, None
    off = offset
    while off + 8 <= size:
        otype, osize = struct.unpack_from("<II", data, off)
        if osize < 8:
            break
        payload = data[off + 8 : off + osize]
        if otype == OBJ_TYPE_ELF:
            mods.append(_module_name(payload))
        elif otype == OBJ_TYPE_MEMDISK:
            memdisk = payload
        elif otype == OBJ_TYPE_PREFIX:
            prefix = payload.split(b"\0", 1)[0].decode()
        elif otype == OBJ_TYPE_CONFIG:
            config = payload
        off += osize
    return ImageObjects(tuple(mods), memdisk, prefix, config)


def _module_name(payload: bytes) -> str:
    sec = _elf(io.BytesIO(payload)).get_section_by_name(".modname")
    return sec.data().split(b"\0", 1)[0].decode() if sec is not None else "?"
