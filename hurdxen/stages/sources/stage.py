"""Stage: sources. Every pinned input of the plan — a tarball by sha256, a git commit, a Debian package at an exact
version — fetched and verified into the cache (`cache/blobs/sha256/…`, `cache/git/…`), one task per pin, so later
builds run offline.

The specs are not read from a recipe of their own: `plan.make_plan` makes one `PinSpec` per pin that the other specs
list (`Spec.pins()`), so no stage's pins are listed twice. What a fetch makes lives in the shared, content-addressed
cache, not under `artifacts/`: the manifest (`artifacts/sources/<name>/manifest.json`) has no outputs of its own and
records the cache objects as `cached` (paths relative to the cache, with their sha256 or commit).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import git as sources_git
from hurdxen.sources.fetch import DebPin, GitPin, Pin, TarballPin, fetch_tarball, is_cached_tarball

STAGE = "sources"


@dataclass(frozen=True)
class PinSpec:
    """One pinned input; its identity is the pin itself (what it names, where it is fetched from)."""

    pin: Pin

    @property
    def task(self) -> str:
        return stage.pin_task(self.pin)

    @property
    def doc(self) -> str:
        return self.pin.name

    def identity(self, ctx: Context) -> str:
        return stage.identity(STAGE, self)

    def outputs(self, ctx: Context) -> dict[str, Path]:
        return {}  # the cache objects, shared by every project copy: the manifest records them as `cached`

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps()

    def pins(self) -> tuple[Pin, ...]:
        return ()  # it is the pin: nothing else to fetch first


@dataclass(frozen=True)
class SourceResult:
    task: str
    path: Path  # the blob, or the git mirror
    seconds: float


def specs(pins: Iterable[Pin]) -> list[PinSpec]:
    """One spec per `sources:` task: pins that name the same task (several stages reading one input) are one."""
    unique: dict[str, PinSpec] = {}
    for pin in pins:
        unique.setdefault(stage.pin_task(pin), PinSpec(pin))
    return list(unique.values())


def fetch(pin: Pin, ctx: Context) -> Path:
    """The pin's bytes in the cache (fetched and verified unless already there): the blob, or the git mirror."""
    if isinstance(pin, TarballPin):
        return fetch_tarball(pin, ctx.cache)
    if isinstance(pin, GitPin):
        return sources_git.fetch_git(pin, ctx.cache)
    return sources_deb.fetch_deb(pin, ctx.cache)


def present(spec: PinSpec, ctx: Context) -> bool:
    """The pin is in the cache (for git: its mirror has the commit); else its task runs again."""
    pin = spec.pin
    if isinstance(pin, TarballPin):
        return is_cached_tarball(pin, ctx.cache)
    if isinstance(pin, GitPin):
        return sources_git.is_cached_git(pin, ctx.cache)
    return sources_deb.is_cached_deb(pin, ctx.cache)


def record(pin: Pin, path: Path, ctx: Context) -> dict[str, Any]:
    """The manifest's record of the pin (for a Debian package, the one record every stage writes)."""
    if isinstance(pin, DebPin):
        return sources_deb.manifest_record(pin, path, ctx.cache)
    if isinstance(pin, GitPin):
        return {"git": pin.url, "commit": pin.commit, **({"ref": pin.ref} if pin.ref else {})}
    return {"url": pin.url, "sha256": pin.sha256}


def cached(pin: Pin, path: Path, ctx: Context) -> dict[str, Any]:
    """Where the fetch put it, relative to the cache, and what it is."""
    rel = path.relative_to(ctx.cache.root).as_posix()
    if isinstance(pin, GitPin):
        return {"mirror": {"path": rel, "commit": pin.commit}}
    sha = pin.sha256 if isinstance(pin, TarballPin) else path.name
    return {"deb" if isinstance(pin, DebPin) else "blob": {"path": rel, "sha256": sha}}


FETCHERS = {
    TarballPin: "hurdxen.sources.fetch.fetch_tarball",
    GitPin: "hurdxen.sources.git.fetch_git",
    DebPin: "hurdxen.sources.deb.fetch_deb",
}


def build(spec: PinSpec, ctx: Context) -> SourceResult:
    """Entry point: fetch and verify one pin into the cache, then publish its manifest atomically."""
    start = time.monotonic()
    path = fetch(spec.pin, ctx)
    with fsutil.atomic_dir(stage.out_dir(ctx, spec.task)) as out:
        manifest.write(
            out,
            spec,
            ctx,
            inputs={"pin": record(spec.pin, path, ctx)},
            step=manifest.in_process(FETCHERS[type(spec.pin)]),
            extra={"cached": cached(spec.pin, path, ctx)},
        )
    return SourceResult(spec.task, path, time.monotonic() - start)
