"""The release as a stage: `bundle:<name>` packs the stage outputs into artifacts/bundle/<name>/ — the release tree
`<name>-<version>/` and its deterministic tarball `<name>-<version>.tar.gz` — with one stage manifest beside them
(`manifest.write`); and the actions on what it made: verify, publish, reproduce.

The bundle's identity is its recipe (recipes/release.toml and domains.toml as loaded, the signing key), the
SOURCE_DATE_EPOCH and the release code. What it packs is known only when it is about to run: the version comes
from `git describe`, and without an `[include]` list it takes every kernel, ramdisk and image built. So it also
says, then, whether its published manifest still records what it would pack now (`current`): the git revision, the
digest of every stage manifest it packs (as the bundle records them: without volatile and local keys) and the boot
gate's verdicts. Nothing changed: up to date; a kernel rebuilt, a commit, a boot verdict changed: bundled again.

verify, publish and reproduce make nothing: they run every time they are asked for (`stage.Action`). verify checks
a bundle — by default the one this tree made, read through the stage manifest, or any bundle, e.g. a downloaded
one (`doit verify --bundle PATH`), so it has no inputs to be up to date with; publish copies the bundle out (the
destination is not ours to track); reproduce rebuilds everything elsewhere and compares, which is the point of
running it.

The release modules that do the work are imported inside the entry points: making the specs (every `doit` call)
does not need them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.recipes import Recipes

if TYPE_CHECKING:
    from hurdxen.release.bundle import BundleResult
    from hurdxen.release.spec import BundleSpec

STAGE = "bundle"


# The release code that decides the bundle's bytes (hashed as files: making the specs imports none of it).
CODE = ("bundle.py", "domains.py", "inputs.py", "provenance.py", "signing.py", "spec.py")


def _code_digest() -> list[str]:
    here = Path(__file__).parent
    return [fsutil.sha256_file(here / name) for name in CODE]


@dataclass(frozen=True)
class BundleStageSpec:
    name: str  # the release's name (recipes/release.toml `name`)
    root: Path = field(repr=False)  # the project: its git revision names the version (any clone: not in the identity)
    release: Mapping[str, Any] = field(repr=False)  # recipes/release.toml as loaded (overlay, command line)
    domains: Mapping[str, Any] = field(repr=False)  # recipes/domains.toml
    has_rootdisk: bool  # recipes/rootdisk.toml exists: its disks may be shipped
    source_date_epoch: int
    shown: str  # how errors name the release recipe
    signing_key: str | None  # the recipe's, or HURDXEN_SIGNING_KEY as the plan saw it
    needs_boot: bool  # the boot check gates the bundle (a boot recipe, and no release.allow_unbooted)

    @property
    def task(self) -> str:
        return f"{STAGE}:{self.name}"

    @property
    def doc(self) -> str:
        return "the release: kernels, hurd-modules, pv-grub2, domain configs, SHA256SUMS, signature, provenance"

    def pins(self) -> tuple[()]:
        return ()  # it packs stage outputs only

    @cached_property
    def bundle_spec(self) -> BundleSpec:
        """The release as it is now (version and revision from git): asked when the task is about to run."""
        from hurdxen.release.spec import spec_from

        return spec_from(
            self.release, self.domains, self.root, self.source_date_epoch, self.has_rootdisk, self.shown,
            signing_key=self.signing_key,
        )  # fmt: skip

    def identity(self, ctx: Context) -> str:
        # Where it is published to is not the bundle's business (`doit publish release.publish.dir=…` bundles nothing).
        release = {k: v for k, v in self.release.items() if k != "publish"}
        recipe = {
            "name": self.name, "release": release, "domains": self.domains, "has_rootdisk": self.has_rootdisk,
            "source_date_epoch": self.source_date_epoch, "signing_key": self.signing_key,
            "needs_boot": self.needs_boot,
        }  # fmt: skip
        return stage.identity(STAGE, recipe, _code_digest())

    def outputs(self, ctx: Context) -> dict[str, Path]:
        """Named by the version, so known when it runs (`current`); the task's target is the manifest."""
        from hurdxen.release.spec import MANIFEST, PROVENANCE, SIGNATURE, SUMS

        d = stage.out_dir(ctx, self.task)
        release = self.bundle_spec.release
        out = {
            "tarball": d / f"{release}.tar.gz",
            "sums": d / release / SUMS,
            "manifest": d / release / MANIFEST,
            "provenance": d / release / PROVENANCE,
        }
        if self.bundle_spec.signing_key:
            out["signature"] = d / release / SIGNATURE
        return out

    def deps(self, ctx: Context) -> stage.Deps:
        # The boot check gates the bundle; with release.allow_unbooted the bundle does not wait for (or run) it.
        return stage.Deps(("build", *(["boot"] if self.needs_boot else [])))

    def current(self, ctx: Context) -> bool:
        """Whether the published bundle is what this tree would pack now (its manifest's inputs record)."""
        try:
            m = manifest.read_task(ctx.artifacts, self.task)
            if m.identity != self.identity(ctx) or any(not o.path.is_file() for o in m.outputs.values()):
                return False
            return bool(m.inputs == json.loads(json.dumps(packed(ctx, self.bundle_spec))))
        except HurdxenError:
            return False  # not built, or it cannot be: the task runs and says why


