"""`hurdxen pins update` (and `doit pins`): move the Debian pins to the newest versions of their signed indexes (or
those of a snapshot date), check that they fit together, rewrite the recipes and the lock, and show what moved.

Consistency of a hurd-modules variant: libc0.3's version = `libc_version` = the version in the banner of the ld.so
inside libc0.3, and hurd's Depends on libc0.3 is satisfied by that version. An inconsistent set changes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hurdxen.core.errors import HurdxenError, printable
from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import fetch as sources
from hurdxen.sources import pinlock
from hurdxen.sources.deb import Resolution
from hurdxen.sources.fetch import Cache, DebPin

LIBC_PACKAGE = "libc0.3"
HURD_PACKAGE = "hurd"
UPDATE_COMMAND = "hurdxen pins update"


@dataclass(frozen=True)
class Change:
    stage: str
    pin: DebPin
    new: Resolution
    source: str  # "archive" or "snapshot <ts>"

    @property
    def moved(self) -> bool:
        return self.new.entry.version != self.pin.version


def collect(r: Recipes) -> list[tuple[str, DebPin]]:
    """Every Debian pin of the recipes, with the stage (recipe) it belongs to; keyring pins included: the plan's."""
    from hurdxen.plan import make_plan

    return make_plan(r).debian_pins()


def resolve_newest(pin: DebPin, cache: Cache, date: str | None) -> tuple[Resolution, str]:
    """The newest version in the live signed index (expired indexes refused), or in the snapshot taken at `date`."""
    if date is None:
        return sources_deb.resolve_deb(pin, cache, strict=True, newest=True), "archive"
    base = f"{cache.network.snapshot.rstrip('/')}/archive/{sources_deb.snapshot_archive(pin)}/{date}"
    return sources_deb.resolve_at(pin, cache, base, date, newest=True), f"snapshot {date}"


def check_consistent(changes: Sequence[Change], r: Recipes, cache: Cache) -> None:
    """Per hurd-modules variant: libc0.3 = ld.so's banner, and hurd's Depends accepts that libc0.3."""
    from debian.debian_support import Version

    from hurdxen.stages.hurd_modules import ramdisk

    by_variant: dict[str, dict[str, Change]] = {}
    for c in changes:
        if c.stage == "hurd-modules":
            by_variant.setdefault(c.pin.key, {})[c.pin.package] = c
    for key, pkgs in sorted(by_variant.items()):
        variant = key.split(".")[2]
        libc = pkgs.get(LIBC_PACKAGE)
        if libc is None:
            continue
        version = libc.new.entry.version
        bits = int(r["hurd-modules"]["variants"][variant]["bits"])
        ldso = ramdisk.variant_for(bits).ldso
        tree = sources_deb.extract_deb(fetch_resolved(libc, cache), cache)
        try:
            data = ramdisk.resolve_in_root(tree, f"lib/{ldso}").read_bytes()
        except (HurdxenError, OSError):
            data = b""
        banner = ramdisk.ldso_version(data, f"{LIBC_PACKAGE} {version}: /lib/{ldso}")
        if banner != version:
            raise HurdxenError(
                f"{key}: {LIBC_PACKAGE} {version}'s /lib/{ldso} says {banner or 'no version (no banner)'}: refusing "
                "to pin an inconsistent set",
                hint="the archive is mid-upload or the package is broken; try again later or use --date",
            )
        hurd = pkgs.get(HURD_PACKAGE)
        if hurd is None:
            continue
        for alternatives in relations(hurd.new.entry.depends, f"{key}: {HURD_PACKAGE} {hurd.new.entry.version}"):
            rels = [a for a in alternatives if a["name"] == LIBC_PACKAGE]
            if not rels:
                continue
            if not any(_satisfies(Version(version), a.get("version")) for a in rels):
                need = " | ".join(f"{a['name']} ({' '.join(a['version'] or ())})" for a in rels)
                raise HurdxenError(
                    f"{key}: {HURD_PACKAGE} {hurd.new.entry.version} depends on {need}, not met by {LIBC_PACKAGE} "
                    f"{version}: refusing to pin an inconsistent set",
                    hint="hurd was built against another libc; wait for the archive to settle or use --date",
                )


