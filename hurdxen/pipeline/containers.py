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
from typing import TYPE_CHECKING, Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.core.monitor import Monitor, NullMonitor
from hurdxen.pipeline import executors
from hurdxen.pipeline.executors import connect_docker, engine_error
from hurdxen.pipeline.recipes import Recipes
from hurdxen.pipeline.stage import Deps
from hurdxen.sources.fetch import DEFAULT_SNAPSHOT, Network, Pin

if TYPE_CHECKING:
    from hurdxen.pipeline.context import Context

BASE_REPOSITORY = "hurdxen/base"
IMAGE_REPOSITORY = "hurdxen"
BASE_STAGE, IMAGE_STAGE = "base", "image"  # the doit basenames, and the directories of their manifests


@dataclass(frozen=True)
class BaseSpec:
    """The base recipe (recipes/base.toml [base]): what the rootfs is. How its bytes arrive (a proxy, the snapshot
    service's address) is the network's (`ctx.cache.network`), not the spec's: it changes neither tag nor identity."""

    suite: str
    mirror: str
    variant: str
    components: tuple[str, ...]
    include: tuple[str, ...]
    source_date_epoch: int
    snapshot: str | None = None  # a snapshot.debian.org timestamp: the rootfs (and pinned packages) come from it

    @property
    def task(self) -> str:
        return f"{BASE_STAGE}:{self.suite}"

    @property
    def doc(self) -> str:
        return f"the Debian {self.suite} base rootfs (mmdebstrap, docker import) as {self.tag}"

    def identity(self, ctx: Context | None = None) -> str:
        """A hash of the recipe; the tag carries its first 16 digits. An unset snapshot leaves it as it was before
        snapshots existed."""
        d = dict(self.__dict__)
        if d["snapshot"] is None:
            del d["snapshot"]
        return fsutil.identity("base", d)

    @property
    def tag_hash(self) -> str:
        return self.identity()[:16]

    @property
    def tag(self) -> str:
        return f"{BASE_REPOSITORY}:{self.suite}-{self.tag_hash}"

    def snapshot_mirror(self, service: str = DEFAULT_SNAPSHOT) -> str | None:
        """The archive as the snapshot service kept it at `snapshot` (/archive/debian/<ts>/)."""
        if not self.snapshot:
            return None
        return f"{service.rstrip('/')}/archive/debian/{self.snapshot}"

    def outputs(self, ctx: Context) -> dict[str, Path]:
        return {}  # an image in the engine (and the rootfs tarball in the cache): the manifest records them

    def deps(self, ctx: Context) -> Deps:
        return Deps()

    def pins(self) -> tuple[Pin, ...]:
        return ()  # mmdebstrap reads the suite's signed index itself


@dataclass(frozen=True)
class ImageSpec:
    """A builder image: containers/<name>/ (its Dockerfile and packages.lock) on the base image."""

    name: str
    context: Path  # containers/<name>
    base: BaseSpec

    @property
    def task(self) -> str:
        return f"{IMAGE_STAGE}:{self.name}"

    @property
    def doc(self) -> str:
        return f"builder image {self.tag}"

    def identity(self, ctx: Context | None = None) -> str:
        """A hash of the name, the base's tag hash and every file of the build context; the tag carries its first
        16 digits."""
        return fsutil.identity("image", self.name, self.base.tag_hash, context_digest(self.context))

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPOSITORY}/{self.name}:{self.identity()[:16]}"

    def outputs(self, ctx: Context) -> dict[str, Path]:
        return {}  # an image in the engine: the manifest records its tag and id

    def deps(self, ctx: Context) -> Deps:
        return Deps((self.base.task,))

    def pins(self) -> tuple[Pin, ...]:
        return ()  # its packages are pinned by packages.lock, installed by apt in `docker build`


def base_spec(recipes: Recipes) -> BaseSpec:
    """The base recipe as its spec."""
    b = recipes["base"]["base"]
    return BaseSpec(
        suite=b["suite"],
        mirror=b["mirror"],
        variant=b.get("variant", "minbase"),
        components=tuple(b.get("components", ["main"])),
        include=tuple(b.get("include", [])),
        source_date_epoch=int(b["source_date_epoch"]),
        snapshot=b.get("snapshot"),
    )


def image_specs(recipes: Recipes, base: BaseSpec) -> tuple[ImageSpec, ...]:
    """Every image of recipes/images.toml, by name."""
    return tuple(ImageSpec(n, recipes.root / "containers" / n, base) for n in sorted(recipes["images"]["image"]))


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


def rootfs_tarball(spec: BaseSpec, cache_dir: Path) -> Path:
    """Where the base rootfs is kept in the cache, by its tag hash."""
    return cache_dir / "rootfs" / f"base-{spec.suite}-{spec.tag_hash}.tar"


