"""pv-grub2 through doit in a project copy: every image of recipes/pvgrub2.toml, the standalone ones embedding the
fakemach kernels of the gnumach stage and the stand-in boot modules of the hurd-modules stage (served from a signed
127.0.0.1 archive); identical across two artifacts dirs; a kernel strict verify refuses never reaches an image.
"""

from __future__ import annotations

import shutil
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aptrepo import AptRepo
from elfstandins import ElfFactory, elves
from fakemachrepo import FakeMach, make_fakemach_repo
from project import Project, clone_artifacts, require_docker
from test_hurd_modules_stage import LIBC, repos, variant_overlay

from hurdxen.core.fsutil import sha256_file
from hurdxen.pipeline import manifest
from hurdxen.release.inputs import strip_volatile

__all__ = ["elves", "repos"]

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGES = (
    "i386-xen-disk",
    "i386-xen-hurd",
    "i386-xen-standalone",
    "x86_64-xen-disk",
    "x86_64-xen-hurd",
    "x86_64-xen-standalone",
)
STANDALONE = {"i386-xen-standalone": ("xen-pae", 32), "x86_64-xen-standalone": ("xen-amd64", 64)}


@dataclass
class Built:
    fake: FakeMach
    overlay: dict[str, Any]
    proj: Project


def overlay_for(fake: FakeMach, repos: dict[int, AptRepo], notes: str | None = None) -> dict[str, Any]:
    over = fake.overlay({"xen-pae": {"configure": [f"--with-fake-notes={notes}"]}} if notes else None)
    over["hurd-modules"] = {"variants": {**variant_overlay(repos[32], 32), **variant_overlay(repos[64], 64)}}
    return over


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, repos: dict[int, AptRepo]) -> Built:
    require_docker()
    root = tmp_path_factory.mktemp("pvgrub-stage")
    fake = make_fakemach_repo(root)
    over = overlay_for(fake, repos)
    proj = Project.create(root / "proj", artifacts=root / "a1")
    proj.overlay(over)
    r = proj.doit(*(f"pvgrub2:{n}" for n in IMAGES))
    assert r.returncode == 0, r.stdout[-4000:]
    return Built(fake, over, proj)


@pytest.mark.parametrize("name", IMAGES)
def test_image_outputs(built: Built, name: str) -> None:
    d = built.proj.artifacts / "pvgrub2" / name
    stem = f"pv-grub-{name}"
    for suffix in ("", ".gz", ".grub.cfg", ".memdisk.tar"):
        assert (d / f"{stem}{suffix}").is_file(), suffix
    m = manifest.read(d)
    assert (m.stage, m.variant) == ("pvgrub2", name)
    assert m.output("image.gz") == d / f"{stem}.gz" and m.output("image") == d / stem
    assert m.fact("image_gz")["sha256"] == sha256_file(d / f"{stem}.gz")
    # What it was made from: the grub-xen-bin pin (with the .deb's hash) and how (the container step).
    grub = m.inputs["grub"]
    assert (grub["package"], grub["arch"]) == ("grub-xen-bin", "amd64") and len(grub["sha256"]) == 64
    assert m.step["executor"] == "docker" and m.step["image_id"].startswith("sha256:")
    if name in STANDALONE:
        variant = STANDALONE[name][0]
        assert m.inputs["kernel"]["task"] == f"gnumach:{variant}"
        kernel = manifest.read_task(built.proj.artifacts, f"gnumach:{variant}")
        assert m.inputs["kernel"]["sha256"] == kernel.outputs["kernel.gz"].sha256


@pytest.mark.parametrize("name", sorted(STANDALONE))
def test_standalone_memdisk_holds_the_stage_outputs(built: Built, elves: ElfFactory, name: str) -> None:
    variant, bits = STANDALONE[name]
    a = built.proj.artifacts
    with tarfile.open(a / "pvgrub2" / name / f"pv-grub-{name}.memdisk.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert files["boot/gnumach.gz"] == (a / "gnumach" / variant / f"gnumach-{variant}.gz").read_bytes()
    assert files["hurd/ext2fs.static"] == elves.static(bits)
    # hurd-amd64's dynamic linker is ld-x86-64.so.1 (the recipe once named /lib/ld.so.1 for both platforms).
    ldso = "lib/ld.so.1" if bits == 32 else "lib/ld-x86-64.so.1"
    assert files[ldso] == elves.ldso(bits, LIBC)
    assert f"module (memdisk)/{ldso} exec /hurd/exec" in files["boot/grub/grub.cfg"].decode()
    cfg = files["boot/grub/grub.cfg"].decode()
    assert "multiboot (memdisk)/boot/gnumach.gz" in cfg
    assert "module (memdisk)/hurd/ext2fs.static" in cfg


def test_images_identical_across_two_artifact_dirs(built: Built, tmp_path: Path) -> None:
    proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "a2")
    proj.overlay(built.overlay)
    clone_artifacts(built.proj.artifacts, proj.artifacts)
    for sub in ("gnumach", "hurd-modules", "pvgrub2", "logs"):
        shutil.rmtree(proj.artifacts / sub, ignore_errors=True)
    r = proj.doit(*(f"pvgrub2:{n}" for n in IMAGES))
    assert r.returncode == 0, r.stdout[-4000:]
    for n in IMAGES:
        for name in (f"pv-grub-{n}", f"pv-grub-{n}.gz", f"pv-grub-{n}.memdisk.tar"):
            f1 = built.proj.artifacts / "pvgrub2" / n / name
            f2 = proj.artifacts / "pvgrub2" / n / name
            assert sha256_file(f1) == sha256_file(f2), f"{n}/{name} differs"
        # The manifests as the release records them (without the step's time).
        m1, m2 = (manifest.read(a / "pvgrub2" / n).raw for a in (built.proj.artifacts, proj.artifacts))
        assert strip_volatile(m1) == strip_volatile(m2), n


