"""Where a stage's step script runs: a Docker container (default) or directly on the host.

A step is a bash script plus mounts. Scripts never hard-code paths: each mount is exposed as an environment
variable (e.g. `$SRC`, `$OUT`), set to the container path under Docker and to the host path on the host, so the
same script runs under both executors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.core.monitor import Monitor, NullMonitor

# The uid a step runs as when the invoking user is root: compile steps never run as root.
FALLBACK_BUILD_UID = 65534
LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class Mount:
    host: Path
    env: str  # environment variable through which the script finds this mount
    target: str  # path inside the container
    writable: bool = False


@dataclass(frozen=True)
class Step:
    name: str  # task name, for logs and messages (e.g. "gnumach:xen-pae")
    script: str  # bash, run with `set -euo pipefail`
    image: str  # builder image tag; the host executor ignores it
    mounts: tuple[Mount, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    network: bool = False  # only steps that must download (apt) get a network
    as_root: bool = False  # only image preparation runs as root; compile steps never do
    workdir_env: str | None = None  # start in this mount's directory


@dataclass(frozen=True)
class StepResult:
    name: str
    exit_code: int
    seconds: float
    log: Path
    command: str
    executor: str
    image: str | None = None
    image_id: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())


class Executor(Protocol):
    kind: str

    def run(self, step: Step, log_path: Path, monitor: Monitor | None = None) -> StepResult: ...

    def image_id(self, image: str) -> str | None: ...


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError:
        return ""


def step_failed(step: Step, code: int, log_path: Path, command: str) -> HurdxenError:
    tail = _tail(log_path).rstrip()
    indented = "\n".join("    " + line for line in tail.splitlines())
    hint = f"the whole log is {log_path}"
    if "No space left on device" in tail:
        # Name the lasting directories, not the step's temporary ones (already removed when this is read).
        full: list[str] = []
        for m in step.mounts:
            p = m.host
            while p.name.startswith(fsutil.TMP_PREFIX):
                p = p.parent
            if m.writable and str(p) not in full:
                full.append(str(p))
        hint = f"a disk is full: free space in {', '.join(full) or 'the directories the step writes'}; {hint}"
    return HurdxenError(
        f"{step.name}: `{command}` exited with {code}; last lines of {log_path}:\n{indented}\n",
        hint=hint,
    )


def build_user() -> tuple[int, int]:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        return FALLBACK_BUILD_UID, FALLBACK_BUILD_UID
    return uid, gid


def _prepare_writable(step: Step) -> None:
    """Writable mounts must be writable by the build user; when we are root that user is someone else."""
    if step.as_root or os.getuid() != 0:
        return
    uid, gid = build_user()
    for m in step.mounts:
        if m.writable:
            m.host.mkdir(parents=True, exist_ok=True)
            for p in _walk(m.host):
                os.lchown(p, uid, gid)


def _restore_owner(step: Step) -> None:
    """Outputs end up owned by the invoking user."""
    if step.as_root and os.getuid() != 0:
        return
    uid, gid = os.getuid(), os.getgid()
    for m in step.mounts:
        if m.writable and m.host.exists():
            for p in _walk(m.host):
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(p, uid, gid)


def _walk(root: Path) -> Iterator[Path]:
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            yield Path(dirpath, n)


def _script(step: Step) -> str:
    return "set -euo pipefail\n" + step.script


class DockerExecutor:
    """Runs steps through the Docker engine's low-level API so output streams as it comes."""

    kind = "docker"

    def __init__(self, client: Any | None = None, labels: Mapping[str, str] | None = None) -> None:
        self._client = client
        # Put on every container, so a later build can find (and remove) the ones a killed build left running.
        self.labels = dict(labels or {})

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect_docker()
        return self._client

    def image_id(self, image: str) -> str | None:
        return image_id(self.client, image)

    def run(self, step: Step, log_path: Path, monitor: Monitor | None = None) -> StepResult:
        import docker.errors

        mon = monitor or NullMonitor()
        client = self.client
        env = {m.env: m.target for m in step.mounts}
        env.update(dict(step.env))
        binds = {str(m.host.resolve()): {"bind": m.target, "mode": "rw" if m.writable else "ro"} for m in step.mounts}
        user = "0:0" if step.as_root else "{}:{}".format(*build_user())
        workdir = env.get(step.workdir_env) if step.workdir_env else None
        command = ["bash", "-c", _script(step)]
        shown = f"docker run --network {'host' if step.network else 'none'} --user {user} {step.image} bash -c <script>"
        _prepare_writable(step)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        mon.begin(step.name)
        start = time.monotonic()
        container = None
        try:
            host_config = client.create_host_config(
                binds=binds, network_mode="host" if step.network else "none", init=True
            )
            container = client.create_container(
                step.image,
                command=command,
                user=user,
                environment=env,
                working_dir=workdir,
                host_config=host_config,
                network_disabled=not step.network,
                labels={**self.labels, "hurdxen.step": step.name},
            )
            cid = container["Id"]
            client.start(cid)
            with open(log_path, "wb") as log:
                log.write(f"# {shown}\n".encode())
                for chunk in client.logs(cid, stream=True, follow=True, stdout=True, stderr=True):
                    log.write(chunk)
                    log.flush()
                    mon.output(step.name, chunk)
            code = int(client.wait(cid)["StatusCode"])
        except docker.errors.ImageNotFound as e:
            raise HurdxenError(
                f"{step.name}: image {step.image} is not in the Docker engine",
                hint="run `doit build` so the image tasks build it first",
            ) from e
        except (docker.errors.DockerException, OSError) as e:
            if fsutil.is_disk_full(e):
                raise fsutil.disk_full(step.name, log_path.parent) from e
            raise engine_error(e, step.name) from e
        finally:
            if container is not None:
                with contextlib.suppress(Exception):
                    client.remove_container(container["Id"], force=True)
            _restore_owner(step)
        seconds = time.monotonic() - start
        if code != 0:
            raise step_failed(step, code, log_path, shown)
        mon.end(step.name, seconds)
        return StepResult(step.name, code, seconds, log_path, shown, self.kind, step.image, self.image_id(step.image))


