"""Executors: the same script under the host and the Docker executor; mounts, read-only, no network, owners."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from dockerd_fixture import PrivateDockerd
from project import CODE, docker_answers

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import recipes
from hurdxen.pipeline.context import make_context
from hurdxen.pipeline.executors import (
    FALLBACK_BUILD_UID,
    DockerExecutor,
    HostExecutor,
    Mount,
    Step,
    StepResult,
    build_user,
)

needs_docker = pytest.mark.skipif(not docker_answers(), reason="no Docker engine answers")
F = TypeVar("F", bound=Callable[..., None])


def docker_test(test: F) -> F:
    """A test of the Docker executor against the engine that answers: skipped without one, two minutes at most."""
    marked: F = needs_docker(pytest.mark.docker(pytest.mark.timeout(120)(test)))
    return marked


SCRIPT = """
cat "$IN/input.txt" > "$OUT/copy.txt"
printf '%s\\n' "$IN" > "$OUT/in-path"
printf '%s\\n' "$OUT" > "$OUT/out-path"
printf '%s\\n' "$GREETING" > "$OUT/greeting"
id -u > "$OUT/uid"
pwd > "$OUT/cwd"
mkdir -p "$OUT/sub" && echo nested > "$OUT/sub/file"
"""


def builder_tag() -> str:
    ctx = make_context(recipes.load(CODE, overrides={}, overlay=CODE / "no-overlay.toml"))
    return ctx.image(name="builder").tag


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "in"
    src.mkdir()
    (src / "input.txt").write_text("hello from the host\n")
    os.chmod(src, 0o755)
    os.chmod(tmp_path, 0o755)
    return src, tmp_path / "out"


def step(src: Path, out: Path, script: str = SCRIPT, image: str = "host", network: bool = False) -> Step:
    return Step(
        name="test:step",
        script=script,
        image=image,
        mounts=(Mount(src, "IN", "/in"), Mount(out, "OUT", "/out", writable=True)),
        env=(("GREETING", "hi there"),),
        network=network,
        workdir_env="OUT",
    )


def read(out: Path, name: str) -> str:
    return (out / name).read_text().strip()


def run_in_docker(dirs: tuple[Path, Path], log: Path, script: str = SCRIPT, image: str | None = None) -> StepResult:
    """`script` as a step under the Docker executor, in the builder image unless `image` says otherwise."""
    src, out = dirs
    return DockerExecutor().run(step(src, out, script, image=image or builder_tag()), log)


def test_host_executor(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    src, out = dirs
    result = HostExecutor().run(step(src, out), tmp_path / "logs" / "step.log")
    assert result.exit_code == 0 and result.executor == "host"
    assert read(out, "copy.txt") == "hello from the host"
    assert read(out, "in-path") == str(src)
    assert read(out, "out-path") == str(out)
    assert read(out, "cwd") == str(out)
    assert read(out, "greeting") == "hi there"
    assert read(out, "uid") == str(os.getuid())


@docker_test
def test_docker_executor_same_script(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _src, out = dirs
    tag = builder_tag()
    result = run_in_docker(dirs, tmp_path / "step.log", image=tag)
    assert result.exit_code == 0 and result.executor == "docker" and result.image == tag
    assert result.image_id and result.image_id.startswith("sha256:")
    assert read(out, "copy.txt") == "hello from the host"
    assert read(out, "in-path") == "/in"
    assert read(out, "out-path") == "/out"
    assert read(out, "cwd") == "/out"
    assert read(out, "greeting") == "hi there"
    # Never root inside; the invoking user's files outside.
    assert read(out, "uid") == str(build_user()[0])
    if os.getuid() == 0:
        assert read(out, "uid") == str(FALLBACK_BUILD_UID)
    for p in [out, *out.rglob("*")]:
        assert p.stat().st_uid == os.getuid(), p
    assert (tmp_path / "step.log").read_text().startswith("# docker run --network none --user ")


@docker_test
def test_docker_read_only_mount(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    src, _out = dirs
    with pytest.raises(HurdxenError) as info:
        run_in_docker(dirs, tmp_path / "step.log", 'touch "$IN/new"\n')
    msg = info.value.render()
    assert msg.startswith("error: test:step: `docker run --network none ")
    assert "exited with 1; last lines of" in msg
    assert "touch: cannot touch '/in/new': Read-only file system" in msg
    assert not (src / "new").exists()


@docker_test
def test_docker_no_network(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _src, out = dirs
    run_in_docker(dirs, tmp_path / "l", 'ls /sys/class/net > "$OUT/ifaces"\n')
    assert read(out, "ifaces").split() == ["lo"]


@docker_test
def test_docker_missing_image(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(HurdxenError) as info:
        run_in_docker(dirs, tmp_path / "l", "true\n", image="hurdxen/nope:0")
    assert info.value.render() == (
        "error: test:step: image hurdxen/nope:0 is not in the Docker engine "
        "(hint: run `doit build` so the image tasks build it first)"
    )


def test_failed_step_names_the_log_tail(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    src, out = dirs
    log = tmp_path / "step.log"
    with pytest.raises(HurdxenError) as info:
        HostExecutor().run(step(src, out, "echo one\necho two\nexit 3\n"), log)
    assert info.value.render() == (
        f"error: test:step: `bash -c <script> (host executor)` exited with 3; last lines of {log}:\n"
        "    # bash -c <script> (host executor)\n    one\n    two\n"
        f" (hint: the whole log is {log})"
    )


# ------------------------------------------------------------------ the engine stops mid-step


@pytest.fixture
def private_engine() -> Iterator[PrivateDockerd]:
    engine = PrivateDockerd()
    try:
        engine.start()
    except (RuntimeError, FileNotFoundError) as e:
        engine.close()
        pytest.skip(f"cannot start a private dockerd: {e}")
    try:
        yield engine
    finally:
        engine.close()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_engine_stops_mid_step(private_engine: PrivateDockerd, dirs: tuple[Path, Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    tag = private_engine.import_tiny_image()
    monkeypatch.setenv("DOCKER_HOST", private_engine.host)
    src, out = dirs
    log = tmp_path / "step.log"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            DockerExecutor().run(step(src, out, 'echo started\nsleep 120\necho "$OUT" > "$OUT/late"\n', tag), log)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    start = time.monotonic()
    t.start()
    deadline = time.monotonic() + 60
    while not (log.is_file() and "started" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "started" in log.read_text()
    private_engine.kill()
    t.join(timeout=90)
    assert not t.is_alive(), "the executor kept waiting for a dead engine"
    assert time.monotonic() - start < 90
    (err,) = errors
    assert isinstance(err, HurdxenError), repr(err)
    msg = err.render()
    assert "\n" not in msg
    # Refused if the client reconnects after the daemon died; aborted/reset if it was cut mid-request.
    assert msg in {
        f"error: test:step: the Docker engine stopped answering ({why}) (hint: start it (`dockerd --bridge=none &` "
        "or `scripts/setup.sh`), or use HURDXEN_EXECUTOR=host)"
        for why in (
            "Connection refused",
            "Remote end closed connection without response",
            "Connection reset by peer",
            "No such file or directory",
        )
    }, msg
    assert not (out / "late").exists()
