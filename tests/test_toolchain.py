"""The pinned toolchain: image package lists in the bundle, and `doit reproduce` naming the packages that moved."""

from __future__ import annotations

import json
from pathlib import Path

from hurdxen import bundle, reproduce

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
        bundle.StageOutput("mig", v, Path("/x"), manifest(pinned()))  # type: ignore[arg-type]
        for v in ("i686-gnu", "x86_64-gnu")
    ]
    assert bundle.image_packages(so) == {"hurdxen/builder:0123456789abcdef": pinned()}


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
