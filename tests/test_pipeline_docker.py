"""End to end with Docker: `doit build` in a throwaway copy of the project, reusing the images that already exist
(their tags are content hashes, so matching recipes find them) and the shared source cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from project import SHARED_CACHE, DoitRun, Project, copy_project, docker_answers, edit
from tmpfs import small_tmpfs

from hurdxen.pipeline import manifest, recipes
from hurdxen.pipeline.containers import IMAGE_REPOSITORY
from hurdxen.pipeline.context import make_context
from hurdxen.pipeline.executors import ARTIFACTS_LABEL, DockerExecutor, Mount, Step
from hurdxen.sources.deb import extract_deb, fetch_deb
from hurdxen.sources.fetch import Cache, Network
from hurdxen.stages.mig.stage import specs

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.skipif(not docker_answers(), reason="no Docker engine answers"),
]

TARGETS = ["i686-gnu", "x86_64-gnu"]
DEFS = """subsystem test 100;
#include <mach/std_types.defs>
routine hello(server: mach_port_t; x: int);
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, DoitRun]:
    """One project copy, built once for the whole module (the later tests build on its state)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    project = Project(copy_project(tmp / "project"), tmp / "artifacts")
    return project, project.doit("build")


def outputs_match_manifest(out: Path) -> dict[str, str]:
    """Every named output, checked against its sha256 by the typed reader: relative path -> sha256."""
    m = manifest.read(out)
    return {str(m.output(n).relative_to(out)): o.sha256 for n, o in m.outputs.items()}


def files_below(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*"))


@pytest.mark.timeout(900)
def test_build_builds_base_image_and_both_migs(built: tuple[Project, DoitRun]) -> None:
    project, run = built
    assert run.returncode == 0, run.output
    # Base and builder image already exist in the engine (same recipes, same content hash): reused, not rebuilt.
    for task in ("base:bookworm", "image:builder"):
        assert task in run.executed + run.up_to_date
    assert sorted(t for t in run.executed if t.startswith("mig:")) == [f"mig:{t}" for t in TARGETS]
    for target in TARGETS:
        out = project.artifacts / "mig" / target
        assert sorted(outputs_match_manifest(out)) == [
            f"bin/{target}-gcc",
            f"bin/{target}-mig",
            f"lib/mig/{target}-migcom",
        ]
        m = json.loads((out / "manifest.json").read_text())
        assert m["step"]["image"].startswith(f"{IMAGE_REPOSITORY}/builder:")
        assert m["step"]["executor"] == "docker"
        # The image's installed set, like a .buildinfo: exactly containers/builder/packages.lock.
        lock = (project.root / "containers" / "builder" / "packages.lock").read_text().splitlines()
        assert m["step"]["image_packages"] == [line for line in lock if not line.startswith("#")]
        # Outputs belong to whoever ran doit, although the step ran as another user (65534 when we are root).
        for p in [out, *files_below(out)]:
            assert p.stat().st_uid == os.getuid(), p
        log = (project.artifacts / "logs" / f"mig-{target}.log").read_text()
        assert f"{target}-mig (GNU MIG) 1.8+git20231217" in log
        assert "--network none" in log.splitlines()[0]
    # The dependency file follows HURDXEN_ARTIFACTS, not the code's checkout.
    assert (project.artifacts / ".doit.sqlite3").is_file()
    assert not (project.root / "artifacts").exists()
    assert list(project.artifacts.rglob(".tmp-*")) == []


@pytest.mark.timeout(300)
def test_built_mig_generates_stubs(built: tuple[Project, DoitRun], tmp_path: Path) -> None:
    project, run = built
    assert run.returncode == 0
    env_before = dict(os.environ)
    try:
        os.environ.update(project.env())
        r = recipes.load(project.root, overrides={})
        ctx = make_context(r)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    spec = next(s for s in specs(r) if s.target == "i686-gnu")
    cache = Cache(SHARED_CACHE, Network(offline=True))
    headers = extract_deb(fetch_deb(spec.headers, cache), cache)
    src = tmp_path / "defs"
    src.mkdir()
    (src / "test.defs").write_text(DEFS)
    out = tmp_path / "gen"
    step = Step(
        name="test:mig",
        # The cross cpp MIG runs (`i686-gnu-gcc -E`) ships in its bin/.
        script='export PATH="$MIG/bin:$PATH"\ncd "$OUT"\n'
        '"$MIG/bin/i686-gnu-mig" -I"$HEADERS/usr/include/i386-linux-gnu" -user u.c -server s.c -header u.h '
        '-sheader s.h "$DEFS/test.defs"\n',
        image=ctx.image_tag("builder"),
        mounts=(
            Mount(project.artifacts / "mig" / "i686-gnu", "MIG", "/mig"),
            Mount(headers, "HEADERS", "/headers"),
            Mount(src, "DEFS", "/defs"),
            Mount(out, "OUT", "/out", writable=True),
        ),
    )
    DockerExecutor().run(step, tmp_path / "mig.log")
    assert sorted(p.name for p in out.iterdir()) == ["s.c", "s.h", "u.c", "u.h"]
    user_c, server_c, header = (out / "u.c").read_text(), (out / "s.c").read_text(), (out / "u.h").read_text()
    assert "kern_return_t hello" in user_c
    assert "mig_external kern_return_t hello" in header or "kern_return_t hello" in header
    assert "_Xhello" in server_c
    assert "test_server" in server_c
    for p in out.iterdir():
        assert p.stat().st_uid == os.getuid()


@pytest.mark.timeout(300)
def test_second_build_runs_nothing(built: tuple[Project, DoitRun]) -> None:
    project, first = built
    assert first.returncode == 0
    run = project.doit("build")
    assert run.returncode == 0, run.output
    assert run.executed == []
    assert sorted(run.up_to_date) == sorted(
        [
            "base:bookworm",
            "image:builder",
            *(f"mig:{t}" for t in TARGETS),
            *(t for t in first.up_to_date + first.executed if t.startswith("sources:")),
        ]
    )


@pytest.mark.timeout(600)
def test_changing_a_pin_reruns_only_that_target(built: tuple[Project, DoitRun]) -> None:
    project, first = built
    assert first.returncode == 0
    before_i686 = (project.artifacts / "mig" / "i686-gnu" / "manifest.json").read_text()
    edit(project.root / "recipes" / "mig.toml", 'compiler = "gcc"', 'compiler = "gcc -O0"')
    run = project.doit("build")
    assert run.returncode == 0, run.output
    assert run.executed == ["mig:x86_64-gnu"]
    assert (project.artifacts / "mig" / "i686-gnu" / "manifest.json").read_text() == before_i686
    mig_m = json.loads((project.artifacts / "mig" / "x86_64-gnu" / "manifest.json").read_text())
    assert mig_m["inputs"]["configure"] == "--target=x86_64-gnu TARGET_CC='gcc -O0'"
    assert project.doit("build").executed == []


# ------------------------------------------------------------------ faults


def running_containers(client: object, artifacts: Path) -> list[dict[str, object]]:
    return list(client.containers(filters={"label": f"{ARTIFACTS_LABEL}={artifacts.resolve()}"}))  # type: ignore[attr-defined]


def wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def kill_on_exit() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.timeout(600)
def test_sigkill_mid_step_leaves_no_partial_artefact(
    built: tuple[Project, DoitRun], docker_client: object, kill_on_exit: list[subprocess.Popen[str]]
) -> None:
    project, first = built
    assert first.returncode == 0
    out = project.artifacts / "mig" / "i686-gnu"
    before = outputs_match_manifest(out)
    before_manifest = (out / "manifest.json").read_text()
    log = project.artifacts / "logs" / "mig-i686-gnu.log"
    log.unlink()
    override = "mig.targets.i686-gnu.compiler=gcc -m32 -O1"  # a new identity: the task must run
    proc = project.popen("build", override)
    kill_on_exit.append(proc)
    # The step is under way once its log has grown past the command line at its top.
    wait_for(lambda: log.is_file() and "applying" in log.read_text(errors="replace"), 120, "mig:i686-gnu to start")
    assert running_containers(docker_client, project.artifacts), "the step's container should be running"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # What was at the final path is untouched; what the killed run made is only in .tmp-* directories.
    assert outputs_match_manifest(out) == before
    assert (out / "manifest.json").read_text() == before_manifest
    assert list(project.artifacts.glob("mig/.tmp-i686-gnu.*")), "the killed run's output dir should be a .tmp-*"
    # The next run removes the orphaned container, sweeps the temp dirs and completes.
    run = project.doit("build", override)
    assert run.returncode == 0, run.output
    assert run.executed == ["mig:i686-gnu"]
    assert running_containers(docker_client, project.artifacts) == []
    assert list(project.artifacts.rglob(".tmp-*")) == []
    after = json.loads((out / "manifest.json").read_text())
    assert after["inputs"]["configure"] == "--target=i686-gnu TARGET_CC='gcc -m32 -O1'"
    outputs_match_manifest(out)


@pytest.mark.timeout(600)
def test_two_builds_are_serialized(built: tuple[Project, DoitRun], kill_on_exit: list[subprocess.Popen[str]]) -> None:
    project, first = built
    assert first.returncode == 0
    log = project.artifacts / "logs" / "mig-i686-gnu.log"
    log.unlink(missing_ok=True)
    a = project.popen("build", "mig.targets.i686-gnu.compiler=gcc -m32 -O2")
    kill_on_exit.append(a)
    wait_for(lambda: log.is_file(), 120, "the first build to start its step")
    assert (project.artifacts / ".lock").read_text().strip() == str(a.pid)
    b = project.popen("build", "mig.targets.i686-gnu.compiler=gcc -m32 -O2")
    kill_on_exit.append(b)
    out_a, _ = a.communicate(timeout=300)
    a_done = time.monotonic()
    out_b, _ = b.communicate(timeout=300)
    assert a.returncode == 0, out_a
    assert b.returncode == 0, out_b
    lock = project.artifacts / ".lock"
    assert f"waiting: another build (pid {a.pid}) holds {lock}; this one starts when it finishes" in out_b
    run_b = DoitRun(b.returncode, out_b)
    # B started after A had finished: A's result was up to date for it.
    assert run_b.executed == []
    assert "mig:i686-gnu" in DoitRun(a.returncode, out_a).executed
    assert time.monotonic() >= a_done


@pytest.mark.timeout(120)
def test_unreachable_engine_is_one_line(tmp_path: Path) -> None:
    project = Project(copy_project(tmp_path / "project"), tmp_path / "artifacts")
    run = project.doit("build", DOCKER_HOST="unix:///nonexistent.sock")
    assert run.returncode != 0
    assert "Traceback" not in run.output
    line = (
        "base:bookworm: error: no Docker engine answers at unix:///nonexistent.sock (hint: start one with "
        "`scripts/setup.sh` (it runs `dockerd --bridge=none`), or set HURDXEN_EXECUTOR=host)"
    )
    # One line as it fails, and once more in the run's summary (shorter: its row names the task, the hint was given).
    progress, summary = run.output.split("summary: ", 1)
    assert [ln for ln in progress.splitlines() if "error:" in ln] == [line]
    short = line[len("base:bookworm: ") : line.index(" (hint: ")]
    assert [ln[ln.index("error:") :] for ln in summary.splitlines() if "error:" in ln] == [short]
    assert [ln.split()[:2] for ln in summary.splitlines() if "error:" in ln] == [["failed", "base:bookworm"]]
    assert "not run" in summary and "UnmetDependency" not in run.output


@pytest.mark.timeout(120)
def test_bad_command_line_override_is_one_line(tmp_path: Path) -> None:
    project = Project(copy_project(tmp_path / "project"), tmp_path / "artifacts")
    run = project.doit("build", "base.mirror=nope")
    assert run.returncode == 2
    assert run.output.strip().splitlines() == [
        "error: the command line: base.mirror: expected an http://, https:// or file:// URL, got 'nope'"
    ]


@pytest.fixture
def small_artifacts(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "artifacts") as mnt:
        yield mnt


@pytest.mark.timeout(600)
def test_full_artifacts_disk(tmp_path: Path, small_artifacts: Path) -> None:
    project = Project(copy_project(tmp_path / "project"), small_artifacts)
    run = project.doit("build")
    assert run.returncode != 0
    assert "Traceback" not in run.output
    failed = [line for line in run.output.splitlines() if line.startswith("error: mig:")]
    assert failed, run.output
    assert (
        f"(hint: a disk is full: free space in {small_artifacts}/work, {small_artifacts}/mig; the whole log is "
        in run.output
        or f"no space left on the disk holding {small_artifacts}" in run.output
    ), run.output
    # Nothing partial at the final paths.
    assert not (small_artifacts / "mig" / "i686-gnu").exists()
    assert not (small_artifacts / "mig" / "x86_64-gnu").exists()
    assert list(small_artifacts.rglob(".tmp-*")) == []
