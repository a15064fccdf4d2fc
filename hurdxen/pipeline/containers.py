"""Builder images: a Debian base rootfs made with mmdebstrap and `docker import`ed, and images built on it from
`containers/<name>/Dockerfile`. Both are tagged by a hash of what they are made from, so an existing image is reused
and no image registry is needed."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.core.monitor import Monitor, NullMonitor
from hurdxen.pipeline import executors
from hurdxen.pipeline.executors import connect_docker, engine_error

BASE_REPOSITORY = "hurdxen/base"
IMAGE_REPOSITORY = "hurdxen"


@dataclass(frozen=True)
class BaseSpec:
    suite: str
    mirror: str
    variant: str
    components: tuple[str, ...]
    include: tuple[str, ...]
    source_date_epoch: int
    proxy: str | None = None
    snapshot: str | None = None  # a snapshot.debian.org timestamp: the rootfs (and pinned packages) come from it
    snapshot_service: str = "https://snapshot.debian.org"

    @property
    def identity(self) -> str:
        # The proxy and the snapshot service's address change how bytes arrive, not what the image is. An unset
        # snapshot leaves the identity as it was before snapshots existed.
        d = {k: v for k, v in self.__dict__.items() if k not in ("proxy", "snapshot_service")}
        if d["snapshot"] is None:
            del d["snapshot"]
        return fsutil.identity("base", d)[:16]

    @property
    def snapshot_mirror(self) -> str | None:
        """The archive as the snapshot service kept it at `snapshot` (/archive/debian/<ts>/)."""
        if not self.snapshot:
            return None
        return f"{self.snapshot_service.rstrip('/')}/archive/debian/{self.snapshot}"

    @property
    def tag(self) -> str:
        return f"{BASE_REPOSITORY}:{self.suite}-{self.identity}"


@dataclass(frozen=True)
class ImageSpec:
    name: str
    context: Path  # containers/<name>
    base: BaseSpec

    @property
    def identity(self) -> str:
        return fsutil.identity("image", self.name, self.base.identity, context_digest(self.context))[:16]

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPOSITORY}/{self.name}:{self.identity}"


@dataclass(frozen=True)
class ImageResult:
    tag: str
    image_id: str
    seconds: float
    reused: bool


def context_digest(context: Path) -> str:
    """Hash of every file in a build context: names, modes and contents."""
    if not (context / "Dockerfile").is_file():
        raise HurdxenError(f"{context}/Dockerfile is missing", hint="each containers/<name>/ needs a Dockerfile")
    entries = []
    for p in sorted(context.rglob("*")):
        if p.is_file():
            entries.append([str(p.relative_to(context)), p.stat().st_mode & 0o111 != 0, fsutil.sha256_file(p)])
    return fsutil.identity(entries)


def image_exists(tag: str) -> bool:
    return executors.image_id(connect_docker(), tag) is not None


def ensure_base(spec: BaseSpec, cache_dir: Path, log_path: Path, monitor: Monitor | None = None) -> ImageResult:
    """mmdebstrap the base rootfs (cached as a tarball by identity) and import it into the engine."""
    mon = monitor or NullMonitor()
    client = connect_docker()
    start = time.monotonic()
    existing = executors.image_id(client, spec.tag)
    if existing:
        return ImageResult(spec.tag, existing, 0.0, True)
    tarball = cache_dir / "rootfs" / f"base-{spec.suite}-{spec.identity}.tar"
    if not tarball.exists():
        _mmdebstrap(spec, tarball, log_path, mon)
    try:
        with open(tarball, "rb") as f:
            repo, tag = spec.tag.split(":")
            client.import_image_from_data(f, repository=repo, tag=tag, changes=['CMD ["bash"]'])
    except Exception as e:
        raise engine_error(e, "base image") from e
    image_id = executors.image_id(client, spec.tag)
    if image_id is None:
        raise HurdxenError(f"docker import of {tarball} did not produce {spec.tag}", hint=f"see {log_path}")
    return ImageResult(spec.tag, image_id, time.monotonic() - start, False)


def _mmdebstrap(spec: BaseSpec, tarball: Path, log_path: Path, mon: Monitor) -> None:
    if not shutil.which("mmdebstrap"):
        raise HurdxenError("mmdebstrap is not installed", hint="apt-get install mmdebstrap (scripts/setup.sh does)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_name(fsutil.TMP_PREFIX + tarball.name)
    cmd = [
        "mmdebstrap",
        f"--variant={spec.variant}",
        f"--components={','.join(spec.components)}",
        "--mode=auto",
        "--format=tar",
    ]
    if spec.include:
        cmd.append(f"--include={','.join(spec.include)}")
    if spec.proxy:
        cmd.append(f'--aptopt=Acquire::http::Proxy "{spec.proxy}"')
    if spec.snapshot_mirror:
        # A snapshot's InRelease is past its Valid-Until; apt still requires its good signature.
        cmd.append('--aptopt=Acquire::Check-Valid-Until "false"')
    cmd += [spec.suite, str(tmp), spec.snapshot_mirror or spec.mirror]
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(spec.source_date_epoch))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(("# " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            mon.output("base", line)
        code = proc.wait()
    if code != 0:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise HurdxenError(
            f"base: mmdebstrap {spec.suite} from {spec.mirror} failed (exit {code}); see {log_path}",
            hint="check the mirror (override `base.mirror` in hurdxen.local.toml) or set `proxy` under [settings]",
        )
    os.replace(tmp, tarball)


def ensure_image(spec: ImageSpec, log_path: Path, monitor: Monitor | None = None) -> ImageResult:
    """Build containers/<name>/Dockerfile on the base image, unless an image with that content hash exists."""
    import docker.errors

    mon = monitor or NullMonitor()
    client = connect_docker()
    existing = executors.image_id(client, spec.tag)
    if existing:
        return ImageResult(spec.tag, existing, 0.0, True)
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    buildargs = {"BASE": spec.base.tag, "SUITE": spec.base.suite, "SNAPSHOT_MIRROR": spec.base.snapshot_mirror or ""}
    if spec.base.proxy:
        buildargs.update(http_proxy=spec.base.proxy, https_proxy=spec.base.proxy)
    error: str | None = None
    try:
        with open(log_path, "ab") as log:
            shown = f"docker build --network host -t {spec.tag} --build-arg BASE={spec.base.tag} {spec.context}"
            log.write(f"# {shown}\n".encode())
            for event in client.build(
                path=str(spec.context),
                tag=spec.tag,
                buildargs=buildargs,
                network_mode="host",
                rm=True,
                forcerm=True,
                decode=True,
                pull=False,
            ):
                text = event.get("stream") or event.get("status") or ""
                if "error" in event:
                    error = str(event["error"]).strip()
                    text = error + "\n"
                if text:
                    log.write(text.encode())
                    log.flush()
                    mon.output(f"image:{spec.name}", text.encode())
    except docker.errors.DockerException as e:
        raise engine_error(e, f"image:{spec.name}") from e
    if error:
        raise HurdxenError(f"image:{spec.name}: docker build failed: {error}", hint=f"the whole log is {log_path}")
    image_id = executors.image_id(client, spec.tag)
    if image_id is None:
        raise HurdxenError(f"image:{spec.name}: build produced no image {spec.tag}", hint=f"see {log_path}")
    return ImageResult(spec.tag, image_id, time.monotonic() - start, False)


PACKAGES_FORMAT = "${binary:Package} ${Version} ${Architecture}\\n"


def installed_packages(tag: str, cache_root: Path) -> list[str]:
    """An image's installed packages as `name version arch` lines (like a .buildinfo), sorted; asked of the image once
    and kept in the cache by image id (an image's content never changes under its id)."""
    client = connect_docker()
    image_id = executors.image_id(client, tag)
    if image_id is None:
        raise HurdxenError(f"image {tag} does not exist", hint="build it: `doit image`")
    path = cache_root / "images" / f"{image_id.replace(':', '-')}.packages"
    if path.is_file():
        return path.read_text().splitlines()
    c = client.create_container(
        image_id,
        command=["dpkg-query", "-W", "-f", PACKAGES_FORMAT],
        host_config=client.create_host_config(network_mode="none"),
        network_disabled=True,
    )
    try:
        client.start(c["Id"])
        client.wait(c["Id"])
        out = client.logs(c["Id"], stdout=True, stderr=False).decode(errors="replace")
    finally:
        client.remove_container(c["Id"], force=True)
    lines = sorted((line for line in out.splitlines() if line.count(" ") == 2), key=lambda s: s.encode())
    fsutil.write_atomic(path, "".join(f"{line}\n" for line in lines))
    return lines
