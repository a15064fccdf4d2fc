"""doit tasks, generated from the recipes: loading and checking them, sources, images and the stages; the boot check's
tasks are in tasks_boot, the release's in tasks_release. `dodo.py` only re-exports them.

Every action is a module-level function with picklable arguments (so `doit -n 2` works), and every stage task
carries one `config_changed` on its identity: a hash of its inputs, options, step script and builder image.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from hurdxen.boot import stage as boot
from hurdxen.cache import hook as cache_hook
from hurdxen.core import fsutil, lock
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import containers, executors, recipes, stage
from hurdxen.pipeline.context import DEP_FILE, Context, artifacts_dir, make_context
from hurdxen.pipeline.manifest import MANIFEST
from hurdxen.pipeline.report import Reporter
from hurdxen.plan import Plan, make_plan
from hurdxen.sources import pinlock
from hurdxen.sources.deb import fetch_deb, is_cached_deb
from hurdxen.sources.fetch import DebPin, GitPin, TarballPin, fetch_tarball, is_cached_tarball
from hurdxen.sources.git import fetch_git, is_cached_git
from hurdxen.stages import rootdisk
from hurdxen.stages.gnumach import stage as gnumach
from hurdxen.stages.hurd_modules import stage as hurdmodules
from hurdxen.stages.mig import stage as mig
from hurdxen.stages.pvgrub2 import stage as pvgrub
from hurdxen.stages.toolchain import chain

# The project directory (recipes/, containers/, artifacts/): the directory of the dodo.py doit runs, set by
# `configure()` from dodo.py. Not this package's location: the code may be installed elsewhere, or shared by several
# project copies. Before configure() it is the working directory (doit changes into the dodo.py's directory).
ROOT = Path.cwd()
TaskDict = dict[str, Any]


DOIT_CONFIG: dict[str, Any] = {
    "backend": "sqlite3",
    # doit opens this before it generates any task (so not from load()): beside the artifacts HURDXEN_ARTIFACTS names.
    "dep_file": str(artifacts_dir(ROOT) / DEP_FILE),
    "default_tasks": ["build"],
    "verbosity": 2,
    "reporter": Reporter,
    # `doit list` by name: doit's "definition" order is by line number, which means nothing across modules.
    "sort": "name",
    # One unreachable input should not hide what else fails: build all that can be built, then report.
    "continue": True,
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
_plan: Plan | None = None
_probe_cache = False  # ask the stage cache which stages it has: only in a run that builds (not `doit list`)


def load() -> tuple[recipes.Recipes, Context]:
    """Validate every recipe once, before any task is generated; exit with one line on bad input."""
    global _loaded, _probe_cache
    if _loaded is None:
        try:
            r = recipes.load(ROOT)
            ctx = make_context(r)
            global _plan
            _plan = check_specs(r)
        except HurdxenError as e:
            sys.stderr.write(e.render() + "\n")
            raise SystemExit(2) from None
        if lock.doit_command(sys.argv) not in lock.READ_ONLY_COMMANDS and lock.running_doit(sys.argv):
            lock.hold(ctx.artifacts)
            # Only the lock holder may clean up: the containers and temp dirs could be another build's otherwise.
            # Containers first: a killed build's step may still be writing into its temp dirs.
            if ctx.executor_kind == "docker":
                executors.remove_stale_containers(ctx.artifacts)
            executors.end_stale_steps(ctx.artifacts)  # host steps of a killed build, before their dirs go
            fsutil.sweep_tmp(ctx.artifacts)
            _probe_cache = ctx.stage_cache is not None
        _loaded = (r, ctx)
    return _loaded


def check_specs(r: recipes.Recipes) -> Plan:
    """Every stage's specs from the recipes: what the schemas cannot check (patch pins, cross-recipe rules) fails
    here, as one line, before any task generator (where doit would print a traceback). `hurdxen recipes` runs it.
    The pins lock too: read inside doit's up-to-date checks, a bad one ended in a 40-line traceback."""
    pinlock.load(pinlock.path_for(r.root))
    return make_plan(r)


def the_plan() -> Plan:
    """Every stage's specs (made, and checked across recipes, by `load()`)."""
    load()
    assert _plan is not None
    return _plan


# ------------------------------------------------------------------ actions (module level: picklable)


def act_base(ctx: Context) -> TaskFailed | None:
    return guarded(lambda: containers.ensure_base(ctx.base, ctx.cache.root, ctx.log("base"), ctx.monitor()))


def act_image(ctx: Context, name: str) -> TaskFailed | None:
    return guarded(lambda: containers.ensure_image(ctx.image(name), ctx.log(f"image:{name}"), ctx.monitor()))


