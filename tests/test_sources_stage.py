"""The sources stage and the pins of the plan: every spec lists its own pins, the plan makes one `sources:` spec per
pin (what `pins update` moves is read from it too), a fetch publishes a manifest, the one Debian-pin record; and the
base and image stages' specs (identities, tags, manifests). Real fetches: local files, a git repository made here, a
signed apt repository served over HTTP, the Docker engine's images."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import git
import pytest
from aptrepo import AptRepo
from httpserver import TestServer
from project import SHARED_CACHE, Project, docker_answers

from hurdxen import pins as pins_cmd
from hurdxen.pipeline import containers, manifest, recipes, stage
from hurdxen.pipeline.context import Context, make_context
from hurdxen.plan import make_plan
from hurdxen.sources import deb as sources_deb
from hurdxen.sources.fetch import Cache, DebPin, GitPin, Network, TarballPin
from hurdxen.stages.sources import stage as sources

DATA = b"a pinned tarball\n" * 100
DATA_SHA = hashlib.sha256(DATA).hexdigest()


def context_for(root: Path, tmp: Path) -> Context:
    """The project's context, with its own cache and artifacts under `tmp`."""
    ctx = make_context(recipes.load(root, overrides={}))
    return dataclasses.replace(
        ctx, cache=Cache(tmp / "cache", Network(timeout=10), ctx.cache.lock), artifacts=tmp / "a"
    )


@pytest.fixture
def whole(tmp_path: Path) -> Project:
    return Project.create(tmp_path / "proj", artifacts=tmp_path / "art")


# ------------------------------------------------------------------ the pins of the plan


def test_every_sources_task_a_spec_waits_for_is_a_spec_of_the_sources_stage(whole: Project) -> None:
    r = recipes.load(whole.root, overrides={})
    plan, ctx = make_plan(r), make_context(r)
    waited = {t for s in plan.specs() if hasattr(s, "deps") for t in s.deps(ctx).tasks if t.startswith("sources:")}
    assert plan.boot
    assert {s.task for s in plan.sources} == waited
    assert len(plan.sources) == len(waited)  # one spec per task, whichever stages share a pin
    assert "sources:xen-orig-tarball" in waited and "sources:binutils-i686-gnu_2.40-2_amd64" in waited


def test_pins_update_moves_the_plans_debian_pins_and_their_keyrings(whole: Project) -> None:
    # hurd-amd64 from its Debian pins (and their keyring package), as an overlay selects them
    r = recipes.load(whole.root, overrides={"hurd-modules.variants.hurd-amd64.source": "debian"})
    plan = make_plan(r)
    collected = pins_cmd.collect(r)
    assert collected == plan.debian_pins()
    debs = {p.version_key for p in plan.pins() if isinstance(p, DebPin)}
    keyrings = {p.keyring_pin.version_key for p in plan.pins() if isinstance(p, DebPin) and p.keyring_pin}
    assert {p.version_key for _, p in collected} == debs | keyrings
    assert keyrings and all(recipe == p.key.split(".", 1)[0] for recipe, p in collected)
    # the toolchain's binutils package, which the hand-written list had left out
    binutils = ("toolchain", "toolchain.targets.i686-gnu.binutils.deb.version")
    assert binutils in {(s, p.version_key) for s, p in collected}


# ------------------------------------------------------------------ PinSpec


def test_a_pins_identity_is_stable_and_any_change_of_the_pin_changes_it(project: Project, tmp_path: Path) -> None:
    ctx = context_for(project.root, tmp_path)
    tarball = TarballPin("x orig tarball", "http://example.invalid/x.tar.xz", DATA_SHA, "x.url")
    gitpin = GitPin("x source", "http://example.invalid/x.git", "a" * 40, "x.git")
    debpin = DebPin.from_recipe(
        {"package": "x", "version": "1.0-1", "arch": "amd64", "suite": "bookworm", "archive": "http://e.invalid/d"}, "x"
    )
    for pin, changed in (
        (tarball, dataclasses.replace(tarball, sha256="b" * 64)),
        (tarball, dataclasses.replace(tarball, url="http://mirror.invalid/x.tar.xz")),
        (gitpin, dataclasses.replace(gitpin, commit="c" * 40)),
        (debpin, dataclasses.replace(debpin, version="1.0-2")),
        (debpin, dataclasses.replace(debpin, sha256="d" * 64)),
    ):
        spec = sources.PinSpec(pin)
        assert spec.identity(ctx) == sources.PinSpec(dataclasses.replace(pin)).identity(ctx)  # an equal pin
        assert spec.identity(ctx) != sources.PinSpec(changed).identity(ctx), changed
        assert spec.task == stage.pin_task(pin) and spec.deps(ctx) == stage.Deps() and spec.outputs(ctx) == {}
    # a pin two stages read is one spec
    assert sources.specs([tarball, dataclasses.replace(tarball), gitpin]) == [
        sources.PinSpec(tarball),
        sources.PinSpec(gitpin),
    ]


