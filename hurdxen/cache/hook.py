"""The stage cache in the generic stage task (tasks.stage_tasks): before a stage builds, pull its identity's entry
when the registry has one; after it built, push it when asked. Every stage gets this; none knows about it.

A pull that is refused (unsigned, wrongly signed, tampered, too big, a registry that stalls or lies) is one line on
the console and the stage is built here as without a cache. A push that fails is one line too: the build stands.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hurdxen.pipeline import manifest, stage
from hurdxen.cache import entry
from hurdxen.cache.config import CacheConfig
from hurdxen.cache.registry import Registry
from hurdxen.core.errors import HurdxenError

_tags: dict[str, set[str] | None] = {}


def available(config: CacheConfig, monitor: Any) -> set[str] | None:
    """The registry's tags, asked once per process (one request per page, not one per stage); None when it does
    not answer, then this run builds as without a cache."""
    if config.url not in _tags:
        try:
            _tags[config.url] = Registry(config).tags()
        except HurdxenError as e:
            monitor.note(f"stage cache: {config.url} not used this run: {e.message}")
            _tags[config.url] = None
    return _tags[config.url]


def probe(config: CacheConfig | None, spec: stage.Spec, ctx: Any) -> tuple[bool, bool]:
    """(hit, defer): whether `spec`'s identity is in the cache, and whether its images and sources can wait until
    the stage really has to be built here (it is in the cache, or this tree already holds that identity — pulled
    earlier, with no sources fetched). Without a stage cache: (False, False), as if this module did not exist."""
    if config is None:
        return False, False
    identity = spec.identity(ctx)
    tags = available(config, ctx.monitor())
    hit = tags is not None and entry.tag_for(spec.task, identity) in tags
    try:
        here = json.loads((stage.out_dir(ctx, spec.task) / manifest.MANIFEST).read_text()).get("identity") == identity
    except (OSError, ValueError, AttributeError):
        here = False
    return hit, hit or here


def run(
    build: Callable[[Any, Any], object],
    spec: stage.Spec,
    ctx: Any,
    hit: bool,
    deferred: Iterable[tuple[Callable[..., object], tuple[Any, ...]]] = (),
) -> None:
    """The stage task's action: pull on a hit, else (or when the entry is refused) run the deferred dependencies
    (builder images, sources) and build; push what was built when `cache_push` is on."""
    config: CacheConfig | None = getattr(ctx, "stage_cache", None)
    mon = ctx.monitor()
    if config is not None and hit:
        t0 = time.monotonic()
        try:
            fact = entry.pull(spec, ctx, config)
            size = _bytes(stage.out_dir(ctx, spec.task))
            mon.note(
                f"stage cache: {spec.task} pulled from {fact['ref']} ({size} bytes, {time.monotonic() - t0:.2f} s)"
            )
            return
        except HurdxenError as e:
            mon.note(f"{e.render()} — building {spec.task} here")
    for fn, args in deferred:  # module-level functions and their arguments: picklable for `doit -n`
        fn(*args)
    build(spec, ctx)
    if config is not None and config.push:
        t0 = time.monotonic()
        try:
            ref = entry.push(spec, ctx, config)
            if ref:
                size = _bytes(stage.out_dir(ctx, spec.task))
                mon.note(f"stage cache: {spec.task} pushed to {ref} ({size} bytes, {time.monotonic() - t0:.2f} s)")
        except HurdxenError as e:
            mon.note(f"{e.render()} — {spec.task} was built but not pushed")


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def cached_from(targets: Iterable[str]) -> str | None:
    """For the run summary: the reference a task's outputs were pulled from (its manifest says), else None."""
    for t in targets:
        if Path(t).name == manifest.MANIFEST:
            try:
                fact = json.loads(Path(t).read_text()).get("cached_from")
            except (OSError, ValueError, AttributeError):
                return None
            return str(fact.get("ref")) if isinstance(fact, dict) else None
    return None
