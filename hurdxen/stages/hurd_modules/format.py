"""The hurd-modules ramdisk format: GNU Mach's Xen boot modules, written and read back (bounded, for crafted files).

Layout, as GNU Mach's `kern/bootstrap.c` reads it on Xen (the x86_64 kernel reads the same 32-bit records):

  offset 0   records of 16 bytes, little-endian `{u32 mod_start, u32 mod_end, u32 cmdline, u32 reserved}`,
             offsets from the start of the ramdisk, `mod_end` exclusive; a record whose `mod_start` is 0 ends them
  then       the NUL-terminated command lines, written raw (GNU Mach expands `${…}`/`$(…)` itself)
  then       each module, uncompressed, starting on a 4096-byte boundary

No compression: GNU Mach's Xen path does not gunzip modules.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hurdxen.core.errors import HurdxenError

PAGE = 4096
RECORD = struct.Struct("<IIII")
MAX_SIZE = 0xFFFFFFFF  # offsets are u32


@dataclass(frozen=True)
class Module:
    name: str
    cmdline: str
    data: bytes


@dataclass(frozen=True)
class Record:
    """One parsed table record, with the module it points at."""

    index: int
    mod_start: int
    mod_end: int
    cmdline_offset: int
    reserved: int
    module: Module

    @property
    def size(self) -> int:
        return self.mod_end - self.mod_start


@dataclass(frozen=True)
class Ramdisk:
    records: tuple[Record, ...]
    size: int
    warnings: tuple[str, ...] = ()

    @property
    def modules(self) -> tuple[Module, ...]:
        return tuple(r.module for r in self.records)


def _align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def _encode_cmdline(m: Module) -> bytes:
    raw = m.cmdline.encode()
    if b"\x00" in raw:
        raise HurdxenError(f"command line of module {m.name!r} contains a NUL byte", hint="remove it from the spec")
    return raw + b"\x00"


def build_ramdisk(modules: Sequence[Module]) -> bytes:
    """The ramdisk for `modules`, in order. Deterministic: same modules, same bytes."""
    if not modules:
        raise HurdxenError("a hurd-modules ramdisk needs at least one module", hint="GNU Mach panics without one")
    lines = [_encode_cmdline(m) for m in modules]
    table_size = RECORD.size * (len(modules) + 1)
    cmd_offsets: list[int] = []
    pos = table_size
    for line in lines:
        cmd_offsets.append(pos)
        pos += len(line)
    starts: list[int] = []
    for m in modules:
        pos = _align(pos)
        starts.append(pos)
        pos += len(m.data)
    if pos > MAX_SIZE:
        raise HurdxenError(
            f"ramdisk would be {pos} bytes, beyond the 32-bit offsets of the record table",
            hint="the modules are far too large; check their paths",
        )
    out = bytearray(pos)
    for i, m in enumerate(modules):
        # An empty module at offset 0 is impossible (the table is there), so mod_start is never 0 here.
        RECORD.pack_into(out, i * RECORD.size, starts[i], starts[i] + len(m.data), cmd_offsets[i], 0)
        out[cmd_offsets[i] : cmd_offsets[i] + len(lines[i])] = lines[i]
        out[starts[i] : starts[i] + len(m.data)] = m.data
    # The terminator record is already zero.
    return bytes(out)


MAX_RECORDS = 1024  # bounds the work on a crafted table (the overlap checks compare records pairwise)
MAX_CMDLINE = 4096  # bytes searched for a command line's NUL


def _fail(message: str, hint: str | None = None) -> HurdxenError:
    return HurdxenError(message, hint=hint or "this is not a hurd-modules ramdisk, or it is damaged; rebuild it")


def _no_terminator(where: str, i: int, off: int, data_floor: int) -> HurdxenError:
    return _fail(
        f"{where}: record table has no terminator: record {i} at offset {off} runs into data at "
        f"offset {data_floor} (a record whose mod_start is 0 must end the table)"
    )


def parse_ramdisk(data: bytes, where: str = "ramdisk") -> Ramdisk:
    """Read and strictly validate a ramdisk. Errors name the record index and byte offset."""
    size = len(data)
    raw: list[tuple[int, int, int, int]] = []
    # The table may not run into the first byte an earlier record points at.
    data_floor = size
    i = 0
    while True:
        off = i * RECORD.size
        if off + RECORD.size > size:
            if data_floor < size:
                raise _no_terminator(where, i, off, data_floor)
            if off == size:
                raise _fail(f"{where}: record table has no terminator: file ends after {i} records at offset {off}")
            raise _fail(
                f"{where}: truncated record table: record {i} at offset {off} needs {RECORD.size} bytes, "
                f"only {size - off} left"
            )
        rec = RECORD.unpack_from(data, off)
        if rec[0] == 0:
            break
        if i >= MAX_RECORDS:
            raise _fail(f"{where}: more than {MAX_RECORDS} records (a hurd-modules ramdisk holds a handful)")
        if off + RECORD.size > data_floor:
            raise _no_terminator(where, i, off, data_floor)
        raw.append(rec)
        data_floor = min(data_floor, rec[0], rec[2])
        i += 1
    table_end = (len(raw) + 1) * RECORD.size
    if not raw:
        raise _fail(f"{where}: record table is empty (record 0 is the terminator)", hint="GNU Mach needs modules")

    warnings: list[str] = []
    records: list[Record] = []
    for idx, (start, end, cmd, reserved) in enumerate(raw):
        off = idx * RECORD.size
        at = f"{where}: record {idx} (offset {off})"
        if start < table_end:
            raise _fail(f"{at}: module starts at {start}, inside the record table (which ends at {table_end})")
        if end < start:
            raise _fail(f"{at}: module end {end} is before its start {start}")
        if end > size:
            raise _fail(f"{at}: module end {end} is past the end of the file ({size} bytes)")
        if end == start:
            raise _fail(f"{at}: module at offset {start} is empty")
        if cmd < table_end:
            raise _fail(f"{at}: command line offset {cmd} is inside the record table (which ends at {table_end})")
        if cmd >= size:
            raise _fail(f"{at}: command line offset {cmd} is past the end of the file ({size} bytes)")
        nul = data.find(b"\x00", cmd, cmd + MAX_CMDLINE + 1)
        if nul < 0:
            raise _fail(f"{at}: command line at offset {cmd} is not NUL-terminated within {MAX_CMDLINE} bytes")
        try:
            cmdline = data[cmd:nul].decode()
        except UnicodeDecodeError as e:
            raise _fail(
                f"{at}: command line at offset {cmd} is not UTF-8 ({e.reason} at byte {cmd + e.start})"
            ) from None
        if reserved:
            warnings.append(f"record {idx}: reserved field is {reserved:#x}, not 0")
        # Modules are named after their command line's first word, as GNU Mach's boot log does.
        name = cmdline.split(" ", 1)[0] or f"module{idx}"
        records.append(Record(idx, start, end, cmd, reserved, Module(name, cmdline, data[start:end])))

    by_start = sorted(records, key=lambda r: (r.mod_start, r.index))
    for a, b in itertools.pairwise(by_start):
        if b.mod_start < a.mod_end:
            raise _fail(
                f"{where}: modules overlap: record {a.index} [{a.mod_start}, {a.mod_end}) and "
                f"record {b.index} [{b.mod_start}, {b.mod_end})"
            )
    for r in records:
        cmd_end = r.cmdline_offset + len(r.module.cmdline.encode()) + 1
        for m in by_start:
            if r.cmdline_offset < m.mod_end and m.mod_start < cmd_end:
                raise _fail(
                    f"{where}: record {r.index}: command line [{r.cmdline_offset}, {cmd_end}) overlaps the module "
                    f"of record {m.index} [{m.mod_start}, {m.mod_end})"
                )
    for r in records:
        if r.mod_start % PAGE:
            # GNU Mach maps a module by whole pages from its start: it cannot use one that starts mid-page.
            raise _fail(
                f"{where}: record {r.index} (offset {r.index * RECORD.size}): module at offset {r.mod_start} is not "
                f"aligned to {PAGE} bytes",
                hint="GNU Mach maps each module from a page boundary: rebuild the ramdisk with hurdxen",
            )
    return Ramdisk(tuple(records), size, tuple(warnings))
