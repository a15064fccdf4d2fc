"""doit tasks, generated from the recipes. `dodo.py` only re-exports what is here.

Every action is a module-level function with picklable arguments (so `doit -n 2` works), and every stage task
carries one `config_changed` on its identity: a hash of its inputs, options, step script and builder image.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter
from doit.tools import config_changed

from hurdxen import containers, executors, fsutil, lock, mig, recipes
from hurdxen.context import DEP_FILE, Context, artifacts_dir, make_context
from hurdxen.errors import HurdxenError
from hurdxen.sources import (
    DebPin,
    GitPin,
    TarballPin,
    fetch_deb,
    fetch_git,
    fetch_tarball,
    is_cached_deb,
    is_cached_git,
    is_cached_tarball,
)

# The project directory (recipes/, containers/, artifacts/): the directory of the dodo.py doit runs, set by
# `configure()` from dodo.py. Not this package's location: the code may be installed elsewhere, or shared by several
# project copies. Before configure() it is the working directory (doit changes into the dodo.py's directory).
ROOT = Path.cwd()
TaskDict = dict[str, Any]


class Reporter(ConsoleReporter):  # type: ignore[misc]
    """Prints a failed task's `error: … (hint: …)` line without the traceback doit adds for exceptions."""

    def _write_failure(self, result: dict[str, Any], write_exception: bool = True) -> None:
        msg = str(result["exception"].message)
        if msg.startswith("error: "):
            self.write(f"{result['task'].name}: {msg}\n")
        else:
            super()._write_failure(result, write_exception)


DOIT_CONFIG: dict[str, Any] = {
    "backend": "sqlite3",
    "dep_file": str(artifacts_dir(ROOT) / DEP_FILE),
    "default_tasks": ["build"],
    "verbosity": 2,
    "reporter": Reporter,
    "sort": "definition",
}


def configure(root: Path) -> None:
    """Called by dodo.py with its own directory, before doit reads DOIT_CONFIG.

    doit opens the dependency file before it generates any task, so the file's place (beside the artifacts, which
    HURDXEN_ARTIFACTS may move) must be known here, not in `load()`.
    """
    global ROOT
    ROOT = root.resolve()
    dep = artifacts_dir(ROOT) / DEP_FILE
    dep.parent.mkdir(parents=True, exist_ok=True)
    DOIT_CONFIG["dep_file"] = str(dep)


def guarded(fn: Callable[..., object], *args: Any) -> TaskFailed | None:
    """Run a stage entry point; a user error becomes one line, not a traceback."""
    try:
        fn(*args)
    except HurdxenError as e:
        return TaskFailed(e.render())
    except OSError as e:
        if fsutil.is_disk_full(e):
            where = e.filename or ROOT
            return TaskFailed(fsutil.disk_full("the build", Path(where).parent if e.filename else where).render())
        raise
    return None


# ------------------------------------------------------------------ loading


_loaded: tuple[recipes.Recipes, Context] | None = None


def load() -> tuple[recipes.Recipes, Context]:
    """Validate every recipe once, before any task is generated; exit with one line on bad input."""
    global _loaded
    if _loaded is None:
        try:
            r = recipes.load(ROOT)
            ctx = make_context(r)
        except HurdxenError as e:
            sys.stderr.write(e.render() + "\n")
            raise SystemExit(2) from None
        if lock.doit_command(sys.argv) not in lock.READ_ONLY_COMMANDS and lock.running_doit(sys.argv):
            lock.hold(ctx.artifacts)
            # Only the lock holder may clean up: the containers and temp dirs could be another build's otherwise.
            # Containers first: a killed build's step may still be writing into its temp dirs.
            if ctx.executor_kind == "docker":
                executors.remove_stale_containers(ctx.artifacts)
            fsutil.sweep_tmp(ctx.artifacts)
        _loaded = (r, ctx)
    return _loaded


# ------------------------------------------------------------------ actions (module level: picklable)


def act_base(ctx: Context) -> TaskFailed | None:
    return guarded(lambda: containers.ensure_base(ctx.base, ctx.cache.root, ctx.log("base"), ctx.monitor()))


def act_image(ctx: Context, name: str) -> TaskFailed | None:
    return guarded(lambda: containers.ensure_image(ctx.image(name), ctx.log(f"image:{name}"), ctx.monitor()))