def test_kernel_refused_by_strict_verify_never_reaches_an_image(
    built: Built, repos: dict[int, AptRepo], tmp_path: Path
) -> None:
    """pvgrub's own kernel check is lenient (Xen's view: note-owner problems are warnings there), so the gate is the
    gnumach stage: a name-owner kernel is not published, the standalone image is not rebuilt, the old one stays."""
    proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "a3")
    proj.overlay(overlay_for(built.fake, repos, notes="name-owner"))
    clone_artifacts(built.proj.artifacts, proj.artifacts)
    d = proj.artifacts / "pvgrub2" / "i386-xen-standalone"
    before = {p.name: sha256_file(p) for p in d.iterdir()}
    r = proj.doit("pvgrub2:i386-xen-standalone")
    assert r.returncode != 0
    assert any(ln.startswith("error: gnumach:xen-pae:") for ln in r.stdout.splitlines()), r.stdout[-3000:]
    # The run ends with a summary: the failed task with its error line, the one it held back, and why.
    summary = r.stdout[r.stdout.index("summary: ") :].splitlines()
    assert "1 failed" in summary[0] and "1 not run" in summary[0]
    assert any(ln.split()[:2] == ["failed", "gnumach:xen-pae"] and "error: gnumach:xen-pae:" in ln for ln in summary)
    assert any(ln.split()[:3] == ["not", "run", "pvgrub2:i386-xen-standalone"] for ln in summary)
    assert any(ln.endswith("needs gnumach:xen-pae") for ln in summary)
    assert "UnmetDependency" not in r.stdout
    assert {p.name: sha256_file(p) for p in d.iterdir()} == before


def test_a_new_gnumach_variant_is_a_recipe_edit(built: Built, repos: dict[int, AptRepo], tmp_path: Path) -> None:
    """A variant added in hurdxen.local.toml only: gnumach builds it, pv-grub2 takes its bits and PAE from the
    gnumach recipe and the boot modules from the hurd-modules variant that lists it."""
    over = overlay_for(built.fake, repos)
    over["gnumach"]["variants"] = {
        "xen-pae-o1": {"host": "i686-gnu", "cc": "gcc -m32", "ld": "ld -melf_i386", "mig": "i686-gnu", "pae": True}
    }
    over["hurd-modules"]["variants"]["hurd-i386"]["kernels"] = ["xen-pae", "xen-nopae", "xen-pae-o1"]
    image = {"name": "i386-o1", "platform": "i386-xen", "flavour": "standalone", "kernels": ["xen-pae-o1"]}
    with open(built.proj.root / "recipes" / "pvgrub2.toml", "rb") as f:
        over["pvgrub2"] = {"images": [*tomllib.load(f)["images"], image]}  # an overlay's array replaces the recipe's
    proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "a4")
    proj.overlay(over)
    clone_artifacts(built.proj.artifacts, proj.artifacts)
    r = proj.doit("pvgrub2:i386-o1")
    assert r.returncode == 0, r.stdout[-4000:]
    m = manifest.read(proj.artifacts / "pvgrub2" / "i386-o1")
    assert m.fact("kernels") == [{"name": "xen-pae-o1", "bits": 32, "pae": True}]
    kernel = manifest.read_task(proj.artifacts, "gnumach:xen-pae-o1").output("kernel.gz")
    with tarfile.open(m.output("memdisk")) as tar:
        assert tar.extractfile("boot/gnumach.gz").read() == kernel.read_bytes()  # type: ignore[union-attr]
        assert tar.extractfile("lib/ld.so.1") is not None
