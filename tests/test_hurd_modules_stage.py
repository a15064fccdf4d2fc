"""The hurd-modules stage through doit, in a project copy: stand-in `hurd` and `libc0.3` packages (tests/elfstandins)
in a real signed apt archive served on 127.0.0.1 (tests/aptrepo), the recipe pointed at it by an overlay.

No Docker needed: the stage runs in-process (fetch, verify, extract, build the ramdisk).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aptrepo import AptRepo, GpgKey
from elfstandins import ElfFactory, elves
from project import Project

from hurdxen.core.fsutil import sha256_file
from hurdxen.pipeline import manifest
from hurdxen.stages.hurd_modules.ramdisk import RAMDISK_NAME, parse_ramdisk

__all__ = ["elves"]  # the fixture, imported for pytest

HURD = "1:0.9.git20250420-1"  # the recipe's pins: the overlay changes only where the packages come from
LIBC = "2.41-6"
ARCHES = {32: "hurd-i386", 64: "hurd-amd64"}


def publish_hurd(
    repo: AptRepo, elves: ElfFactory, bits: int, libc: str = LIBC, banner: str | None = None, suite: str = "test"
) -> AptRepo:
    """`hurd` (ext2fs.static) and `libc0.3` (ld.so, whose banner says `banner`, default the version) for one arch."""
    arch = ARCHES[bits]
    triplet = "i386-gnu" if bits == 32 else "x86_64-gnu"
    ldso = "ld.so.1" if bits == 32 else "ld-x86-64.so.1"
    repo.add_deb("hurd", HURD, arch, {"hurd/ext2fs.static": (elves.static(bits), 0o755)})
    repo.add_deb(
        "libc0.3",
        libc,
        arch,
        {f"lib/{triplet}/{ldso}": (elves.ldso(bits, banner or libc), 0o755), f"lib/{ldso}": f"{triplet}/{ldso}"},
    )
    repo.publish(suite=suite, component="main", arch=arch)
    return repo


def variant_overlay(repo: AptRepo, bits: int, libc: str = LIBC, suite: str = "test") -> dict[str, Any]:
    name = ARCHES[bits]
    return {
        name: {
            "source": "debian",
            "opt_in": False,  # the archive is reachable: `doit build` builds it
            "libc_version": libc,
            "debian": {
                "archive": repo.serve().rstrip("/"),
                "suite": suite,
                "arch": name,
                "keyring": str(repo.keyring_path),
                "packages": {"hurd": HURD, "libc0.3": libc},
            },
        }
    }


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory, elves: ElfFactory) -> Iterator[dict[int, AptRepo]]:
    root = tmp_path_factory.mktemp("hurd-repos")
    key = GpgKey.generate(root / "keys")
    out = {bits: publish_hurd(AptRepo(root / ARCHES[bits], key), elves, bits) for bits in (32, 64)}
    yield out
    for r in out.values():
        r.close()
    key.close()


def make_project(tmp_path: Path, variants: dict[str, Any], name: str = "proj") -> Project:
    proj = Project.create(tmp_path / name, artifacts=tmp_path / f"{name}-artifacts")
    proj.overlay({"hurd-modules": {"variants": variants}})
    return proj


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, repos: dict[int, AptRepo]) -> Project:
    root = tmp_path_factory.mktemp("hurd-modules-stage")
    proj = make_project(root, {**variant_overlay(repos[32], 32), **variant_overlay(repos[64], 64)})
    r = proj.doit("hurd-modules:hurd-i386", "hurd-modules:hurd-amd64")
    assert r.returncode == 0, r.stdout[-3000:]
    return proj


@pytest.mark.parametrize("bits", [32, 64])
def test_ramdisk_written_with_manifest_and_modules(built: Project, elves: ElfFactory, bits: int) -> None:
    d = built.artifacts / "hurd-modules" / ARCHES[bits]
    rd = parse_ramdisk((d / RAMDISK_NAME).read_bytes())
    assert [m.data for m in rd.modules] == [elves.static(bits), elves.ldso(bits, LIBC)]
    ldso = "ld.so.1" if bits == 32 else "ld-x86-64.so.1"
    assert (d / "modules" / "ext2fs.static").read_bytes() == elves.static(bits)
    assert (d / "modules" / ldso).read_bytes() == elves.ldso(bits, LIBC)
    m = json.loads((d / "manifest.json").read_text())
    assert m["stage"] == "hurd-modules" and m["variant"] == ARCHES[bits]
    assert m["libc_version"] == LIBC
    assert {(p["package"], p["version"], p["arch"]) for p in m["inputs"]["debian"]} == {
        ("hurd", HURD, ARCHES[bits]),
        ("libc0.3", LIBC, ARCHES[bits]),
    }
    built_m = manifest.read(d)
    assert built_m.output("ramdisk") == d / RAMDISK_NAME
    assert built_m.outputs["ramdisk"].sha256 == sha256_file(d / RAMDISK_NAME)
    assert built_m.output("module:ext2fs.static") == d / "modules" / "ext2fs.static"
    assert built_m.output(f"module:{ldso}") == d / "modules" / ldso


def test_dump_through_the_cli(built: Project) -> None:
    f = built.artifacts / "hurd-modules" / "hurd-i386" / RAMDISK_NAME
    r = built.run_hurdxen("ramdisk", "dump", str(f))
    assert r.returncode == 0, r.stderr
    assert "ext2fs" in r.stdout and "/hurd/exec" in r.stdout
    assert "--multiboot-command-line" in r.stdout
    help_ = built.run_hurdxen("--help")
    assert "ramdisk" in help_.stdout and "inspect-kernel" in help_.stdout


def test_byte_identical_across_two_builds(built: Project, repos: dict[int, AptRepo], tmp_path: Path) -> None:
    proj = make_project(tmp_path, {**variant_overlay(repos[32], 32), **variant_overlay(repos[64], 64)}, "second")
    r = proj.doit("hurd-modules:hurd-i386", "hurd-modules:hurd-amd64")
    assert r.returncode == 0, r.stdout[-3000:]
    for arch in ARCHES.values():
        for rel in (RAMDISK_NAME, "manifest.json"):
            a = built.artifacts / "hurd-modules" / arch / rel
            b = proj.artifacts / "hurd-modules" / arch / rel
            if rel == "manifest.json":
                # The archive URL (its port) differs between the two runs; nothing else may.
                ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
                for j in (ja, jb):
                    for p in j["inputs"]["debian"]:
                        p.pop("archive")
                assert ja == jb
            else:
                assert a.read_bytes() == b.read_bytes(), f"{arch}: {rel} differs"


def test_libc_version_not_the_package_pin_is_a_recipe_error(repos: dict[int, AptRepo], tmp_path: Path) -> None:
    over = variant_overlay(repos[32], 32)
    over["hurd-i386"]["libc_version"] = "2.41-7"
    proj = make_project(tmp_path, over)
    r = proj.doit("hurd-modules:hurd-i386")
    assert r.returncode == 2
    assert "variants.hurd-i386.debian.packages.libc0.3: 2.41-6 is not the pinned libc_version 2.41-7" in r.stdout
    assert "Traceback" not in r.stdout
    assert not (proj.artifacts / "hurd-modules").exists()


def test_ldso_that_is_not_the_pinned_libc_is_refused_nothing_written(
    apt_repo: AptRepo, elves: ElfFactory, tmp_path: Path
) -> None:
    """A libc0.3 2.41-7 package whose ld.so says 2.41-6: the banner check refuses it."""
    publish_hurd(apt_repo, elves, 32, libc="2.41-7", banner="2.41-6")
    proj = make_project(tmp_path, variant_overlay(apt_repo, 32, libc="2.41-7"))
    r = proj.doit("hurd-modules:hurd-i386")
    assert r.returncode != 0
    assert "error: hurd-modules:hurd-i386:" in r.stdout
    assert "glibc 2.41-6, but the pinned libc0.3 version is 2.41-7" in r.stdout
    assert not (proj.artifacts / "hurd-modules" / "hurd-i386").exists()
    assert not list((proj.artifacts / "hurd-modules").glob(".tmp-*"))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [("tampered-inrelease", "bad signature"), ("other-key", "not in the keyring")],
)
def test_bad_signature_fails_and_keeps_the_previous_ramdisk(
    apt_repo: AptRepo, elves: ElfFactory, tmp_path: Path, breakage: str, message: str
) -> None:
    publish_hurd(apt_repo, elves, 32)
    proj = make_project(tmp_path, variant_overlay(apt_repo, 32))
    assert proj.doit("hurd-modules:hurd-i386").returncode == 0
    out = proj.artifacts / "hurd-modules" / "hurd-i386"
    before = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}
    # A new suite, so nothing is answered from the cache's record of the first one.
    publish_hurd(apt_repo, elves, 32, suite="test2")
    if breakage == "tampered-inrelease":
        apt_repo.tamper_inrelease()
    else:
        apt_repo.resign_with_other_key()
    proj.overlay({"hurd-modules": {"variants": variant_overlay(apt_repo, 32, suite="test2")}})
    r = proj.doit("hurd-modules:hurd-i386")
    assert r.returncode != 0
    # The sources task that fetches the index fails first, as one line; the stage does not run.
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("sources:") and " error: " in ln), "")
    assert message in line and "/dists/test2/InRelease" in line, r.stdout[-3000:]
    assert "Traceback" not in r.stdout
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()} == before
    assert not list((proj.artifacts / "hurd-modules").glob(".tmp-*"))
