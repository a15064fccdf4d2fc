"""Publishing a release bundle: to a directory, to an OCI registry (hurdxen.release.verify checks one).

publish_dir: dest/<release>/ (the bundle's files, signature and tarball), dest/index.json (every release, sorted
by packaging.version) and dest/latest -> the highest version. Each step is one rename, so an interrupted publish
leaves the previous release, index and `latest` as they were (and at most a `.tmp-*` directory, swept next time).

publish_oci: the tarball, SHA256SUMS and SHA256SUMS.asc as one OCI artifact (oras-py), tagged with the version.

publish_dir verifies the bundle (checksums, manifest, provenance) before it copies anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.release.bundle import MANIFEST, SUMS, BundleResult, load_result
from hurdxen.release.verify import files_below, verify

INDEX = "index.json"
LATEST = "latest"
LOCK = ".publish.lock"
MEDIA_TARBALL = "application/vnd.hurdxen.release.tar+gzip"
MEDIA_SUMS = "text/plain; charset=utf-8"
MEDIA_SIGNATURE = "application/pgp-signature"


def _as_result(bundle: BundleResult | Path) -> BundleResult:
    return bundle if isinstance(bundle, BundleResult) else load_result(Path(bundle))


# ------------------------------------------------------------------ publish to a directory


@dataclass(frozen=True)
class PublishResult:
    release: str
    directory: Path
    latest: Path
    index: Path
    unchanged: bool  # the same release was already there, byte for byte


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)


def _version_key(entry: Mapping[str, Any]) -> tuple[Version, str]:
    try:
        return Version(str(entry["version"])), str(entry["release"])
    except InvalidVersion:
        return Version("0"), str(entry["release"])


def build_index(dest: Path) -> list[dict[str, Any]]:
    """Every release below dest, from its own manifest (so the index can always be rebuilt), by version."""
    out = []
    for d in sorted(dest.iterdir()):
        if d.name.startswith(".") or d.is_symlink() or not (d / MANIFEST).is_file():
            continue
        m = json.loads((d / MANIFEST).read_text())
        tarball = d / f"{d.name}.tar.gz"
        out.append(
            {
                "release": d.name,
                "name": m.get("name"),
                "version": m.get("version"),
                "source_date_epoch": m.get("source_date_epoch"),
                "commit": (m.get("project") or {}).get("commit"),
                "signed": bool(m.get("signed")),
                "signing_key": m.get("signing_key"),
                "boot_passed": bool((m.get("boot") or {}).get("passed")),
                "tarball": f"{d.name}/{tarball.name}" if tarball.is_file() else None,
                "tarball_sha256": fsutil.sha256_file(tarball) if tarball.is_file() else None,
                "sums_sha256": fsutil.sha256_file(d / SUMS) if (d / SUMS).is_file() else None,
            }
        )
    return sorted(out, key=_version_key)


def _point_latest(dest: Path, release: str) -> Path:
    """Replace dest/latest in one rename (a symlink made beside it first)."""
    link = dest / LATEST
    tmp = dest / f"{fsutil.TMP_PREFIX}{LATEST}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(release, tmp)
    os.replace(tmp, link)
    return link


def publish_dir(bundle: BundleResult | Path, dest: Path) -> PublishResult:
    """Publish into `dest`: dest/<release>/ appears whole or not at all; index.json and latest follow."""
    b = _as_result(bundle)
    dest = Path(dest)
    report = verify(b.directory, kernel_check=None)
    report.raise_for_problems()
    with _locked(dest):
        # Only the lock holder may sweep: another publisher's temp dir is not ours to remove otherwise.
        for p in dest.glob(fsutil.TMP_PREFIX + "*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        final = dest / b.release
        unchanged = False
        if final.exists():
            old = final / b.tarball.name
            if old.is_file() and fsutil.sha256_file(old) == b.tarball_sha256:
                unchanged = True
            else:
                raise HurdxenError(
                    f"publish: {final} already holds a different {b.release}",
                    hint="a published version never changes: tag a new version (git tag) or remove it by hand",
                )
        if not unchanged:
            with fsutil.atomic_dir(final) as tmp:
                for name in sorted(files_below(b.directory)):
                    _copy_file(b.directory / name, tmp / name)
                _copy_file(b.tarball, tmp / b.tarball.name)
                for p in [tmp, *(q for q in tmp.rglob("*") if q.is_dir())]:
                    os.chmod(p, 0o755)
        entries = build_index(dest)
        fsutil.write_json_atomic(
            dest / INDEX,
            {
                "format": "hurdxen-release-index/1",
                "releases": entries,
                "latest": entries[-1]["release"] if entries else None,
            },
        )
        latest = _point_latest(dest, entries[-1]["release"])
    return PublishResult(b.release, final, latest, dest / INDEX, unchanged)


# ------------------------------------------------------------------ publish to an OCI registry


@dataclass(frozen=True)
class OciResult:
    ref: str  # registry/repository:tag
    digest: str | None  # the manifest digest the registry reported
    files: tuple[str, ...]


def _oci_ref(ref: str, version: str) -> str:
    # A tag is after the last '/', so host:port alone is not mistaken for one.
    last = ref.rsplit("/", 1)[-1]
    if ":" in last or "@" in ref:
        return ref
    return f"{ref}:{version.replace('+', '_')}"  # OCI tags have no '+'


def _registry(insecure: bool) -> Any:
    import oras.provider

    return oras.provider.Registry(insecure=insecure)


def publish_oci(bundle: BundleResult | Path, ref: str, *, insecure: bool = False) -> OciResult:
    """Push tarball + SHA256SUMS (+ SHA256SUMS.asc) as one OCI artifact; `ref` without a tag gets the version."""
    b = _as_result(bundle)
    target = _oci_ref(ref, b.version)
    files = [f"{b.tarball}:{MEDIA_TARBALL}", f"{b.sums}:{MEDIA_SUMS}"]
    if b.signature is not None:
        files.append(f"{b.signature}:{MEDIA_SIGNATURE}")
    m = json.loads(b.manifest.read_text())
    annotations = {
        "org.opencontainers.image.title": b.release,
        "org.opencontainers.image.version": b.version,
        # The build's time, not the push's: pushing the same bundle twice gives the same manifest digest.
        "org.opencontainers.image.created": _iso(int(m.get("source_date_epoch", 0))),
        "org.opencontainers.image.revision": str((m.get("project") or {}).get("commit") or ""),
        "io.github.hurdxen.signed": "true" if b.signature else "false",
    }
    reg = _registry(insecure)
    _ping(reg, target, insecure)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # oras-py prints "Successfully pushed"
            resp = reg.push(target=target, files=files, disable_path_validation=True, manifest_annotations=annotations)
    except Exception as e:  # oras-py raises plain ValueError / requests errors
        raise HurdxenError(
            f"publish: pushing {target} failed: {_one_line(e)}",
            hint="check the registry address, credentials (docker login) and insecure=",
        ) from e
    digest = resp.headers.get("Docker-Content-Digest") if resp is not None else None
    return OciResult(target, digest, tuple(Path(f.rsplit(":", 1)[0]).name for f in files))


def pull_oci(ref: str, dest: Path, *, insecure: bool = False) -> list[Path]:
    """Fetch a published release's files into dest (then `verify(dest/<release>.tar.gz)`)."""
    reg = _registry(insecure)
    _ping(reg, ref, insecure)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        got = reg.pull(target=ref, outdir=str(dest))
    except Exception as e:
        raise HurdxenError(f"pull: {ref} failed: {_one_line(e)}", hint="check the reference and registry") from e
    return sorted(Path(p) for p in got)


def _ping(reg: Any, ref: str, insecure: bool) -> None:
    """One quick request to the registry first: oras-py retries a dead address with backoff for minutes."""
    import requests

    try:
        host = reg.get_container(ref).registry
    except Exception as e:
        raise HurdxenError(
            f"OCI reference {ref!r} is not valid: {_one_line(e)}", hint="write HOST[:PORT]/REPO[:TAG]"
        ) from e
    url = f"{'http' if insecure else 'https'}://{host}/v2/"
    try:
        requests.get(url, timeout=10)  # 200 or 401 (auth needed) both mean "a registry is there"
    except requests.RequestException as e:
        raise HurdxenError(
            f"OCI registry {host} is not reachable ({type(e).__name__})",
            hint="check the address; a registry without TLS needs insecure=true (release.publish.insecure)",
        ) from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _iso(epoch: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