def ensure_base(
    spec: BaseSpec, cache_dir: Path, log_path: Path, monitor: Monitor | None = None, network: Network | None = None
) -> ImageResult:
    """mmdebstrap the base rootfs (cached as a tarball by identity) and import it into the engine."""
    mon = monitor or NullMonitor()
    client = connect_docker()
    start = time.monotonic()
    existing = executors.image_id(client, spec.tag)
    if existing:
        return ImageResult(spec.tag, existing, 0.0, True)
    tarball = rootfs_tarball(spec, cache_dir)
    if not tarball.exists():
        _mmdebstrap(spec, tarball, log_path, mon, network or Network())
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


def _mmdebstrap(spec: BaseSpec, tarball: Path, log_path: Path, mon: Monitor, network: Network) -> None:
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
    if network.proxy:
        cmd.append(f'--aptopt=Acquire::http::Proxy "{network.proxy}"')
    snapshot_mirror = spec.snapshot_mirror(network.snapshot)
    if snapshot_mirror:
        # A snapshot's InRelease is past its Valid-Until; apt still requires its good signature.
        cmd.append('--aptopt=Acquire::Check-Valid-Until "false"')
    cmd += [spec.suite, str(tmp), snapshot_mirror or spec.mirror]
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


def ensure_image(
    spec: ImageSpec, log_path: Path, monitor: Monitor | None = None, network: Network | None = None
) -> ImageResult:
    """Build containers/<name>/Dockerfile on the base image, unless an image with that content hash exists."""
    import docker.errors

    mon = monitor or NullMonitor()
    client = connect_docker()
    existing = executors.image_id(client, spec.tag)
    if existing:
        return ImageResult(spec.tag, existing, 0.0, True)
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    net = network or Network()
    buildargs = {
        "BASE": spec.base.tag,
        "SUITE": spec.base.suite,
        "SNAPSHOT_MIRROR": spec.base.snapshot_mirror(net.snapshot) or "",
    }
    if net.proxy:
        buildargs.update(http_proxy=net.proxy, https_proxy=net.proxy)
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


# ------------------------------------------------------------------ the stages: base and image


def present(spec: BaseSpec | ImageSpec, ctx: Context) -> bool:
    """The image is in the engine; else its task runs again (no engine: it runs and fails with its own line)."""
    try:
        return image_exists(spec.tag)
    except HurdxenError:
        return False


def _image_fact(made: ImageResult) -> dict[str, Any]:
    return {"image": {"tag": made.tag, "id": made.image_id}}


def build_base(spec: BaseSpec, ctx: Context) -> ImageResult:
    """Entry point: the base image (mmdebstrap and `docker import`, unless its tag exists), and its manifest in
    artifacts/base/<suite>/: the recipe, the image's tag and id, and where the rootfs tarball is kept."""
    from hurdxen.pipeline import manifest, stage

    made = ensure_base(spec, ctx.cache.root, ctx.log(spec.task), ctx.monitor(), ctx.cache.network)
    tarball = rootfs_tarball(spec, ctx.cache.root)
    facts = _image_fact(made)
    if tarball.is_file():  # kept to import again; gone when the cache was cleaned (the image is what counts)
        facts["rootfs"] = {"path": tarball.relative_to(ctx.cache.root).as_posix()}
    with fsutil.atomic_dir(stage.out_dir(ctx, spec.task)) as out:
        manifest.write(
            out,
            spec,
            ctx,
            inputs={"recipe": {k: v for k, v in spec.__dict__.items() if v is not None}},
            step=manifest.in_process(
                "hurdxen.pipeline.containers.ensure_base", reused=made.reused, seconds=round(made.seconds, 2)
            ),
            extra=facts,
        )
    return made


def build_image(spec: ImageSpec, ctx: Context) -> ImageResult:
    """Entry point: a builder image (`docker build` on the base image, unless its tag exists), and its manifest in
    artifacts/image/<name>/: the build context's digest (Dockerfile, packages.lock), the base, the tag and id."""
    from hurdxen.pipeline import manifest, stage

    made = ensure_image(spec, ctx.log(spec.task), ctx.monitor(), ctx.cache.network)
    with fsutil.atomic_dir(stage.out_dir(ctx, spec.task)) as out:
        manifest.write(
            out,
            spec,
            ctx,
            inputs={
                "context": {"path": f"containers/{spec.context.name}", "digest": context_digest(spec.context)},
                "base": {"task": spec.base.task, "tag": spec.base.tag},
            },
            step=manifest.in_process(
                "hurdxen.pipeline.containers.ensure_image", reused=made.reused, seconds=round(made.seconds, 2)
            ),
            extra=_image_fact(made),
        )
    return made


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
