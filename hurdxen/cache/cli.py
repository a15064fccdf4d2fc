"""`hurdxen cache ls|verify|prune`: for the people who run the registry.

ls       every entry: its task, identity and size (from the OCI manifests; nothing is trusted or fetched)
verify   every entry checked as a pull checks it (signature, statement, stage manifest), and every blob fetched
         and hashed; exit 1 when any is refused
prune    delete entries that fail `verify` (`--refused`) and/or whose identity no current recipe makes
         (`--stale`, for a registry this checkout alone feeds); `--dry-run` only says what would go
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from hurdxen.cache import entry
from hurdxen.cache.config import CacheConfig, from_settings
from hurdxen.cache.registry import Registry
from hurdxen.core.errors import HurdxenError, printable

_IDENTITY = re.compile(r"-([0-9a-f]{64})$")


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def _config(root: Path) -> CacheConfig:
    from hurdxen.pipeline import recipes

    config = from_settings(recipes.load(root, overrides={}).settings, root)
    if config is None:
        raise HurdxenError(
            "hurdxen cache: no stage cache is configured",
            hint='set [settings] stage_cache = "oci://HOST/REPO" in hurdxen.local.toml, or HURDXEN_STAGE_CACHE',
        )
    return config


def current_tags(root: Path) -> set[str]:
    """The tags of every spec the recipes of `root` make now (any stage of the plan)."""
    from hurdxen.pipeline import recipes
    from hurdxen.pipeline.context import make_context
    from hurdxen.plan import make_plan

    r = recipes.load(root, overrides={})
    ctx, plan = make_context(r), make_plan(r)
    specs: list[Any] = []
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        specs += list(value) if isinstance(value, tuple) else [value] if value is not None else []
    return {entry.tag_for(s.task, s.identity(ctx)) for s in specs if hasattr(s, "task")}


def _entries(reg: Registry) -> list[str]:
    return sorted(t for t in reg.tags() if _IDENTITY.search(t))


def verify_entry(reg: Registry, tag: str) -> entry.Checked:
    """Everything a pull checks, and every blob fetched and hashed (written nowhere)."""
    checked = entry.check(reg, tag)
    for layer in checked.layers:
        reg.blob_to(layer.digest, layer.size, _Discard())  # type: ignore[arg-type]
    return checked


def cmd_ls(reg: Registry) -> int:
    for tag in _entries(reg):
        try:
            body, digest = reg.manifest(tag)
            doc = json.loads(body)
            size = sum(int(x.get("size", 0)) for x in doc.get("layers", []) if isinstance(x, dict))
            task = (doc.get("annotations") or {}).get("io.github.hurdxen.task", "?")
            print(f"{tag}  {printable(task, 60)}  {size} bytes  {digest}")
        except (HurdxenError, ValueError, AttributeError, TypeError) as e:
            print(f"{tag}  unreadable: {printable(getattr(e, 'message', e))}")
    return 0


def cmd_verify(reg: Registry) -> int:
    bad = 0
    for tag in _entries(reg):
        try:
            c = verify_entry(reg, tag)
            print(f"ok       {tag}  {c.task}  {sum(x.size for x in c.layers)} bytes  signed by {c.signer}")
        except HurdxenError as e:
            bad += 1
            print(f"refused  {tag}  {e.message}")
    return 1 if bad else 0


def cmd_prune(reg: Registry, root: Path, refused: bool, stale: bool, dry_run: bool) -> int:
    if not (refused or stale):
        raise HurdxenError("hurdxen cache prune: say what to prune", hint="--refused, --stale, or both")
    keep = current_tags(root) if stale else None
    for tag in _entries(reg):
        why = ""
        if keep is not None and tag not in keep:
            why = "no current recipe makes it"
        elif refused:
            try:
                verify_entry(reg, tag)
            except HurdxenError as e:
                why = e.message
        if not why:
            continue
        if not dry_run:
            _, digest = reg.manifest(tag)
            reg.delete_manifest(digest)
        print(f"{'would delete' if dry_run else 'deleted'}  {tag}  ({why})")
    return 0


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hurdxen cache", description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path.cwd(), help="project directory (default: .)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="list the entries")
    sub.add_parser("verify", help="check every entry as a pull would, and hash every blob")
    pr = sub.add_parser("prune", help="delete refused and/or stale entries")
    pr.add_argument("--refused", action="store_true", help="entries that fail verify")
    pr.add_argument("--stale", action="store_true", help="entries no current recipe makes")
    pr.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    reg = Registry(_config(args.root.resolve()))
    if args.command == "ls":
        return cmd_ls(reg)
    if args.command == "verify":
        return cmd_verify(reg)
    return cmd_prune(reg, args.root.resolve(), args.refused, args.stale, args.dry_run)
