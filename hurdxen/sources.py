"""Pinned inputs — tarballs by sha256, git repositories at an exact commit, Debian packages by exact version
verified against the suite's signed index — fetched once into a cache keyed by content hash.

Downloads go to a temporary file that is renamed into the cache only after its hash is checked, so a wrong hash,
a truncated body or an interrupted run never leaves anything usable-looking behind. Once cached, nothing here
touches the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hurdxen import debindex, fsutil
from hurdxen.errors import HurdxenError

DEFAULT_TIMEOUT = 60
DOWNLOAD_PREFIX = fsutil.TMP_PREFIX + "dl."  # cache/tmp/.tmp-dl.*: a download in progress
STALE_DOWNLOAD_SECONDS = 3600  # untouched this long, a download's temporary file belongs to a killed run


@dataclass(frozen=True)
class Network:
    proxy: str | None = None
    timeout: int = DEFAULT_TIMEOUT
    offline: bool = False


@dataclass(frozen=True)
class TarballPin:
    name: str  # what the input is, for messages (e.g. "mig orig tarball")
    url: str
    sha256: str
    key: str  # the recipe key that overrides it, for hints (e.g. "mig.source.url")


@dataclass(frozen=True)
class GitPin:
    name: str
    url: str
    commit: str
    key: str
    ref: str | None = None  # when set, the ref must still point at `commit`


@dataclass(frozen=True)
class DebPin:
    package: str
    version: str
    arch: str
    suite: str
    archive: str
    key: str
    component: str = "main"
    keyring: str = str(debindex.DEBIAN_KEYRING)
    sha256: str | None = None  # optional extra pin; the signed index is checked either way

    @property
    def name(self) -> str:
        return f"{self.package} {self.version} ({self.arch}, {self.suite})"


class Cache:
    """Content-addressed store: blobs/sha256/<hex>, git mirrors, extracted package trees."""

    def __init__(self, root: Path, network: Network | None = None) -> None:
        self.root = root
        self.network = network or Network()
        self._swept = False

    @classmethod
    def default(cls, network: Network | None = None) -> Cache:
        env = os.environ.get("HURDXEN_CACHE")
        root = Path(env) if env else Path(__file__).resolve().parent.parent / "cache"
        return cls(root, network)

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def has(self, sha256: str) -> bool:
        return self.blob(sha256).is_file()

    def tmpdir(self) -> Path:
        """Where downloads land before their hash is checked. The first call also sweeps stale ones."""
        d = self.root / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            sweep_stale_downloads(d)
        return d


def sweep_stale_downloads(d: Path, max_age: float = STALE_DOWNLOAD_SECONDS) -> None:
    """Remove download temporary files in `d` that nothing has written to for `max_age` seconds: a killed run's.

    A download in progress keeps its file's mtime fresh, so a concurrent build's download is left alone."""
    before = time.time() - max_age
    with os.scandir(d) as entries:
        for e in entries:
            if not e.name.startswith(DOWNLOAD_PREFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < before:
                    os.unlink(e.path)


# ---------------------------------------------------------------- HTTP


def _opener(net: Network) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = []
    if net.proxy:
        handlers.append(urllib.request.ProxyHandler({"http": net.proxy, "https": net.proxy}))
    return urllib.request.build_opener(*handlers)


def _unreachable(what: str, url: str, why: str, key: str) -> HurdxenError:
    return HurdxenError(
        f"{what}: cannot fetch {url} ({why})",
        hint=f"override `{key}` in hurdxen.local.toml (a mirror URL or a local path), or set `proxy` under [settings]",
    )


def download(url: str, dest_dir: Path, net: Network, what: str, key: str) -> tuple[Path, str]:
    """Stream `url` into a temporary file in `dest_dir`; return it and its sha256. Checks Content-Length."""
    if net.offline:
        raise HurdxenError(
            f"{what}: {url} is not in the cache and the build is offline",
            hint="run once with network access (or drop HURDXEN_OFFLINE) so the cache fills",
        )
    parsed = urllib.parse.urlparse(url)
    fd, tmp_name = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, dir=dest_dir)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            if parsed.scheme in ("", "file"):
                src = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else url)
                if not src.is_file():
                    raise _unreachable(what, url, "no such file", key)
                with open(src, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            else:
                try:
                    with _opener(net).open(url, timeout=net.timeout) as resp:
                        expected = resp.headers.get("Content-Length")
                        got = 0
                        for chunk in iter(lambda: resp.read(1 << 20), b""):
                            h.update(chunk)
                            out.write(chunk)
                            got += len(chunk)
                except urllib.error.HTTPError as e:
                    raise _unreachable(what, url, f"HTTP {e.code} {e.reason}", key) from e
                except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                    if fsutil.is_disk_full(e):
                        raise fsutil.disk_full(what, dest_dir) from e
                    reason = getattr(e, "reason", None) or str(e) or type(e).__name__
                    raise _unreachable(what, url, str(reason), key) from e
                if expected is not None and got != int(expected):
                    raise HurdxenError(
                        f"{what}: download of {url} was truncated ({got} of {expected} bytes)",
                        hint="try again; if it persists, the server or proxy is cutting the transfer",
                    )
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if not isinstance(e, HurdxenError) and fsutil.is_disk_full(e):
            raise fsutil.disk_full(what, dest_dir) from e
        raise
    return tmp, h.hexdigest()


def _store(cache: Cache, tmp: Path, sha256: str) -> Path:
    final = cache.blob(sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes 0600 files; build steps run as another user and must read them.
    os.chmod(tmp, 0o644)
    os.replace(tmp, final)
    return final


def fetch_url_pinned(cache: Cache, url: str, sha256: str, what: str, key: str, pinned_by: str = "the recipe") -> Path:
    if cache.has(sha256):
        return cache.blob(sha256)
    tmp, got = download(url, cache.tmpdir(), cache.network, what, key)
    if got != sha256:
        tmp.unlink()
        raise HurdxenError(
            f"{what}: sha256 of {url} is {got}, but {pinned_by} pins {sha256}",
            hint=f"the file changed or the URL is wrong; check `{key}` (nothing was cached)",
        )
    return _store(cache, tmp, sha256)


def fetch_tarball(pin: TarballPin, cache: Cache) -> Path:
    return fetch_url_pinned(cache, pin.url, pin.sha256, pin.name, pin.key)


def is_cached_tarball(pin: TarballPin, cache: Cache) -> bool:
    return cache.has(pin.sha256)


# ---------------------------------------------------------------- git


def _git_mirror_dir(cache: Cache, url: str) -> Path:
    return cache.root / "git" / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")


def fetch_git(pin: GitPin, cache: Cache) -> Path:
    """A bare mirror of `pin.url` in the cache that contains `pin.commit`; returns its git dir."""
    import git

    mirror = _git_mirror_dir(cache, pin.url)
    if not mirror.exists():
        tmp = mirror.with_name(fsutil.TMP_PREFIX + mirror.name)
        shutil.rmtree(tmp, ignore_errors=True)
        git.Repo.init(tmp, bare=True)
        os.replace(tmp, mirror)
    repo = git.Repo(mirror)
    if not _has_commit(repo, pin.commit) or pin.ref:
        if cache.network.offline and _has_commit(repo, pin.commit):
            pass
        else:
            try:
                env = (
                    {"http_proxy": cache.network.proxy, "https_proxy": cache.network.proxy}
                    if cache.network.proxy
                    else {}
                )
                with repo.git.custom_environment(**env):
                    repo.git.fetch(
                        "--prune",
                        "--force",
                        "--tags",
                        pin.url,
                        "+refs/heads/*:refs/heads/*",
                        "+refs/tags/*:refs/tags/*",
                    )
            except git.GitCommandError as e:
                if not _has_commit(repo, pin.commit):
                    raise _unreachable(pin.name, pin.url, _git_reason(e.stderr), pin.key) from e
    if not _has_commit(repo, pin.commit):
        raise HurdxenError(
            f"{pin.name}: commit {pin.commit} is not in {pin.url}",
            hint=f"check the pinned commit, or point `{pin.key}` at a mirror that has it",
        )
    if pin.ref:
        try:
            at = repo.git.rev_parse("--verify", f"{pin.ref}^{{commit}}")
        except git.GitCommandError as e:
            raise HurdxenError(f"{pin.name}: ref {pin.ref} is not in {pin.url}", hint="check the recipe's `ref`") from e
        if at != _full_commit(repo, pin.commit):
            raise HurdxenError(
                f"{pin.name}: {pin.ref} in {pin.url} now points at {at[:12]}, the recipe pins {pin.commit[:12]}",
                hint="the branch moved: update the pinned commit, or drop `ref` to build the pinned commit as is",
            )
    return mirror


def _git_reason(stderr: str | None) -> str:
    """git's own first `fatal:` line, without GitPython's `stderr: '…'` wrapping."""
    lines = [ln.strip().removeprefix("stderr:").strip().strip("'").strip() for ln in (stderr or "").splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        if ln.startswith(("fatal:", "error:")):
            return ln.split(":", 1)[1].strip()
    return lines[0] if lines else "git fetch failed"


def _has_commit(repo: object, commit: str) -> bool:
    import git

    assert isinstance(repo, git.Repo)
    try:
        repo.git.cat_file("-e", f"{commit}^{{commit}}")
        return True
    except git.GitCommandError:
        return False


def _full_commit(repo: object, commit: str) -> str:
    import git

    assert isinstance(repo, git.Repo)
    return str(repo.git.rev_parse("--verify", f"{commit}^{{commit}}"))


def is_cached_git(pin: GitPin, cache: Cache) -> bool:
    import git

    mirror = _git_mirror_dir(cache, pin.url)
    return mirror.exists() and _has_commit(git.Repo(mirror), pin.commit)


def export_git(pin: GitPin, cache: Cache, dest: Path) -> None:
    """The tree at `pin.commit` as plain files in `dest` (no .git), like an unpacked tarball."""
    import git

    repo = git.Repo(fetch_git(pin, cache))
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as f:
        repo.archive(f, pin.commit, format="tar")
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(dest, filter="tar")


# ---------------------------------------------------------------- Debian packages


def _deb_record(cache: Cache, pin: DebPin) -> Path:
    ident = fsutil.identity(pin.archive, pin.suite, pin.component, pin.package, pin.version, pin.arch)
    return cache.root / "debian" / f"{pin.package}_{pin.version}_{pin.arch}.{ident[:16]}.json"


def is_cached_deb(pin: DebPin, cache: Cache) -> bool:
    rec = _deb_record(cache, pin)
    if not rec.is_file():
        return False
    return cache.has(json.loads(rec.read_text())["sha256"])


def fetch_deb(pin: DebPin, cache: Cache) -> Path:
    """The .deb for `pin`, verified: the suite's InRelease signature, the Packages index hash, the .deb hash."""
    rec = _deb_record(cache, pin)
    if rec.is_file():
        known = json.loads(rec.read_text())
        if cache.has(known["sha256"]) and (pin.sha256 in (None, known["sha256"])):
            return cache.blob(known["sha256"])
    entry = resolve_deb(pin, cache)
    if pin.sha256 and pin.sha256 != entry.sha256:
        raise HurdxenError(
            f"{pin.name}: the signed index lists sha256 {entry.sha256}, the recipe pins {pin.sha256}",
            hint=f"check `{pin.key}`: the archive carries a different build of that version",
        )
    url = f"{pin.archive.rstrip('/')}/{entry.filename}"
    path = fetch_url_pinned(
        cache, url, entry.sha256, pin.name, pin.key + ".archive", pinned_by=f"the signed index of {pin.suite}"
    )
    fsutil.write_json_atomic(rec, {"sha256": entry.sha256, "filename": entry.filename, "size": entry.size})
    return path


