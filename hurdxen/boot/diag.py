"""Why a guest died: Xen's crash lines and GNU Mach's panic line, read from a guest's serial log and symbolized with
the unstripped kernel.

The log comes from a guest we do not trust (and a dom0 that relays it): every line is bounded, every number is
parsed with a fixed-width pattern, and nothing here raises on odd input — a line that does not parse is ignored.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

MAX_LINE = 400  # characters of one line we look at
MAX_STACK_WORDS = 64
MAX_CRASH_LINES = 60
MAX_CALLERS = 4

VECTORS = {
    0: "divide error", 1: "debug trap", 3: "breakpoint", 4: "overflow", 5: "bound range", 6: "invalid opcode",
    7: "device not available", 8: "double fault", 10: "invalid TSS", 11: "segment not present",
    12: "stack fault", 13: "general protection fault", 14: "page fault", 16: "x87 fault", 17: "alignment check",
    18: "machine check", 19: "SIMD fault",
}  # fmt: skip

_XEN = re.compile(r"^\(XEN\) ?(.*)$")
_UNHANDLED = re.compile(r"^d(\d{1,5})v\d{1,4} Unhandled: vec (\d{1,3}), \S{1,12}\[([0-9a-f]{1,8})\]")
_CRASHED = re.compile(r"^Domain (\d{1,5}) \(vcpu#\d{1,4}\) crashed on cpu#\d{1,4}:")
_RIP = re.compile(r"^RIP:\s+([0-9a-f]{4}):\[<([0-9a-f]{1,16})>\]")
_CR2 = re.compile(r"cr2: ([0-9a-f]{1,16})")
_RSP = re.compile(r"rsp: ([0-9a-f]{1,16})")
_STACK_HEAD = re.compile(r"^Guest stack trace from [er]sp=([0-9a-f]{1,16}):\s*((?:[0-9a-f]{8,16}\s*)*)$")
_STACK_WORDS = re.compile(r"^\s*((?:[0-9a-f]{8,16}\s+)*[0-9a-f]{8,16})\s*$")
# GNU Mach's kern/debug.c: "panic [on cpu N ]FILE:LINE: FUNCTION: MESSAGE", anywhere in the line: the kernel
# prints it wherever its console is (`start ext2fs: panic …` when a boot task's line was open).
_PANIC = re.compile(r"(?:^|(?<=\s))panic (?:on cpu \d{1,4} )?(\S{1,200}):(\d{1,7}): ([A-Za-z0-9_.]{1,100}): ?(.*)$")


@dataclass(frozen=True)
class Frame:
    address: int
    function: str | None = None
    location: str | None = None  # "file:line"

    def render(self, with_location: bool = True) -> str:
        if self.function is None:
            return f"{self.address:x}"
        return f"{self.function} ({self.location})" if with_location and self.location else self.function

    def summary(self) -> dict[str, Any]:
        return {"address": f"{self.address:x}", "function": self.function, "location": self.location}


@dataclass(frozen=True)
class Crash:
    """A guest crash as Xen printed it (the `Unhandled: vec …` line, the register dump, the guest stack)."""

    domid: int | None
    vector: int | None = None
    error_code: int | None = None
    rip: int | None = None
    cs: int | None = None
    cr2: int | None = None
    rsp: int | None = None
    stack: tuple[int, ...] = ()
    lines: tuple[str, ...] = ()  # Xen's lines, as printed (without the "(XEN) " prefix)
    site: Frame | None = None  # the symbolized RIP
    callers: tuple[Frame, ...] = ()  # stack words that are kernel text, symbolized, innermost first

    @property
    def what(self) -> str:
        if self.vector is None:
            return "crash"
        return VECTORS.get(self.vector, f"exception {self.vector}")

    def headline(self) -> str:
        """`page fault at ffffffff7ffffff0 in pmap_bootstrap_xen (i386/intel/pmap.c:700) ← biosmem_bootstrap_common`"""
        out = self.what
        if self.vector == 14 and self.cr2 is not None:
            out += f" at {self.cr2:x}"
        if self.error_code:
            out += f" (error code {self.error_code:04x})"
        if self.site is not None:
            out += f" in {self.site.render()}"
        elif self.rip is not None:
            out += f" at RIP {self.rip:x}"
        for c in self.callers:
            out += f" ← {c.render(with_location=False)}"
        return out

    def summary(self) -> dict[str, Any]:
        hexes = {k: (f"{v:x}" if v is not None else None) for k, v in (("rip", self.rip), ("cr2", self.cr2),
                                                                        ("rsp", self.rsp))}  # fmt: skip
        return {
            "domid": self.domid,
            "vector": self.vector,
            "what": self.what,
            "error_code": f"{self.error_code:04x}" if self.error_code is not None else None,
            **hexes,
            "site": self.site.summary() if self.site else None,
            "callers": [c.summary() for c in self.callers],
            "stack": [f"{w:x}" for w in self.stack],
            "xen_lines": list(self.lines),
            "headline": self.headline(),
        }


@dataclass(frozen=True)
class Panic:
    """GNU Mach's `panic FILE:LINE: FUNCTION: MESSAGE` line."""

    file: str
    line: int
    function: str
    message: str
    text: str  # the whole line as the guest printed it (bounded)

    def headline(self) -> str:
        return f"panic in {self.function} ({self.file}:{self.line}): {self.message}"

    def summary(self) -> dict[str, Any]:
        return {**self.__dict__, "headline": self.headline()}