_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def relations(depends: str, where: str) -> list[list[Any]]:
    """A Depends field, parsed by python-debian, refused when any part of it is not a relation: python-debian
    returns such a part raw as a package "name" (and logs a warning), which silently disabled the libc check."""
    import logging

    from debian import deb822

    log = logging.getLogger("debian.deb822")
    quiet, log.disabled = log.disabled, True
    try:
        parsed = deb822.PkgRelation.parse_relations(depends[:65536])
    finally:
        log.disabled = quiet
    from debian.debian_support import Version

    for alternatives in parsed:
        for a in alternatives:
            version = a.get("version")
            try:
                ok = bool(_PACKAGE_NAME.fullmatch(str(a.get("name", "")))) and (
                    not version or bool(Version(version[1]))
                )
            except ValueError:
                ok = False
            if not ok:
                raise HurdxenError(
                    f"{where}: its Depends field cannot be parsed (at {printable(str(a.get('name')), 60)!r})",
                    hint="the index is broken or crafted: use another mirror or --date",
                )
    return parsed


def _satisfies(have: Any, rel: tuple[str, str] | None) -> bool:
    from debian.debian_support import Version

    if not rel:
        return True
    op, v = rel
    cmp = int(have > Version(v)) - int(have < Version(v))
    return bool({"<<": cmp < 0, "<=": cmp <= 0, "=": cmp == 0, ">=": cmp >= 0, ">>": cmp > 0}.get(op, False))


def fetch_resolved(c: Change, cache: Cache) -> Path:
    return sources.fetch_url_pinned(
        cache, c.new.url, c.new.entry.sha256, c.pin.name, c.pin.key + ".archive", pinned_by="the signed index"
    )


# ------------------------------------------------------------------ rewriting the recipes


def _k(name: str) -> str:
    return rf'(?:{re.escape(name)}|"{re.escape(name)}")'


