"""The stage cache through doit: two clones of the project share one registry (Debian's docker-registry on
127.0.0.1). The first builds MIG for both targets and pushes; a second clone at another path, with empty artifacts
and an empty source cache, offline, pulls every stage without running a container step (no builder image task, no
source fetch, no step log) and gets the same bytes; a third, after a blob was overwritten in the registry's storage,
refuses that entry on one line and builds the stage itself (images and sources then fetched as usual).

Everything lives in a directory of its own (not pytest's numbered tmp dirs, which a concurrent pytest session of
the same user may clean up while this module's registry still serves from one)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gpgkey import Key, drop_key, make_key
from ociregistry import LocalRegistry, run_registry
from project import SHARED_CACHE, DoitRun, Project, copy_project, require_docker

from hurdxen.cache.entry import strip_local

pytestmark = [pytest.mark.docker]
TARGETS = ("i686-gnu", "x86_64-gnu")


@dataclass
class Shared:
    root: Path
    registry: LocalRegistry
    key: Key
    first: Project
    first_run: DoitRun


def clone(root: Path, registry: LocalRegistry, key: Key, extra: str = "") -> Project:
    copy_project(root)
    (root / "hurdxen.local.toml").write_text(
        "[settings]\n"
        f'stage_cache = "oci+http://{registry.host}/hurdxen/cache"\n'
        f'stage_cache_keyring = "{key.public}"\n' + extra
    )
    return Project(root, root / "artifacts")


def outputs(p: Project, target: str) -> dict[str, bytes]:
    d = p.artifacts / "mig" / target
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    require_docker()
    root = Path(tempfile.mkdtemp(prefix="hx-stage-cache-"))
    key = make_key("cache")
    with run_registry(root / "registry") as registry:
        first = clone(
            root / "first", registry, key, f'cache_push = true\nstage_cache_signing_key = "{key.fingerprint}"\n'
        )
        run = first.doit("build", GNUPGHOME=str(key.home), HURDXEN_CACHE=str(SHARED_CACHE))
        assert run.returncode == 0, run.output[-3000:]
        yield Shared(root, registry, key, first, run)
    drop_key(key)
    shutil.rmtree(root, ignore_errors=True)


def test_first_clone_pushes_what_it_built(shared: Shared) -> None:
    for t in TARGETS:
        assert (
            f"stage cache: mig:{t} pushed to {shared.registry.host}/hurdxen/cache:mig-{t}-" in shared.first_run.output
        )


def test_second_clone_pulls_every_stage_and_builds_nothing(shared: Shared) -> None:
    tmp_path = shared.root / "second"
    empty_cache = tmp_path / "empty source cache"
    second = clone(tmp_path / "another place" / "clone", shared.registry, shared.key, "offline = true\n")
    run = second.doit("build", HURDXEN_CACHE=str(empty_cache))
    assert run.returncode == 0, [ln for ln in run.output.splitlines() if "DEBUG" in ln]
    assert sorted(run.executed) == [f"mig:{t}" for t in TARGETS], run.output  # no base, image or sources task
    assert "summary: 2 pulled" in run.output
    for t in TARGETS:
        assert f"pulled   mig:{t}" in run.output and "cached from " in run.output
        want, got = outputs(shared.first, t), outputs(second, t)
        assert {k: v for k, v in got.items() if k != "manifest.json"} == {
            k: v for k, v in want.items() if k != "manifest.json"
        }
        m_got = json.loads(got["manifest.json"])
        fact = m_got.pop("cached_from")
        assert fact["ref"].startswith(f"{shared.registry.host}/hurdxen/cache:mig-{t}-")
        assert fact["signer"] == shared.key.fingerprint
        # the producer's manifest but for its local facts (where the headers package was fetched from)
        built_here = json.loads(want["manifest.json"])
        assert built_here["inputs"]["headers"]["archive"] and "archive" not in m_got["inputs"]["headers"]
        assert m_got == strip_local(built_here)
    assert not (second.artifacts / "logs").exists(), "no step ran"
    assert not any(empty_cache.rglob("*")) if empty_cache.exists() else True, "nothing was fetched"
    again = second.doit("build", HURDXEN_CACHE=str(empty_cache))
    assert again.returncode == 0 and again.executed == [], again.output


def test_tampered_entry_is_refused_and_built_here(shared: Shared) -> None:
    tmp_path = shared.root / "third"
    first_mig = shared.first.artifacts / "mig" / "i686-gnu" / "bin" / "i686-gnu-mig"
    from hurdxen.core import fsutil

    blob = shared.registry.blob_file(f"sha256:{fsutil.sha256_file(first_mig)}")
    original = blob.read_bytes()
    third = clone(tmp_path / "third", shared.registry, shared.key)
    try:
        blob.write_bytes(original.replace(b"mig", b"pwn", 1))
        run = third.doit("build", HURDXEN_CACHE=str(SHARED_CACHE))
    finally:
        blob.write_bytes(original)
    assert run.returncode == 0, run.output[-3000:]
    refusal = [ln for ln in run.output.splitlines() if "building mig:i686-gnu here" in ln]
    assert len(refusal) == 1 and refusal[0].startswith("error: stage cache: blob sha256:"), run.output
    assert "has other bytes" in refusal[0] and "Traceback" not in run.output
    assert "built    mig:i686-gnu" in run.output and "pulled   mig:x86_64-gnu" in run.output
    # built here from the same inputs: the same bytes as the first clone's (MIG builds reproducibly)
    assert outputs(third, "i686-gnu")["bin/i686-gnu-mig"] == first_mig.read_bytes()


def test_parallel_pull(shared: Shared) -> None:
    """`doit -n 2`: the actions (with the cache config and deferred dependencies) travel to worker processes."""
    fourth = clone(shared.root / "fourth", shared.registry, shared.key, "offline = true\n")
    run = fourth.doit("-n", "2", "build", HURDXEN_CACHE=str(shared.root / "fourth-empty-cache"))
    assert run.returncode == 0 and "summary: 2 pulled" in run.output, run.output[-3000:]
    for t in TARGETS:
        assert outputs(fourth, t)[f"bin/{t}-mig"] == outputs(shared.first, t)[f"bin/{t}-mig"]
