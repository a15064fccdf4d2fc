"""The whole chain through doit in a project copy that is a git checkout tagged v1.0.0: fakemach kernels (gnumach
stage), stand-in Hurd packages from a signed archive on 127.0.0.1 (hurd-modules), every pv-grub2 image, then
`doit bundle`, `doit verify` (and a tampered bundle refused), and `doit reproduce` rebuilding it all in a clean copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aptrepo import AptRepo
from elfstandins import elves
from fakemachrepo import make_fakemach_repo
from project import CODE, Project, require_docker
from test_pvgrub_stage import overlay_for, repos

__all__ = ["elves", "repos"]

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RELEASE = "hurdxen-1.0.0"


@dataclass
class Released:
    proj: Project
    bundle: Path
    tarball: Path
    doit_output: str
    mirror: Path  # where the overlay fetched GNU Mach from (a local fact)


def git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@invalid",
        "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
        "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, repos: dict[int, AptRepo]) -> Iterator[Released]:
    require_docker()
    root = tmp_path_factory.mktemp("release-e2e")
    fake = make_fakemach_repo(root)
    proj = Project.create(root / "proj", artifacts=root / "artifacts")
    over = overlay_for(fake, repos)
    # No boot check in this chain (the fakemach kernels do not boot): the bundle says so, as the flag requires.
    over["release"] = {"allow_unbooted": True}
    proj.overlay(over)
    # The revision holds its code too: `doit reproduce` rebuilds with the clean copy's hurdxen/, not the venv's.
    shutil.copytree(CODE / "hurdxen", proj.root / "hurdxen", ignore=shutil.ignore_patterns("__pycache__"))
    (proj.root / ".gitignore").write_text("/hurdxen.local.toml\n")
    git(proj.root, "init", "-q", "-b", "main")
    git(proj.root, "add", "-A")
    git(proj.root, "commit", "-q", "-m", "release")
    git(proj.root, "tag", "v1.0.0")
    r = proj.doit("bundle")
    assert r.returncode == 0, r.stdout[-5000:]
    bundle = proj.artifacts / "bundle" / "hurdxen" / RELEASE
    yield Released(proj, bundle, bundle.with_name(RELEASE + ".tar.gz"), r.stdout, fake.repo)


def test_bundle_holds_every_artefact_and_checksums_verify(released: Released) -> None:
    b = released.bundle
    names = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    for expected in (
        "kernels/gnumach-xen-pae.gz",
        "kernels/gnumach-xen-nopae.gz",
        "kernels/gnumach-xen-amd64.gz",
        "pvgrub2/pv-grub-i386-xen-standalone.gz",
        "pvgrub2/pv-grub-x86_64-xen-hurd.gz",
        "SHA256SUMS",
        "manifest.json",
        "provenance.intoto.json",
        "README.md",
    ):
        assert expected in names, sorted(names)
    assert any(n.startswith("hurd-modules/") for n in names)
    assert any(n.startswith("domains/") and n.endswith(".cfg") for n in names)
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=b, check=True)
    manifest = json.loads((b / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert "allow_unbooted" in text  # the override is on record
    assert released.tarball.is_file()


def test_provenance_names_every_input_of_every_artefact(released: Released) -> None:
    """Built by the real producers: every kernel build with its source and patches, every pv-grub2 image with its
    grub-xen-bin package, the builder image (tag and id); the local mirror appears nowhere in the bundle."""
    prov = json.loads((released.bundle / "provenance.intoto.json").read_text())
    deps = {d["name"]: d for d in prov["predicate"]["buildDefinition"]["resolvedDependencies"]}
    upstream = "git+https://git.savannah.gnu.org/git/hurd/gnumach.git@"  # recipes/gnumach.toml, not the overlay
    for v in ("xen-pae", "xen-nopae", "xen-amd64"):
        assert deps[f"gnumach/{v}:inputs.source.git"]["uri"].startswith(upstream)
        patch = deps[f"gnumach/{v}:inputs.source.patches[0]"]
        assert patch["uri"].endswith(".patch") and len(patch["digest"]["sha256"]) == 64
        assert deps[f"gnumach/{v}:image"]["uri"].startswith("docker-image:hurdxen/builder:")
    images = [p.name.removeprefix("pv-grub-").removesuffix(".gz") for p in (released.bundle / "pvgrub2").iterdir()]
    assert len(images) == 6
    for name in images:
        grub = deps[f"pvgrub2/{name}:inputs.grub"]
        assert grub["uri"] == "pkg:deb/debian/grub-xen-bin@2.06-13+deb12u2?arch=amd64"
        assert grub["digest"]["sha256"] == "b9671bff7cbe6e637fc7ddb8726ddbc45a92173ebc9c8347f63d994039f9614f"
        image = deps[f"pvgrub2/{name}:image"]
        assert image["uri"].startswith("docker-image:hurdxen/builder:") and len(image["digest"]["sha256"]) == 64
    for f in released.bundle.rglob("*"):
        if f.is_file():
            assert str(released.mirror).encode() not in f.read_bytes(), f


def test_doit_verify_passes_and_a_tampered_bundle_fails(released: Released, tmp_path: Path) -> None:
    r = released.proj.doit("verify")
    assert r.returncode == 0, r.stdout[-3000:]
    copy = tmp_path / RELEASE
    shutil.copytree(released.bundle, copy)
    with open(copy / "kernels" / "gnumach-xen-pae.gz", "ab") as f:
        f.write(b"\0")
    r = released.proj.doit("verify", "--bundle", str(copy))
    assert r.returncode != 0
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("error: ")]
    assert errors and "gnumach-xen-pae.gz" in errors[0], r.stdout[-3000:]
    assert "Traceback" not in r.stdout


def test_second_bundle_is_up_to_date_and_a_forced_one_bit_identical(released: Released) -> None:
    before = released.tarball.read_bytes()
    r = released.proj.doit("bundle")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "bundle:hurdxen" in r.up_to_date and "bundle:hurdxen" not in r.executed, r.stdout[-3000:]
    assert released.tarball.read_bytes() == before
    assert released.proj.doit("forget", "bundle:hurdxen").returncode == 0
    r = released.proj.doit("bundle")
    assert r.returncode == 0 and "bundle:hurdxen" in r.executed, r.stdout[-3000:]
    assert released.tarball.read_bytes() == before


def test_doit_reproduce_rebuilds_everything_identically(released: Released) -> None:
    r = released.proj.doit("reproduce", timeout=2400)
    assert r.returncode == 0, r.stdout[-5000:]
    assert not (released.proj.artifacts / "reproduce-report").exists() or not any(
        (released.proj.artifacts / "reproduce-report").iterdir()
    )
