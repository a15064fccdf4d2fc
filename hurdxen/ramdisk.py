"""The hurd-modules ramdisk: GNU Mach's Xen boot modules, written, read, checked and compared.

Layout, as GNU Mach's `kern/bootstrap.c` reads it on Xen (the x86_64 kernel reads the same 32-bit records):

  offset 0   records of 16 bytes, little-endian `{u32 mod_start, u32 mod_end, u32 cmdline, u32 reserved}`,
             offsets from the start of the ramdisk, `mod_end` exclusive; a record whose `mod_start` is 0 ends them
  then       the NUL-terminated command lines, written raw (GNU Mach expands `${…}`/`$(…)` itself)
  then       each module, uncompressed, starting on a 4096-byte boundary

No compression: GNU Mach's Xen path does not gunzip modules.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import posixpath
import re
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from hurdxen.errors import HurdxenError, printable
from hurdxen.fsutil import TMP_PREFIX, atomic_dir, sha256_bytes, write_atomic, write_json_atomic

PAGE = 4096
RECORD = struct.Struct("<IIII")
MAX_SIZE = 0xFFFFFFFF  # offsets are u32
RAMDISK_NAME = "hurd-modules"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "hurdxen-hurd-modules/1"
MAX_SYMLINK_HOPS = 16

Role = Literal["static", "ld.so", "elf"]

EXT2FS_CMDLINE = (
    "ext2fs --multiboot-command-line=${kernel-command-line} --host-priv-port=${host-port} "
    "--device-master-port=${device-port} --exec-server-task=${exec-task} -T typed ${root} "
    "$(task-create) $(task-resume)"
)
EXEC_CMDLINE = "exec /hurd/exec $(exec-task=task-create)"

# `ld.so (Debian GLIBC 2.41-6) stable release version 2.41.` — the package version sits inside the parentheses.
_LDSO_BANNER = re.compile(rb"\(Debian GLIBC ([^)\x00\s]{1,100})\)")


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


# ---------------------------------------------------------------------------------------------------------------
# The format


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
        if start % PAGE:
            warnings.append(f"record {idx}: module at offset {start} is not aligned to {PAGE} bytes")
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
    return Ramdisk(tuple(records), size, tuple(warnings))


# ---------------------------------------------------------------------------------------------------------------
# ELF checks


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
    """The Debian glibc version in ld.so's banner, or None when there is no banner."""
    found = {m.group(1).decode("ascii", "replace") for m in _LDSO_BANNER.finditer(data)}
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
                f"module {name!r} has no 'ld.so (Debian GLIBC <version>)' banner",
                hint="is this really ld.so from libc0.3?",
            )
        if info.ldso_version != libc_version:
            raise HurdxenError(
                f"module {name!r} is from glibc {info.ldso_version}, but the pinned libc0.3 version is {libc_version}",
                hint="take ld.so from the pinned libc0.3 package, or update the pin",
            )
    return info


# ---------------------------------------------------------------------------------------------------------------
# The stage


@dataclass(frozen=True)
class ModuleSpec:
    name: str  # for messages and the manifest, e.g. "ext2fs.static"
    path: str  # inside the extracted package trees, e.g. "hurd/ext2fs.static"
    cmdline: str
    role: Role = "elf"


@dataclass(frozen=True)
class RamdiskSpec:
    bits: Literal[32, 64]
    libc_version: str  # libc0.3's Debian version, e.g. "2.41-6"
    modules: tuple[ModuleSpec, ...]


def default_modules(bits: int) -> tuple[ModuleSpec, ...]:
    v = variant_for(bits)
    return (
        ModuleSpec("ext2fs.static", "hurd/ext2fs.static", EXT2FS_CMDLINE, "static"),
        ModuleSpec(v.ldso, f"lib/{v.ldso}", EXEC_CMDLINE, "ld.so"),
    )


def default_spec(bits: Literal[32, 64], libc_version: str) -> RamdiskSpec:
    return RamdiskSpec(bits, libc_version, default_modules(bits))


