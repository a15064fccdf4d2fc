"""The release bundle with a root disk (recipes/rootdisk.toml present): the disk gzipped in the bundle, xl configs that
boot it (direct and through pv-grub2's disk flavour), provenance down to the Hurd commit its tree was built from, and
verify. The stage outputs are fixtures written by the one manifest writer, like tests/test_bundle.py's; the disk stage
itself runs for real in tests/test_rootdisk.py."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from test_bundle import REPO, do_bundle, make_project, make_stages, pae_kernel, stage_manifest

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.release import bundle as B
from hurdxen.release import domains as D
from hurdxen.release import verify as V

HURD_COMMIT = "7" * 40
__all__ = ["pae_kernel"]  # the module-scoped fixture: Debian's real 32-bit PAE kernel
DISK = b"an ext2 filesystem for the Hurd\n" * 4096


def make_disk_stages(artifacts: Path) -> Path:
    """A rootdisk output made from hurd:root (built from hurd:system, from a Hurd commit); a disk-flavour pv-grub2."""
    s = artifacts / "hurd" / "system"
    s.mkdir(parents=True)
    (s / "tree.tar").write_bytes(b"system tree")
    hurd_git = {"git": "https://git.savannah.gnu.org/git/hurd/hurd.git", "commit": HURD_COMMIT}
    hurd_git["fetched_from"] = "/home/someone/mirror/hurd.git"  # type: ignore[assignment]
    stage_manifest(s, "hurd", "system", {"hurd": hurd_git, "upstream": {}}, {"tree": "tree.tar"})
    r = artifacts / "hurd" / "root"
    r.mkdir(parents=True)
    (r / "tree.tar").write_bytes(b"root tree")
    up = {"hurd:system": {"identity": fsutil.identity("hurd:system"), "sha256": "1" * 64, "into": "sysroot"}}
    stage_manifest(r, "hurd", "root", {"upstream": up}, {"tree": "tree.tar"})
    d = artifacts / "rootdisk" / "hurd-i386"
    d.mkdir(parents=True)
    (d / "disk.img").write_bytes(DISK)
    (d / "disk.img.gz").write_bytes(gzip.compress(DISK, mtime=0))
    (d / "grub.cfg").write_text("multiboot /boot/gnumach.gz root=device:hd0\n")
    (d / "tree.tar").write_bytes(b"disk tree")
    root_id = fsutil.identity("hurd:root")
    tree_sha = fsutil.sha256_file(r / "tree.tar")
    upstream = {
        "hurd:root": {"identity": root_id, "sha256": tree_sha, "into": "sysroot"},
        "gnumach:xen-pae": {"identity": fsutil.identity("gnumach:xen-pae"), "kernel.gz": "2" * 64},
    }
    options = {"PARTITION": "", "GRUB_CONFIG": "/boot/grub/grub.cfg", "SIZE_MIB": "48"}
    outs = {"image": "disk.img", "image.gz": "disk.img.gz", "grub.cfg": "grub.cfg", "tree": "tree.tar"}
    stage_manifest(
        d, "rootdisk", "hurd-i386", {"upstream": upstream, "options": options}, outs,
        hurd_root="device:hd0", kernel="gnumach:xen-pae", hurd_modules="hurd-modules:libc-2.41-6",
    )  # fmt: skip
    p = artifacts / "pvgrub2" / "i386-xen-disk"
    p.mkdir(parents=True)
    (p / "pv-grub-i386-xen-disk.gz").write_bytes(gzip.compress(b"GRUB disk" * 1000, mtime=0))
    stage_manifest(
        p, "pvgrub2", "i386-xen-disk", {}, {"image.gz": "pv-grub-i386-xen-disk.gz"}, platform="i386-xen", flavour="disk"
    )
    return artifacts


def disk_project(root: Path) -> Path:
    make_project(root)
    shutil.copy(REPO / "recipes" / "rootdisk.toml", root / "recipes" / "rootdisk.toml")
    return root


ONE_DISK = {"release.include.rootdisks": '["hurd-i386"]'}


@pytest.fixture
def disk_bundle(tmp_path: Path, pae_kernel: Path) -> B.BundleResult:
    artifacts = make_disk_stages(make_stages(tmp_path / "artifacts", pae_kernel))
    return do_bundle(disk_project(tmp_path / "proj"), artifacts, ONE_DISK)


def test_the_disk_and_configs_that_boot_it_are_in_the_bundle(disk_bundle: B.BundleResult) -> None:
    b = disk_bundle
    gz = "rootdisk/hurd-i386.img.gz"
    assert b.files[gz] == fsutil.sha256_bytes(gzip.compress(DISK, mtime=0))
    assert gzip.decompress((b.directory / gz).read_bytes()) == DISK
    base = f"/srv/xen/{b.release}"
    direct = D.parse_xl((b.directory / "domains" / "hurd-i386.cfg").read_text())
    assert direct["disk"] == [f"format=raw, vdev=hda, access=rw, target={base}/rootdisk/hurd-i386.img"]
    assert direct["kernel"] == f"{base}/kernels/gnumach-xen-pae.gz"
    assert direct["ramdisk"] == f"{base}/hurd-modules/hurd-modules-libc-2.41-6"
    assert direct["extra"] == "root=device:hd0"
    text = (b.directory / "domains" / "hurd-i386.cfg").read_text()
    assert f"gunzip -k {base}/{gz}" in text and fsutil.sha256_bytes(DISK) in text
    grub = D.parse_xl((b.directory / "domains" / "hurd-i386-pvgrub-i386-xen-disk.cfg").read_text())
    assert grub["kernel"] == f"{base}/pvgrub2/pv-grub-i386-xen-disk.gz" and "ramdisk" not in grub
    assert grub["disk"] == direct["disk"] and grub["extra"] == "xen_grub_env_cfg=/boot/grub/grub.cfg"
    # the hurd flavour image is no disk flavour: no disk config for it
    assert not (b.directory / "domains" / "hurd-i386-pvgrub-i386-xen-hurd.cfg").exists()


def test_the_readme_and_manifest_say_where_the_disk_came_from(disk_bundle: B.BundleResult) -> None:
    b = disk_bundle
    m = json.loads(b.manifest.read_text())
    rec = m["rootdisks"]["rootdisk/hurd-i386.img.gz"]
    assert rec["image_sha256"] == fsutil.sha256_bytes(DISK)
    assert rec["made_from"] == [
        {
            "stage": "hurd:root",
            "identity": fsutil.identity("hurd:root"),
            "tree_sha256": fsutil.sha256_bytes(b"root tree"),
        }
    ]
    hurd = [s for s in rec["sources"] if s.get("commit") == HURD_COMMIT]
    assert hurd and hurd[0]["stage"] == "hurd:system" and hurd[0]["git"].endswith("/hurd/hurd.git")
    assert not any("fetched_from" in s for s in rec["sources"])  # a local mirror is not the release's business
    assert "rootdisk/hurd-i386" in m["stages"] and "hurd/root" in m["tools"]["stages"]
    readme = (b.directory / "README.md").read_text()
    assert "## Root disks" in readme and "Made here by the rootdisk stage (`doit rootdisk:hurd-i386`)" in readme
    assert f"hurd:system hurd: https://git.savannah.gnu.org/git/hurd/hurd.git commit {HURD_COMMIT}" in readme
    assert "e2fsck -fn" in readme and "only the boot check's disk cases above say so" in readme


def test_verify_accepts_it_and_catches_a_disk_that_unpacks_to_other_bytes(disk_bundle: B.BundleResult) -> None:
    r = V.verify(disk_bundle.directory)
    assert r.ok, r.render()
    assert any("rootdisk/hurd-i386.img.gz: unpacks to the image" in c for c in r.checked)
    assert V.verify(disk_bundle.tarball).ok
    gz = disk_bundle.directory / "rootdisk" / "hurd-i386.img.gz"
    m = json.loads(disk_bundle.manifest.read_text())
    m["rootdisks"]["rootdisk/hurd-i386.img.gz"]["image_sha256"] = "0" * 64
    disk_bundle.manifest.write_text(json.dumps(m))
    bad = V.verify(disk_bundle.directory)
    assert any("its sha256 is not the manifest's image_sha256" in p for p in bad.problems), bad.render()
    gz.write_bytes(b"not gzip")
    assert any("not a readable gzip file" in p for p in V.verify(disk_bundle.directory).problems)


def test_two_bundles_are_identical(tmp_path: Path, pae_kernel: Path, disk_bundle: B.BundleResult) -> None:
    artifacts = make_disk_stages(make_stages(tmp_path / "again", pae_kernel))
    again = do_bundle(disk_project(tmp_path / "proj2"), artifacts, ONE_DISK)
    assert again.tarball_sha256 == disk_bundle.tarball_sha256


def test_an_unbuilt_disk_or_its_missing_kernel_is_one_line(tmp_path: Path, pae_kernel: Path) -> None:
    artifacts = make_disk_stages(make_stages(tmp_path / "artifacts", pae_kernel))
    root = disk_project(tmp_path / "proj")
    # by default every disk built (`doit build` makes none: the from-source stages are opt-in); named, it must be there
    assert "rootdisk/hurd-i386.img.gz" in do_bundle(root, artifacts).files
    shutil.rmtree(artifacts / "bundle")
    chosen = {"release.include.rootdisks": '["hurd-i386", "hurd-i386-partitioned"]'}
    with pytest.raises(HurdxenError, match=r"^error: bundle: rootdisk/hurd-i386-partitioned has not been built"):
        do_bundle(root, artifacts, chosen)
    with pytest.raises(HurdxenError, match=r"^error: bundle: the root disk hurd-i386 boots hurd-modules libc-2.41-6"):
        do_bundle(root, artifacts, {**ONE_DISK, "release.include.hurd_modules": '["libc-2.42-1"]'})


def test_without_a_rootdisk_recipe_the_bundle_has_no_disk(tmp_path: Path, pae_kernel: Path) -> None:
    artifacts = make_disk_stages(make_stages(tmp_path / "artifacts", pae_kernel))
    b = do_bundle(make_project(tmp_path / "proj"), artifacts)
    assert not any(f.startswith("rootdisk/") for f in b.files)
    assert "rootdisks" not in json.loads(b.manifest.read_text())
    assert "rootdisk/hurd-i386" in json.loads(b.manifest.read_text())["tools"]["stages"]  # recorded as before
