"""doit tasks, generated from the recipes: loading and checking them, sources, images and the stages — the boot check
and the release bundle among them — plus the release's actions (verify, publish, reproduce). `dodo.py` only
re-exports them.

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
from hurdxen.release import stage as release
from hurdxen.sources import pinlock
from hurdxen.stages import rootdisk
from hurdxen.stages.gnumach import stage as gnumach
from hurdxen.stages.hurd_modules import stage as hurdmodules
from hurdxen.stages.mig import stage as mig
from hurdxen.stages.pvgrub2 import stage as pvgrub
from hurdxen.stages.sources import stage as sources
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


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ task generators


pin_task_name = stage.pin_task


def image_deps(ctx: Context, image: str) -> list[str]:
    return list(stage.image_deps(ctx, image))


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


def act_stage(
    build: Callable[[Any, Context], object],
    spec: Any,
    ctx: Context,
    hit: bool = False,
    deferred: tuple[tuple[Callable[..., object], tuple[Any, ...]], ...] = (),
) -> TaskFailed | None:
    return guarded(cache_hook.run, build, spec, ctx, hit, deferred)


def ensure_image(ctx: Context, name: str) -> None:
    """What `base` and `image:<name>` make, for a stage whose cache entry was refused (those tasks were not run).
    Their manifests are left to their own tasks: two stages may do this at once under `doit -n 2`."""
    spec = ctx.image(name)
    if not containers.present(spec.base, ctx):
        containers.ensure_base(spec.base, ctx.cache.root, ctx.log(spec.base.task), ctx.monitor(), ctx.cache.network)
    if not containers.present(spec, ctx):
        containers.ensure_image(spec, ctx.log(spec.task), ctx.monitor(), ctx.cache.network)


def ensure_source(spec: sources.PinSpec, ctx: Context) -> None:
    """What `sources:<pin>` fetches, likewise."""
    if not sources.present(spec, ctx):
        sources.fetch(spec.pin, ctx)


def split_for_cache(
    deps: stage.Deps, ctx: Context, defer: bool
) -> tuple[list[str], tuple[tuple[Callable[..., object], tuple[Any, ...]], ...]]:
    """A stage the cache has (or this tree already holds) needs no builder image and no sources: those
    dependencies become actions run only when it has to be built here after all. Upstream stages stay."""
    if not defer:
        return list(deps.tasks), ()
    pins = {s.task: s for s in the_plan().sources}
    keep: list[str] = []
    deferred: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
    for t in deps.tasks:
        if t.startswith("image:"):
            deferred.append((ensure_image, (ctx, t.split(":", 1)[1])))
        elif t in pins:
            deferred.append((ensure_source, (pins[t], ctx)))
        else:
            keep.append(t)
    return keep, tuple(deferred)


def act_build(build: Callable[[Any, Context], object], spec: Any, ctx: Context) -> TaskFailed | None:
    return guarded(build, spec, ctx)


def stage_tasks(st: stage.Stage, specs: Iterable[stage.Spec], ctx: Context) -> Iterator[TaskDict]:
    """The doit tasks of one stage, from its specs: the same shape for every stage. A `stage.Late` spec (the bundle)
    is also asked, when its task is about to run, whether its output is current; its target is its manifest. Only a
    `cacheable` stage's specs go through the shared stage cache."""
    if st.docker_only and ctx.executor_kind != "docker":
        yield {"basename": st.name, "name": None, "doc": f"{st.doc} (host executor: none)"}
        return
    yield {"basename": st.name, "name": None, "doc": st.doc}
    for spec in specs:
        deps = spec.deps(ctx)
        current = spec.current if isinstance(spec, stage.Late) else None
        action: tuple[Callable[..., TaskFailed | None], list[Any]]
        if st.cacheable and current is None:
            hit, defer = cache_hook.probe(ctx.stage_cache if _probe_cache else None, spec, ctx)
            task_dep, deferred = split_for_cache(deps, ctx, defer)
            action = (act_stage, [st.entry(spec), spec, ctx, hit, deferred])
        else:
            task_dep, action = list(deps.tasks), (act_build, [st.entry(spec), spec, ctx])
        present = [(st.present, [spec, ctx])] if st.present else []
        manifest = str(stage.out_dir(ctx, spec.task) / MANIFEST)
        yield {
            "basename": st.name,
            "name": spec.task.split(":", 1)[1],
            "doc": spec.doc,
            "actions": [action],
            "task_dep": task_dep,
            "file_dep": [str(p) for p in deps.files],
            "targets": [manifest] if current else [*(str(p) for p in spec.outputs(ctx).values()), manifest],
            "uptodate": [config_changed(spec.identity(ctx)), *present, *([(current, [ctx])] if current else [])],
            "clean": [(remove_dir, [str(stage.out_dir(ctx, spec.task))])],
        }


# The stages `doit build` makes, in build order: basename, the specs of the plan, and which of them (stage_task's
# `in_build`); task_build is made from it.
BUILD: list[tuple[str, Callable[[Plan], Iterable[stage.Spec]], Callable[[Any], bool]]] = []


