"""Release bundles: domain configs, bundle, verify, publish (directory and a real local registry), reproduce.

Stage outputs are fixtures with the contract's shape (artifacts/<stage>/<variant>/ + manifest.json); the kernel is
Debian's real 32-bit PAE GNU Mach, so the Xen-notes check runs on a genuine kernel.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from debian_kernels import fetch_kernel
from gpgkey import Key, drop_key, make_key
from ociregistry import run_registry

from hurdxen.boot.cases import CHECK_TASK, REPORT, REPORT_FILE
from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, recipes
from hurdxen.pipeline.containers import BaseSpec
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.executors import StepResult
from hurdxen.release import bundle as B
from hurdxen.release import domains as D
from hurdxen.release import provenance, signing
from hurdxen.release import publish as P
from hurdxen.release import reproduce as R
from hurdxen.release import verify as V
from hurdxen.sources.fetch import Cache

REPO = Path(__file__).resolve().parents[1]
SDE = 1767225600
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_SYSTEM": "/dev/null",
}
RELEASE_TOML = """\
name = "hurdxen"
allow_unbooted = false
accept_known_failures = true
[include]
kernels = ["xen-pae"]
[signing]
key = ""
"""


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pae_kernel() -> Path:
    return fetch_kernel("i386-486")  # Debian's gnumach-1.8-xen-486.gz: really 32-bit PAE


def git(root: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", "-C", str(root), *args], env=env, check=True, capture_output=True, text=True).stdout


def make_project(root: Path, tag: str | None = "v1.2.0", release_toml: str = RELEASE_TOML) -> Path:
    """A project checkout: the two recipes, committed with fixed dates (same commit id in every temp dir)."""
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "release.toml").write_text(release_toml)
    shutil.copy(REPO / "recipes" / "domains.toml", root / "recipes" / "domains.toml")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "fixture")
    if tag:
        git(root, "tag", tag)
    return root


def stage_manifest(
    d: Path, stage: str, variant: str, inputs: dict[str, object], outputs: dict[str, str], **extra: object
) -> None:
    """A stage manifest written by the one writer (hurdxen.pipeline.manifest), for files made here by hand; the release
    chain through the real producers is tests/test_release_e2e.py."""
    step = StepResult(
        f"{stage}:{variant}",
        0,
        time.monotonic() % 100,  # run-to-run noise the bundle must drop
        d / f"{stage}-{variant}.log",
        "docker run … bash -c <script>",
        "docker",
        "hurdxen/builder:851b97aaf0c0fbf1",
        "sha256:" + "b" * 64,
    )
    task = f"{stage}:{variant}"
    manifest.write_raw(
        d, task=task, identity=fsutil.identity(task), inputs=inputs, step=step, outputs=outputs, extra=extra
    )


def make_stages(artifacts: Path, kernel: Path, boot_verdicts: dict[str, str] | None = None) -> Path:
    g = artifacts / "gnumach" / "xen-pae"
    g.mkdir(parents=True)
    shutil.copy(kernel, g / "gnumach-xen-pae.gz")
    (g / "gnumach-xen-pae").write_bytes(gzip.decompress(kernel.read_bytes()))
    (g / "verify.json").write_text("{}\n")
    src = {"git": {"url": "https://git.savannah.gnu.org/git/hurd/gnumach.git", "commit": "4" * 40}}
    src["fetched_from"] = {"git": "/home/someone/mirror/gnumach.git"}  # a local fact: not in the bundle
    src["patches"] = [{"name": "0001-fix.patch", "path": "recipes/patches/gnumach/0001-fix.patch", "sha256": "5" * 64}]
    outs = {"kernel": "gnumach-xen-pae", "kernel.gz": "gnumach-xen-pae.gz", "verify.json": "verify.json"}
    stage_manifest(g, "gnumach", "xen-pae", {"source": src}, outs, bits=32, pae=True, verify={"strict": False})
    (artifacts / "gnumach" / "source").mkdir()  # a source tree without a manifest: never bundled
    for v, libc in (("libc-2.41-6", "2.41-6"), ("libc-2.42-1", "2.42-1")):
        h = artifacts / "hurd-modules" / v
        h.mkdir(parents=True)
        (h / "hurd-modules").write_bytes(f"modules for {libc}\n".encode() * 100)
        ram = {"file": "hurd-modules", "sha256": fsutil.sha256_file(h / "hurd-modules"), "size": 1}
        mods = [{"name": "ext2fs", "path": "/hurd/ext2fs.static", "sha256": "a" * 64}]
        stage_manifest(
            h, "hurd-modules", v, {"files": {}}, {"ramdisk": "hurd-modules"}, bits=32, libc_version=libc, ramdisk=ram,
            modules=mods,
        )  # fmt: skip
    p = artifacts / "pvgrub2" / "i386-xen-hurd"
    p.mkdir(parents=True)
    (p / "pv-grub-i386-xen-hurd.gz").write_bytes(gzip.compress(b"GRUB" * 1000, mtime=0))
    stage_manifest(
        p, "pvgrub2", "i386-xen-hurd", {}, {"image.gz": "pv-grub-i386-xen-hurd.gz"}, platform="i386-xen", flavour="hurd"
    )
    m = artifacts / "mig" / "i686-gnu"
    (m / "bin").mkdir(parents=True)
    (m / "bin" / "i686-gnu-mig").write_text("#!/bin/sh\n")
    url = "http://deb.debian.org/debian/pool/main/m/mig/mig_1.8+git20231217.orig.tar.xz"
    stage_manifest(m, "mig", "i686-gnu", {"source": {"url": url, "sha256": "6" * 64}}, {"mig": "bin/i686-gnu-mig"})
    write_boot_report(artifacts, boot_verdicts or {"pae-direct": "pass", "nopae-refused": "expected-refusal"})
    (artifacts / "logs").mkdir()
    (artifacts / "logs" / "x.log").write_text(str(time.time()))
    return artifacts


def write_boot_report(
    artifacts: Path, verdicts: dict[str, str], not_booted: list[dict[str, str]] | None = None
) -> Path:
    """What `doit boot:check` publishes: its report (the verdicts) as its output `report`, named in its manifest."""
    d = artifacts / "boot" / "check"
    d.mkdir(parents=True, exist_ok=True)
    cases = [
        {"case": c, "kind": "guest", "verdict": v, "seconds": 11.5, "log": f"/tmp/{c}.log", "reason": ""}
        for c, v in verdicts.items()
    ]
    report = {"ok": True, "cases": cases, **({"not_booted": not_booted} if not_booted else {})}
    (d / REPORT_FILE).write_text(json.dumps(report))
    step = manifest.in_process("hurdxen.boot.run.run_boot_checks", seconds=time.monotonic() % 100)
    identity = fsutil.identity(CHECK_TASK, verdicts, not_booted)
    manifest.write_raw(d, task=CHECK_TASK, identity=identity, inputs={}, step=step, outputs={REPORT: REPORT_FILE})
    return d


def context(root: Path, artifacts: Path) -> Context:
    base = BaseSpec("bookworm", "http://deb.debian.org/debian", "minbase", ("main",), (), SDE)
    return Context(root, artifacts, Cache(root / "cache"), "host", SDE, base, ())


def do_bundle(root: Path, artifacts: Path, overrides: dict[str, str] | None = None) -> B.BundleResult:
    r = recipes.load(root, overrides=overrides or {}, overlay=root / "none.toml")
    return B.bundle(context(root, artifacts), r)


@pytest.fixture
def built(tmp_path: Path, pae_kernel: Path) -> B.BundleResult:
    root = make_project(tmp_path / "proj")
    return do_bundle(root, make_stages(tmp_path / "artifacts", pae_kernel))


@pytest.fixture(scope="module")
def key() -> Iterator[Key]:
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed")
    k = make_key("release")
    yield k
    drop_key(k)


@pytest.fixture(scope="module")
def other_key() -> Iterator[Key]:
    k = make_key("mallory")
    yield k
    drop_key(k)


def signed_overrides(k: Key) -> dict[str, str]:
    return {"release.signing.key": k.fingerprint, "release.signing.gnupghome": str(k.home)}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry (distribution) on 127.0.0.1 (tests/ociregistry.py), filesystem storage in a temp dir."""
    with run_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r.host


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ domain configs


