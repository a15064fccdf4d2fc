"""doit tasks of the release: bundle, publish, verify and reproduce (they follow the build and the boot check).

The release modules are imported inside their actions: task generation (every `doit` call) does not need them.
"""

from __future__ import annotations

from pathlib import Path

from doit.exceptions import TaskFailed

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import recipes
from hurdxen.pipeline.context import Context
from hurdxen.tasks import TaskDict, guarded, load


def act_bundle(ctx: Context, r: recipes.Recipes) -> TaskFailed | None:
    from hurdxen.release import bundle

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
    from hurdxen.release import bundle

    spec = bundle.spec_from_recipes(r, ctx.source_date_epoch)
    return bundle.release_dir(ctx.artifacts) / spec.release


def act_publish(ctx: Context, r: recipes.Recipes) -> TaskFailed | None:
    from hurdxen.release import bundle, publish

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
    from hurdxen.release import verify as release_verify

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


def act_reproduce(ctx: Context, r: recipes.Recipes) -> TaskFailed | None:
    return guarded(_reproduce_and_say, ctx, r)


def _reproduce_and_say(ctx: Context, r: recipes.Recipes) -> None:
    from hurdxen.release import reproduce

    # Bundles of earlier revisions may sit beside this one's: only this revision's is rebuilt and compared.
    result = reproduce.reproduce_project(ctx.root, ctx.artifacts, ctx.cache.root, current_bundle(ctx, r).name)
    volatile = f", {len(result.volatile_only)} of them JSON equal but for volatile keys" if result.volatile_only else ""
    ctx.monitor().note(f"reproduce: the clean rebuild matches: {len(result.compared)} files equal{volatile}")


def task_reproduce() -> TaskDict:
    """reproduce: rebuild everything in a clean copy (other path, time, umask, TZ, locale) and compare bit for bit"""
    r, ctx = load()
    return {"actions": [(act_reproduce, [ctx, r])], "task_dep": ["bundle"], "uptodate": [False]}