def test_fetching_a_tarball_and_a_git_commit_publishes_their_manifests(project: Project, tmp_path: Path) -> None:
    ctx = context_for(project.root, tmp_path)
    (tmp_path / "x.tar.xz").write_bytes(DATA)
    tarball = sources.PinSpec(TarballPin("x orig tarball", str(tmp_path / "x.tar.xz"), DATA_SHA, "x.url"))
    repo = git.Repo.init(tmp_path / "upstream", initial_branch="main")
    (tmp_path / "upstream" / "README").write_text("x\n")
    repo.index.add(["README"])
    commit = repo.index.commit("x").hexsha
    source = sources.PinSpec(GitPin("x source", str(tmp_path / "upstream"), commit, "x.git"))
    for spec in (tarball, source):
        assert not sources.present(spec, ctx)
        result = sources.build(spec, ctx)
        assert sources.present(spec, ctx)
        m = manifest.read(stage.out_dir(ctx, spec.task))
        assert (m.task, m.identity, m.outputs) == (spec.task, spec.identity(ctx), {})
        assert m.step["executor"] == "in-process"
        ((kind, where),) = m.fact("cached").items()
        assert ctx.cache.root / where["path"] == result.path and result.path.exists()
        if spec is tarball:
            assert (
                kind == "blob"
                and where["sha256"] == DATA_SHA
                and m.inputs["pin"] == {"url": str(tmp_path / "x.tar.xz"), "sha256": DATA_SHA}
            )
        else:
            assert kind == "mirror" and where["commit"] == commit and m.inputs["pin"]["commit"] == commit
    # The blob gone from the cache: the spec is no longer present (its task runs again), and the fetch brings it back.
    ctx.cache.blob(DATA_SHA).unlink()
    assert not sources.present(tarball, ctx)
    sources.build(tarball, ctx)
    assert ctx.cache.blob(DATA_SHA).read_bytes() == DATA


def test_the_one_debian_pin_record(
    apt_repo: AptRepo, http_server: TestServer, project: Project, tmp_path: Path
) -> None:
    """Every stage records a Debian package the same way; where it came from is kept apart (local facts)."""
    apt_repo.add_deb("hello-headers", "2:1.0-1", "i386", {"usr/include/hello.h": b"#define HELLO 1\n"})
    apt_repo.publish(suite="testing", component="main", arch=("i386",))
    archive = http_server.serve_dir("/debian", apt_repo.archive)
    table = {"package": "hello-headers", "version": "2:1.0-1", "arch": "i386", "suite": "testing", "archive": archive}
    pin = DebPin.from_recipe({**table, "keyring": str(apt_repo.keyring_path)}, "mig.targets.i686-gnu.headers")
    ctx = context_for(project.root, tmp_path)
    spec = sources.PinSpec(pin)
    sources.build(spec, ctx)
    deb = sources_deb.fetch_deb(pin, ctx.cache)
    record = sources_deb.manifest_record(pin, deb, ctx.cache)
    assert record == {
        "package": "hello-headers",
        "version": "2:1.0-1",
        "arch": "i386",
        "suite": "testing",
        "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        "archive": archive,
        "fetched_from": {"url": f"{archive}/{apt_repo.debs[0].pool_path}"},
    }
    m = manifest.read(stage.out_dir(ctx, spec.task))
    assert m.inputs["pin"] == record and m.fact("cached") == {
        "deb": {"path": f"blobs/sha256/{deb.name}", "sha256": deb.name}
    }
    # what a bundle and a stage-cache entry keep of it: the pin, not this machine's mirror
    from hurdxen.cache.entry import strip_local
    from hurdxen.release.inputs import strip_volatile

    assert (
        strip_volatile(record)
        == strip_local(record)
        == {k: record[k] for k in ("package", "version", "arch", "suite", "sha256")}
    )