def test_direct_config_parses_back_with_comments() -> None:
    k = D.KernelInput("xen-pae", "kernels/gnumach-xen-pae.gz", 32, True)
    m = D.ModulesInput("libc", "hurd-modules/hurd-modules-libc", 32, "2.41-6")
    cfg = D.direct_config("hurdxen-1.0", k, m, D.DomainSettings(vif="mac"))
    got = D.parse_xl(cfg.text)
    assert got["kernel"] == "/srv/xen/hurdxen-1.0/kernels/gnumach-xen-pae.gz"
    assert got["ramdisk"] == "/srv/xen/hurdxen-1.0/hurd-modules/hurd-modules-libc"
    assert got["extra"] == "root=device:hd0"
    assert got["memory"] == 512 and got["disk"] == ["phy:sda4,hda,w"]
    assert got["vif"] == [f"mac={D.stable_mac('hurd-xen-pae')},bridge=br0"]
    assert "part:2:device:hd0" in cfg.text and "CONFIG_PV32" in cfg.text
    assert not cfg.warnings


def test_modules_origin_says_where_the_modules_came_from() -> None:
    """The bundle's README and manifest say where a ramdisk's modules came from, from what the hurd-modules stage
    recorded for each source (the shapes its manifest writer uses), never just "the Hurd's"."""
    from hurdxen.release.inputs import modules_origin

    hurd = {"git": "https://git.savannah.gnu.org/git/hurd/hurd.git", "commit": "d6a94f56" * 5}
    root = {"identity": "ab" * 32, "outputs": {}, "sources": {"hurd:system.hurd_src": hurd}}
    built = {"source": "build", "build": {"hurd:root": root}}
    assert modules_origin(built) == (
        "built here from source: hurd:root (identity abababababababab…) from "
        "https://git.savannah.gnu.org/git/hurd/hurd.git commit d6a94f56d6a9…"
    )
    debian = {"source": "debian", "debian": [{"package": "hurd", "version": "1:0.9", "arch": "hurd-i386"}]}
    assert modules_origin(debian) == "Debian's packages hurd 1:0.9 (hurd-i386)"
    disk = {"source": "disk", "disk": {"sha256": "c" * 64, "partition": 1, "libc": {"path": "/lib/libc.so.0.3"}}}
    assert modules_origin(disk) == (
        "read from a user's disk image (sha256 cccccccccccccccc…, partition 1; libc from its /lib/libc.so.0.3)"
    )
    files = {"source": "files", "files": [{"name": "ext2fs.static", "sha256": "d" * 64}]}
    assert "override" in modules_origin(files) and "ext2fs.static sha256 dddddddddddddddd…" in modules_origin(files)
    # A crafted or older manifest: no traceback, no claim.
    assert modules_origin({}) == "" and modules_origin({"source": "build", "build": "x"}).startswith("built here")
    assert modules_origin({"source": "debian", "debian": [1, None]}) == "Debian's packages "


def test_nopae_and_memory_warnings() -> None:
    k = D.KernelInput("xen-nopae", "kernels/gnumach-xen-nopae.gz", 32, False)
    m = D.ModulesInput("l", "hurd-modules/hurd-modules-l", 32, None)
    cfg = D.direct_config("r-1", k, m, D.DomainSettings(memory=768, root="part:2:device:hd0"))
    assert D.DOMU_NOT_PAE in cfg.text
    assert cfg.warnings and "768 MB" in cfg.warnings[0]
    assert D.parse_xl(cfg.text)["extra"] == "root=part:2:device:hd0"
    assert "Use a PAE kernel there" in cfg.text and "xen-pae" not in cfg.text  # advice names no recipe variant
    k64 = D.KernelInput("xen-amd64", "kernels/gnumach-xen-amd64.gz", 64, None)
    cfg64 = D.direct_config("r-1", k64, m, D.DomainSettings(memory=2048))
    assert not cfg64.warnings and "their first system call fails" in cfg64.text


