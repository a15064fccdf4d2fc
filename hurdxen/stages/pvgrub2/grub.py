"""What pv-grub2 takes from GRUB: the grub-xen-bin tree of one platform (its modules, their dependencies, which
module provides which command) and the memdisk GRUB reads its configuration (and a standalone image's kernel and
boot modules) from: a reproducible ustar, since grub-mkstandalone 2.06 writes file mtimes in directory-read order."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hurdxen.core import archive
from hurdxen.core.errors import HurdxenError
from hurdxen.stages.pvgrub2.config import (
    BASE_MODULES,
    BUILTIN_COMMANDS,
    FLAVOUR_MODULES,
    PvGrubImageSpec,
    config_commands,
)

# ---------------------------------------------------------------------------------------------------- GRUB tree


def grub_platform_dir(grub_tree: Path, platform: str) -> Path:
    """Accept the extracted package root, its usr/lib/grub, or the platform directory itself."""
    for cand in (grub_tree / "usr/lib/grub" / platform, grub_tree / platform, grub_tree):
        if (cand / "kernel.img").is_file() and (cand / "moddep.lst").is_file():
            if cand == grub_tree and cand.name != platform:
                continue
            return cand
    raise HurdxenError(
        f"{grub_tree} holds no GRUB {platform} modules (kernel.img, moddep.lst)",
        hint="pass the extracted grub-xen-bin package (…/usr/lib/grub/<platform> inside it)",
    )


def read_moddep(platform_dir: Path) -> dict[str, tuple[str, ...]]:
    deps: dict[str, tuple[str, ...]] = {}
    for line in (platform_dir / "moddep.lst").read_text().splitlines():
        if ":" in line:
            name, rest = line.split(":", 1)
            deps[name.strip()] = tuple(rest.split())
    return deps


def read_command_list(platform_dir: Path) -> dict[str, str]:
    cmds: dict[str, str] = {}
    for line in (platform_dir / "command.lst").read_text().splitlines():
        if ":" in line:
            name, mod = line.split(":", 1)
            cmds[name.strip().lstrip("*")] = mod.strip()
    return cmds


def module_closure(names: Iterable[str], platform_dir: Path, where: str = "pvgrub") -> tuple[str, ...]:
    deps = read_moddep(platform_dir)
    out: set[str] = set()
    todo = list(names)
    while todo:
        m = todo.pop()
        if m in out:
            continue
        if m not in deps and not (platform_dir / f"{m}.mod").is_file():
            raise HurdxenError(
                f"{where}: GRUB module {m!r} does not exist for {platform_dir.name}",
                hint=f"the modules are the *.mod files of {platform_dir}",
            )
        out.add(m)
        todo.extend(deps.get(m, ()))
    return tuple(sorted(out))


def image_modules(spec: PvGrubImageSpec) -> tuple[str, ...]:
    """What the flavour needs plus the recipe's extras, before dependencies."""
    return tuple(dict.fromkeys([*BASE_MODULES, *FLAVOUR_MODULES[spec.flavour], *spec.modules]))


def check_commands(config: str, embedded: Iterable[str], platform_dir: Path, where: str) -> None:
    """Every command of the configuration must be built in or provided by an embedded module."""
    providers = read_command_list(platform_dir)
    have = set(embedded)
    for cmd in config_commands(config):
        if cmd in BUILTIN_COMMANDS or cmd.startswith("$"):
            continue
        mod = providers.get(cmd)
        if mod is None:
            raise HurdxenError(
                f"{where}: the configuration uses `{cmd}`, which no GRUB {platform_dir.name} module provides",
                hint="check extra_config for typos",
            )
        if mod not in have:
            raise HurdxenError(
                f"{where}: the configuration uses `{cmd}`, provided by module {mod!r}, which the image does not embed",
                hint=f"add {mod!r} to the image's `modules` in recipes/pvgrub2.toml",
            )


# ---------------------------------------------------------------------------------------------------- memdisk


@dataclass(frozen=True)
class MemdiskEntry:
    path: str
    mode: int
    size: int
    sha256: str | None  # None for directories


def build_memdisk(files: Mapping[str, bytes], source_date_epoch: int) -> tuple[bytes, tuple[MemdiskEntry, ...]]:
    """A reproducible ustar: parent directories included, names sorted, owner root (0/0), modes 0755/0644,
    every mtime SOURCE_DATE_EPOCH, no pax or GNU headers, no padding past the end-of-archive blocks."""
    dirs: set[str] = set()
    for name in files:
        if name.startswith("/") or ".." in name.split("/") or not name:
            raise HurdxenError(f"memdisk: bad path {name!r}", hint="memdisk paths are relative, without ..")
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    entries = sorted([(d, None) for d in dirs] + [(n, b) for n, b in files.items()], key=lambda e: e[0])
    listing = tuple(
        MemdiskEntry(name + "/", 0o755, 0, None)
        if data is None
        else MemdiskEntry(name, 0o644, len(data), hashlib.sha256(data).hexdigest())
        for name, data in entries
    )
    tar = archive.ustar(
        (archive.Entry(name, data, 0o755 if data is None else 0o644) for name, data in entries),
        source_date_epoch,
        owner="root",
        pad_record=False,
    )
    return tar, listing


def memdisk_listing(tar_bytes: bytes) -> tuple[MemdiskEntry, ...]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for m in tar.getmembers():
            if m.isdir():
                out.append(MemdiskEntry(m.name.rstrip("/") + "/", m.mode, 0, None))
            else:
                f = tar.extractfile(m)
                data = f.read() if f else b""
                out.append(MemdiskEntry(m.name, m.mode, m.size, hashlib.sha256(data).hexdigest()))
    return tuple(out)
