"""Opt-in: all three GNU Mach Xen variants from the real source, through doit, twice, bit-identical.

    GNUMACH_SOURCE=/path/or/url/of/gnumach.git [GNUMACH_COMMIT=…] pytest -m realsource tests/test_gnumach_real.py

The recipe's patch series applies (it fixes the Xen note owner and PAE_MODE), so the strict verify must pass.
Sizes, hashes and build times are written to the test's output (`-s`) and to `gnumach-real.json` in its tmp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from project import Project, clone_artifacts, require_docker

from hurdxen.core.fsutil import sha256_file

pytestmark = [pytest.mark.realsource, pytest.mark.docker, pytest.mark.slow]

VARIANTS = ("xen-pae", "xen-nopae", "xen-amd64")
SOURCE = os.environ.get("GNUMACH_SOURCE")


@pytest.fixture(scope="module")
def real_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not SOURCE:
        pytest.skip("set GNUMACH_SOURCE=<git URL or path of a GNU Mach repository> to build the real source")
    require_docker()
    root = tmp_path_factory.mktemp("gnumach-real")
    proj = Project.create(root / "proj", artifacts=root / "a1")
    source: dict[str, str] = {"git": SOURCE}
    if os.environ.get("GNUMACH_COMMIT"):
        source["commit"] = os.environ["GNUMACH_COMMIT"]
    proj.overlay({"gnumach": {"source": source}})
    tasks = [f"gnumach:{v}" for v in VARIANTS]

    # First build: MIG and the prepared source too.
    t = time.monotonic()
    r1 = proj.doit(*tasks)
    first = time.monotonic() - t
    assert r1.returncode == 0, r1.stdout[-4000:]

    # Second build in another artifacts dir (and another project path): MIG reused from a clone of the first,
    # the source prepared again and every variant rebuilt.
    proj2 = Project.create(root / "proj-second", artifacts=root / "a2")
    proj2.overlay_path.write_text(proj.overlay_path.read_text())
    clone_artifacts(proj.artifacts, proj2.artifacts)
    for sub in ("gnumach", "logs"):
        shutil.rmtree(proj2.artifacts / sub, ignore_errors=True)
    t = time.monotonic()
    r2 = proj2.doit(*tasks)
    second = time.monotonic() - t
    assert r2.returncode == 0, r2.stdout[-4000:]
    return {"a1": proj.artifacts, "a2": proj2.artifacts, "first": first, "second": second, "root": root}


@pytest.mark.parametrize("variant", VARIANTS)
def test_real_variant_verifies_strictly(real_builds: dict[str, object], variant: str) -> None:
    d = Path(str(real_builds["a1"])) / "gnumach" / variant
    m = json.loads((d / "manifest.json").read_text())
    assert m["verify"]["strict"] is True
    # Strict verify passed (an error would have stopped the build); the one legitimate warning is non-PAE's.
    assert all("non-PAE" in w for w in m["verify"]["warnings"])
    assert bool(m["verify"]["warnings"]) == (variant == "xen-nopae")
    verify = json.loads((d / "verify.json").read_text())
    assert set(verify) == {f"gnumach-{variant}", f"gnumach-{variant}.gz"}
    notes_text = (d / "verify.txt").read_text()
    assert "Xen" in notes_text
    if variant != "xen-amd64":
        # The shipped patch: owner "Xen" and PAE_MODE exactly "yes" (PAE) -- Xen reads the notes, not __xen_guest.
        assert "PAE_MODE" in notes_text


def test_real_builds_are_bit_identical(real_builds: dict[str, object]) -> None:
    a1, a2 = Path(str(real_builds["a1"])), Path(str(real_builds["a2"]))
    figures: dict[str, dict[str, object]] = {}
    for v in VARIANTS:
        k = f"gnumach-{v}"
        m = json.loads((a1 / "gnumach" / v / "manifest.json").read_text())
        figures[v] = {"build_seconds": m["step"]["seconds"], "compiler": m["compiler"]}
        for name in (k, f"{k}.stripped", f"{k}.gz"):
            f1, f2 = a1 / "gnumach" / v / name, a2 / "gnumach" / v / name
            assert sha256_file(f1) == sha256_file(f2), f"{v}: {name} differs between two builds"
            figures[v][name] = {"sha256": sha256_file(f1), "size": f1.stat().st_size}
    figures["_doit_seconds"] = {"first": real_builds["first"], "second": real_builds["second"]}
    out = Path(str(real_builds["root"])) / "gnumach-real.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
