"""The shape every from-source Hurd stage shares: pinned files and upstream trees in, one tree tarball (and named
files) out, one container step.

A `TreeSpec` names its pinned inputs (mounted read-only at /in/<name>), the upstream trees it unpacks first (each
producer's tarball output, read through the producer's manifest and checked against the producer's identity), the
upstream directories it mounts whole (MIG, the prepared GNU Mach source), and the recipe options its script reads as
environment variables. Inside the step, the toolchain lives at the fixed path /tools and the target's system root at
/tools/sysroot (gcc is configured with that sysroot, so the path must be the same in every step); the script
installs into $DEST, which the epilogue packs into `tree.tar` deterministically (sorted, owner 0, mtime
SOURCE_DATE_EPOCH). These stages need the docker executor: the fixed /tools path does not exist on a host.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil, safeextract
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.executors import Mount, Step
from hurdxen.sources.deb import extract_deb, fetch_deb, manifest_record
from hurdxen.sources.fetch import DebPin, GitPin, Pin, TarballPin, fetch_tarball
from hurdxen.sources.git import export_git

TREE = "tree"  # the output every tree stage has: its installed files as one tarball
TREE_FILE = "tree.tar"
TOOLS = "/tools"  # where the toolchain is unpacked in every step
SYSROOT = "/tools/sysroot"

# Layers are "<tarball>:<directory>" words; the directories are /tools or /tools/sysroot.
PROLOGUE = r"""
mkdir -p "$TOOLS/bin" "$SYSROOT" "$WORK" "$DEST"
for layer in $LAYERS; do
  tar -xf "${layer%%:*}" -C "${layer#*:}"
done
export PATH="$TOOLS/bin:$PATH"
cd "$WORK"
"""

EPILOGUE = r"""
cd "$DEST"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --format=gnu \
  -cf "$OUT/tree.tar" .
echo "tree: $(tar -tf "$OUT/tree.tar" | wc -l) entries, $(du -sh "$OUT/tree.tar" | cut -f1)"
"""


@dataclass(frozen=True)
class Layer:
    """An upstream tree stage's output, unpacked into /tools (`into="tools"`) or /tools/sysroot before the script."""

    producer: Any  # the producer's spec (a TreeSpec)
    into: str = "sysroot"


@dataclass(frozen=True)
class Upstream:
    """An upstream stage's whole published directory, mounted read-only at /in/<env lower-cased>."""

    env: str
    producer: Any  # any Spec with task and identity(ctx)


@dataclass(frozen=True)
class UpstreamFile:
    """One named output of an upstream stage (read through its manifest), mounted read-only at /in/<env lower-cased>."""

    env: str
    producer: Any  # any Spec with task and identity(ctx)
    output: str


@dataclass(frozen=True)
class TreeSpec:
    stage_name: str  # the doit basename: toolchain or hurd
    name: str
    description: str
    script: str
    image: str
    tarballs: tuple[tuple[str, TarballPin], ...] = ()  # env name → pinned file, mounted at /in/<env>
    debs: tuple[tuple[str, DebPin], ...] = ()  # env name → a Debian package, its data tree mounted at /in/<env>
    git: tuple[tuple[str, GitPin, str], ...] = ()  # env name → a pinned commit (and its canonical URL), exported
    layers: tuple[Layer, ...] = ()
    upstream: tuple[Upstream, ...] = ()
    upstream_files: tuple[UpstreamFile, ...] = ()
    options: tuple[tuple[str, str], ...] = ()  # recipe options the script reads (CONFIGURE, TARGETS, …)
    files: tuple[tuple[str, str], ...] = ()  # named outputs besides the tree: name → path under $OUT
    jobs: int = 2
    facts: tuple[tuple[str, str], ...] = field(default=())  # recorded in the manifest (versions, commit)

    @property
    def task(self) -> str:
        return f"{self.stage_name}:{self.name}"

    @property
    def doc(self) -> str:
        return self.description

    def identity(self, ctx: Context) -> str:
        own = {
            "tarballs": [(e, p.sha256) for e, p in self.tarballs],
            "debs": [(e, p.package, p.version, p.arch, p.sha256) for e, p in self.debs],
            "git": [(e, p.commit) for e, p, _ in self.git],
            "options": list(self.options),
            "files": list(self.files),
            "jobs": self.jobs,
        }
        up = [(u.producer.task, u.producer.identity(ctx)) for u in self.upstream]
        layers = [(la.producer.task, la.into, la.producer.identity(ctx)) for la in self.layers]
        # Added only when used, so the identities of the stages that use neither stay what they were.
        if self.upstream_files:
            own["upstream_files"] = [
                (u.env, u.producer.task, u.output, u.producer.identity(ctx)) for u in self.upstream_files
            ]
        return fsutil.identity(self.task, own, up, layers, ctx.image_tag(self.image), PROLOGUE, self.script, EPILOGUE)

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d = stage.out_dir(ctx, self.task)
        return {TREE: d / TREE_FILE, **{n: d / rel for n, rel in self.files}}

    def pins(self) -> tuple[Pin, ...]:
        return (*(p for _, p in self.tarballs), *(p for _, p in self.debs), *(p for _, p, _ in self.git))

    def deps(self, ctx: Context) -> stage.Deps:
        tasks = [la.producer.task for la in self.layers] + [u.producer.task for u in self.upstream]
        tasks += [f.producer.task for f in self.upstream_files]
        return stage.Deps((*stage.image_deps(ctx, self.image), *stage.pin_tasks(self.pins()), *tasks))


