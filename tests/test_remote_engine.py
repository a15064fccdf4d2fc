"""Builds sent to another Docker engine through DOCKER_HOST (docs/remote-engine.md), with no code change.

The engine is found by `docker.utils.kwargs_from_env()` (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH). The
end-to-end test starts a second dockerd on a TCP port with its own data and exec roots, gives it one image under a
tag the default engine does not have, and runs one DockerExecutor step through it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hurdxen.pipeline import executors
from hurdxen.pipeline.executors import DockerExecutor, Mount, Step

DOCS = Path(__file__).resolve().parent.parent / "docs" / "remote-engine.md"


def test_tls_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("")  # only their presence is checked before a connection
    monkeypatch.setenv("DOCKER_HOST", "tcp://build-box.example:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    import docker

    kwargs = dict(executors._docker_kwargs())
    assert kwargs["base_url"] == "tcp://build-box.example:2376"
    # The client turns tcp:// with TLS into https:// (an explicit API version: no connection is made).
    assert docker.APIClient(version="1.41", **kwargs).base_url == "https://build-box.example:2376"
    tls = kwargs["tls"]
    assert tls.verify is True and tls.ca_cert == str(tmp_path / "ca.pem")
    assert tls.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


def test_ssh_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "ssh://builder@build-box.example")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    assert dict(executors._docker_kwargs())["base_url"] == "ssh://builder@build-box.example"


def test_connect_docker_reads_the_environment() -> None:
    """No code change needed: connect_docker builds its client from kwargs_from_env (through _docker_kwargs)."""
    import inspect

    assert "kwargs_from_env()" in inspect.getsource(executors._docker_kwargs)
    assert "_docker_kwargs()" in inspect.getsource(executors.connect_docker)


def test_docs_say_bind_mounts_are_the_remote_hosts_paths() -> None:
    text = DOCS.read_text()
    for needle in ("DOCKER_HOST=ssh://", "tcp://", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "same paths"):
        assert needle in text, needle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def second_dockerd() -> Iterator[str]:
    """A private dockerd on 127.0.0.1:<port>; skips (saying why) when one cannot start here."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.skip("no dockerd binary to start a second engine")
    if os.geteuid() != 0:
        pytest.skip("a second dockerd needs root")
    # Short paths: containerd's socket lives under the exec root and unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="hxd-", dir="/tmp"))
    port = _free_port()
    host = f"tcp://127.0.0.1:{port}"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            dockerd,
            "-H",
            host,
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "dockerd.pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import docker

        deadline = time.monotonic() + 60
        while True:
            try:
                docker.APIClient(base_url=host, version="auto", timeout=5).ping()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "dockerd.log").read_text(errors="replace")[-2000:]
                    pytest.skip(f"a second dockerd did not start (exit {proc.poll()}):\n{tail}")
                time.sleep(0.5)
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["umount", "-R", str(root / "data")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.slow
def test_a_step_runs_on_the_engine_docker_host_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    try:
        local = executors.connect_docker()
    except Exception as e:  # any failure means: no engine here
        pytest.skip(f"no default Docker engine to take an image from: {e}")
    bases = [t for img in local.images(name="hurdxen/base") for t in img.get("RepoTags") or []]
    if not bases:
        pytest.skip("no hurdxen/base image in the default engine (run `doit base`)")
    only_remote = f"hurdxen-remote-test/base:{os.getpid()}"
    assert not local.images(name=only_remote)

    with second_dockerd() as host:
        remote = docker.APIClient(base_url=host, version="auto", timeout=600)
        remote.load_image(local.get_image(bases[0]))
        remote.tag(bases[0], *only_remote.split(":"))

        out = tmp_path / "out"
        monkeypatch.setenv("DOCKER_HOST", host)
        monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
        monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
        step = Step(
            name="remote:probe",
            script='echo "built remotely as $(id -u)" > "$OUT/probe.txt"\n',
            image=only_remote,
            mounts=(Mount(out, "OUT", "/out", writable=True),),
        )
        result = DockerExecutor().run(step, tmp_path / "probe.log")

        assert result.exit_code == 0
        assert result.image_id == remote.inspect_image(only_remote)["Id"]
        # The second engine runs on this host, so its bind mount of the host path is this directory.
        assert (out / "probe.txt").read_text().startswith("built remotely as ")
        assert not remote.containers(all=True, filters={"label": "hurdxen.step=remote:probe"})