def test_doit_sources_fetches_each_pin_once_and_again_when_it_is_gone(project: Project, tmp_path: Path) -> None:
    """The foundation's pins (MIG's), with a private cache: up to date on the second run; a removed blob is fetched
    again by its task alone."""
    cache = tmp_path / "cache"
    shutil.copytree(SHARED_CACHE / "blobs", cache / "blobs", copy_function=os.link)  # the shared cache's bytes
    first = project.doit("sources", HURDXEN_CACHE=str(cache))
    assert first.returncode == 0, first.output
    tasks = sorted(t for t in first.executed if t.startswith("sources:"))
    assert tasks == ["sources:gnumach-dev_1.8+git20221224-2_i386", "sources:gnumach-dev_1.8+git20250702-1_amd64",
                     "sources:mig-debian.tar.xz", "sources:mig-orig-tarball"]  # fmt: skip
    again = project.doit("sources", HURDXEN_CACHE=str(cache))
    assert again.returncode == 0 and again.executed == [], again.output
    r = recipes.load(project.root, overrides={})
    patches = next(s for s in make_plan(r).sources if s.task == "sources:mig-debian.tar.xz")
    assert isinstance(patches.pin, TarballPin)
    (cache / "blobs" / "sha256" / patches.pin.sha256).unlink()
    third = project.doit("sources", HURDXEN_CACHE=str(cache))
    assert third.returncode == 0 and third.executed == ["sources:mig-debian.tar.xz"], third.output
    assert (cache / "blobs" / "sha256" / patches.pin.sha256).is_file()


# ------------------------------------------------------------------ base and image


def test_base_and_image_identities_carry_their_tags(project: Project, tmp_path: Path) -> None:
    ctx = context_for(project.root, tmp_path)
    plan = make_plan(recipes.load(project.root, overrides={}))
    assert plan.base == ctx.base and dict(ctx.images) == {i.name: i for i in plan.images}
    assert ctx.base.tag == f"hurdxen/base:{ctx.base.suite}-{ctx.base.identity(ctx)[:16]}"
    builder = ctx.image("builder")
    assert builder.tag == f"hurdxen/builder:{builder.identity(ctx)[:16]}" == ctx.image_tag("builder")
    assert builder.deps(ctx) == stage.Deps((ctx.base.task,)) and builder.task == "image:builder"
    # Its Dockerfile and its packages.lock are what it is: a change in either is another identity (and tag).
    before = builder.identity(ctx)
    lock = project.root / "containers" / "builder" / "packages.lock"
    lock.write_text(lock.read_text() + "# a comment\n")
    assert builder.identity(ctx) != before
    # The base recipe is what the base is; a proxy is not (it is the network's).
    other = dataclasses.replace(ctx.base, mirror="http://mirror.invalid/debian")
    assert other.identity(ctx) != ctx.base.identity(ctx) and other.tag != ctx.base.tag


@pytest.mark.skipif(not docker_answers(), reason="no Docker engine answers")
@pytest.mark.timeout(600)
def test_doit_image_records_the_tag_and_id_in_manifests(project: Project) -> None:
    """The foundation's images exist in the engine already (same content hash): their tasks only record them."""
    run = project.doit("image:builder")
    assert run.returncode == 0, run.output
    r = recipes.load(project.root, overrides={})
    ctx = make_context(r)
    for spec in (ctx.base, ctx.image("builder")):
        m = manifest.read(project.artifacts / spec.task.replace(":", "/"))
        assert (m.identity, m.fact("image")["tag"]) == (spec.identity(ctx), spec.tag)
        assert m.fact("image")["id"].startswith("sha256:") and containers.present(spec, ctx)
    again = project.doit("image:builder")
    assert again.returncode == 0 and again.executed == [], again.output