def test_pvgrub_config_has_no_ramdisk() -> None:
    img = D.PvGrubInput("x86_64-xen-disk", "pvgrub2/pv-grub-x86_64-xen-disk.gz", "x86_64-xen", "disk")
    cfg = D.pvgrub_config("r-1", img, D.DomainSettings(vif="bridge", extra="xen_grub_env_cfg=/boot/grub/x.cfg"))
    got = D.parse_xl(cfg.text)
    assert "ramdisk" not in got and got["vif"] == ["bridge=br0"]
    assert got["extra"] == "xen_grub_env_cfg=/boot/grub/x.cfg"
    assert "incompatible architecture: 2." in cfg.text


def test_stable_mac() -> None:
    assert D.stable_mac("hurd-xen-pae") == D.stable_mac("hurd-xen-pae")
    assert D.stable_mac("hurd-xen-pae") != D.stable_mac("hurd-xen-nopae")
    assert D.stable_mac("x").startswith("00:16:3e:")


def test_xl_parser() -> None:
    text = "# c\nname = \"a b\" ; memory=0x200\ndisk = [ 'phy:x,hda,w',\n  'file:/y,hdb,r', ]\ndisk += ['z,hdc']\n"
    assert D.parse_xl(text) == {"name": "a b", "memory": 512, "disk": ["phy:x,hda,w", "file:/y,hdb,r", "z,hdc"]}
    for bad in ("name = ", "= 1", "name = 'x' 'y'", "disk = ['a' 'b']", "x = @"):
        with pytest.raises(HurdxenError, match="cfg"):
            D.parse_xl(bad, "cfg")


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("describe", "dirty", "version", "source"),
    [
        ("v1.2.0", False, "1.2.0", "git describe"),
        ("v1.2.0", True, "1.2.0+dirty", "git describe"),
        ("v1.2.0-3-gabcdef123456", False, "1.2.0.post3+gabcdef123456", "git describe"),
        ("1.0rc1-1-gabcd", True, "1.0rc1.post1+gabcd.dirty", "git describe"),
        ("abcdef123456", False, "0.0.0+gabcdef123456", "fallback"),
        ("release-foo-2-gabcd", False, "0.0.0+gabcdef123456", "fallback"),
        (None, None, "0.0.0+unknown", "fallback"),
    ],
)
def test_version_from_describe(describe: str | None, dirty: bool | None, version: str, source: str) -> None:
    commit = "abcdef123456" + "0" * 28 if describe else None
    v = B.version_from_describe(describe, commit, dirty)
    assert (v.version, v.source) == (version, source)
    assert (v.note is None) == (source != "fallback")


# ------------------------------------------------------------------ bundle


def test_bundle_contents(built: B.BundleResult) -> None:
    b = built
    assert b.release == "hurdxen-1.2.0" and b.boot_passed and b.signature is None
    names = sorted(files_of(b.directory))
    assert names == [
        "README.md",
        "SHA256SUMS",
        "domains/hurd-pvgrub-i386-xen-hurd.cfg",
        "domains/hurd-xen-pae-libc-2.41-6.cfg",
        "domains/hurd-xen-pae-libc-2.42-1.cfg",
        "hurd-modules/hurd-modules-libc-2.41-6",
        "hurd-modules/hurd-modules-libc-2.42-1",
        "kernels/gnumach-xen-pae.gz",
        "manifest.json",
        "provenance.intoto.json",
        "pvgrub2/pv-grub-i386-xen-hurd.gz",
    ]
    m = json.loads(b.manifest.read_text())
    assert m["version"] == "1.2.0" and m["signed"] is False and m["boot"]["passed"] is True
    assert m["project"]["dirty"] is False and len(m["project"]["commit"]) == 40
    # volatile fields are gone, pins are there
    text = b.manifest.read_text()
    assert '"seconds"' not in text and '"log"' not in text
    uris = {d["uri"] for d in m["inputs"]}
    assert "http://deb.debian.org/debian/pool/main/m/mig/mig_1.8+git20231217.orig.tar.xz" in uris
    assert f"git+https://git.savannah.gnu.org/git/hurd/gnumach.git@{'4' * 40}" in uris
    patch = {"sha256": "5" * 64}
    assert [d["uri"] for d in m["inputs"] if d["digest"] == patch] == ["hurdxen:recipes/patches/gnumach/0001-fix.patch"]
    assert "/home/someone/mirror" not in text  # where the bytes came from is not the release's business
    assert "mig/i686-gnu" in m["tools"]["stages"]
    prov = json.loads((b.directory / B.PROVENANCE).read_text())
    assert prov["_type"] == "https://in-toto.io/Statement/v1"
    assert prov["predicateType"] == "https://slsa.dev/provenance/v1"
    assert {s["name"] for s in prov["subject"]} == set(names) - {"SHA256SUMS", "provenance.intoto.json"}
    assert prov["predicate"]["buildDefinition"]["resolvedDependencies"] == m["inputs"]
    readme = (b.directory / "README.md").read_text()
    assert "not signed" in readme and "sha256sum -c SHA256SUMS" in readme and "xl create" in readme
    # the tarball: ustar, sorted, owner 0, SOURCE_DATE_EPOCH, normalised modes, no gzip name/time
    raw = b.tarball.read_bytes()
    assert raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08  # gzip MTIME 0, no FNAME
    with tarfile.open(b.tarball) as tar:
        members = tar.getmembers()
    assert [mm.name for mm in members] == sorted(mm.name for mm in members)
    assert all(mm.uid == 0 and mm.gid == 0 and mm.uname == "" and mm.gname == "" for mm in members)
    assert all(mm.mtime == SDE and mm.mode in (0o644, 0o755) for mm in members)
    assert members[0].name == "hurdxen-1.2.0"


