"""The decision: what goes wrong on a Xen host (domU, dom0, 32-bit pv-grub2) with the parameters Xen's loader reads
from a kernel, against what the pipeline meant to build. Messages quote what the Xen host would print."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Literal

from hurdxen.xen.elf import MASK64, KernelElf
from hurdxen.xen.load import PaeMode, XenParams, xen_parse

PATCH = "recipes/patches/gnumach/0001-xen-elfnote-owner-and-pae-mode.patch"

PAGE_SIZE = 4096
# Xen's compat (32-bit PV) area starts here unless the kernel asks for more room (HV_START_LOW).
COMPAT_VIRT_START = 0xF5800000
# The 64-bit hypervisor's own slice of a PV guest's address space.
XEN_VIRT_START_64 = 0xFFFF800000000000
XEN_VIRT_END_64 = 0xFFFF880000000000

DOMU_NOT_PAE = "xc_dom_compat_check: guest type xen-3.0-x86_32 not supported by xen kernel, sorry: Invalid kernel"
DOM0_MISMATCH = "Mismatch between Xen and DOM0 kernel"
GRUB_NOT_PAE = "error: incompatible architecture: 1."


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


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
class Finding:
    severity: Severity
    code: str
    message: str
    on_xen: str  # what the user sees on the Xen host (or in pv-grub2) if this is ignored
    hint: str | None = None


def _bits_word(bits: int) -> str:
    return {32: "32-bit i386", 64: "64-bit x86-64"}.get(bits, "non-x86")


def _name_bits(path: str) -> tuple[str, int] | None:
    """The variant a file name claims (Debian: -486/-686-pae are 32-bit, -amd64 is 64-bit)."""
    base = Path(path).name.lower()
    for marker, bits in (("amd64", 64), ("x86_64", 64), ("x86-64", 64), ("486", 32), ("686", 32), ("i386", 32)):
        if marker in base:
            return marker, bits
    return None


def _problems(elf: KernelElf, p: XenParams, exp: KernelExpectation, path: str) -> list[Finding]:
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


def check(
    elf: KernelElf, actual: XenParams, fixed: XenParams | None, exp: KernelExpectation, path: str
) -> list[Finding]:
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
        guest = xen_parse(elf, lambda n: False)
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
