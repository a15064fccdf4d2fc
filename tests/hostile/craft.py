"""Crafted hostile inputs built in Python: ELF files with chosen notes, tarballs with chosen members, ar archives."""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field


def note(owner: bytes, ntype: int, desc: bytes, *, namesz: int | None = None, descsz: int | None = None) -> bytes:
    """One 4-byte aligned ELF note; namesz/descsz may lie about the bytes that follow."""
    name = owner + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    hdr = struct.pack("<III", len(name) if namesz is None else namesz, len(desc) if descsz is None else descsz, ntype)
    return hdr + pad(name) + pad(desc)


def elf32(notes: bytes, *, machine: int = 3, entry: int = 0xC0100000, shnum_lie: int | None = None) -> bytes:
    """A minimal little-endian ELF32 executable: one PT_LOAD, one PT_NOTE segment and a .note.Xen section."""
    ehsize, phentsize, shentsize = 52, 32, 40
    phoff = ehsize
    notes_off = phoff + 2 * phentsize
    shstr = b"\0.note.Xen\0.shstrtab\0"
    shstr_off = notes_off + len(notes)
    shoff = (shstr_off + len(shstr) + 3) & ~3
    shnum = 3
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + b"\0" * 8
    eh = ident + struct.pack(
        "<HHIIIIIHHHHHH", 2, machine, 1, entry, phoff, shoff, 0, ehsize, phentsize, 2, shentsize,
        shnum if shnum_lie is None else shnum_lie, 2,
    )  # fmt: skip
    load = struct.pack("<IIIIIIII", 1, 0, 0xC0100000, 0x100000, notes_off, notes_off, 5, 0x1000)
    pnote = struct.pack("<IIIIIIII", 4, notes_off, 0, 0, len(notes), 0, 4, 4)
    sh0 = b"\0" * shentsize
    sh1 = struct.pack("<IIIIIIIIII", 1, 7, 2, 0, notes_off, len(notes), 0, 0, 4, 0)
    sh2 = struct.pack("<IIIIIIIIII", 11, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    body = eh + load + pnote + notes + shstr
    body += b"\0" * (shoff - len(body))
    return body + sh0 + sh1 + sh2


def xen_notes_good() -> bytes:
    return b"".join(
        [
            note(b"Xen", 6, b"Mach\0"),  # GUEST_OS
            note(b"Xen", 5, b"xen-3.0\0"),  # XEN_VERSION
            note(b"Xen", 8, b"generic\0"),  # LOADER
            note(b"Xen", 9, b"yes\0"),  # PAE_MODE
            note(b"Xen", 3, struct.pack("<I", 0xC0000000)),  # VIRT_BASE
            note(b"Xen", 1, struct.pack("<I", 0xC0100000)),  # ENTRY
        ]
    )


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644
    size: int | None = None  # a lying size header (only with `raw`)
    extra: dict[str, object] = field(default_factory=dict)


def tar_bytes(members: Iterable[Member], mode: str = "w", fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:  # type: ignore[call-overload]
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.linkname = m.linkname
            info.mode = m.mode
            info.mtime = 1700000000
            for k, v in m.extra.items():
                setattr(info, k, v)
            if m.type == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def ar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A System V ar archive (the .deb container)."""
    out = [b"!<arch>\n"]
    for name, data in members:
        hdr = f"{name:<16}{1700000000:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode()
        out.append(hdr + data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)