@dataclass(frozen=True)
class TreeResult:
    task: str
    out_dir: Path
    tree: Path
    seconds: float


def _mount_name(env: str) -> str:
    return "/in/" + env.lower().replace("_", "-")


def published(ctx: Context, producer: Any, consumer: str) -> manifest.Manifest:
    """The producer's manifest, which must be the build of the producer's current identity."""
    m = manifest.read_task(ctx.artifacts, producer.task)
    if m.identity != producer.identity(ctx):
        raise HurdxenError(
            f"{consumer}: {producer.task}'s published output is stale (built from other inputs)",
            hint=f"rebuild it first: `doit {producer.task}`",
        )
    return m


def fetch_inputs(spec: TreeSpec, ctx: Context) -> tuple[list[Mount], dict[str, Any]]:
    """Mounts of the pinned files and what the manifest says about them."""
    mounts: list[Mount] = []
    described: dict[str, Any] = {}
    for env, pin in spec.tarballs:
        path = fetch_tarball(pin, ctx.cache)
        # GNU tar unpacks it inside the step: check every member first (a tarball inside it is pinned by this hash)
        safeextract.check(path, f"{pin.name} {path.name}")
        mounts.append(Mount(path, env, _mount_name(env)))
        described[env.lower()] = {"url": pin.url, "sha256": pin.sha256}
    for env, deb in spec.debs:
        blob = fetch_deb(deb, ctx.cache)
        mounts.append(Mount(extract_deb(blob, ctx.cache), env, _mount_name(env)))
        described[env.lower()] = manifest_record(deb, blob, ctx.cache)
    return mounts, described


def layer_mounts(spec: TreeSpec, ctx: Context) -> tuple[list[Mount], str, dict[str, Any]]:
    """The upstream trees (mounted files and the LAYERS word list) and upstream directories."""
    mounts: list[Mount] = []
    words: list[str] = []
    described: dict[str, Any] = {}
    for i, la in enumerate(spec.layers):
        m = published(ctx, la.producer, spec.task)
        target = f"/in/layer-{i}.tar"
        mounts.append(Mount(m.output(TREE), f"LAYER_{i}", target))
        words.append(f"{target}:{TOOLS if la.into == 'tools' else SYSROOT}")
        described[la.producer.task] = {"identity": m.identity, "sha256": m.outputs[TREE].sha256, "into": la.into}
    for u in spec.upstream:
        m = published(ctx, u.producer, spec.task)
        mounts.append(Mount(m.directory, u.env, _mount_name(u.env)))
        described[u.producer.task] = {"identity": m.identity}
    for f in spec.upstream_files:
        m = published(ctx, f.producer, spec.task)
        mounts.append(Mount(m.output(f.output), f.env, _mount_name(f.env)))
        described.setdefault(f.producer.task, {"identity": m.identity})[f.output] = m.outputs[f.output].sha256
    return mounts, " ".join(words), described


def build(spec: TreeSpec, ctx: Context) -> TreeResult:
    """Entry point: run the stage's step and publish its tree (and named files) atomically with one manifest."""
    start = time.monotonic()
    if ctx.executor_kind != "docker":
        raise HurdxenError(
            f"{spec.task}: the from-source Hurd stages run in the {spec.image} image only",
            hint="use the docker executor (unset HURDXEN_EXECUTOR)",
        )
    pinned, described = fetch_inputs(spec, ctx)
    layers, words, upstream = layer_mounts(spec, ctx)
    final = stage.out_dir(ctx, spec.task)
    with (
        fsutil.scratch_dir(ctx.artifacts / "work", spec.task) as work,
        fsutil.atomic_dir(final) as out,
    ):
        for sub in ("tools", "build", "dest"):
            (work / sub).mkdir()
        git_mounts = []
        for env, pin, canonical in spec.git:
            export = work / env.lower()
            export_git(pin, ctx.cache, export)
            git_mounts.append(Mount(export, env, _mount_name(env)))
            described[env.lower()] = {"git": canonical, "commit": pin.commit}
            if canonical != pin.url:
                described[env.lower()]["fetched_from"] = pin.url
        step = Step(
            name=spec.task,
            script=PROLOGUE + spec.script + EPILOGUE,
            image=ctx.image_tag(spec.image),
            mounts=(
                *pinned,
                *git_mounts,
                *layers,
                Mount(work / "tools", "TOOLS", TOOLS, writable=True),
                Mount(work / "build", "WORK", "/work", writable=True),
                Mount(work / "dest", "DEST", "/dest", writable=True),
                Mount(out, "OUT", "/out", writable=True),
            ),
            env=(
                ("SYSROOT", SYSROOT),
                ("LAYERS", words),
                ("JOBS", str(spec.jobs)),
                ("SOURCE_DATE_EPOCH", str(ctx.source_date_epoch)),
                *spec.options,
            ),
        )
        result = ctx.executor().run(step, ctx.log(spec.task), ctx.monitor())
        manifest.write(
            out,
            spec,
            ctx,
            inputs={**described, "upstream": upstream, "options": dict(spec.options)},
            step=result,
            extra=dict(spec.facts),
        )
    return TreeResult(spec.task, final, final / TREE_FILE, time.monotonic() - start)


def option_words(table: Mapping[str, Any], key: str) -> str:
    """A recipe list of words (configure flags, make targets) as one space-separated option."""
    return " ".join(str(w) for w in table.get(key, []))
