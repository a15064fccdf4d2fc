"""The hurd-modules ramdisk: GNU Mach's Xen boot modules read from the package trees (or pinned files), checked
(elf), written and read back (format). The stage publishes it: this module writes no manifest."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hurdxen.core.errors import HurdxenError
from hurdxen.core.fsutil import atomic_dir, sha256_bytes, write_atomic
from hurdxen.stages.hurd_modules.elf import (
    VARIANTS,
    ElfInfo,
    Role,
    Variant,
    check_module,
    inspect_elf,
    ldso_version,
    role_for,
    variant_for,
)
from hurdxen.stages.hurd_modules.format import Module, Ramdisk, Record, build_ramdisk, parse_ramdisk

RAMDISK_NAME = "hurd-modules"
MANIFEST_FORMAT = "hurdxen-hurd-modules/1"
MAX_SYMLINK_HOPS = 16

EXT2FS_CMDLINE = (
    "ext2fs --multiboot-command-line=${kernel-command-line} --host-priv-port=${host-port} "
    "--device-master-port=${device-port} --exec-server-task=${exec-task} -T typed ${root} "
    "$(task-create) $(task-resume)"
)
EXEC_CMDLINE = "exec /hurd/exec $(exec-task=task-create)"


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
    sha256: str
    size: int
    libc_version: str
    modules: tuple[ModuleResult, ...]
    facts: dict[str, object]  # what the stage's manifest records about the ramdisk (format, bits, modules)


@dataclass(frozen=True)
class Built:
    image: bytes
    modules: tuple[ModuleResult, ...]
    facts: dict[str, object]


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


def make(spec: RamdiskSpec, inputs: Inputs) -> Built:
    """Check every module, then the ramdisk's bytes (read back before anything is published) and its facts."""
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
    facts: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "bits": spec.bits,
        "arch": variant.arch,
        "libc_version": spec.libc_version,
        "ramdisk": {"file": RAMDISK_NAME, "sha256": sha256_bytes(image), "size": len(image)},
        # No host paths here: the manifest must be the same on every machine.
        "modules": [
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
    return Built(image, results, facts)


def build_hurd_modules(spec: RamdiskSpec, inputs: Inputs, out_dir: Path) -> RamdiskResult:
    """`make`, then `out_dir/hurd-modules` (out_dir replaced as a whole, untouched on any error)."""
    built = make(spec, inputs)
    with atomic_dir(out_dir) as tmp:
        write_atomic(tmp / RAMDISK_NAME, built.image)
    return result_of(built, out_dir / RAMDISK_NAME, spec.libc_version)


def result_of(built: Built, path: Path, libc_version: str) -> RamdiskResult:
    return RamdiskResult(path, sha256_bytes(built.image), len(built.image), libc_version, built.modules, built.facts)


# The stage's API, and the format's and module checks' names its users (pins, pv-grub2, tests) take from here.
__all__ = [
    "EXEC_CMDLINE",
    "EXT2FS_CMDLINE",
    "VARIANTS",
    "Built",
    "ElfInfo",
    "Module",
    "ModuleResult",
    "ModuleSpec",
    "PinnedFile",
    "Ramdisk",
    "RamdiskResult",
    "RamdiskSpec",
    "Record",
    "Role",
    "Variant",
    "build_hurd_modules",
    "build_ramdisk",
    "check_module",
    "default_modules",
    "default_spec",
    "inspect_elf",
    "ldso_version",
    "make",
    "parse_ramdisk",
    "resolve_in_root",
    "result_of",
    "role_for",
    "variant_for",
]