def add_standins(artifacts: Path) -> None:
    """A stand-in ramdisk (hurd-modules' standin source) and a pv-grub2 image holding its modules, as the stages
    record them."""
    h = artifacts / "hurd-modules" / "standin-x"
    h.mkdir(parents=True)
    (h / "hurd-modules").write_bytes(b"stand-in modules\n" * 100)
    ram = {"file": "hurd-modules", "sha256": fsutil.sha256_file(h / "hurd-modules"), "size": 1}
    described = {"modules": {"ext2fs.static": {"described": "gcc-built stand-in from hurdxen/data/standins/traps64.c"}}}
    stage_manifest(
        h, "hurd-modules", "standin-x", {"source": "standin", "standin": described}, {"ramdisk": "hurd-modules"},
        bits=32, libc_version="stand-in", ramdisk=ram, modules=[],
    )  # fmt: skip
    p = artifacts / "pvgrub2" / "i386-standin"
    p.mkdir(parents=True)
    (p / "pv-grub-i386-standin.gz").write_bytes(gzip.compress(b"GRUB-standin" * 100, mtime=0))
    held = {"/hurd/ext2fs.static": {"task": "hurd-modules:standin-x", "sha256": "c" * 64}}
    stage_manifest(
        p, "pvgrub2", "i386-standin", {"boot_modules": held}, {"image.gz": "pv-grub-i386-standin.gz"},
        platform="i386-xen", flavour="standalone",
    )  # fmt: skip


def test_bundle_leaves_standins_out(tmp_path: Path, pae_kernel: Path, built: B.BundleResult) -> None:
    """Stand-in ramdisks (gcc-built, not the Hurd) and the images that hold them are never shipped: the bundle is
    the one without them, byte for byte but for its README's line that names them; naming one is refused."""
    root = make_project(tmp_path / "proj2")
    art = make_stages(tmp_path / "art", pae_kernel)
    add_standins(art)
    b = do_bundle(root, art)
    assert sorted(files_of(b.directory)) == sorted(files_of(built.directory))
    text = b.manifest.read_text()
    assert "standin" not in text and "stand-in" not in text
    readme = (b.directory / "README.md").read_text()
    assert "Left out: hurd-modules:standin-x, pvgrub2:i386-standin: gcc-built stand-in boot modules" in readme
    assert "Left out" not in (built.directory / "README.md").read_text()
    with pytest.raises(HurdxenError, match=r"hurd-modules/standin-x is a gcc-built stand-in .*not the Hurd"):
        do_bundle(root, art, {"release.include.hurd_modules": '["libc-2.41-6", "standin-x"]'})
    with pytest.raises(HurdxenError, match=r"pvgrub2/i386-standin is a gcc-built stand-in"):
        do_bundle(root, art, {"release.include.pvgrub2": '["i386-xen-hurd", "i386-standin"]'})


def test_bundle_bit_identical_across_dirs_umask_tz(tmp_path: Path, pae_kernel: Path) -> None:
    results = []
    for v in (R.FIRST, R.SECOND):
        base = tmp_path / v.path_suffix
        with R.varied(v):
            root = make_project(base / "proj")
            results.append(do_bundle(root, make_stages(base / "artifacts", pae_kernel)))
    a, b = results
    assert str(a.directory) != str(b.directory)
    assert files_of(a.directory) == files_of(b.directory)
    assert a.tarball.read_bytes() == b.tarball.read_bytes()


def test_sha256sum_and_gpg_verify_with_real_tools(tmp_path: Path, pae_kernel: Path, key: Key) -> None:
    root = make_project(tmp_path / "proj")
    b = do_bundle(root, make_stages(tmp_path / "artifacts", pae_kernel), signed_overrides(key))
    assert b.signature is not None and b.signed_by == key.fingerprint
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=b.directory, check=True)
    assert b.signature.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    p = subprocess.run(
        ["gpg", "--homedir", str(key.home), "--verify", "SHA256SUMS.asc", "SHA256SUMS"],
        cwd=b.directory,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    m = json.loads(b.manifest.read_text())
    assert m["signed"] is True and m["signing_key"] == key.fingerprint
    r = V.verify(b.directory, keyring=key.public)
    assert r.ok, r.render()
    assert r.signed_by == key.fingerprint and not any("Xen" in w and "refuse" in w for w in r.problems)
    # the tarball leaves the signature out, so a signed build is still reproducible
    with tarfile.open(b.tarball) as tar:
        assert not any(n.endswith(".asc") for n in tar.getnames())
    first = b.tarball.read_bytes()
    b2 = do_bundle(root, make_stages(tmp_path / "artifacts2", pae_kernel), signed_overrides(key))
    assert b2.tarball.read_bytes() == first


def test_verify_clean_bundle_and_tarball(built: B.BundleResult) -> None:
    r = V.verify(built.directory)
    assert r.ok, r.render()
    assert any("Xen notes" in c for c in r.checked)
    assert "unsigned release (the manifest says so)" in r.warnings
    t = V.verify(built.tarball)
    assert t.ok, t.render()
    assert t.release == "hurdxen-1.2.0"


def _resum(d: Path) -> None:
    """What a careless tamperer does: recompute SHA256SUMS after the change."""
    files = {
        str(p.relative_to(d)): fsutil.sha256_file(p)
        for p in d.rglob("*")
        if p.is_file() and p.name not in ("SHA256SUMS", "SHA256SUMS.asc")
    }
    (d / "SHA256SUMS").write_text(provenance.sums_text(files))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("file", "kernels/gnumach-xen-pae.gz: sha256 mismatch (SHA256SUMS says"),
        ("manifest", "manifest.json: sha256 mismatch"),
        ("manifest-resummed", "provenance.intoto.json: subject manifest.json does not match the file"),
        ("config-resummed", "manifest.json: domains/hurd-xen-pae-libc-2.41-6.cfg sha256"),
        ("missing", "pvgrub2/pv-grub-i386-xen-hurd.gz: listed in SHA256SUMS but missing"),
        ("extra", "domains/evil.cfg: not listed in SHA256SUMS"),
        ("signature-stripped", "manifest.json says signed by"),
        ("sums-after-signing", "SHA256SUMS.asc: BAD signature"),
        ("wrong-key", "SHA256SUMS.asc: made by key"),
    ],
)
def test_verify_refuses_tampering(
    tmp_path: Path, pae_kernel: Path, key: Key, other_key: Key, tamper: str, message: str
) -> None:
    root = make_project(tmp_path / "proj")
    b = do_bundle(root, make_stages(tmp_path / "artifacts", pae_kernel), signed_overrides(key))
    d = b.directory
    if tamper == "file":
        with open(d / "kernels/gnumach-xen-pae.gz", "r+b") as f:
            f.seek(100)
            f.write(b"X")
    elif tamper.startswith("manifest"):
        m = json.loads((d / "manifest.json").read_text())
        m["inputs"][0]["digest"] = {"sha256": "0" * 64}
        (d / "manifest.json").write_text(json.dumps(m))
        if tamper == "manifest-resummed":
            _resum(d)
            (d / "SHA256SUMS.asc").unlink()
    elif tamper == "config-resummed":
        cfg = d / "domains/hurd-xen-pae-libc-2.41-6.cfg"
        cfg.write_text(cfg.read_text().replace("memory = 512", "memory = 4096"))
        _resum(d)
        (d / "SHA256SUMS.asc").unlink()
    elif tamper == "missing":
        (d / "pvgrub2/pv-grub-i386-xen-hurd.gz").unlink()
    elif tamper == "extra":
        (d / "domains/evil.cfg").write_text("kernel = '/evil'\n")
    elif tamper == "signature-stripped":
        (d / "SHA256SUMS.asc").unlink()
    elif tamper == "sums-after-signing":
        _resum(d)
        with open(d / "SHA256SUMS", "a") as f:
            f.write(f"{'0' * 64}  README.md\n")
    elif tamper == "wrong-key":
        (d / "SHA256SUMS.asc").unlink()
        signing.sign_sums(d / "SHA256SUMS", other_key.fingerprint, str(other_key.home))
    r = V.verify(d, keyring=key.public)
    assert not r.ok
    assert any(p.startswith(message) for p in r.problems), r.problems
    with pytest.raises(HurdxenError) as e:
        r.raise_for_problems()
    assert "\n" not in e.value.render() and e.value.render().startswith(f"error: verify {d}: ")