def fetch_pin(pin: TarballPin | GitPin | DebPin, ctx: Context) -> None:
    if isinstance(pin, TarballPin):
        fetch_tarball(pin, ctx.cache)
    elif isinstance(pin, GitPin):
        fetch_git(pin, ctx.cache)
    else:
        fetch_deb(pin, ctx.cache)


def act_fetch(pin: TarballPin | GitPin | DebPin, ctx: Context) -> TaskFailed | None:
    return guarded(fetch_pin, pin, ctx)


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


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ task generators


pin_task_name = stage.pin_task


def image_deps(ctx: Context, image: str) -> list[str]:
    return list(stage.image_deps(ctx, image))


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
    p = the_plan()
    pins: list[TarballPin | GitPin | DebPin] = []
    for s in p.mig:
        pins += [s.source, s.patches, s.headers]
    if p.gnumach_source:
        pins += [x for x in (p.gnumach_source.git, p.gnumach_source.tarball) if x is not None]
    pins += [k.deb for k in p.kernels if isinstance(k, gnumach.PrebuiltSpec)]
    for hm in p.hurd_modules:
        pins += list(hm.debs)
    pins += [s.grub for s in p.pvgrub2[:1]]
    for t in p.system:
        pins += [x for _, x in t.tarballs] + [x for _, x in t.debs] + [x for _, x, _ in t.git]
    if "boot" in r:
        hv = boot_recipe(r).hypervisor
        pins.append(TarballPin("xen orig tarball", hv.url, hv.sha256, "boot.xen.url"))
    unique: dict[str, TarballPin | GitPin | DebPin] = {}
    for pin in pins:
        unique.setdefault(pin_task_name(pin), pin)
    return list(unique.values())


def act_pins(root: Path, only: str, date: str) -> TaskFailed | None:
    from hurdxen import pins

    argv = ["update", "--root", str(root), *(["--only", only] if only else []), *(["--date", date] if date else [])]
    return guarded(pins.cli, argv)