@dataclass(frozen=True)
class PinnedFile:
    """A local module file, accepted only with this sha256."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class ModuleResult:
    name: str
    path: str  # the spec's path inside the package trees
    source: str  # the file actually read
    cmdline: str
    size: int
    sha256: str
    offset: int


@dataclass(frozen=True)
class RamdiskResult:
    path: Path
    manifest_path: Path
    sha256: str
    size: int
    libc_version: str
    modules: tuple[ModuleResult, ...]


Inputs = Sequence[Path] | Mapping[str, PinnedFile]


def resolve_in_root(root: Path, rel: str) -> Path:
    """`rel` inside the tree `root`, following symlinks as if `root` were `/` (never escaping it)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            st = candidate.lstat()
        except OSError:  # missing, or a path component that is not a directory
            missing = "/".join([*resolved, part])
            raise HurdxenError(
                f"{rel} not found in {root} (no {missing})", hint="check the path and the tree"
            ) from None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise HurdxenError(f"{rel} in {root}: too many levels of symbolic links", hint="fix the symlink loop")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
        else:
            resolved.append(part)
    return root.joinpath(*resolved)


def _read_module(ms: ModuleSpec, inputs: Inputs) -> tuple[bytes, str]:
    if isinstance(inputs, Mapping):
        pinned = inputs.get(ms.name)
        if pinned is None:
            raise HurdxenError(f"no local file given for module {ms.name!r}", hint="pin one with its sha256")
        try:
            data = pinned.path.read_bytes()
        except OSError as e:
            raise HurdxenError(
                f"cannot read module {ms.name!r} from {pinned.path}: {e.strerror}", hint="check the pinned path"
            ) from None
        got = sha256_bytes(data)
        if got != pinned.sha256.lower():
            raise HurdxenError(
                f"module {ms.name!r} at {pinned.path} has sha256 {got}, pinned {pinned.sha256}",
                hint="the file changed; check it and update the pin",
            )
        return data, str(pinned.path)
    found: list[tuple[bytes, Path]] = []
    for root in inputs:
        try:
            p = resolve_in_root(root, ms.path)
        except HurdxenError:
            continue
        if p.is_file():
            found.append((p.read_bytes(), p))
    if not found:
        trees = ", ".join(str(r) for r in inputs) or "(none)"
        raise HurdxenError(
            f"module {ms.name!r}: {ms.path} is in none of the package trees ({trees})",
            hint="extract the hurd and libc0.3 packages there (dpkg-deb -x)",
        )
    if len({sha256_bytes(d) for d, _ in found}) > 1:
        raise HurdxenError(f"module {ms.name!r}: {ms.path} differs between {', '.join(str(p) for _, p in found)}")
    return found[0][0], str(found[0][1])


def build_hurd_modules(spec: RamdiskSpec, inputs: Inputs, out_dir: Path) -> RamdiskResult:
    """Check every module, then write `out_dir/hurd-modules` and `out_dir/manifest.json` together.

    `out_dir` is the stage's own directory: it is replaced as a whole, and left untouched on any error.
    """
    variant = variant_for(spec.bits)
    if not spec.modules:
        raise HurdxenError("the ramdisk spec lists no modules", hint="GNU Mach needs ext2fs.static and ld.so")
    loaded: list[tuple[ModuleSpec, bytes, str]] = []
    for ms in spec.modules:
        data, source = _read_module(ms, inputs)
        check_module(ms.name, ms.role, data, variant, spec.libc_version)
        loaded.append((ms, data, source))
    image = build_ramdisk([Module(ms.name, ms.cmdline, data) for ms, data, _ in loaded])
    # Read back what we wrote: the writer and the reader must agree before anything is published.
    parsed = parse_ramdisk(image, "built ramdisk")
    results = tuple(
        ModuleResult(ms.name, ms.path, source, ms.cmdline, len(data), sha256_bytes(data), rec.mod_start)
        for (ms, data, source), rec in zip(loaded, parsed.records, strict=True)
    )
    digest = sha256_bytes(image)
    manifest = {
        "format": MANIFEST_FORMAT,
        "bits": spec.bits,
        "arch": variant.arch,
        "libc_version": spec.libc_version,
        "ramdisk": {"file": RAMDISK_NAME, "sha256": digest, "size": len(image)},
        "modules": [
            # No host paths here: the manifest must be the same on every machine.
            {
                "name": r.name,
                "path": r.path,
                "cmdline": r.cmdline,
                "sha256": r.sha256,
                "size": r.size,
                "offset": r.offset,
            }
            for r in results
        ],
    }
    with atomic_dir(out_dir) as tmp:
        write_atomic(tmp / RAMDISK_NAME, image)
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
    return RamdiskResult(
        out_dir / RAMDISK_NAME, out_dir / MANIFEST_NAME, digest, len(image), spec.libc_version, results
    )