def packed(ctx: Context, spec: BundleSpec) -> dict[str, Any]:
    """What a bundle of `spec` packs from ctx.artifacts now: the revision and version, every stage manifest by its
    digest (as the bundle records it) and the boot gate's verdicts. Raises what bundling would (no boot check, a
    failed one, a missing stage)."""
    from hurdxen.release.inputs import boot_gate, gather

    gate = boot_gate(ctx.artifacts, spec)
    g = gather(ctx.artifacts, spec)
    stages = {
        s.key: fsutil.sha256_bytes(fsutil.canonical_json(s.manifest).encode()) for s in (*g.stages, *g.extra_stages)
    }
    release = {"name": spec.name, "version": spec.version.version, "revision": asdict(spec.revision)}
    return {"release": release, "stages": dict(sorted(stages.items())), "boot": gate.summary()}


def specs(recipes: Recipes, source_date_epoch: int, signing_key: str | None) -> list[BundleStageSpec]:
    if "release" not in recipes:
        return []
    r = recipes["release"]
    return [
        BundleStageSpec(
            name=str(r["name"]),
            root=recipes.root,
            release=r,
            domains=recipes.data.get("domains", {}),
            has_rootdisk="rootdisk" in recipes,
            source_date_epoch=source_date_epoch,
            shown=recipes.files.get("release", "recipes/release.toml"),
            signing_key=r.get("signing", {}).get("key") or signing_key or None,
            needs_boot="boot" in recipes and not r.get("allow_unbooted", False),
        )
    ]


# ------------------------------------------------------------------ the entry point


def build(spec: BundleStageSpec, ctx: Context) -> BundleResult:
    """Entry point of `bundle:<name>`: gate on the boot check, pack, publish artifacts/bundle/<name>/ atomically with
    its manifest (what it packed, by digest: `current` compares it)."""
    from hurdxen.release import bundle

    b = spec.bundle_spec
    record = packed(ctx, b)
    final = stage.out_dir(ctx, spec.task)
    with fsutil.atomic_dir(final) as out:
        made = bundle.build_bundle(ctx.artifacts, b, out)
        manifest.write(
            out, spec, ctx, inputs=record, step=manifest.in_process("hurdxen.release.bundle.build_bundle"),
            extra={"release": b.release, "boot_passed": made.boot_passed, "warnings": list(made.warnings)},
        )  # fmt: skip
    result = bundle.load_result(final / b.release, warnings=made.warnings)
    mon = ctx.monitor()
    for w in result.warnings:
        mon.note(f"warning: {w}")
    mon.note(f"bundle: {result.directory} and {result.tarball.name}")
    return result


def built(ctx: Context, spec: BundleStageSpec) -> BundleResult:
    """The bundle this tree made, read through its stage manifest (its tarball and SHA256SUMS by name)."""
    from hurdxen.release import bundle

    m = manifest.read_task(ctx.artifacts, spec.task)
    return bundle.load_result(m.output("sums", verify=False).parent)


# ------------------------------------------------------------------ the actions


def verify(spec: BundleStageSpec, ctx: Context, options: Mapping[str, Any]) -> None:
    """`doit verify [--bundle PATH]`: SHA256SUMS, signature, manifest, the kernels' Xen notes."""
    from hurdxen.release import verify as release_verify

    target = str(options.get("target") or "")
    report = release_verify.verify(Path(target) if target else built(ctx, spec).directory)
    print(report.render())
    report.raise_for_problems()


def publish(spec: BundleStageSpec, ctx: Context, options: Mapping[str, Any]) -> None:
    """`doit publish`: the bundle to release.publish.dir (atomic, with `latest` and an index) and/or .oci."""
    from hurdxen.release import publish as release_publish

    pub = spec.release.get("publish", {})
    if not pub.get("dir") and not pub.get("oci"):
        raise HurdxenError(
            "publish: nowhere to publish to",
            hint="set release.publish.dir or release.publish.oci (recipe, overlay or command line)",
        )
    b = built(ctx, spec)
    mon = ctx.monitor()
    if pub.get("dir"):
        mon.note(f"publish: {release_publish.publish_dir(b, Path(pub['dir']))}")
    if pub.get("oci"):
        mon.note(f"publish: {release_publish.publish_oci(b, pub['oci'], insecure=bool(pub.get('insecure')))}")


def reproduce(spec: BundleStageSpec, ctx: Context, options: Mapping[str, Any]) -> None:
    """`doit reproduce`: rebuild `doit build bundle` in a clean copy (other path, time, umask, TZ, locale) and
    compare bit for bit."""
    from hurdxen.release import reproduce as release_reproduce

    result = release_reproduce.reproduce_project(ctx.root, ctx.artifacts, ctx.cache.root, built(ctx, spec).release)
    volatile = f", {len(result.volatile_only)} of them JSON equal but for volatile keys" if result.volatile_only else ""
    ctx.monitor().note(f"reproduce: the clean rebuild matches: {len(result.compared)} files equal{volatile}")


VERIFY = stage.Action(
    "verify",
    "verify: check a bundle (SHA256SUMS, signature, manifest, kernels' Xen notes); `doit verify --bundle PATH`",
    verify,
    params=(
        stage.Param("target", "bundle", "a bundle directory or tarball (default: the one `doit bundle` made here)"),
    ),
)
PUBLISH = stage.Action(
    "publish",
    "publish: the bundle to a directory (atomic, with `latest` and an index) and/or an OCI registry",
    publish,
    needs=(STAGE,),
)
REPRODUCE = stage.Action(
    "reproduce",
    "reproduce: rebuild everything in a clean copy (other path, time, umask, TZ, locale) and compare bit for bit",
    reproduce,
    needs=(STAGE,),
)
ACTIONS = (VERIFY, PUBLISH, REPRODUCE)