# ------------------------------------------------------------------ reading the log


def _lines(text: str) -> list[str]:
    """Split at newlines only: `str.splitlines` also splits at \\r, form feeds and U+2028, which a guest prints."""
    return [ln[:MAX_LINE].rstrip("\r") for ln in text.split("\n")]


def find_crash(text: str, domid: int | None = None) -> Crash | None:
    """The first guest crash Xen reported in `text` (for `domid` when given), or None."""
    lines = _lines(text)
    xen = [(_XEN.match(ln), i) for i, ln in enumerate(lines)]
    start = None
    for m, i in xen:
        if m is None:
            continue
        body = m.group(1)
        u, c = _UNHANDLED.match(body), _CRASHED.match(body)
        hit = u or c
        if hit and (domid is None or int(hit.group(1)) == domid):
            start = i
            break
    if start is None:
        return None
    return _parse_crash(lines, start)


def _parse_crash(lines: Sequence[str], start: int) -> Crash:
    got: dict[str, Any] = {"domid": None}
    out: list[str] = []
    stack: list[int] = []
    in_stack = False
    for ln in lines[start:]:
        m = _XEN.match(ln)
        if m is None:
            continue  # other output (a guest's or dom0's) can be interleaved
        body = m.group(1)
        if len(out) >= MAX_CRASH_LINES:
            break
        if out and (_UNHANDLED.match(body) or _CRASHED.match(body)) and got.get("rip") is not None:
            break  # the next crash
        out.append(body)
        if u := _UNHANDLED.match(body):
            got.update(domid=int(u.group(1)), vector=int(u.group(2)), error_code=int(u.group(3), 16))
        elif c := _CRASHED.match(body):
            got["domid"] = int(c.group(1))
        elif r := _RIP.match(body):
            got.update(cs=int(r.group(1), 16), rip=int(r.group(2), 16))
        if cr2 := _CR2.search(body):
            got["cr2"] = int(cr2.group(1), 16)
        if rsp := _RSP.search(body):
            got["rsp"] = int(rsp.group(1), 16)
        if s := _STACK_HEAD.match(body):
            in_stack = True
            stack += [int(w, 16) for w in s.group(2).split()]
        elif in_stack:
            w = _STACK_WORDS.match(body)
            if w is None:
                break  # the stack dump is the last part of the crash report
            stack += [int(x, 16) for x in w.group(1).split()]
        if len(stack) >= MAX_STACK_WORDS:
            break
    return Crash(stack=tuple(stack[:MAX_STACK_WORDS]), lines=tuple(out), **got)


# GNU Mach's own trap report (i386/i386/trap.c), printed before it panics in kernel_trap:
# "Kernel General protection trap, eip 0xffffffff800054ca, code 0, cr2 0" then "trapno 13: …".
_MACH_TRAP = re.compile(r"Kernel (.{1,40}?) trap, eip 0x([0-9a-f]{1,16}), code ([0-9a-f]{1,16}), cr2 ([0-9a-f]{1,16})")
_MACH_TRAPNO = re.compile(r"^trapno (\d{1,3}):")


def find_mach_trap(guest: Sequence[str], domid: int | None = None) -> Crash | None:
    """GNU Mach's first kernel trap report in the guest's own lines (bodies, without their frame), as a crash (not
    yet symbolized)."""
    lines = [ln[:MAX_LINE] for ln in guest]
    for i, ln in enumerate(lines):
        m = _MACH_TRAP.search(ln)
        if m is None:
            continue
        body = lines[i : i + 12]
        vector = next((int(t.group(1)) for x in body if (t := _MACH_TRAPNO.match(x))), None)
        return Crash(
            domid, vector, int(m.group(3), 16), int(m.group(2), 16), None, int(m.group(4), 16), lines=tuple(body)
        )
    return None


def find_panic(guest: Sequence[str]) -> Panic | None:
    """GNU Mach's first panic in the guest's own lines (bodies, without their frame), wherever it starts."""
    for ln in guest:
        ln = ln[:MAX_LINE].strip()
        p = _PANIC.search(ln)
        if p:
            return Panic(p.group(1), int(p.group(2)), p.group(3), p.group(4).strip(), ln)
    return None


