"""Pinned inputs — tarballs by sha256, git repositories at an exact commit (sources_git), Debian packages by exact
version verified against the suite's signed index (sources_deb) — fetched once into a cache keyed by content hash.
This module holds the pins, the cache and the checked downloads (tarballs).

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
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.sources import debindex

DEFAULT_TIMEOUT = 60
# snapshot.debian.org archives Debian (/archive/debian/<ts>/) and debian-ports (/archive/debian-ports/<ts>/, whose
# pools are per architecture: pool-hurd-i386/…, as in the live ports archive). Users behind a mirror set
# `snapshot` under [settings].
DEFAULT_SNAPSHOT = "https://snapshot.debian.org"
DOWNLOAD_PREFIX = fsutil.TMP_PREFIX + "dl."  # cache/tmp/.tmp-dl.*: a download in progress
STALE_DOWNLOAD_SECONDS = 3600  # untouched this long, a download's temporary file belongs to a killed run


DEFAULT_DEADLINE = 1800  # seconds one download may take in all
DEFAULT_MIN_RATE = 16 << 10  # bytes per second a download must average once it has run RATE_GRACE seconds
RATE_GRACE = 15.0
MAX_UNSIZED = 8 << 30  # a download whose size no pin or index states (a tarball pinned by sha256 only)


@dataclass(frozen=True)
class Network:
    proxy: str | None = None
    timeout: int = DEFAULT_TIMEOUT  # seconds without a byte (connect, or between reads) before a server is given up
    offline: bool = False
    snapshot: str = DEFAULT_SNAPSHOT  # base URL of the snapshot service (the fallback for Debian packages)
    deadline: float = DEFAULT_DEADLINE
    min_rate: int = DEFAULT_MIN_RATE
    rate_grace: float = RATE_GRACE


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
    """A Debian package at an exact version, verified through its suite's signed index (archive or snapshot).

    Built only by `DebPin.from_recipe`, from a recipe table, so every stage reads pins the same way."""

    package: str
    version: str
    arch: str
    suite: str
    archive: str
    key: str  # the recipe key path of the pin's table, for hints (e.g. "pvgrub2.grub")
    component: str = "main"
    keyring: str = str(debindex.DEBIAN_KEYRING)
    sha256: str | None = None  # optional extra pin; the signed index is checked either way
    snapshot: str | None = None  # a snapshot timestamp (YYYYMMDDTHHMMSSZ) known to carry this version
    keyring_pin: DebPin | None = None  # a keyring package whose `keyring_file` replaces `keyring`
    keyring_file: str = ""
    version_key: str = ""  # the recipe key path of the version string (what `pins update` rewrites)

    @classmethod
    def from_recipe(cls, table: Mapping[str, Any], key: str, package: str | None = None) -> DebPin:
        """The pin a recipe table describes. `package` picks one entry of a `packages = {name = version}` map
        (hurd-modules); otherwise the table names `package` and `version` itself."""
        if package is None:
            package, version, version_key = table["package"], table["version"], f"{key}.version"
        else:
            version, version_key = table["packages"][package], f"{key}.packages.{toml_key(package)}"
        # A keyring path given for this pin (an overlay pointing at a mirror's key) wins over the keyring package.
        kp = None if "keyring" in table else table.get("keyring_package")
        keyring_pin = cls.from_recipe(kp, f"{key}.keyring_package") if kp else None
        return cls(
            package=package,
            version=version,
            arch=table.get("arch", "all"),
            suite=table["suite"],
            archive=table["archive"],
            key=key,
            component=table.get("component", "main"),
            keyring=table.get("keyring", cls.keyring),
            sha256=table.get("sha256") if package == table.get("package") else None,
            snapshot=table.get("snapshot"),
            keyring_pin=keyring_pin,
            keyring_file=kp["file"] if kp else "",
            version_key=version_key,
        )

    @property
    def name(self) -> str:
        return f"{self.package} {self.version} ({self.arch}, {self.suite})"

    @property
    def lock_id(self) -> str:
        """What the lock files this pin under: one entry per package, archive, suite and architecture."""
        return f"{self.archive.rstrip('/')} {self.suite}/{self.component} {self.arch} {self.package}"


# A pinned input of any kind: what a spec's `pins()` lists and a `sources:` task fetches.
Pin = TarballPin | GitPin | DebPin


def toml_key(name: str) -> str:
    """`name` as one TOML key: bare when it can be, else quoted (libc0.3 → "libc0.3")."""
    return name if name and all(c.isalnum() or c in "_-" for c in name) and name.isascii() else json.dumps(name)


_VERIFIED: set[tuple[str, int, int, int]] = set()  # blobs hashed by this process (path, inode, size, mtime)


class Cache:
    """Content-addressed store: blobs/sha256/<hex>, git mirrors, extracted package trees."""

    def __init__(self, root: Path, network: Network | None = None, lock: Path | None = None) -> None:
        self.root = root
        self.network = network or Network()
        self.lock = lock  # the pins lock (recipes/pins.lock): resolved Debian pins, read and filled by fetch_deb
        self._swept = False

    @classmethod
    def default(cls, network: Network | None = None) -> Cache:
        env = os.environ.get("HURDXEN_CACHE")
        root = Path(env) if env else Path(__file__).resolve().parents[2] / "cache"
        return cls(root, network)

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def has(self, sha256: str) -> bool:
        return self.blob(sha256).is_file()

    def verified(self, sha256: str) -> bool:
        """The blob is there and still hashes to its name; a changed blob is removed (the caller refetches).

        The cache is not trusted: anyone who can write it (another user, a restored backup, bit rot) could swap a
        source under a pin. Hashing is cheap next to a compile; each blob is hashed once per process."""
        path = self.blob(sha256)
        try:
            st = path.stat()
        except OSError:
            return False
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _VERIFIED:
            return True
        if fsutil.sha256_file(path) != sha256:
            path.unlink(missing_ok=True)
            return False
        _VERIFIED.add(key)
        return True

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


class Unreachable(HurdxenError):
    """A URL could not be fetched (network, HTTP error, missing file): the next source may have it."""


def opener(net: Network) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = []
    if net.proxy:
        handlers.append(urllib.request.ProxyHandler({"http": net.proxy, "https": net.proxy}))
    return urllib.request.build_opener(*handlers)


def unreachable(what: str, url: str, why: str, key: str) -> HurdxenError:
    return Unreachable(
        f"{what}: cannot fetch {url} ({why})",
        hint=f"override `{key}` in hurdxen.local.toml (a mirror URL or a local path), or set `proxy` under [settings]",
    )


def _too(what: str, url: str, why: str) -> HurdxenError:
    return Unreachable(
        f"{what}: download of {url} refused ({why}; nothing was kept)",
        hint="a slow or stalled server: try a mirror, or raise `download_deadline` / lower `download_min_rate` "
        "under [settings]",
    )


def stream(url: str, net: Network, sink: Callable[[bytes], None], what: str, key: str, size: int | None = None,
           limit: int = MAX_UNSIZED) -> int:  # fmt: skip
    """GET `url` into `sink`, bounded: at most `size` bytes when a pin or a signed index states it (else `limit`),
    within `net.deadline` seconds in all, averaging at least `net.min_rate` bytes/s once `net.rate_grace` seconds
    have passed, and never `net.timeout` seconds without a byte. Returns the byte count."""
    cap = size if size is not None else limit
    start = time.monotonic()
    got = 0
    try:
        # A read waits at most `timeout`, and no longer than the rate check or the deadline could allow.
        wait = max(1.0, min(float(net.timeout), net.deadline, net.rate_grace if net.min_rate else net.deadline))
        with opener(net).open(url, timeout=wait) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > cap:
                raise _too(what, url, f"the server announces {int(length)} bytes, more than the {cap} expected")
            while True:
                try:
                    chunk = resp.read1(1 << 16)
                except TimeoutError:
                    raise _too(what, url, f"no data for {wait:g} s") from None
                if not chunk:
                    break
                got += len(chunk)
                if got > cap:
                    raise _too(what, url, f"more than the {cap} bytes expected")
                sink(chunk)
                elapsed = time.monotonic() - start
                if elapsed > net.deadline:
                    raise _too(what, url, f"not done after download_deadline = {net.deadline:g} s")
                if elapsed > net.rate_grace and got / elapsed < net.min_rate:
                    raise _too(what, url, f"{got / elapsed:.0f} B/s, below download_min_rate = {net.min_rate}")
    except urllib.error.HTTPError as e:
        raise unreachable(what, url, f"HTTP {e.code} {e.reason}", key) from e
    except TimeoutError:
        raise _too(what, url, f"no answer in {wait:g} s") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if fsutil.is_disk_full(e):
            raise
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
        if isinstance(reason, TimeoutError):
            raise _too(what, url, f"no answer in {wait:g} s") from None
        raise unreachable(what, url, str(reason), key) from e
    if length is not None and length.isdigit() and got != int(length):
        raise HurdxenError(
            f"{what}: download of {url} was truncated ({got} of {length} bytes)",
            hint="try again; if it persists, the server or proxy is cutting the transfer",
        )
    return got


def download(url: str, dest_dir: Path, net: Network, what: str, key: str, size: int | None = None,
             limit: int = MAX_UNSIZED) -> tuple[Path, str]:  # fmt: skip
    """Stream `url` into a temporary file in `dest_dir` (bounded as `stream` says); return it and its sha256. On any
    refusal the temporary file is removed."""
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

            def sink(chunk: bytes) -> None:
                h.update(chunk)
                out.write(chunk)

            if parsed.scheme in ("", "file"):
                src = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else url)
                if not src.is_file():
                    raise unreachable(what, url, "no such file", key)
                cap = size if size is not None else limit
                if src.stat().st_size > cap:
                    raise _too(what, url, f"{src.stat().st_size} bytes, more than the {cap} expected")
                with open(src, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        sink(chunk)
            else:
                stream(url, net, sink, what, key, size, limit)
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


def fetch_url_pinned(cache: Cache, url: str, sha256: str, what: str, key: str, pinned_by: str = "the recipe",
                     size: int | None = None) -> Path:  # fmt: skip
    """The blob for `sha256`, downloaded from `url` when the cache lacks it: at most `size` bytes (the size the
    signed index or the lock states), and refused unless it hashes to `sha256`."""
    if cache.verified(sha256):
        return cache.blob(sha256)
    tmp, got = download(url, cache.tmpdir(), cache.network, what, key, size)
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