# ---------------------------------------------------------------------------------------------------------------
# User tools


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise HurdxenError(f"cannot read {path}: {e.strerror}", hint="check the path and its permissions") from None


def dump(path: Path) -> str:
    """A human-readable listing of a ramdisk; raises HurdxenError on a malformed one."""
    data = _read_file(path)
    rd = parse_ramdisk(data, str(path))
    out = [f"{path}: {rd.size} bytes, sha256 {sha256_bytes(data)}, {len(rd.records)} modules"]
    for r in rd.records:
        m = r.module
        out.append(
            f"  [{r.index}] {m.name}: offset {r.mod_start}..{r.mod_end} ({r.size} bytes), sha256 {sha256_bytes(m.data)}"
        )
        out.append(f"      cmdline @{r.cmdline_offset}: {m.cmdline}")
        try:
            info = inspect_elf(m.data, f"module {r.index}")
            out.append(f"      {info.summary()}")
            if info.ldso_version:
                out.append(f"      ld.so glibc version: {info.ldso_version}")
        except HurdxenError as e:
            out.append(f"      {e.message}")
    out.extend(f"  warning: {w}" for w in rd.warnings)
    # command lines and names come from the file: escape controls so none can rewrite the terminal or forge lines
    return "\n".join(printable(line, 8192) for line in out) + "\n"


def _ramdisk_ldso(data: bytes, where: str) -> tuple[Record, ElfInfo]:
    rd = parse_ramdisk(data, where)
    for r in rd.records:
        with contextlib.suppress(HurdxenError):
            info = inspect_elf(r.module.data, f"{where} module {r.index}")
            if info.ldso_version is not None and info.elf_type == "ET_DYN":
                return r, info
    raise HurdxenError(f"{where} holds no ld.so (no module carries a 'Debian GLIBC' banner)")


def _debugfs(image: Path, request: str) -> tuple[str, str]:
    env = dict(os.environ, DEBUGFS_PAGER="__none__", PAGER="__none__")
    try:
        p = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:
        raise HurdxenError("debugfs not found", hint="install e2fsprogs") from None
    # debugfs exits 0 even when the lookup fails: its stderr says what went wrong.
    errors = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if p.returncode != 0 or errors:
        raise HurdxenError(
            f"debugfs {request!r} on {image}: {'; '.join(errors) or f'exit {p.returncode}'}",
            hint="give an ext2/3/4 image (not partitioned) of a Hurd root with libc0.3 installed",
        )
    return p.stdout, p.stderr


def read_from_image(image: Path, path: str) -> bytes:
    """A file from an ext2/3/4 image via debugfs, following symlinks at the image's root."""
    if '"' in path or "\n" in path:
        raise HurdxenError(f"cannot look up {path!r} with debugfs (quote or newline in the path)")
    cur = "/" + posixpath.normpath(path).lstrip("/")
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX + "debugfs-") as tmp:
        out = Path(tmp) / "out"
        for _ in range(MAX_SYMLINK_HOPS):
            st, _ = _debugfs(image, f'stat "{cur}"')
            kind = re.search(r"Type: (\S+)", st)
            size = re.search(r"\bSize: (\d+)", st)
            if kind is None or size is None:
                raise HurdxenError(
                    f"cannot read the inode of {cur} in {image} (unexpected debugfs output)",
                    hint="check that debugfs (e2fsprogs) works on this image",
                )
            if kind.group(1) == "symlink":
                fast = re.search(r'Fast link dest: "(.*)"', st)
                if fast:
                    target = fast.group(1)
                else:
                    # A long target lives in a data block, which `dump` reads like a file.
                    _debugfs(image, f'dump "{cur}" "{out}"')
                    target = out.read_bytes().decode(errors="surrogateescape")
                cur = posixpath.normpath(posixpath.join(posixpath.dirname(cur), target))
                continue
            if kind.group(1) != "regular":
                raise HurdxenError(
                    f"{cur} in {image} is a {kind.group(1)}, not a regular file", hint="is libc0.3 installed?"
                )
            _debugfs(image, f'dump "{cur}" "{out}"')
            data = out.read_bytes()
            if len(data) != int(size.group(1)):
                raise HurdxenError(
                    f"debugfs read {len(data)} of {size.group(1)} bytes of {cur} from {image}",
                    hint="the image may be damaged; run e2fsck -n on it",
                )
            return data
    raise HurdxenError(f"{path} in {image}: too many levels of symbolic links", hint="fix the symlink loop")