def test_verify_kernel_notes(tmp_path: Path, pae_kernel: Path) -> None:
    """A kernel the manifest calls 64-bit but is 32-bit: the Xen-notes check says so."""
    root = make_project(tmp_path / "proj")
    b = do_bundle(root, make_stages(tmp_path / "artifacts", pae_kernel))
    m = json.loads(b.manifest.read_text())
    r = V.verify(b.directory, kernel_check=lambda p, e: V.xen_kernel_check(p, {**e, "bits": 64}))
    assert not r.ok and r.problems[0].startswith("kernels/gnumach-xen-pae.gz: ")
    assert m["kernels"]["kernels/gnumach-xen-pae.gz"] == {
        "variant": "xen-pae",
        "bits": 32,
        "pae": True,
        "strict": False,
    }


def test_verify_tarball_with_unsafe_member(tmp_path: Path) -> None:
    t = tmp_path / "evil.tar.gz"
    with tarfile.open(t, "w:gz") as tar:
        info = tarfile.TarInfo("../x")
        tar.addfile(info)
    r = V.verify(t)
    assert not r.ok and "unsafe member" in r.problems[0]


def test_boot_gate(tmp_path: Path, pae_kernel: Path) -> None:
    root = make_project(tmp_path / "proj")
    art = make_stages(tmp_path / "artifacts", pae_kernel, {"pae-direct": "fail", "amd64": "known-failure"})
    with pytest.raises(HurdxenError, match=r"boot check did not pass: case pae-direct: fail") as e:
        do_bundle(root, art)
    assert "allow_unbooted" in (e.value.hint or "")
    b = do_bundle(root, art, {"release.allow_unbooted": "true"})
    m = json.loads(b.manifest.read_text())
    assert m["boot"] == {
        "allow_unbooted": True,
        "checked": True,
        "passed": False,
        "cases": [
            {"case": "amd64", "verdict": "known-failure", "reason": ""},
            {"case": "pae-direct", "verdict": "fail", "reason": ""},
        ],
    }
    assert "did not pass" in (b.directory / "README.md").read_text()
    assert any("allow_unbooted" in w for w in b.warnings)
    # A case the check did not boot (opt-in, or not named) is not a verdict: the manifest and README say so.
    not_booted = [{"case": "pae-direct", "reason": "opt-in: HURDXEN_BOOT_CASES=<name> boots it"}]
    write_boot_report(art, {"amd64": "known-failure"}, not_booted)
    b = do_bundle(root, art, {"release.allow_unbooted": "true"})
    assert json.loads(b.manifest.read_text())["boot"]["not_booted"] == not_booted
    assert (
        "- pae-direct: not booted (opt-in: HURDXEN_BOOT_CASES=<name> boots it)"
        in (b.directory / "README.md").read_text()
    )
    # A crafted list (not objects, a missing reason): entries that are not objects are dropped, no traceback.
    crafted: Any = [1, "x", None, {"case": "c"}]
    write_boot_report(art, {"amd64": "known-failure"}, crafted)
    b = do_bundle(root, art, {"release.allow_unbooted": "true"})
    assert json.loads(b.manifest.read_text())["boot"]["not_booted"] == [{"case": "c", "reason": ""}]
    shutil.rmtree(art / "boot" / "check")
    with pytest.raises(HurdxenError, match="no boot check"):
        do_bundle(root, art)


def test_domain_overrides_from_command_line(tmp_path: Path, pae_kernel: Path) -> None:
    root = make_project(tmp_path / "proj")
    art = make_stages(tmp_path / "artifacts", pae_kernel)
    b = do_bundle(
        root, art, {"domains.memory": "768", "domains.vif": "mac", "domains.pvgrub2.i386-xen-hurd.memory": "256"}
    )
    direct = D.parse_xl((b.directory / "domains/hurd-xen-pae-libc-2.41-6.cfg").read_text())
    pv = D.parse_xl((b.directory / "domains/hurd-pvgrub-i386-xen-hurd.cfg").read_text())
    assert direct["memory"] == 768 and pv["memory"] == 256 and "ramdisk" not in pv
    assert any("768 MB" in w for w in b.warnings)
    with pytest.raises(HurdxenError, match=r"the command line: domains.root: expected device:hd0"):
        do_bundle(root, art, {"domains.root": "hda1"})


def test_missing_stage_and_stale_output(tmp_path: Path, pae_kernel: Path) -> None:
    root = make_project(tmp_path / "proj")
    art = make_stages(tmp_path / "artifacts", pae_kernel)
    with pytest.raises(HurdxenError, match=r"gnumach/xen-nopae has not been built"):
        do_bundle(root, art, {"release.include.kernels": '["xen-pae", "xen-nopae"]'})
    (art / "pvgrub2" / "i386-xen-hurd" / "pv-grub-i386-xen-hurd.gz").write_bytes(b"changed")
    with pytest.raises(HurdxenError, match=r"pvgrub2/i386-xen-hurd/pv-grub-i386-xen-hurd.gz differs from its manifest"):
        do_bundle(root, art)


