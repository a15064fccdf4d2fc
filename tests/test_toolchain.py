"""The pinned toolchain: image package lists in the bundle, and `doit reproduce` naming the packages that moved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from project import copy_project, docker_answers

from hurdxen.core.errors import HurdxenError
from hurdxen.release import provenance, reproduce
from hurdxen.release.inputs import StageOutput

LOCK = Path(__file__).resolve().parent.parent / "containers" / "builder" / "packages.lock"


def pinned() -> list[str]:
    return [line for line in LOCK.read_text().splitlines() if not line.startswith("#")]


def manifest(packages: list[str]) -> dict[str, object]:
    step = {"executor": "docker", "image": "hurdxen/builder:0123456789abcdef", "image_packages": packages}
    return {"stage": "mig", "variant": "i686-gnu", "identity": "x", "inputs": {}, "step": step, "outputs": {}}


def test_packages_lock_pins_the_compilers_of_today() -> None:
    """The kernels' bytes depend on these: bookworm's gcc 12 and binutils 2.40 as the image had them."""
    lines = {line.split(" ")[0]: line for line in pinned()}
    assert lines["gcc-12"] == "gcc-12 12.2.0-14+deb12u1 amd64"
    assert lines["binutils"] == "binutils 2.40-2 amd64"
    assert pinned() == sorted(pinned(), key=lambda s: s.encode())  # the order dpkg-query | LC_ALL=C sort gives


def test_bundle_lists_each_image_once() -> None:
    so = [
        StageOutput("mig", v, Path("/x"), manifest(pinned()))  # type: ignore[arg-type]
        for v in ("i686-gnu", "x86_64-gnu")
    ]
    assert provenance.image_packages(so) == {"hurdxen/builder:0123456789abcdef": pinned()}


def test_reproduce_names_the_packages_that_moved(tmp_path: Path) -> None:
    moved = [
        "gcc-12 12.2.0-14+deb12u2 amd64" if line.startswith("gcc-12 ") else line
        for line in pinned()
        if not line.startswith("bc ")
    ]
    for name, pkgs in (("a", pinned()), ("b", moved)):
        d = tmp_path / name / "mig" / "i686-gnu"
        d.mkdir(parents=True)
        (d / "manifest.json").write_text(json.dumps(manifest(pkgs)))
    r = reproduce.compare_trees(tmp_path / "a", tmp_path / "b", tmp_path / "report")
    (d,) = r.differences
    assert d.path == "mig/i686-gnu/manifest.json"
    assert d.kind == "image packages differ: bc 1.07.1-3+b1 → (absent), gcc-12 12.2.0-14+deb12u1 → 12.2.0-14+deb12u2"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not docker_answers(), reason="no Docker engine answers")
def test_an_image_whose_installed_set_differs_from_its_pins_is_an_error(tmp_path: Path) -> None:
    """Not a new tag: the image build itself fails, and shows the difference."""
    from hurdxen.pipeline import containers, context, recipes

    project = copy_project(tmp_path / "project")
    lock = project / "containers" / "builder" / "packages.lock"
    lock.write_text(lock.read_text().replace("\nbc 1.07.1-3+b1 amd64\n", "\nbc 1.07.1-3+b1 i386\n"))
    ctx = context.make_context(recipes.load(project, overrides={}))
    containers.ensure_base(ctx.base, ctx.cache.root, tmp_path / "base.log")
    spec = ctx.image("builder")
    with pytest.raises(HurdxenError) as info:
        containers.ensure_image(spec, tmp_path / "image.log")
    assert info.value.message.startswith("image:builder: docker build failed: The command '/bin/sh -c")
    log = (tmp_path / "image.log").read_text()
    assert "-bc 1.07.1-3+b1 i386\n+bc 1.07.1-3+b1 amd64" in log
    assert "the installed set differs from containers/builder/packages.lock" in log
    assert not containers.image_exists(spec.tag)


def test_base_snapshot_mirror_and_identity() -> None:
    """An unset snapshot keeps the base image's identity (and tag) as before; a set one changes it and the mirror."""
    from hurdxen.core import fsutil
    from hurdxen.pipeline.containers import BaseSpec

    plain = BaseSpec("bookworm", "http://deb.debian.org/debian", "minbase", ("main",), (), 1767225600)
    before = {k: v for k, v in plain.__dict__.items() if k != "snapshot"}
    assert plain.identity() == fsutil.identity("base", before)
    assert plain.tag == f"hurdxen/base:bookworm-{plain.identity()[:16]}"
    assert plain.snapshot_mirror("http://127.0.0.1:8080/") is None
    snap = BaseSpec(*before.values(), snapshot="20261201T000000Z")  # type: ignore[arg-type]
    assert snap.snapshot_mirror("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/archive/debian/20261201T000000Z"
    assert snap.identity() != plain.identity()
    # Where the snapshot is served from (the network's `snapshot`) and a proxy are not what the image is: the spec
    # does not hold them.
    assert "snapshot_service" not in snap.__dict__ and "proxy" not in snap.__dict__