STEP_GROUPS = ".step-groups"  # artifacts/.step-groups/<pgid>: a host step's process group, while it runs
STEP_TOKEN_ENV = "HURDXEN_STEP_TOKEN"  # in every host step's environment: proves a process is ours to end


class HostExecutor:
    """Runs the same scripts directly on the host, for machines that already have the tools.

    Each step runs in its own process group (a new session), recorded under `state` while it runs: if the build is
    killed (SIGKILL leaves bash, configure, make running), the next build ends that group before it sweeps the
    directories those processes write into (`end_stale_steps`)."""

    kind = "host"

    def __init__(self, state: Path | None = None) -> None:
        self.state = state

    def image_id(self, image: str) -> str | None:
        return None

    def run(self, step: Step, log_path: Path, monitor: Monitor | None = None) -> StepResult:
        mon = monitor or NullMonitor()
        env = dict(os.environ)
        env.update({m.env: str(m.host.resolve()) for m in step.mounts})
        env.update(dict(step.env))
        cwd = env.get(step.workdir_env) if step.workdir_env else None
        for m in step.mounts:
            if m.writable:
                m.host.mkdir(parents=True, exist_ok=True)
        if not shutil.which("bash"):
            raise HurdxenError("the host executor needs bash", hint="install bash or use the docker executor")
        shown = "bash -c <script> (host executor)"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        mon.begin(step.name)
        start = time.monotonic()
        try:
            code = self._run(step, env, cwd, shown, log_path, mon, self.state)
        except OSError as e:
            if fsutil.is_disk_full(e):
                raise fsutil.disk_full(step.name, log_path.parent) from e
            raise
        seconds = time.monotonic() - start
        if code != 0:
            raise step_failed(step, code, log_path, shown)
        mon.end(step.name, seconds)
        return StepResult(step.name, code, seconds, log_path, shown, self.kind)

    @staticmethod
    def _run(
        step: Step, env: dict[str, str], cwd: str | None, shown: str, log_path: Path, mon: Monitor, state: Path | None
    ) -> int:
        token = os.urandom(16).hex()
        env = {**env, STEP_TOKEN_ENV: token}
        with open(log_path, "wb") as log:
            log.write(f"# {shown}\n".encode())
            proc = subprocess.Popen(
                ["bash", "-c", _script(step)],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: ended as one, now or by the next build
            )
            record = _record_group(state, proc.pid, token)
            failed: list[BaseException] = []
            # The output is read beside the wait: a process the script left in the background keeps the pipe open,
            # and must not keep the build waiting once bash is done.
            pump = threading.Thread(target=_pump, args=(proc, log, mon, step.name, failed), daemon=True)
            pump.start()
            try:
                code = proc.wait()
            finally:
                # Interrupted, the log unwritable, or processes left behind: nothing of the step runs on unseen.
                _kill_group(proc.pid)
                proc.wait()
                pump.join()
                if record is not None:
                    record.unlink(missing_ok=True)
            if failed:
                raise failed[0]
            return code


def _pump(proc: subprocess.Popen[bytes], log: Any, mon: Monitor, name: str, failed: list[BaseException]) -> None:
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            mon.output(name, line)
    except BaseException as e:  # a full disk: stop the step, report in the caller's thread
        failed.append(e)
        _kill_group(proc.pid)


