"""What every stage needs besides its own spec: where things go, the cache, the executor, the monitor."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.cache.config import CacheConfig, from_settings
from hurdxen.core.monitor import Monitor, default_monitor
from hurdxen.pipeline import containers
from hurdxen.pipeline.containers import BaseSpec, ImageSpec
from hurdxen.pipeline.executors import Executor, make_executor
from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources import pinlock
from hurdxen.sources.fetch import DEFAULT_DEADLINE, DEFAULT_MIN_RATE, DEFAULT_SNAPSHOT, Cache, Network

# doit's dependency database, kept beside the artifacts it describes.
DEP_FILE = ".doit.sqlite3"


def artifacts_dir(root: Path) -> Path:
    """Where outputs go: HURDXEN_ARTIFACTS, else <project>/artifacts."""
    env = os.environ.get("HURDXEN_ARTIFACTS")
    return Path(env).resolve() if env else root / "artifacts"


@dataclass(frozen=True)
class Context:
    root: Path
    artifacts: Path
    cache: Cache
    executor_kind: str
    source_date_epoch: int
    base: BaseSpec
    images: tuple[tuple[str, ImageSpec], ...]
    stage_cache: CacheConfig | None = None  # the shared OCI stage cache ([settings] stage_cache), if any

    def executor(self) -> Executor:
        return make_executor(self.executor_kind, self.artifacts)

    def monitor(self) -> Monitor:
        return default_monitor()

    def log(self, task: str) -> Path:
        return self.artifacts / "logs" / (task.replace(":", "-") + ".log")

    def image(self, name: str) -> ImageSpec:
        for n, spec in self.images:
            if n == name:
                return spec
        from hurdxen.core.errors import HurdxenError

        raise HurdxenError(
            f"no builder image named {name!r}", hint="add it to recipes/images.toml and containers/<name>/Dockerfile"
        )

    def image_tag(self, name: str) -> str:
        """Steps run on the image tag; the host executor has no images, so its identity is the host itself."""
        return self.image(name).tag if self.executor_kind == "docker" else "host"


def make_context(recipes: Recipes) -> Context:
    settings: dict[str, Any] = dict(recipes.settings)
    network = Network(
        proxy=settings.get("proxy") or os.environ.get("HURDXEN_PROXY") or None,
        timeout=int(settings.get("timeout", 60)),
        offline=bool(settings.get("offline", False)) or os.environ.get("HURDXEN_OFFLINE") == "1",
        snapshot=settings.get("snapshot") or os.environ.get("HURDXEN_SNAPSHOT") or DEFAULT_SNAPSHOT,
        deadline=float(settings.get("download_deadline", DEFAULT_DEADLINE)),
        min_rate=int(settings.get("download_min_rate", DEFAULT_MIN_RATE)),
    )
    cache_dir = settings.get("cache") or os.environ.get("HURDXEN_CACHE")
    lock = pinlock.path_for(recipes.root)
    cache = Cache(Path(cache_dir) if cache_dir else recipes.root / "cache", network, lock)
    base = containers.base_spec(recipes)
    images = tuple((spec.name, spec) for spec in containers.image_specs(recipes, base))
    artifacts = artifacts_dir(recipes.root)
    return Context(
        root=recipes.root,
        artifacts=artifacts,
        cache=cache,
        executor_kind=settings.get("executor") or os.environ.get("HURDXEN_EXECUTOR", "docker"),
        source_date_epoch=base.source_date_epoch,
        base=base,
        images=images,
        stage_cache=from_settings(settings, recipes.root),
    )
