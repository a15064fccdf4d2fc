"""doit tasks, generated from the recipes. `dodo.py` only re-exports what is here.

Every action is a module-level function with picklable arguments (so `doit -n 2` works), and every stage task
carries one `config_changed` on its identity: a hash of its inputs, options, step script and builder image.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from hurdxen import boot, containers, executors, fsutil, gnumach, hurdmodules, lock, mig, pvgrub, recipes, stage
from hurdxen.context import DEP_FILE, Context, artifacts_dir, make_context
from hurdxen.errors import HurdxenError
from hurdxen.manifest import MANIFEST
from hurdxen.plan import Plan, make_plan
from hurdxen.report import Reporter
from hurdxen.sources import DebPin, GitPin, TarballPin, fetch_tarball, is_cached_tarball
from hurdxen.sources_deb import fetch_deb, is_cached_deb
from hurdxen.sources_git import fetch_git, is_cached_git

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
    "sort": "definition",
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


def load() -> tuple[recipes.Recipes, Context]:
    """Validate every recipe once, before any task is generated; exit with one line on bad input."""
    global _loaded
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
        _loaded = (r, ctx)
    return _loaded


def check_specs(r: recipes.Recipes) -> Plan:
    """Every stage's specs from the recipes: what the schemas cannot check (patch pins, cross-recipe rules) fails
    here, as one line, before any task generator (where doit would print a traceback). `hurdxen recipes` runs it."""
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


def act_stage(build: Callable[[Any, Context], object], spec: Any, ctx: Context) -> TaskFailed | None:
    return guarded(build, spec, ctx)


def stage_tasks(st: stage.Stage, specs: Iterable[stage.Spec], ctx: Context) -> Iterator[TaskDict]:
    """The doit tasks of one stage, from its specs: the same shape for every stage."""
    yield {"basename": st.name, "name": None, "doc": st.doc}
    for spec in specs:
        deps = spec.deps(ctx)
        yield {
            "basename": st.name,
            "name": spec.task.split(":", 1)[1],
            "doc": spec.doc,
            "actions": [(act_stage, [st.build, spec, ctx])],
            "task_dep": list(deps.tasks),
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
    stage.Stage("gnumach", "gnumach: GNU Mach for Xen per variant, verified; plus prebuilt kernels", gnumach.build),
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


# The release modules are imported inside their actions: task generation (every `doit` call) does not need them.


def act_bundle(ctx: Context, r: recipes.Recipes) -> TaskFailed | None:
    from hurdxen import bundle

    def run() -> None:
        result = bundle.bundle(ctx, r)
        mon = ctx.monitor()
        for w in result.warnings:
            mon.note(f"warning: {w}")
        mon.note(f"bundle: {result.directory} and {result.tarball.name}")

    return guarded(run)


def task_bundle() -> TaskDict:
    """bundle: the release — kernels, hurd-modules, pv-grub2, domain configs, SHA256SUMS, signature, provenance"""
    r, ctx = load()
    # The boot check gates the bundle; with release.allow_unbooted the bundle does not wait for (or run) it.
    needs_boot = "boot" in r and not r["release"].get("allow_unbooted", False)
    return {
        "actions": [(act_bundle, [ctx, r])],
        "task_dep": ["build", *(["boot"] if needs_boot else [])],
        # Always rerun: it is deterministic, takes seconds, and reads the git revision.
        "uptodate": [False],
    }


def current_bundle(ctx: Context, r: recipes.Recipes) -> Path:
    from hurdxen import bundle

    spec = bundle.spec_from_recipes(r, ctx.source_date_epoch)
    return bundle.release_dir(ctx.artifacts) / spec.release


def act_publish(ctx: Context, r: recipes.Recipes) -> TaskFailed | None:
    from hurdxen import bundle, publish

    def run() -> None:
        pub = r["release"].get("publish", {})
        if not pub.get("dir") and not pub.get("oci"):
            raise HurdxenError(
                "publish: nowhere to publish to",
                hint="set release.publish.dir or release.publish.oci (recipe, overlay or command line)",
            )
        b = bundle.load_result(current_bundle(ctx, r))
        mon = ctx.monitor()
        if pub.get("dir"):
            mon.note(f"publish: {publish.publish_dir(b, Path(pub['dir']))}")
        if pub.get("oci"):
            mon.note(f"publish: {publish.publish_oci(b, pub['oci'], insecure=bool(pub.get('insecure')))}")

    return guarded(run)


def task_publish() -> TaskDict:
    """publish: the bundle to a directory (atomic, with `latest` and an index) and/or an OCI registry"""
    r, ctx = load()
    return {"actions": [(act_publish, [ctx, r])], "task_dep": ["bundle"], "uptodate": [False]}


def act_verify(ctx: Context, r: recipes.Recipes, target: str) -> TaskFailed | None:
    from hurdxen import release_verify

    def run() -> None:
        report = release_verify.verify(Path(target) if target else current_bundle(ctx, r))
        print(report.render())
        report.raise_for_problems()

    return guarded(run)


def task_verify() -> TaskDict:
    """verify: check a bundle (SHA256SUMS, signature, manifest, kernels' Xen notes); `doit verify --bundle PATH`"""
    r, ctx = load()
    return {
        "actions": [(act_verify, [ctx, r])],
        "params": [
            {
                "name": "target",
                "long": "bundle",
                "default": "",
                "help": "a bundle directory or tarball (default: the current release under artifacts/)",
            }
        ],
        "uptodate": [False],
    }


def act_reproduce(ctx: Context) -> TaskFailed | None:
    return guarded(_reproduce_and_say, ctx)


def _reproduce_and_say(ctx: Context) -> None:
    from hurdxen import reproduce

    result = reproduce.reproduce_project(ctx.root, ctx.artifacts, ctx.cache.root)
    volatile = f", {len(result.volatile_only)} of them JSON equal but for volatile keys" if result.volatile_only else ""
    ctx.monitor().note(f"reproduce: the clean rebuild matches: {len(result.compared)} files equal{volatile}")


def task_reproduce() -> TaskDict:
    """reproduce: rebuild everything in a clean copy (other path, time, umask, TZ, locale) and compare bit for bit"""
    _, ctx = load()
    return {"actions": [(act_reproduce, [ctx])], "task_dep": ["bundle"], "uptodate": [False]}


def boot_recipe(r: recipes.Recipes) -> boot.BootRecipe:
    b = r["base"]["base"]
    return boot.recipe_from(r["boot"], int(b["source_date_epoch"]), r.files["boot"])


def act_boot_hypervisor(recipe: boot.BootRecipe, ctx: Context) -> TaskFailed | None:
    return guarded(boot.stage_hypervisor, recipe, ctx)


def act_boot_dom0(recipe: boot.BootRecipe, ctx: Context) -> TaskFailed | None:
    return guarded(boot.stage_dom0, recipe, ctx)


def act_boot_check(recipe: boot.BootRecipe, ctx: Context) -> TaskFailed | None:
    only = tuple(n for n in os.environ.get("HURDXEN_BOOT_CASES", "").split(",") if n)
    return guarded(boot.stage_check, recipe, ctx, only)


def task_boot() -> Iterator[TaskDict]:
    """boot: a PV32 Xen in QEMU (TCG) with a Linux dom0 boots every kernel, ramdisk and pv-grub2 image"""
    r, ctx = load()
    yield {"basename": "boot", "name": None, "doc": task_boot.__doc__}
    if "boot" not in r:
        return
    recipe = boot_recipe(r)
    hv_tag, dom0_tag = ctx.image_tag(recipe.image), ctx.image_tag(recipe.dom0_image)
    hv_dir = boot.hypervisor_dir(ctx, recipe.hypervisor, hv_tag)
    yield {
        "name": "hypervisor",
        "doc": "Xen 4.17 with " + ", ".join(f"{k}={v}" for k, v in recipe.hypervisor.build_config),
        "actions": [(act_boot_hypervisor, [recipe, ctx])],
        "task_dep": [*image_deps(ctx, recipe.image), pin_task_name(
            TarballPin("xen orig tarball", recipe.hypervisor.url, recipe.hypervisor.sha256, "boot.xen.url"))],
        "targets": [str(hv_dir / "xen")],
        "uptodate": [config_changed(recipe.hypervisor.identity(hv_tag))],
    }  # fmt: skip
    yield {
        "name": "dom0",
        "doc": f"Linux {recipe.dom0.kernel_release} dom0 initramfs with the Xen toolstack",
        "actions": [(act_boot_dom0, [recipe, ctx])],
        "task_dep": image_deps(ctx, recipe.dom0_image),
        "targets": [str(boot.dom0_dir(ctx, recipe.dom0, dom0_tag) / "dom0-initrd.img")],
        "uptodate": [config_changed(recipe.dom0.identity(dom0_tag))],
    }
    known = {
        "gnumach": {k.name for k in the_plan().kernels},
        "hurd-modules": {s.name for s in the_plan().hurd_modules},
        "pvgrub2": set(pvgrub.by_name(the_plan().pvgrub2)),
    }
    deps: list[str] = []
    for i, c in enumerate(recipe.cases):
        for stg, key, name in (
            ("gnumach", "kernel", c.kernel if c.kind != "pvgrub" else None),
            ("hurd-modules", "ramdisk", c.ramdisk),
            ("pvgrub2", "pvgrub", c.pvgrub),
        ):
            if name is None:
                continue
            if name not in known[stg]:
                raise_recipe_error(
                    r,
                    "boot",
                    f"cases[{i}].{key}: no {stg} output named {name!r}",
                    f"one of: {', '.join(sorted(known[stg])) or '(none: recipes/' + stg + '.toml)'}",
                )
            deps.append(f"{stg}:{name}")
    yield {
        "name": "check",
        "doc": "boot every case of recipes/boot.toml (HURDXEN_BOOT_CASES=a,b for some); verdicts in the manifest",
        "actions": [(act_boot_check, [recipe, ctx])],
        "task_dep": ["boot:hypervisor", "boot:dom0", *dict.fromkeys(deps)],
        # Booted again only when what it boots (the files), how (cases, hypervisor, dom0, the harness) or the
        # selection changed; `doit forget boot:check` forces a new run.
        "file_dep": sorted({str(p) for c in recipe.cases for p in boot.case_inputs(ctx, c).values()}),
        "targets": [str(ctx.artifacts / "boot" / "boot-report.json")],
        "uptodate": [config_changed(
            boot.check_identity(recipe, hv_tag, dom0_tag, os.environ.get("HURDXEN_BOOT_CASES", "")))],
        "verbosity": 2,
    }  # fmt: skip


def raise_recipe_error(r: recipes.Recipes, name: str, what: str, hint: str) -> None:
    sys.stderr.write(HurdxenError(f"{r.files.get(name, name)}: {what}", hint=hint).render() + "\n")
    raise SystemExit(2)


def task_build() -> TaskDict:
    """build: everything the default recipes describe"""
    return {"actions": None, "task_dep": ["mig", "gnumach", "hurd-modules", "pvgrub2"]}
