"""The boot check's serial log, told apart by source.

QEMU's serial line carries what several writers print. The log is split on `\\n` only (never at `\\r`, a form feed
or U+2028), and a line's first bytes say who wrote it; no writer's bytes can produce another's line start:

- `(XEN) …` — the hypervisor.
- `(dN) …` — domain N's `console_io` output. Xen adds the prefix, buffers the guest's text up to its newline and
  drops every byte that is not printable (xen/drivers/char/console.c), so a guest can neither end its line early
  nor start another.
- `[xl:NAME] …` (xl's output for case NAME) and `hurdxen-dom0: …` (the init's replies) — the dom0's toolstack
  (data/boot/init.sh); a guest's domid is read from these lines only.
- `[NAME] x<hex>` — guest NAME's PV console (xenconsoled's log) as the dom0 relays it: hex digits, so even when the
  dom0's write is split and another line lands in the middle, the rest of it cannot start a line of another source.
- anything else — the dom0's Linux; or, in a `dom0` case, GNU Mach itself, which writes to Xen's serial port with
  no prefix (docs/security.md: such a case has one source only, Xen's lines and its own).

`canonical` turns the bytes into text whose lines are all framed this way, with the relayed console decoded and
every control character but the tab escaped (`\\x1b`): what the verdicts read and the case logs keep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

Source = Literal["xen", "domu", "xl", "dom0", "console", "other"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
RELAY = re.compile(rb"\[(" + NAME.encode() + rb")\] x([0-9a-f]*)")
FRAME = re.compile(rf"\(XEN\) ?|\(d(\d{{1,5}})\) ?|\[xl:({NAME})\] |hurdxen-dom0: |\[({NAME})\] ")
DOM0_SAYS = "hurdxen-dom0: "


def _text(b: bytes) -> str:
    s = ANSI.sub("", b.decode(errors="replace"))
    return CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", s
    )


def raw_lines(raw: bytes, complete: bool = False) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, bytes) of each line of `raw`, split at `\\n` only; with `complete`, not the unfinished last
    line (a line is judged once its writer has ended it)."""
    pos = 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            if not complete and pos < len(raw):
                yield pos, len(raw), raw[pos:]
            return
        yield pos, nl, raw[pos:nl]
        pos = nl + 1


def canonical_line(line: bytes) -> str:
    line = line.rstrip(b"\r")  # the dom0's tty and Xen's serial driver each put a \r before the \n
    m = RELAY.fullmatch(line)
    if m is None:
        return _text(line)
    hexes = m.group(2)
    return f"[{m.group(1).decode()}] " + _text(bytes.fromhex(hexes[: len(hexes) // 2 * 2].decode()))


def canonical(raw: bytes, complete: bool = False) -> str:
    return "\n".join(canonical_line(b) for _, _, b in raw_lines(raw, complete))


@dataclass(frozen=True)
class Line:
    source: Source
    who: str  # the domid (domu) or case name (xl, console); "" otherwise
    body: str  # the line after its frame
    text: str  # the whole line


def parse_line(text: str) -> Line:
    m = FRAME.match(text)
    if m is None:
        return Line("other", "", text, text)
    body = text[m.end() :]
    if text.startswith("(XEN)"):
        return Line("xen", "", body, text)
    if m.group(1) is not None:
        return Line("domu", m.group(1), body, text)
    if m.group(2) is not None:
        return Line("xl", m.group(2), body, text)
    if m.group(3) is not None:
        return Line("console", m.group(3), body, text)
    return Line("dom0", "", body, text)


def parse(text: str) -> list[Line]:
    return [parse_line(t) for t in text.split("\n")] if text else []


@dataclass(frozen=True)
class CaseLog:
    """One case's view of the log: its guest's console, the toolstack's lines about it, Xen's lines and the dom0's
    own; (index, body) pairs, the index being the line's place in the log (for "before the first failure")."""

    lines: tuple[Line, ...]
    name: str
    dom0_case: bool  # GNU Mach is Xen's dom0: its unframed lines are the guest's
    domid: int | None

    @classmethod
    def of(cls, name: str, dom0_case: bool, text: str) -> CaseLog:
        lines = tuple(parse(text))
        return cls(lines, name, dom0_case, 0 if dom0_case else toolstack_domid(name, lines))

    def own(self, ln: Line) -> bool:
        """Whether a line may be this case's: another domain's `(dN)` lines and another case's `[NAME]` and
        `[xl:NAME]` lines are not (a guest destroyed in the background can still print while the next starts)."""
        if ln.source == "domu":
            return self.domid is not None and int(ln.who) == self.domid and not self.dom0_case
        if ln.source in ("xl", "console"):
            return ln.who == self.name and not self.dom0_case
        return True

    def select(self, *sources: Source) -> list[tuple[int, str]]:
        return [(i, ln.body) for i, ln in enumerate(self.lines) if ln.source in sources and self.own(ln)]

    def guest(self) -> list[tuple[int, str]]:
        """What the guest printed: its `(dN)` and relayed console lines; a dom0 case's unframed lines."""
        return self.select("other") if self.dom0_case else self.select("domu", "console")

    def xl(self) -> list[tuple[int, str]]:
        return self.select("xl")

    def dom0(self) -> list[tuple[int, str]]:
        return self.select("dom0")

    def xen(self) -> list[tuple[int, str]]:
        return self.select("xen")

    def linux(self) -> list[tuple[int, str]]:
        """The dom0 Linux kernel's own lines (none in a dom0 case: there the unframed lines are GNU Mach's)."""
        return [] if self.dom0_case else self.select("other")

    def own_text(self) -> str:
        return "".join(ln.text + "\n" for ln in self.lines if self.own(ln))


def toolstack_domid(name: str, lines: Sequence[Line]) -> int | None:
    """The guest's domid from the toolstack: xl's `Waiting for domain NAME (domid N)` (before the guest is
    unpaused) or the init's `created NAME domid N`; never from console text."""
    n = re.escape(name)
    xl = re.compile(rf"Waiting for domain {n} \(domid (\d{{1,5}})\)")
    init = re.compile(rf"created {n} domid (\d{{1,5}})$")
    for ln in lines:
        m = (xl.match(ln.body) if ln.source == "xl" and ln.who == name else None) or (
            init.match(ln.body) if ln.source == "dom0" else None
        )
        if m:
            return int(m.group(1))
    return None


def first(pairs: Sequence[tuple[int, str]], pattern: str) -> int:
    """The index of the first line holding `pattern`, or -1."""
    return next((i for i, body in pairs if pattern in body), -1)