def test_version_from_untagged_and_dirty_checkout(tmp_path: Path, pae_kernel: Path) -> None:
    root = make_project(tmp_path / "proj", tag=None)
    art = make_stages(tmp_path / "artifacts", pae_kernel)
    b = do_bundle(root, art)
    sha = git(root, "rev-parse", "HEAD").strip()
    assert b.version == f"0.0.0+g{sha[:12]}"
    (root / "recipes" / "domains.toml").write_text((root / "recipes" / "domains.toml").read_text() + "\n")
    b2 = do_bundle(root, art)
    m = json.loads(b2.manifest.read_text())
    assert b2.version.endswith(".dirty") and m["project"]["dirty"] is True
    assert "fallback" in (b2.directory / "README.md").read_text()


# ------------------------------------------------------------------ publish


def test_publish_dir(tmp_path: Path, pae_kernel: Path, key: Key) -> None:
    dest = tmp_path / "pub"
    # Two trees: a bundle stage holds one release (this revision's), so a second version replaces the first.
    r1 = do_bundle(make_project(tmp_path / "p1", tag="v1.10.0"), make_stages(tmp_path / "a1", pae_kernel),
                   signed_overrides(key))  # fmt: skip
    r2 = do_bundle(make_project(tmp_path / "p2", tag="v1.9.0"), make_stages(tmp_path / "a2", pae_kernel))
    p1 = P.publish_dir(r1, dest)
    p2 = P.publish_dir(r2, dest)
    assert not p1.unchanged and not p2.unchanged
    index = json.loads((dest / "index.json").read_text())
    # packaging.version order, not string order: 1.9.0 < 1.10.0, and latest stays on the highest
    assert [e["version"] for e in index["releases"]] == ["1.9.0", "1.10.0"]
    assert index["latest"] == "hurdxen-1.10.0" and os.readlink(dest / "latest") == "hurdxen-1.10.0"
    assert index["releases"][1]["signed"] is True and index["releases"][1]["tarball_sha256"] == r1.tarball_sha256
    pub = dest / "hurdxen-1.10.0"
    assert (pub / "hurdxen-1.10.0.tar.gz").read_bytes() == r1.tarball.read_bytes()
    assert files_of(pub) == {**files_of(r1.directory), "hurdxen-1.10.0.tar.gz": r1.tarball.read_bytes()}
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=pub, check=True)
    v = V.verify(dest / "latest", keyring=key.public)
    assert v.ok, v.render()
    assert any("same files as the directory" in c for c in v.checked)
    assert P.publish_dir(r1, dest).unchanged
    # the same version with other bytes is refused
    other = tmp_path / "artifacts-other"
    make_stages(other, pae_kernel)
    rebuilt = other / "hurd-modules" / "libc-2.41-6"
    (rebuilt / "hurd-modules").write_bytes(b"other")
    stage_manifest(
        rebuilt, "hurd-modules", "libc-2.41-6", {}, {"ramdisk": "hurd-modules"}, bits=32, libc_version="2.41-6"
    )
    r3 = do_bundle(make_project(tmp_path / "p3", tag="v1.10.0"), other)
    with pytest.raises(HurdxenError, match=r"already holds a different hurdxen-1\.10\.0"):
        P.publish_dir(r3, dest)