def task_pins() -> TaskDict:
    """pins: move the Debian pins to the newest signed versions, check them, rewrite recipes and recipes/pins.lock"""
    _, ctx = load()
    return {
        "actions": [(act_pins, [ctx.root])],
        "params": [
            {"name": "only", "long": "only", "default": "", "help": "recipes to update, e.g. hurd-modules"},
            {"name": "date", "long": "date", "default": "", "help": "resolve from the snapshot taken then"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }


def act_canary(root: Path) -> TaskFailed | None:
    from hurdxen import canary

    return guarded(canary.cli, ["--root", str(root)])


def task_canary() -> TaskDict:
    """canary: build with floating inputs (GNU Mach master, newest packages) in a copy; report drift against the pins"""
    _, ctx = load()
    return {"actions": [(act_canary, [ctx.root])], "uptodate": [False], "verbosity": 2}


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


def act_stage(
    build: Callable[[Any, Context], object],
    spec: Any,
    ctx: Context,
    hit: bool = False,
    deferred: tuple[tuple[Callable[..., object], tuple[Any, ...]], ...] = (),
) -> TaskFailed | None:
    return guarded(cache_hook.run, build, spec, ctx, hit, deferred)


def ensure_image(ctx: Context, name: str) -> None:
    """What `base` and `image:<name>` do, for a stage whose cache entry was refused (those tasks were not run)."""
    if not image_present(ctx.base.tag):
        containers.ensure_base(ctx.base, ctx.cache.root, ctx.log("base"), ctx.monitor())
    spec = ctx.image(name)
    if not image_present(spec.tag):
        containers.ensure_image(spec, ctx.log(f"image:{name}"), ctx.monitor())


def ensure_pin(pin: TarballPin | GitPin | DebPin, ctx: Context) -> None:
    """What `sources:<pin>` does, likewise."""
    if not is_fetched(pin, ctx):
        fetch_pin(pin, ctx)


def split_for_cache(
    deps: stage.Deps, ctx: Context, defer: bool
) -> tuple[list[str], tuple[tuple[Callable[..., object], tuple[Any, ...]], ...]]:
    """A stage the cache has (or this tree already holds) needs no builder image and no sources: those
    dependencies become actions run only when it has to be built here after all. Upstream stages stay."""
    if not defer:
        return list(deps.tasks), ()
    pins = {pin_task_name(p): p for p in all_pins()}
    keep: list[str] = []
    deferred: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
    for t in deps.tasks:
        if t.startswith("image:"):
            deferred.append((ensure_image, (ctx, t.split(":", 1)[1])))
        elif t in pins:
            deferred.append((ensure_pin, (pins[t], ctx)))
        else:
            keep.append(t)
    return keep, tuple(deferred)


def stage_tasks(st: stage.Stage, specs: Iterable[stage.Spec], ctx: Context) -> Iterator[TaskDict]:
    """The doit tasks of one stage, from its specs: the same shape for every stage."""
    yield {"basename": st.name, "name": None, "doc": st.doc}
    for spec in specs:
        deps = spec.deps(ctx)
        hit, defer = cache_hook.probe(ctx.stage_cache if _probe_cache else None, spec, ctx)
        task_dep, deferred = split_for_cache(deps, ctx, defer)
        yield {
            "basename": st.name,
            "name": spec.task.split(":", 1)[1],
            "doc": spec.doc,
            "actions": [(act_stage, [st.entry(spec), spec, ctx, hit, deferred])],
            "task_dep": task_dep,
            "file_dep": [str(p) for p in deps.files],
            "targets": [*(str(p) for p in spec.outputs(ctx).values()), str(stage.out_dir(ctx, spec.task) / MANIFEST)],
            "uptodate": [config_changed(spec.identity(ctx))],
            "clean": [(remove_dir, [str(stage.out_dir(ctx, spec.task))])],
        }


def stage_task(st: stage.Stage, specs_of: Callable[[Plan], Iterable[stage.Spec]]) -> Callable[[], Iterator[TaskDict]]:
    """A `task_<stage>` generator for doit: one task per spec of the plan."""

    def task() -> Iterator[TaskDict]:
        _, ctx = load()
        yield from stage_tasks(st, specs_of(the_plan()), ctx)

    task.__doc__ = st.doc
    return task


# Every stage that follows the contract, in build order: its doit basename, doc line, entry point and specs.
task_mig = stage_task(
    stage.Stage("mig", "mig: the Mach Interface Generator for each target (i686-gnu, x86_64-gnu)", mig.build),
    lambda p: p.mig,
)
task_gnumach = stage_task(
    stage.Stage("gnumach", "gnumach: GNU Mach for Xen per variant, verified; plus prebuilt kernels", gnumach.BUILDS),
    lambda p: [*([p.gnumach_source] if p.gnumach_source else []), *p.kernels],
)
task_hurd_modules = stage_task(
    stage.Stage(
        "hurd-modules",
        "hurd-modules: the Xen boot ramdisk (ext2fs.static + ld.so) per Hurd arch, pinned to a libc version",
        hurdmodules.build,
    ),
    lambda p: p.hurd_modules,
)
task_pvgrub2 = stage_task(
    stage.Stage(
        "pvgrub2",
        "pv-grub2: standalone GRUB images for Xen PV (i386-xen, x86_64-xen; disk, hurd, standalone flavours)",
        pvgrub.build,
    ),
    lambda p: p.pvgrub2,
)
task_toolchain = stage_task(
    stage.Stage(
        "toolchain",
        "toolchain: the cross toolchains from source, per target (binutils, gcc, Mach headers, glibc)",
        chain.build,
    ),
    lambda p: [s for s in p.system if s.stage_name == "toolchain"],
)
task_hurd = stage_task(
    stage.Stage(
        "hurd", "hurd: the Hurd from source (headers, servers, libraries), a userland and the root tree", chain.build
    ),
    lambda p: [s for s in p.system if s.stage_name == "hurd"],
)
task_rootdisk = stage_task(
    stage.Stage(
        "rootdisk",
        "rootdisk: the Hurd's root disk images (ext2 for the Hurd, translators, kernel, GRUB menu)",
        rootdisk.build,
    ),
    lambda p: p.rootdisks,
)


def boot_recipe(r: recipes.Recipes) -> boot.BootRecipe:
    b = r["base"]["base"]
    return boot.recipe_from(r["boot"], int(b["source_date_epoch"]), r.files["boot"])


def raise_recipe_error(r: recipes.Recipes, name: str, what: str, hint: str) -> None:
    sys.stderr.write(HurdxenError(f"{r.files.get(name, name)}: {what}", hint=hint).render() + "\n")
    raise SystemExit(2)


def task_build() -> TaskDict:
    """build: everything the default recipes describe, but for opt-in ramdisks (and the pv-grub2 images holding them)"""
    p = the_plan()
    opt_in = {h.task for h in p.hurd_modules if h.opt_in}
    ramdisks = [h.task for h in p.hurd_modules if h.task not in opt_in]
    images = [s.task for s in p.pvgrub2 if s.ramdisk is None or s.ramdisk.task not in opt_in]
    if not opt_in:
        ramdisks, images = ["hurd-modules"], ["pvgrub2"]
    return {"actions": None, "task_dep": ["mig", "gnumach", *ramdisks, *images]}