def check_against(ramdisk_path: Path, root_or_image: Path) -> str:
    """Compare the ramdisk's ld.so with the installed one of a Hurd tree or ext2 image; raise on a mismatch."""
    where = str(ramdisk_path)
    rec, info = _ramdisk_ldso(_read_file(ramdisk_path), where)
    variant = variant_for(info.bits)
    rel = f"lib/{variant.ldso}"
    if root_or_image.is_dir():
        installed = resolve_in_root(root_or_image, rel)
        if not installed.is_file():
            raise HurdxenError(f"/{rel} in {root_or_image} is not a regular file", hint="is libc0.3 installed there?")
        theirs = installed.read_bytes()
    elif root_or_image.is_file():
        theirs = read_from_image(root_or_image, "/" + rel)
    else:
        raise HurdxenError(f"{root_or_image} does not exist", hint="give a Hurd root directory or an ext2 disk image")
    their_version = ldso_version(theirs, f"/{rel} of {root_or_image}")
    ours_sha, theirs_sha = sha256_bytes(rec.module.data), sha256_bytes(theirs)
    if their_version != info.ldso_version:
        raise HurdxenError(
            f"ramdisk ld.so is glibc {info.ldso_version} but /{rel} in {root_or_image} is glibc "
            f"{their_version or '(no banner)'}",
            hint="rebuild the ramdisk with the system's libc0.3 version, or upgrade the system's libc0.3",
        )
    if ours_sha != theirs_sha:
        raise HurdxenError(
            f"ramdisk ld.so and /{rel} in {root_or_image} are both glibc {info.ldso_version} but differ "
            f"(sha256 {ours_sha[:16]}… vs {theirs_sha[:16]}…)",
            hint="a rebuild of the same version? take both from the same libc0.3 package",
        )
    return f"ok: ramdisk ld.so (record {rec.index}, glibc {info.ldso_version}) matches /{rel} in {root_or_image}\n"


def cli(argv: list[str]) -> int:
    """`dump FILE` | `check FILE --against ROOT_OR_IMAGE`."""
    ap = argparse.ArgumentParser(prog="hurdxen ramdisk", description="Inspect hurd-modules ramdisks.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="list records, command lines, sizes, hashes")
    d.add_argument("file", type=Path)
    c = sub.add_parser("check", help="compare the ramdisk's ld.so with an installed Hurd's")
    c.add_argument("file", type=Path)
    c.add_argument("--against", type=Path, required=True, metavar="ROOT_OR_IMAGE")
    args = ap.parse_args(argv)
    actions: dict[str, Callable[[], str]] = {
        "dump": lambda: dump(args.file),
        "check": lambda: check_against(args.file, args.against),
    }
    try:
        sys.stdout.write(actions[args.cmd]())
    except HurdxenError as e:
        print(e.render(), file=sys.stderr)
        return 1
    return 0


__all__ = [
    "EXEC_CMDLINE",
    "EXT2FS_CMDLINE",
    "ElfInfo",
    "Module",
    "ModuleResult",
    "ModuleSpec",
    "PinnedFile",
    "Ramdisk",
    "RamdiskResult",
    "RamdiskSpec",
    "Record",
    "Variant",
    "build_hurd_modules",
    "build_ramdisk",
    "check_against",
    "check_module",
    "cli",
    "default_modules",
    "default_spec",
    "dump",
    "inspect_elf",
    "ldso_version",
    "parse_ramdisk",
    "read_from_image",
    "resolve_in_root",
]