def set_string(text: str, keys: Sequence[str], value: str, shown: str) -> str:
    """`text` (a TOML document) with the string at `keys` set to `value`, everything else byte for byte the same.

    Handles what recipes use: `key = "v"` under a [table] header, or `key = { …, sub = "v", … }` inline."""
    lines = text.splitlines(keepends=True)
    headers = [
        (i, pinlock.split_key(m.group(1)))
        for i, line in enumerate(lines)
        if (m := re.match(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$", line))
    ]
    best: tuple[int, int] | None = None  # (line index, keys consumed)
    for i, h in headers:
        if list(keys[: len(h)]) == h and (best is None or len(h) > best[1]):
            best = (i, len(h))
    start, used = (best[0] + 1, best[1]) if best else (0, 0)
    end = next((i for i, _ in headers if i >= start), len(lines))
    rest = list(keys[used:])
    string = r'"(?:[^"\\]|\\.)*"'
    if len(rest) == 1:
        pat = re.compile(rf"^(\s*{_k(rest[0])}\s*=\s*){string}")
    elif len(rest) == 2:
        pat = re.compile(rf"^(\s*{_k(rest[0])}\s*=\s*\{{.*?(?<![\w\"]){_k(rest[1])}\s*=\s*){string}")
    else:
        pat = None
    for i in range(start, end):
        if pat and pat.search(lines[i]):
            lines[i] = pat.sub(lambda m: m.group(1) + json.dumps(value), lines[i], count=1)
            new = "".join(lines)
            if pinlock.get_key(tomllib.loads(new), keys) == value:
                return new
            break
    raise HurdxenError(f"{shown}: cannot rewrite {'.'.join(keys)} automatically", hint=f"set it to {value!r} by hand")


def rewrite(root: Path, edits: Mapping[str, str]) -> list[str]:
    """Apply {recipe key path: new string} to recipes/<recipe>.toml files; return the files changed."""
    by_file: dict[Path, list[tuple[list[str], str]]] = {}
    for keypath, value in edits.items():
        keys = pinlock.split_key(keypath)
        by_file.setdefault(root / "recipes" / f"{keys[0]}.toml", []).append((keys[1:], value))
    changed = []
    for path, items in sorted(by_file.items()):
        text = original = path.read_text()
        for keys, value in items:
            text = set_string(text, keys, value, f"recipes/{path.name}")
        if text != original:
            from hurdxen.core import fsutil

            fsutil.write_atomic(path, text)
            changed.append(f"recipes/{path.name}")
    return changed


# ------------------------------------------------------------------ the command


def _has_key(r: Recipes, keypath: str) -> bool:
    return pinlock.get_key(r.data, pinlock.split_key(keypath)) is not None


def update(r: Recipes, cache: Cache, only: set[str] | None = None, date: str | None = None) -> list[Change]:
    """Resolve, check, rewrite recipes and lock. Nothing is written unless every pin resolved and fits."""
    if date is not None:
        try:
            datetime.strptime(date, sources_deb.SNAPSHOT_TS)
        except ValueError:
            raise HurdxenError(f"--date {date!r}: not a snapshot timestamp", hint="write YYYYMMDDTHHMMSSZ") from None
    changes = []
    wanted = [(stage, pin) for stage, pin in collect(r) if not only or stage in only]
    # Keyrings first: an archive whose key rotated is read with the newest keyring package, not the pinned one.
    keyrings: dict[str, DebPin] = {}
    for stage, pin in sorted(wanted, key=lambda sp: not sp[1].version_key.endswith(".keyring_package.version")):
        kp = pin.keyring_pin
        if kp is not None and kp.version_key in keyrings:
            pin = dataclasses.replace(pin, keyring_pin=keyrings[kp.version_key])
        res, source = resolve_newest(pin, cache, date)
        changes.append(Change(stage, pin, res, source))
        if pin.version_key.endswith(".keyring_package.version"):
            keyrings[pin.version_key] = dataclasses.replace(pin, version=res.entry.version, sha256=None)
    if only and not changes:
        raise HurdxenError(f"--only {','.join(sorted(only))}: no Debian pins there", hint="name a recipe: hurd-modules")
    for c in changes:
        fetch_resolved(c, cache)
    check_consistent(changes, r, cache)
    edits: dict[str, str] = {}
    for c in changes:
        if not c.moved:
            continue
        edits[c.pin.version_key] = c.new.entry.version
        if c.pin.sha256:
            edits[f"{c.pin.key}.sha256"] = c.new.entry.sha256
        variant = ".".join(c.pin.key.split(".")[:3])
        # the variant's libc_version, where it states one (else it is the libc0.3 pin itself)
        if c.stage == "hurd-modules" and c.pin.package == LIBC_PACKAGE and _has_key(r, f"{variant}.libc_version"):
            edits[f"{variant}.libc_version"] = c.new.entry.version
    rewrite(r.root, edits)
    lock_path = pinlock.path_for(r.root)
    with pinlock.locked(lock_path):
        entries = pinlock.load(lock_path)
        for c in changes:
            pin = dataclasses.replace(c.pin, version=c.new.entry.version)
            entries[pin.lock_id] = pinlock.keep_unless_changed(
                entries.get(pin.lock_id), sources_deb.lock_entry(pin, c.new)
            )
        pinlock.write(lock_path, entries)
    return changes


def table(changes: Sequence[Change]) -> Any:
    from rich.table import Table

    t = Table(title="Debian pins", title_justify="left")
    for col in ("input", "old", "new", "from"):
        t.add_column(col)
    for c in changes:
        new = f"[bold]{c.new.entry.version}[/bold]" if c.moved else c.new.entry.version
        t.add_row(f"{c.pin.package} ({c.pin.arch}, {c.pin.suite}) {c.pin.version_key}", c.pin.version, new, c.source)
    return t


def cli(argv: list[str]) -> int:
    """`hurdxen pins update [--only RECIPE[,RECIPE]] [--date TS]`."""
    from rich.console import Console

    from hurdxen.pipeline import context, recipes

    p = argparse.ArgumentParser(prog="hurdxen pins", description="resolve the Debian pins anew and rewrite the lock")
    p.add_argument("action", choices=["update"])
    p.add_argument("--root", type=Path, default=Path.cwd(), help="project directory (default: .)")
    p.add_argument("--only", default="", help="recipes to update, e.g. hurd-modules (default: all)")
    p.add_argument("--date", help="resolve from the snapshot taken then (YYYYMMDDTHHMMSSZ) instead of the archive")
    a = p.parse_args(argv)
    r = recipes.load(a.root.resolve(), overrides={})
    ctx = context.make_context(r)
    only = {s for s in a.only.split(",") if s} or None
    changes = update(r, ctx.cache, only, a.date)
    Console(width=None if sys.stdout.isatty() else 200).print(table(changes))
    moved = sum(c.moved for c in changes)
    print(
        f"{moved} of {len(changes)} pins moved; {pinlock.LOCK_FILE} rewritten at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    return 0