def act_fetch(pin: TarballPin | GitPin | DebPin, ctx: Context) -> TaskFailed | None:
    if isinstance(pin, TarballPin):
        return guarded(fetch_tarball, pin, ctx.cache)
    if isinstance(pin, GitPin):
        return guarded(fetch_git, pin, ctx.cache)
    return guarded(fetch_deb, pin, ctx.cache)


def is_fetched(pin: TarballPin | GitPin | DebPin, ctx: Context) -> bool:
    if isinstance(pin, TarballPin):
        return is_cached_tarball(pin, ctx.cache)
    if isinstance(pin, GitPin):
        return is_cached_git(pin, ctx.cache)
    return is_cached_deb(pin, ctx.cache)


def image_present(tag: str) -> bool:
    try:
        return containers.image_exists(tag)
    except HurdxenError:
        return False  # no engine: let the task run and fail with its own clear line


def act_mig(spec: mig.MigSpec, ctx: Context) -> TaskFailed | None:
    return guarded(mig.build, spec, ctx)


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ task generators


def pin_task_name(pin: TarballPin | GitPin | DebPin) -> str:
    if isinstance(pin, DebPin):
        return f"sources:{pin.package}_{pin.version.split(':')[-1]}_{pin.arch}"
    return f"sources:{pin.name.replace(' ', '-')}"


def image_deps(ctx: Context, image: str) -> list[str]:
    return [f"image:{image}"] if ctx.executor_kind == "docker" else []


def task_base() -> TaskDict:
    """containers: the Debian base rootfs (mmdebstrap, docker import), tagged by recipe hash"""
    _, ctx = load()
    if ctx.executor_kind != "docker":
        return {"actions": None, "doc": "containers: (host executor: no base image)"}
    return {
        "actions": [(act_base, [ctx])],
        "uptodate": [(image_present, [ctx.base.tag])],
        "verbosity": 2,
    }


def task_image() -> Iterator[TaskDict]:
    """containers: builder images from containers/<name>/Dockerfile, tagged by content hash"""
    _, ctx = load()
    yield {"basename": "image", "name": None, "doc": task_image.__doc__}
    if ctx.executor_kind != "docker":
        return
    for name, spec in ctx.images:
        yield {
            "name": name,
            "doc": f"builder image {spec.tag}",
            "actions": [(act_image, [ctx, name])],
            "task_dep": ["base"],
            "uptodate": [(image_present, [spec.tag])],
        }


def all_pins() -> list[TarballPin | GitPin | DebPin]:
    r, _ = load()
    pins: list[TarballPin | GitPin | DebPin] = []
    for s in mig.specs(r):
        pins += [s.source, s.patches, s.headers]
    unique: dict[str, TarballPin | GitPin | DebPin] = {}
    for p in pins:
        unique.setdefault(pin_task_name(p), p)
    return list(unique.values())


def task_sources() -> Iterator[TaskDict]:
    """sources: fetch and verify every pinned input into the cache (then builds run offline)"""
    _, ctx = load()
    yield {"basename": "sources", "name": None, "doc": task_sources.__doc__}
    for pin in all_pins():
        yield {
            "name": pin_task_name(pin).split(":", 1)[1],
            "doc": f"{pin.name}",
            "actions": [(act_fetch, [pin, ctx])],
            "uptodate": [(is_fetched, [pin, ctx])],
        }


def task_mig() -> Iterator[TaskDict]:
    """mig: the Mach Interface Generator for each target (i686-gnu, x86_64-gnu)"""
    r, ctx = load()
    yield {"basename": "mig", "name": None, "doc": task_mig.__doc__}
    for spec in mig.specs(r):
        outs = mig.outputs(ctx, spec.target)
        yield {
            "name": spec.target,
            "doc": f"{spec.target}-mig from {Path(spec.source.url).name}",
            "actions": [(act_mig, [spec, ctx])],
            "task_dep": [
                *image_deps(ctx, spec.image),
                *(pin_task_name(p) for p in (spec.source, spec.patches, spec.headers)),
            ],
            "targets": [str(p) for p in outs],
            "uptodate": [config_changed(spec.identity(ctx.image_tag(spec.image)))],
            "clean": [(remove_dir, [str(mig.out_dir(ctx, spec.target))])],
        }


def task_build() -> TaskDict:
    """build: everything the default recipes describe"""
    return {"actions": None, "task_dep": ["mig"]}


def environment_summary() -> str:
    return f"HURDXEN_EXECUTOR={os.environ.get('HURDXEN_EXECUTOR', 'docker')}"
