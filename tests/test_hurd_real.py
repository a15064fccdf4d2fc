"""Opt-in: the i686-gnu toolchain and the Hurd from the real sources, through doit (about 35 minutes on 2 cores).

    HURD_SOURCE=/path/or/url/of/hurd.git GNUMACH_SOURCE=/path/or/url/of/gnumach.git \
        pytest -m realsource -s tests/test_hurd_real.py          # HURD_TWICE=1: a second cold build, compared

HURD_TARGET=x86_64-gnu builds and checks the 64-bit Hurd (hurd:root-amd64, binutils from source too) instead.

Checks the root tree's boot modules (a static i386 ext2fs, ld.so.1 with the recipe's banner), that a second `doit`
reuses every stage, and with HURD_TWICE=1 that a cold build in another directory gives the same bytes (the files
that differ are printed). Times, sizes and hashes go to the output and to `hurd-real.json` in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from project import Project, require_docker

from hurdxen.core.fsutil import sha256_file
from hurdxen.pipeline import manifest

pytestmark = [pytest.mark.realsource, pytest.mark.docker, pytest.mark.slow]

HURD = os.environ.get("HURD_SOURCE")
GNUMACH = os.environ.get("GNUMACH_SOURCE")
# per target: the stages' suffix, ext2fs.static's ELF class and machine, ld.so's name
TARGETS = {"i686-gnu": ("", 1, 3, "ld.so.1"), "x86_64-gnu": ("-amd64", 2, 62, "ld-x86-64.so.1")}
SUFFIX, ELF_CLASS, ELF_MACHINE, LDSO = TARGETS[os.environ.get("HURD_TARGET", "i686-gnu")]
TASK = "hurd:root" + SUFFIX


def project(root: Path, name: str) -> Project:
    proj = Project.create(root / name, artifacts=root / f"{name}-artifacts")
    overlay: dict[str, object] = {"hurd": {"source": {"git": HURD}}}
    if GNUMACH:
        overlay["gnumach"] = {"source": {"git": GNUMACH}}
    proj.overlay(overlay)
    return proj


def tree_hashes(tar: Path) -> dict[str, str]:
    import hashlib

    out = {}
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            f = t.extractfile(m) if m.isfile() else None
            out[m.name] = hashlib.sha256(f.read()).hexdigest() if f else f"{m.type!r} {m.linkname}"
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not HURD:
        pytest.skip("set HURD_SOURCE=<git URL or path of a Hurd repository> to build the real toolchain and Hurd")
    require_docker()
    root = tmp_path_factory.mktemp("hurd-real")
    proj = project(root, "one")
    t = time.monotonic()
    r = proj.doit(TASK, timeout=4 * 3600)
    cold = time.monotonic() - t
    assert r.returncode == 0, r.stdout[-6000:]
    t = time.monotonic()
    warm = proj.doit(TASK)
    assert warm.returncode == 0, warm.stdout[-3000:]
    report: dict[str, object] = {"cold_seconds": round(cold, 1), "warm_seconds": round(time.monotonic() - t, 1)}
    return {"proj": proj, "cold": r.stdout, "warm": warm.stdout, "report": report, "root": root}


def test_root_holds_the_boot_modules(built: dict[str, object]) -> None:
    proj = built["proj"]
    assert isinstance(proj, Project)
    m = manifest.read_task(proj.artifacts, TASK)
    ext2fs = m.output("ext2fs.static").read_bytes()
    assert ext2fs[:4] == b"\x7fELF" and ext2fs[4] == ELF_CLASS and ext2fs[18] == ELF_MACHINE  # e.g. ELF32, EM_386
    assert b"PT_INTERP" not in ext2fs and b"/lib/ld" not in ext2fs[:4096]  # static: no interpreter
    glibc = manifest.read_task(proj.artifacts, "toolchain:glibc" + SUFFIX)
    banner = glibc.output("ld.so-banner.txt").read_text()
    assert banner.startswith("ld.so (hurdxen glibc 2.43)"), banner
    names = set(tree_hashes(m.output("tree")))
    for need in (
        "./hurd/ext2fs.static",
        "./hurd/exec",
        "./hurd/startup",
        "./hurd/proc",
        "./hurd/auth",
        "./hurd/term",
        f"./lib/{LDSO}",
        "./lib/libc.so.0.3",
        "./libexec/console-run",
        "./bin/sh",
    ):
        assert need in names, need
    report = built["report"]
    assert isinstance(report, dict)
    report["outputs"] = {n: {"sha256": o.sha256, "bytes": o.path.stat().st_size} for n, o in m.outputs.items()}
    report["ld.so banner"] = banner.strip()
    print(json.dumps(report, indent=1))
    root = built["root"]
    assert isinstance(root, Path)
    (root / "hurd-real.json").write_text(json.dumps(report, indent=1))


def test_a_second_doit_reuses_every_stage(built: dict[str, object]) -> None:
    warm = str(built["warm"])
    assert f"reused   {TASK}" in warm, warm[-3000:]
    assert "built    toolchain:" not in warm and "built    hurd:" not in warm, warm[-3000:]


def test_a_second_cold_build_gives_the_same_bytes(built: dict[str, object]) -> None:
    if os.environ.get("HURD_TWICE") != "1":
        pytest.skip("set HURD_TWICE=1 for a second cold build (another 35 minutes)")
    root = built["root"]
    proj = built["proj"]
    assert isinstance(root, Path) and isinstance(proj, Project)
    other = project(root, "two")
    r = other.doit(TASK, timeout=4 * 3600)
    assert r.returncode == 0, r.stdout[-6000:]
    a = tree_hashes(manifest.read_task(proj.artifacts, TASK).output("tree"))
    b = tree_hashes(manifest.read_task(other.artifacts, TASK).output("tree"))
    differ = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
    print("files that differ:", differ)
    assert not differ
    assert sha256_file(manifest.read_task(proj.artifacts, TASK).output("ext2fs.static")) == sha256_file(
        manifest.read_task(other.artifacts, TASK).output("ext2fs.static")
    )