def test_interrupted_publish_keeps_previous_release(
    tmp_path: Path, pae_kernel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "pub"
    old = do_bundle(make_project(tmp_path / "p1", tag="v1.0.0"), make_stages(tmp_path / "a1", pae_kernel))
    new = do_bundle(make_project(tmp_path / "p2", tag="v2.0.0"), make_stages(tmp_path / "a2", pae_kernel))
    P.publish_dir(old, dest)
    before = {**files_of(dest), "latest": os.readlink(dest / "latest").encode()}
    calls = []
    real = P._copy_file

    def failing(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(P, "_copy_file", failing)
    with pytest.raises(OSError, match="No space"):
        P.publish_dir(new, dest)
    monkeypatch.setattr(P, "_copy_file", real)
    assert {**files_of(dest), "latest": os.readlink(dest / "latest").encode()} == before
    assert not (dest / "hurdxen-2.0.0").exists()

    # Killed outright (SIGKILL) halfway through the copy: the same, plus a .tmp-* directory the next run sweeps.
    script = textwrap.dedent(f"""\
        import os, signal, sys
        from pathlib import Path
        from hurdxen.release import publish as P
        real = P._copy_file
        n = [0]
        def dying(src, dst):
            n[0] += 1
            if n[0] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
        P._copy_file = dying
        P.publish_dir(Path({str(new.directory)!r}), Path({str(dest)!r}))
        """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert p.returncode == -9, p.stderr
    assert any(x.name.startswith(".tmp-") for x in dest.iterdir())
    assert os.readlink(dest / "latest") == "hurdxen-1.0.0"
    assert json.loads((dest / "index.json").read_text())["latest"] == "hurdxen-1.0.0"
    assert files_of(dest / "hurdxen-1.0.0") == {
        k.removeprefix("hurdxen-1.0.0/"): v for k, v in before.items() if k.startswith("hurdxen-1.0.0/")
    }
    P.publish_dir(new, dest)
    assert os.readlink(dest / "latest") == "hurdxen-2.0.0"
    assert not any(x.name.startswith(".tmp-") for x in dest.iterdir())


def test_publish_oci_round_trip(tmp_path: Path, pae_kernel: Path, key: Key, registry: str) -> None:
    b = do_bundle(
        make_project(tmp_path / "proj"), make_stages(tmp_path / "artifacts", pae_kernel), signed_overrides(key)
    )
    res = P.publish_oci(b, f"{registry}/hurd/hurdxen", insecure=True)
    assert res.ref == f"{registry}/hurd/hurdxen:1.2.0"
    assert res.files == ("hurdxen-1.2.0.tar.gz", "SHA256SUMS", "SHA256SUMS.asc")
    assert res.digest and res.digest.startswith("sha256:")
    # pushing the same bundle again yields the same manifest
    assert P.publish_oci(b, res.ref, insecure=True).digest == res.digest
    got = P.pull_oci(res.ref, tmp_path / "pulled", insecure=True)
    assert sorted(p.name for p in got) == ["SHA256SUMS", "SHA256SUMS.asc", "hurdxen-1.2.0.tar.gz"]
    pulled = tmp_path / "pulled"
    assert (pulled / "hurdxen-1.2.0.tar.gz").read_bytes() == b.tarball.read_bytes()
    assert (pulled / "SHA256SUMS").read_bytes() == b.sums.read_bytes()
    assert b.signature is not None and (pulled / "SHA256SUMS.asc").read_bytes() == b.signature.read_bytes()
    v = V.verify(pulled / "hurdxen-1.2.0.tar.gz", keyring=key.public)
    assert v.ok, v.render()
    assert v.signed_by == key.fingerprint


def test_publish_oci_unreachable_registry(built: B.BundleResult) -> None:
    with pytest.raises(HurdxenError, match=r"OCI registry 127\.0\.0\.1:9 is not reachable"):
        P.publish_oci(built, f"127.0.0.1:{9}/x/y", insecure=True)


# ------------------------------------------------------------------ reproduce


def test_reproduce_passes_for_a_deterministic_build(tmp_path: Path, pae_kernel: Path) -> None:
    root = make_project(tmp_path / "proj")

    def build(artifacts: Path) -> None:
        make_stages(artifacts, pae_kernel)  # stage manifests carry different seconds each time: volatile
        do_bundle(root, artifacts)

    res = R.reproduce(build, tmp_path / "work")
    assert res.ok
    assert "bundle/hurdxen/hurdxen-1.2.0.tar.gz" in res.compared and "bundle/hurdxen/manifest.json" in res.compared
    assert "gnumach/xen-pae/manifest.json" in res.volatile_only or "gnumach/xen-pae/manifest.json" in res.compared
    assert not any(c.startswith("logs/") or c.startswith("boot/") for c in res.compared)


def test_reproduce_fails_with_diffoscope_report(tmp_path: Path) -> None:
    def build(artifacts: Path) -> None:
        (artifacts / "gnumach" / "x").mkdir(parents=True)
        (artifacts / "gnumach" / "x" / "same").write_text("same\n")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z") + f" {time.time_ns()} umask={os.umask(0o22):o}"
        (artifacts / "gnumach" / "x" / "version.c").write_text(f'const char when[] = "{stamp}";\n')

    with pytest.raises(R.ReproduceError) as e:
        R.reproduce(build, tmp_path / "work")
    res = e.value.result
    assert [d.path for d in res.differences] == ["gnumach/x/version.c"]
    assert e.value.render().startswith("error: reproduce: gnumach/x/version.c differs between builds (content)")
    d = res.differences[0]
    assert d.report_text is not None and d.report_text.is_file()
    if shutil.which("diffoscope"):
        assert d.report_html is not None and d.report_html.is_file()
        assert "when[]" in d.report_text.read_text()


def test_verify_cli(built: B.BundleResult, capsys: pytest.CaptureFixture[str]) -> None:
    from hurdxen.cli import main

    assert main(["verify-release", str(built.tarball)]) == 0
    assert "OK (hurdxen-1.2.0)" in capsys.readouterr().out
    assert main(["verify-release", "--require-signature", str(built.directory)]) == 1
    assert "SHA256SUMS.asc is missing and a signature was required" in capsys.readouterr().out


def test_reproduce_against_a_reference_with_work_inside(tmp_path: Path, pae_kernel: Path) -> None:
    root = make_project(tmp_path / "proj")

    def build(artifacts: Path) -> None:
        make_stages(artifacts, pae_kernel)
        do_bundle(root, artifacts)

    reference = tmp_path / "artifacts"
    reference.mkdir()
    build(reference)
    res = R.reproduce(build, reference / "reproduce-work", reference=reference)
    assert res.ok and not any(c.startswith("reproduce-") for c in res.compared)


def _tiny_revision(root: Path, *, with_code: bool) -> Path:
    """A git checkout whose `doit build bundle` writes which hurdxen ran (its REVISION and file) into the artifacts."""
    root.mkdir()
    (root / "dodo.py").write_text(
        textwrap.dedent(
            """\
            import os
            from pathlib import Path

            import hurdxen

            def _record() -> None:
                out = Path(os.environ["HURDXEN_ARTIFACTS"]) / "code.txt"
                inside = Path(hurdxen.__file__).resolve().is_relative_to(Path.cwd().resolve())
                out.write_text(f"{getattr(hurdxen, 'REVISION', 'not this revision')} inside={inside}\\n")

            def task_build():
                return {"actions": [_record], "verbosity": 0}

            def task_bundle():
                return {"actions": [_record], "verbosity": 0}
            """
        )
    )
    if with_code:
        (root / "hurdxen").mkdir()
        (root / "hurdxen" / "__init__.py").write_text('REVISION = "the reproduced revision"\n')
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@invalid"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "r"], cwd=root, check=True)
    return root


def test_reproduce_project_rebuilds_with_the_revisions_own_code(tmp_path: Path) -> None:
    """The rebuild imports the clean copy's hurdxen/, not the one installed in the venv (which points elsewhere)."""
    root = _tiny_revision(tmp_path / "rev", with_code=True)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "code.txt").write_text("the reproduced revision inside=True\n")
    res = R.reproduce_project(root, artifacts, tmp_path / "cache")
    assert res.ok and res.compared == ("code.txt",)
    env = {**os.environ, "PYTHONPATH": str(root)}
    assert R.own_code(root, env) == (root / "hurdxen" / "__init__.py").resolve()


def test_reproduce_project_skips_bundles_of_other_revisions(tmp_path: Path) -> None:
    """Bundles of earlier revisions, kept under artifacts/release/ before the bundle stage, are not compared (the
    rebuild makes only this revision's); this revision's, in the bundle stage's directory, is."""
    root = _tiny_revision(tmp_path / "rev", with_code=True)
    artifacts = tmp_path / "artifacts"
    (artifacts / "release" / "hurdxen-0.9+gold[1]").mkdir(parents=True)
    (artifacts / "release" / "hurdxen-0.9+gold[1]" / "SHA256SUMS").write_text("old\n")
    (artifacts / "release" / "hurdxen-0.9+gold[1].tar.gz").write_bytes(b"old")
    (artifacts / "code.txt").write_text("the reproduced revision inside=True\n")
    res = R.reproduce_project(root, artifacts, tmp_path / "cache", release="hurdxen-1.0")
    assert res.ok and res.compared == ("code.txt",)
    # This revision's own bundle is still compared: one missing from the rebuild is a difference.
    (artifacts / "bundle" / "hurdxen").mkdir(parents=True)
    (artifacts / "bundle" / "hurdxen" / "hurdxen-1.0.tar.gz").write_bytes(b"this revision")
    with pytest.raises(HurdxenError, match=r"bundle/hurdxen/hurdxen-1.0.tar.gz differs between builds \(only in refer"):
        R.reproduce_project(root, artifacts, tmp_path / "cache", release="hurdxen-1.0")


def test_reproduce_project_refuses_a_revision_without_its_code(tmp_path: Path) -> None:
    root = _tiny_revision(tmp_path / "rev", with_code=False)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "code.txt").write_text("not this revision inside=False\n")  # what the venv's hurdxen would give
    with pytest.raises(HurdxenError, match=r"has no hurdxen/ package"):
        R.reproduce_project(root, artifacts, tmp_path / "cache")


# ------------------------------------------------------------------ the bundle stage


def test_bundle_stage_is_current_until_what_it_packs_changes(tmp_path: Path, pae_kernel: Path) -> None:
    """`bundle:<name>` is a contract stage whose task is up to date when nothing it packs changed (its identity and
    `current`), and bundles again when a boot verdict, a stage it packs or the revision changes — with the same
    bytes when the change does not reach the bundle."""
    from hurdxen import tasks
    from hurdxen.pipeline import stage as pstage
    from hurdxen.release import stage as S

    root = make_project(tmp_path / "proj")
    art = make_stages(tmp_path / "artifacts", pae_kernel)
    r = recipes.load(root, overlay=root / "none.toml")
    ctx = context(root, art)
    (spec,) = S.specs(r, SDE, None)
    assert spec.task == "bundle:hurdxen" and isinstance(spec, pstage.Late)
    assert S.specs(r, SDE, None)[0].identity(ctx) == spec.identity(ctx)  # stable
    # Where it is published does not change what it is; what it says (allow_unbooted) or its signing key does.
    over = {"release.publish.dir": str(tmp_path / "pub")}
    assert S.specs(recipes.load(root, overrides=over, overlay=root / "none.toml"), SDE, None)[0].identity(ctx) == (
        spec.identity(ctx)
    )
    unbooted = recipes.load(root, overrides={"release.allow_unbooted": "true"}, overlay=root / "none.toml")
    assert S.specs(unbooted, SDE, None)[0].identity(ctx) != spec.identity(ctx)
    assert S.specs(r, SDE, "0123456789ABCDEF")[0].identity(ctx) != spec.identity(ctx)
    group, task = tasks.stage_tasks(pstage.Stage(S.STAGE, "bundle", S.build), [spec], ctx)
    assert group["name"] is None and task["name"] == "hurdxen"
    assert task["targets"] == [str(art / "bundle" / "hurdxen" / manifest.MANIFEST)]
    assert task["task_dep"] == ["build"]  # no boot recipe in this project: the gate reads what is there
    assert task["uptodate"][1][1] == [ctx] and task["actions"][0][0] is tasks.act_build

    def fresh() -> S.BundleStageSpec:  # what the next doit run plans (the version is read again)
        return S.specs(recipes.load(root, overlay=root / "none.toml"), SDE, None)[0]

    assert not fresh().current(ctx)  # not built
    first = S.build(fresh(), ctx)
    m = manifest.read_task(art, "bundle:hurdxen")
    assert m.output("tarball") == first.tarball and m.fact("release") == "hurdxen-1.2.0"
    assert set(m.inputs) == {"release", "stages", "boot"} and "gnumach/xen-pae" in m.inputs["stages"]
    assert fresh().current(ctx)
    # An upstream stage rebuilt with the same outputs (only its step's seconds differ): still current.
    g = art / "gnumach" / "xen-pae"
    data = json.loads((g / manifest.MANIFEST).read_text())
    data["step"]["seconds"] = 999.0
    (g / manifest.MANIFEST).write_text(json.dumps(data))
    assert fresh().current(ctx)
    # A boot verdict changed: bundled again, and the bundle says so.
    write_boot_report(art, {"pae-direct": "known-failure", "nopae-refused": "expected-refusal"})
    assert not fresh().current(ctx)
    second = S.build(fresh(), ctx)
    assert second.tarball_sha256 != first.tarball_sha256 and fresh().current(ctx)
    # Back to the first verdicts: the first bundle's bytes again.
    write_boot_report(art, {"pae-direct": "pass", "nopae-refused": "expected-refusal"})
    assert not fresh().current(ctx)
    assert S.build(fresh(), ctx).tarball_sha256 == first.tarball_sha256
    # A stage it packs changed: not current.
    h = art / "hurd-modules" / "libc-2.41-6"
    (h / "hurd-modules").write_bytes(b"other modules")
    stage_manifest(h, "hurd-modules", "libc-2.41-6", {}, {"ramdisk": "hurd-modules"}, bits=32, libc_version="2.41-6")
    assert not fresh().current(ctx)
    S.build(fresh(), ctx)
    assert fresh().current(ctx)
    # A new commit (the version and revision the bundle records): not current; the old release is replaced.
    (root / "NEWS").write_text("more\n")
    git(root, "add", "NEWS")
    git(root, "commit", "-q", "-m", "more")
    assert not fresh().current(ctx)
    third = S.build(fresh(), ctx)
    assert third.version.startswith("1.2.0.post1") and fresh().current(ctx)
    assert sorted(p.name for p in (art / "bundle" / "hurdxen").iterdir()) == sorted(
        [manifest.MANIFEST, third.release, f"{third.release}.tar.gz"]
    )
    # A missing output: not current.
    third.tarball.unlink()
    assert not fresh().current(ctx)
