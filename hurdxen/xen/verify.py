"""Check a GNU Mach kernel the way Xen's PV domain builder will read it, before anyone boots it.

The decisions mirror Xen 4.17's libelf (`xen/common/libelf/libelf-dominfo.c`), the toolstack's
`xc_dom_*` code (domU) and `xen/arch/x86/pv/dom0_build.c` (dom0): which notes count, how the
`__xen_guest` string is tokenised, how PAE and the address window are derived. Messages quote
what the Xen host would print, so a user can match a report with a failed boot.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hurdxen.core.errors import HurdxenError, printable
from hurdxen.core.fsutil import sha256_bytes
from hurdxen.xen.checks import Finding, KernelExpectation, Severity, check
from hurdxen.xen.elf import LoadSegment, XenNote, gunzip, read_elf
from hurdxen.xen.load import XenParams, parse_guest_info, xen_parse

# What the stages and the release verifier use: the report, the expectation it is judged against, its findings.
__all__ = [
    "Finding",
    "KernelExpectation",
    "KernelReport",
    "check_report",
    "cli",
    "inspect_kernel",
    "inspect_kernel_bytes",
    "render_report",
    "verify_kernel",
]


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


def inspect_kernel_bytes(raw: bytes, expect: KernelExpectation, label: str = "<kernel>") -> KernelReport:
    """Decode and judge a kernel image (plain or gzip) held in memory."""
    data, gz = gunzip(raw, label)
    if data[:4] != b"\x7fELF":
        raise HurdxenError(f"{label}: not an ELF file", hint="pass the gnumach kernel (gnumach, gnumach.gz)")
    elf = read_elf(data, label)
    actual = xen_parse(elf, lambda n: n.owner == "Xen")
    has_misowned = any(n.misowned for sec in elf.note_sections + elf.note_segments for n in sec)
    fixed = xen_parse(elf, lambda n: n.owner == "Xen" or n.misowned) if has_misowned else None
    findings = check(elf, actual, fixed, expect, label)
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