# ------------------------------------------------------------------ symbols (pyelftools, addr2line)


@dataclass(frozen=True)
class Symbols:
    """Where an unstripped kernel's code is, and its function symbols (the fallback when addr2line is missing)."""

    path: Path
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    text: tuple[tuple[int, int], ...] = ()  # executable ranges [lo, hi)

    def in_text(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self.text)

    def function(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0 or not (self.starts[i] <= addr < max(self.ends[i], self.starts[i] + 1)):
            return None
        return self.names[i]


def load_symbols(path: Path) -> Symbols | None:
    """The symbols of `path`, or None when it is no ELF with a symbol table (a bad file is not an error here)."""
    try:
        st = path.stat()
        return _load_symbols(path, st.st_mtime_ns, st.st_size)
    except (OSError, ValueError, KeyError, IndexError, AttributeError, AssertionError, TypeError):
        return None
    except Exception as e:  # pyelftools raises its own ELFError/DWARFError on crafted files
        if type(e).__module__.startswith("elftools"):
            return None
        raise


@cache
def _load_symbols(path: Path, mtime: int, size: int) -> Symbols | None:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)  # type: ignore[no-untyped-call]
        tab = elf.get_section_by_name(".symtab")  # type: ignore[no-untyped-call]
        if tab is None:
            return None
        text = tuple(
            (s["sh_addr"], s["sh_addr"] + s["sh_size"])
            for s in elf.iter_sections()  # type: ignore[no-untyped-call]
            if s["sh_flags"] & 0x4
        )  # SHF_EXECINSTR
        syms = sorted(
            (s["st_value"], s["st_value"] + s["st_size"], s.name)
            for s in tab.iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC" and s["st_value"] and s.name
        )
    return Symbols(path, tuple(s[0] for s in syms), tuple(s[1] for s in syms), tuple(s[2] for s in syms), text)


def addr2line(path: Path, addrs: Sequence[int]) -> dict[int, tuple[str | None, str | None]]:
    """(function, "file:line") per address, the innermost inlined function first (what `addr2line -f -i` says);
    empty when addr2line is missing or fails."""
    import shutil
    import subprocess

    tool = shutil.which("addr2line")
    if tool is None or not addrs:
        return {}
    try:
        out = subprocess.run(
            [tool, "-a", "-f", "-i", "-e", str(path), *(f"{a:x}" for a in addrs)],
            capture_output=True, text=True, timeout=30, check=True, errors="replace",
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[int, tuple[str | None, str | None]] = {}
    lines = out.splitlines()
    i = 0
    while i < len(lines):
        head = re.fullmatch(r"0x([0-9a-f]{1,16})", lines[i].strip())
        i += 1
        if head is None or i + 1 > len(lines):
            continue
        addr = int(head.group(1), 16)
        fn, loc = lines[i].strip(), lines[i + 1].strip() if i + 1 < len(lines) else ""
        i += 2
        if addr not in found:
            found[addr] = (None if fn == "??" else fn[:200], None if loc.startswith("??") else _short(loc)[:300])
        while i < len(lines) and not lines[i].startswith("0x"):
            i += 1  # the callers an inlined function was inlined into
    return found


def _short(loc: str) -> str:
    """A source location as GNU Mach's developers write it: relative to the source tree, no discriminator."""
    loc = loc.split(" (discriminator", 1)[0]
    for prefix in ("/usr/src/gnumach/build/", "/usr/src/gnumach/"):
        if loc.startswith(prefix):
            return loc[len(prefix) :]
    while loc.startswith("./") or loc.startswith("../"):
        loc = loc.split("/", 1)[1]
    return loc


def symbolize(crash: Crash, kernel: Path | None) -> Crash:
    """The crash with its RIP and the kernel-text words of its stack symbolized with the unstripped `kernel`."""
    symbols = load_symbols(kernel) if kernel is not None else None
    if symbols is None or crash.rip is None:
        return crash
    # A return address points just after its call: look up the byte before it.
    words = [w for w in crash.stack if symbols.in_text(w)]
    found = addr2line(symbols.path, [crash.rip, *(w - 1 for w in words)])

    def frame(addr: int) -> Frame:
        fn, loc = found.get(addr, (None, None))
        return Frame(addr, fn or symbols.function(addr), loc)

    site = frame(crash.rip)
    callers: list[Frame] = []
    seen = {site.function}
    for w in words:
        f = frame(w - 1)
        if f.function is None or f.function in seen:
            continue
        seen.add(f.function)
        callers.append(f)
        if len(callers) >= MAX_CALLERS:
            break
    return Crash(**{**crash.__dict__, "site": site, "callers": tuple(callers)})


def symbolize_panic(panic: Panic) -> Panic:
    """A panic carries its own file:line; shorten the path the way crash sites are shown."""
    return Panic(_short(panic.file), panic.line, panic.function, panic.message, panic.text)
