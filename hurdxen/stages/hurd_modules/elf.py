"""What a ramdisk module must be for GNU Mach on a variant: the right ELF class and machine, a static first server,
an ld.so (a shared object without interpreter) of the pinned glibc, read from its Debian banner."""

from __future__ import annotations

import io
import posixpath
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from hurdxen.core.errors import HurdxenError

Role = Literal["static", "ld.so", "elf"]

# `ld.so (Debian GLIBC 2.41-6) stable release version 2.41.` — the package version sits inside the parentheses.
_LDSO_BANNER = re.compile(rb"\(Debian GLIBC ([^)\x00\s]{1,100})\)")
# A from-source glibc: `ld.so (hurdxen glibc 2.43) stable release version 2.43.` (its --with-pkgversion, or
# "GNU libc" by default) — the version is glibc's own release number.
_LDSO_SOURCE_BANNER = re.compile(
    rb"ld\.so \([^)\x00\n]{1,100}\) stable release version ([0-9]{1,3}\.[0-9]{1,3}(?:\.[0-9]{1,3})?)\."
)

# A gcc-built stand-in (hurdxen/data/standins/ldso.c): `ld.so (hurdxen stand-in) libc version stand-in: …` — no
# glibc at all; its version is STANDIN_LIBC, which only a stand-in variant pins.
STANDIN_LIBC = "stand-in"
_LDSO_STANDIN_BANNER = re.compile(rb"ld\.so \(hurdxen stand-in\) libc version (stand-in)\b")

# libc.so's: `GNU C Library (Debian GLIBC 2.41-6) stable release version 2.41.` (or a from-source pkgversion)
_LIBC_SOURCE_BANNER = re.compile(
    rb"GNU C Library \([^)\x00\n]{1,100}\) stable release version ([0-9]{1,3}\.[0-9]{1,3}(?:\.[0-9]{1,3})?)\."
)


@dataclass(frozen=True)
class Variant:
    bits: Literal[32, 64]
    arch: str  # GNU triplet's CPU, for messages
    machine: str  # pyelftools' e_machine name
    ldso: str  # ld.so's file name in /lib


VARIANTS: Mapping[int, Variant] = {
    32: Variant(32, "i686", "EM_386", "ld.so.1"),
    64: Variant(64, "x86_64", "EM_X86_64", "ld-x86-64.so.1"),
}


def variant_for(bits: int) -> Variant:
    try:
        return VARIANTS[bits]
    except KeyError:
        raise HurdxenError(f"unsupported word size {bits}", hint="use 32 (i686) or 64 (x86_64)") from None


@dataclass(frozen=True)
class ElfInfo:
    bits: int
    machine: str
    elf_type: str
    interp: str | None
    ldso_version: str | None

    def summary(self) -> str:
        link = f"dynamic (interpreter {self.interp})" if self.interp else "no interpreter"
        return f"ELF{self.bits} {self.machine} {self.elf_type}, {link}"


def ldso_version(data: bytes, where: str = "ld.so") -> str | None:
    """The glibc version in ld.so's banner (Debian's package version, else the release of a from-source glibc, else
    STANDIN_LIBC for a stand-in's), or None when there is no banner."""
    found: set[str] = set()
    for banner in (_LDSO_BANNER, _LDSO_SOURCE_BANNER, _LDSO_STANDIN_BANNER):
        found = {m.group(1).decode("ascii", "replace") for m in banner.finditer(data)}
        if found:
            break
    if len(found) > 1:
        raise HurdxenError(f"{where} carries several glibc versions: {', '.join(sorted(found))}")
    return found.pop() if found else None


def libc_version(data: bytes, where: str = "libc.so") -> str | None:
    """The glibc version in libc.so's banner, read as ld.so's is (Debian's package version first)."""
    found = {m.group(1).decode("ascii", "replace") for m in _LDSO_BANNER.finditer(data)}
    if not found:
        found = {m.group(1).decode("ascii", "replace") for m in _LIBC_SOURCE_BANNER.finditer(data)}
    if len(found) > 1:
        raise HurdxenError(f"{where} carries several glibc versions: {', '.join(sorted(found))}")
    return found.pop() if found else None


def inspect_elf(data: bytes, where: str) -> ElfInfo:
    if not data.startswith(b"\x7fELF"):
        raise HurdxenError(f"{where} is not an ELF file (starts with {data[:4]!r})", hint="check the module's path")
    try:
        # pyelftools is untyped; the two calls below are its whole use here.
        elf = ELFFile(io.BytesIO(data))  # type: ignore[no-untyped-call]
        interp: str | None = None
        for seg in elf.iter_segments():  # type: ignore[no-untyped-call]
            if seg["p_type"] == "PT_INTERP":
                interp = seg.get_interp_name()
        info = ElfInfo(elf.elfclass, str(elf["e_machine"]), str(elf["e_type"]), interp, ldso_version(data, where))
    except HurdxenError:
        raise
    except (ELFError, ValueError, struct.error, IndexError, KeyError, AssertionError, EOFError) as e:
        # pyelftools raises a variety of errors on damaged headers; all of them mean the same to the user.
        raise HurdxenError(f"{where} is a damaged ELF file ({e})", hint="check the module's source") from None
    return info


def role_for(name: str) -> Role:
    base = posixpath.basename(name)
    if base.endswith(".static"):
        return "static"
    if base.startswith("ld") and ".so" in base:
        return "ld.so"
    return "elf"


def check_module(name: str, role: Role, data: bytes, variant: Variant, libc_version: str) -> ElfInfo:
    """Refuse a module that GNU Mach on `variant` could not start, or an ld.so of another glibc."""
    info = inspect_elf(data, f"module {name!r}")
    if info.bits != variant.bits or info.machine != variant.machine:
        raise HurdxenError(
            f"module {name!r} is ELF{info.bits} {info.machine}, but the {variant.arch} ramdisk needs "
            f"ELF{variant.bits} {variant.machine}",
            hint=f"take it from the hurd-{'i386' if variant.bits == 32 else 'amd64'} packages",
        )
    if role == "static" and info.interp is not None:
        raise HurdxenError(
            f"module {name!r} is dynamically linked (interpreter {info.interp}); the first boot server must be static",
            hint="use the .static build, e.g. hurd/ext2fs.static",
        )
    if role == "ld.so":
        if info.elf_type != "ET_DYN" or info.interp is not None:
            raise HurdxenError(
                f"module {name!r} is {info.summary()}, not a dynamic loader (a shared object without interpreter)",
                hint=f"use /lib/{variant.ldso} from libc0.3",
            )
        if info.ldso_version is None:
            raise HurdxenError(
                f"module {name!r} has no 'ld.so (<pkgversion>) stable release version <version>.' banner",
                hint="is this really ld.so from libc0.3?",
            )
        if info.ldso_version != libc_version:
            raise HurdxenError(
                f"module {name!r} is from glibc {info.ldso_version}, but the pinned libc0.3 version is {libc_version}",
                hint="take ld.so from the pinned libc0.3 package, or update the pin",
            )
    return info