def resolve_deb(pin: DebPin, cache: Cache) -> debindex.PackageEntry:
    base = f"{pin.archive.rstrip('/')}/dists/{pin.suite}"
    where = f"{base}/InRelease"
    tmp, _ = download(where, cache.tmpdir(), cache.network, f"{pin.name} index", pin.key + ".archive")
    try:
        release = debindex.verify_inrelease(tmp.read_bytes(), Path(pin.keyring), where)
    finally:
        tmp.unlink()
    last: HurdxenError | None = None
    for suffix in (".xz", ".gz", ""):
        rel = f"{pin.component}/binary-{pin.arch}/Packages{suffix}"
        try:
            sha, _size = debindex.release_checksum(release, rel, where)
        except HurdxenError as e:
            last = e
            continue
        index = fetch_url_pinned(
            cache, f"{base}/{rel}", sha, f"{pin.name} index", pin.key + ".archive", pinned_by=f"{where}"
        )
        text = debindex.decompress(rel, index.read_bytes()).decode(errors="replace")
        return debindex.find_package(text, pin.package, pin.version, pin.arch, f"{base}/{rel}")
    assert last is not None
    raise last


def extract_deb(deb: Path, cache: Cache) -> Path:
    """The unpacked data of a .deb, cached by the .deb's hash (dpkg-deb -x semantics)."""
    sha = fsutil.sha256_file(deb)
    final = cache.root / "extracted" / sha
    if final.is_dir():
        return final
    with fsutil.atomic_dir(final) as tmp:
        if shutil.which("dpkg-deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True)
        else:
            from debian.debfile import DebFile

            DebFile(str(deb)).data.tgz().extractall(tmp, filter="tar")
    return final