def stage_task(
    st: stage.Stage,
    specs_of: Callable[[Plan], Iterable[stage.Spec]],
    in_build: bool | Callable[[Any], bool] = False,
) -> Callable[[], Iterator[TaskDict]]:
    """A `task_<stage>` generator for doit: one task per spec of the plan. `in_build`: `doit build` makes its specs
    (every one, or those the predicate picks)."""
    if in_build:
        BUILD.append((st.name, specs_of, in_build if callable(in_build) else lambda _: True))

    def task() -> Iterator[TaskDict]:
        _, ctx = load()
        yield from stage_tasks(st, specs_of(the_plan()), ctx)

    task.__doc__ = st.doc
    return task


def act_action(run: Callable[..., object], spec: Any, ctx: Context, task: Any) -> TaskFailed | None:
    return guarded(run, spec, ctx, dict(task.options or {}))


def action_task(action: stage.Action, spec_of: Callable[[Plan], stage.Spec | None]) -> Callable[[], TaskDict]:
    """A `task_<action>` generator: `action.run` on the output of the plan's spec, every time it is asked for (an
    action makes nothing to be up to date with); its parameters on the command line."""

    def task() -> TaskDict:
        _, ctx = load()
        spec = spec_of(the_plan())
        if spec is None:
            return {"actions": None, "doc": f"{action.name}: (no recipe for it)"}
        return {
            "actions": [(act_action, [action.run, spec, ctx])],
            "params": [{"name": p.name, "long": p.long, "default": p.default, "help": p.help} for p in action.params],
            "task_dep": list(action.needs),
            "uptodate": [False],
        }

    task.__doc__ = action.doc
    return task


# Every stage, in build order: its doit basename, doc line, entry point and specs.
task_sources = stage_task(
    stage.Stage(
        "sources",
        "sources: fetch and verify every pinned input into the cache (then builds run offline)",
        sources.build,
        present=sources.present,
        cacheable=False,
    ),
    lambda p: p.sources,
)
task_base = stage_task(
    stage.Stage(
        containers.BASE_STAGE,
        "containers: the Debian base rootfs (mmdebstrap, docker import), tagged by recipe hash",
        containers.build_base,
        present=containers.present,
        cacheable=False,
        docker_only=True,
    ),
    lambda p: [p.base],
)
task_image = stage_task(
    stage.Stage(
        containers.IMAGE_STAGE,
        "containers: builder images from containers/<name>/Dockerfile, tagged by content hash",
        containers.build_image,
        present=containers.present,
        cacheable=False,
        docker_only=True,
    ),
    lambda p: p.images,
)
task_mig = stage_task(
    stage.Stage("mig", "mig: the Mach Interface Generator for each target (i686-gnu, x86_64-gnu)", mig.build),
    lambda p: p.mig,
    in_build=True,
)
task_gnumach = stage_task(
    stage.Stage("gnumach", "gnumach: GNU Mach for Xen per variant, verified; plus prebuilt kernels", gnumach.BUILDS),
    lambda p: [*([p.gnumach_source] if p.gnumach_source else []), *p.kernels],
    in_build=True,
)
task_hurd_modules = stage_task(
    stage.Stage(
        "hurd-modules",
        "hurd-modules: the Xen boot ramdisk (ext2fs.static + ld.so) per Hurd arch, pinned to a libc version",
        hurdmodules.build,
    ),
    lambda p: p.hurd_modules,
    in_build=lambda s: not s.opt_in,  # not the opt-in ramdisks
)
task_pvgrub2 = stage_task(
    stage.Stage(
        "pvgrub2",
        "pv-grub2: standalone GRUB images for Xen PV (i386-xen, x86_64-xen; disk, hurd, standalone flavours)",
        pvgrub.build,
    ),
    lambda p: p.pvgrub2,
    in_build=lambda s: s.ramdisk is None or not s.ramdisk.opt_in,  # nor the images holding them
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
task_boot = stage_task(
    stage.Stage(
        "boot",
        "boot: a PV32 Xen in QEMU (TCG) with a Linux dom0 boots every kernel, ramdisk and pv-grub2 image",
        boot.BUILDS,
    ),
    lambda p: p.boot,
)
task_bundle = stage_task(
    stage.Stage(
        release.STAGE,
        "bundle: the release — kernels, hurd-modules, pv-grub2, domain configs, SHA256SUMS, signature, provenance",
        release.build,
    ),
    lambda p: p.release,
)
task_verify = action_task(release.VERIFY, lambda p: next(iter(p.release), None))
task_publish = action_task(release.PUBLISH, lambda p: next(iter(p.release), None))
task_reproduce = action_task(release.REPRODUCE, lambda p: next(iter(p.release), None))


def task_build() -> TaskDict:
    """build: everything the default recipes describe, but for opt-in ramdisks (and the pv-grub2 images holding them)

    Made from the stage table: the stages marked `in_build` (not the from-source toolchain and Hurd, the root
    disks, the boot check or the release)."""
    p = the_plan()
    deps: list[str] = []
    for name, specs_of, wanted in BUILD:
        specs = list(specs_of(p))
        chosen = [s.task for s in specs if wanted(s)]
        deps += [name] if len(chosen) == len(specs) else chosen
    return {"actions": None, "task_dep": deps}