def _record_group(state: Path | None, pgid: int, token: str) -> Path | None:
    if state is None:
        return None
    d = state / STEP_GROUPS
    d.mkdir(parents=True, exist_ok=True)
    record = d / str(pgid)
    fsutil.write_atomic(record, token)
    return record


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, 9)


def _group_members(pgid: int, token: str) -> list[int]:
    """Processes still in group `pgid` that carry our token (a recycled group id is someone else's)."""
    out = []
    marker = f"{STEP_TOKEN_ENV}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # field 5 of /proc/PID/stat is the process group; the command name (field 2) may hold spaces
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def end_stale_steps(state: Path) -> list[int]:
    """End the process groups of host steps a killed build left running; only the lock holder may call this."""
    d = state / STEP_GROUPS
    ended: list[int] = []
    if not d.is_dir():
        return ended
    for record in d.iterdir():
        try:
            pgid, token = int(record.name), record.read_text().strip()
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        if _group_members(pgid, token):
            _kill_group(pgid)
            ended.append(pgid)
        record.unlink(missing_ok=True)
    return ended


def _reason(e: BaseException) -> str:
    """The innermost cause in a few words: requests wraps urllib3, which wraps the socket error."""
    seen: set[int] = set()
    while id(e) not in seen:
        seen.add(id(e))
        reason = getattr(e, "reason", None)
        inner = reason if isinstance(reason, BaseException) else None
        inner = inner or next((a for a in reversed(e.args) if isinstance(a, BaseException)), None)
        if inner is None:
            break
        e = inner
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def engine_error(e: BaseException, where: str | None = None) -> HurdxenError:
    prefix = f"{where}: " if where else ""
    text = _reason(e)
    return HurdxenError(
        f"{prefix}the Docker engine stopped answering ({text})",
        hint="start it (`dockerd --bridge=none &` or `scripts/setup.sh`), or use HURDXEN_EXECUTOR=host",
    )


# One client per process and engine address: version negotiation and ping cost a round trip each, and a no-op
# build asks about every image. Keyed by pid too, because doit -n forks and a connection must not be shared.
_clients: dict[tuple[int, str], Any] = {}


def image_id(client: Any, tag: str) -> str | None:
    """The engine's id of image `tag` (sha256:…), None when it has no such image."""
    import docker.errors

    try:
        return str(client.inspect_image(tag)["Id"])
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as e:
        raise engine_error(e) from e


def connect_docker() -> Any:
    """A low-level API client; DOCKER_HOST (ssh:// or tcp:// with TLS) selects a remote engine."""
    try:
        import docker
    except ImportError as e:  # pragma: no cover - dependency is pinned
        raise HurdxenError("the docker Python package is missing", hint="run scripts/setup.sh") from e
    key = (os.getpid(), os.environ.get("DOCKER_HOST", ""))
    if key in _clients:
        return _clients[key]
    try:
        client = docker.APIClient(version="auto", timeout=600, **_docker_kwargs())
        client.ping()
        _clients[key] = client
        return client
    except docker.errors.DockerException as e:
        raise HurdxenError(
            f"no Docker engine answers at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}",
            hint="start one with `scripts/setup.sh` (it runs `dockerd --bridge=none`), or set HURDXEN_EXECUTOR=host",
        ) from e


def _docker_kwargs() -> Mapping[str, Any]:
    import docker.utils

    kwargs: Mapping[str, Any] = docker.utils.kwargs_from_env()
    return kwargs


ARTIFACTS_LABEL = "hurdxen.artifacts"


def remove_stale_containers(artifacts: Path) -> list[str]:
    """Remove step containers a killed build (same artifacts directory) left behind; only the lock holder may call
    this. They would otherwise keep running and writing into directories the next build sweeps away."""
    import docker.errors

    try:
        client = connect_docker()
        stale = client.containers(all=True, filters={"label": f"{ARTIFACTS_LABEL}={artifacts.resolve()}"})
        for c in stale:
            with contextlib.suppress(docker.errors.NotFound):
                client.remove_container(c["Id"], force=True)
    except (HurdxenError, docker.errors.DockerException, OSError):
        return []  # no engine: the first step that needs one says so
    return [str(c["Id"]) for c in stale]


def make_executor(kind: str | None = None, artifacts: Path | None = None) -> Executor:
    kind = kind or os.environ.get("HURDXEN_EXECUTOR", "docker")
    if kind == "docker":
        return DockerExecutor(labels={ARTIFACTS_LABEL: str(artifacts.resolve())} if artifacts else None)
    if kind == "host":
        return HostExecutor(artifacts)
    raise HurdxenError(f"unknown executor {kind!r}", hint="HURDXEN_EXECUTOR must be `docker` or `host`")
