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
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hurdxen import debindex, fsutil, safeextract
from hurdxen.errors import HurdxenError

DEFAULT_TIMEOUT = 60
# snapshot.debian.org archives Debian (/archive/debian/<ts>/) and debian-ports (/archive/debian-ports/<ts>/, whose
# pools are per architecture: pool-hurd-i386/…, as in the live ports archive). Users behind a mirror set
# `snapshot` under [settings].
DEFAULT_SNAPSHOT = "https://snapshot.debian.org"
DOWNLOAD_PREFIX = fsutil.TMP_PREFIX + "dl."  # cache/tmp/.tmp-dl.*: a download in progress
STALE_DOWNLOAD_SECONDS = 3600  # untouched this long, a download's temporary file belongs to a killed run


@dataclass(frozen=True)
class Network:
    proxy: str | None = None
    timeout: int = DEFAULT_TIMEOUT
    offline: bool = False
    snapshot: str = DEFAULT_SNAPSHOT  # base URL of the snapshot service (the fallback for Debian packages)


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
        root = Path(env) if env else Path(__file__).resolve().parent.parent / "cache"
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


def _opener(net: Network) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = []
    if net.proxy:
        handlers.append(urllib.request.ProxyHandler({"http": net.proxy, "https": net.proxy}))
    return urllib.request.build_opener(*handlers)


def _unreachable(what: str, url: str, why: str, key: str) -> HurdxenError:
    return Unreachable(
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
    if cache.verified(sha256):
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
        packed = f.tell()
        f.seek(0)
        # a mirror can serve any tree: its links are checked like a tarball's (git archive's size is the tree's)
        limits = safeextract.Limits(max_ratio=2)
        safeextract.extract_stream(f, packed, dest, f"{pin.name} at {pin.commit[:12]}", limits)


# ---------------------------------------------------------------- Debian packages
#
# A pin is looked for in the recipe's archive first, then in the snapshot service; both are verified the same way
# (keyring → signed InRelease → Packages sha256 → .deb sha256). What served is written to the lock, and the .deb to
# the content-addressed cache, so later builds need neither.
#
# snapshot.debian.org's machine-readable API (/mr/…, documented in the snapshot project's API file) is keyed by
# *source* package: /mr/binary/<pkg>/ gives the source and version, /mr/package/<src>/<ver>/binfiles/<pkg>/<binver>
# ?fileinfo=1 the file hashes (sha1) with, per hash, the archive_name and the first import ("run") that had it. Its
# documentation describes only archives with source packages (debian, debian-security) and says nothing of
# debian-ports, whose binaries have no source package of their own there: for debian-ports we rely on a timestamp
# (the recipe's `snapshot`, or the one the lock recorded when `hurdxen pins update` resolved the pin) and the
# timestamped tree /archive/debian-ports/<ts>/ with its per-architecture pools. The API only picks a timestamp;
# trust still comes from that snapshot's signed InRelease.

SNAPSHOT_TS = "%Y%m%dT%H%M%SZ"
# The snapshot service answers a timestamp with the last import at or before it. A version current when it was
# resolved shows up in an import within hours, so a few later timestamps are tried too.
SNAPSHOT_RETRIES = (timedelta(0), timedelta(hours=12), timedelta(days=2))
MR_MAX_BYTES = 8 << 20


class Unreachable(HurdxenError):
    """A URL could not be fetched (network, HTTP error, missing file): the next source may have it."""


@dataclass(frozen=True)
class Resolution:
    """Where a pinned .deb was found and how it was verified: what the lock records."""

    entry: debindex.PackageEntry
    url: str
    snapshot: str | None  # the snapshot timestamp that served it, or None for the recipe's archive
    signed_by: str
    keyring: Mapping[str, Any]


def _deb_record(cache: Cache, pin: DebPin) -> Path:
    ident = fsutil.identity(pin.archive, pin.suite, pin.component, pin.package, pin.version, pin.arch)
    return cache.root / "debian" / f"{pin.package}_{pin.version}_{pin.arch}.{ident[:16]}.json"


def _read_record(rec: Path) -> dict[str, Any] | None:
    """The cached index answer for a package, or None when absent or damaged (then the index is asked again)."""
    try:
        known = json.loads(rec.read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(known, dict) and isinstance(known.get("sha256"), str) and len(known["sha256"]) == 64
    return known if ok else None


def _known_sha256(pin: DebPin, cache: Cache) -> str | None:
    from hurdxen import pinlock

    if pin.sha256:
        return pin.sha256
    locked = pinlock.lookup(cache.lock, pin) if cache.lock else None
    if locked:
        return str(locked["sha256"])
    known = _read_record(_deb_record(cache, pin))
    return str(known["sha256"]) if known is not None else None


def is_cached_deb(pin: DebPin, cache: Cache) -> bool:
    sha = _known_sha256(pin, cache)
    return sha is not None and cache.has(sha)


def fetch_deb(pin: DebPin, cache: Cache) -> Path:
    """The .deb for `pin`, verified: the suite's InRelease signature, the Packages index hash, the .deb hash.

    From the cache when the lock (or an earlier fetch) names its sha256; else from the archive, then the snapshot."""
    from hurdxen import pinlock

    rec = _deb_record(cache, pin)
    sha = _known_sha256(pin, cache)
    if sha and cache.verified(sha):  # re-hashed: an edited cached blob is refetched
        if cache.lock and pinlock.lookup(cache.lock, pin) is None and pinlock.committed(cache.lock, pin):
            _fill_lock(pin, cache, rec, sha)
        return cache.blob(sha)
    res = resolve_deb(pin, cache, strict=sha is None)
    if sha and sha != res.entry.sha256:
        by = "the recipe" if pin.sha256 else f"the lock ({cache.lock})"
        raise HurdxenError(
            f"{pin.name}: the signed index lists sha256 {res.entry.sha256}, {by} pins {sha}",
            hint=f"check `{pin.key}`: the archive carries a different build of that version"
            if pin.sha256
            else "the archive carries a different build of that version; `hurdxen pins update` re-resolves it",
        )
    path = fetch_url_pinned(
        cache, res.url, res.entry.sha256, pin.name, pin.key + ".archive", pinned_by=f"the signed index of {pin.suite}"
    )
    info = lock_entry(pin, res)
    fsutil.write_json_atomic(rec, info)
    if cache.lock and pinlock.committed(cache.lock, pin):
        pinlock.record(cache.lock, pin, info)
    return path


def _fill_lock(pin: DebPin, cache: Cache, rec: Path, sha: str) -> None:
    """Record a cached pin in the lock. A record from before the lock existed lacks where the .deb came from and who
    signed it: resolve once more (online) to learn it; offline, the lock waits for the next online build."""
    from hurdxen import pinlock

    info = _read_record(rec) or {}
    if "url" not in info:
        if cache.network.offline:
            return
        try:
            res = resolve_deb(pin, cache, strict=False)
        except HurdxenError:
            return
        if res.entry.sha256 != sha:
            return
        info = lock_entry(pin, res)
        fsutil.write_json_atomic(rec, info)
    assert cache.lock is not None
    pinlock.record(cache.lock, pin, info)


def lock_entry(pin: DebPin, res: Resolution) -> dict[str, Any]:
    """The lock's (and the cache record's) description of a resolved pin."""
    return {
        "package": pin.package,
        "version": res.entry.version,
        "arch": pin.arch,
        "suite": pin.suite,
        "component": pin.component,
        "archive": pin.archive,
        "filename": res.entry.filename,
        "url": res.url,
        "snapshot": res.snapshot,
        "sha256": res.entry.sha256,
        "size": res.entry.size,
        "signed_by": res.signed_by,
        "keyring": dict(res.keyring),
        # When a live archive served it: a snapshot taken around then carries it too, once the archive drops it.
        "resolved": datetime.now(UTC).strftime(SNAPSHOT_TS) if res.snapshot is None else res.snapshot,
    }


def resolve_deb(pin: DebPin, cache: Cache, *, strict: bool = True, newest: bool = False) -> Resolution:
    """Find `pin` (or, with `newest`, the package's highest version) in the archive's signed index, else in the
    snapshot service. `strict`: refuse an expired live index (apt's Valid-Until check)."""
    try:
        return resolve_at(pin, cache, pin.archive.rstrip("/"), None, strict=strict, newest=newest)
    except (debindex.PackageMissing, Unreachable) as e:
        live = e
    if newest:
        raise live
    stamps, why = _snapshot_stamps(pin, cache)
    last: HurdxenError | None = None
    for stamp in stamps:
        base = f"{cache.network.snapshot.rstrip('/')}/archive/{snapshot_archive(pin)}/{stamp}"
        try:
            return resolve_at(pin, cache, base, stamp)
        except (debindex.PackageMissing, Unreachable) as e:
            # A snapshot that answered but lacks the version says more than a later timestamp that does not exist.
            if last is None or not isinstance(last, debindex.PackageMissing):
                last = e
    snap = last.message if last else why
    raise HurdxenError(
        f"{pin.name}: not in {pin.archive} ({live.message}) nor in the snapshot service ({snap})",
        hint=f"`hurdxen pins update` moves `{pin.version_key or pin.key}` to an existing version, "
        f"or set `{pin.key}.snapshot`",
    )


def snapshot_archive(pin: DebPin) -> str:
    """The snapshot service's name for the pin's archive: the archive URL's last path segment (debian,
    debian-ports, debian-security)."""
    name = urllib.parse.urlparse(pin.archive).path.rstrip("/").rsplit("/", 1)[-1]
    return name or "debian"


def _snapshot_stamps(pin: DebPin, cache: Cache) -> tuple[list[str], str]:
    from hurdxen import pinlock

    locked = pinlock.lookup(cache.lock, pin) if cache.lock else None
    stamp = pin.snapshot or (locked or {}).get("snapshot") or (locked or {}).get("resolved")
    if not stamp:
        stamp = _mr_first_seen(pin, cache.network)
    if not stamp:
        return [], (
            f"no snapshot timestamp: set `{pin.key}.snapshot`"
            + ("" if snapshot_archive(pin) == "debian" else " (the snapshot API does not index debian-ports)")
        )
    try:
        t = datetime.strptime(stamp, SNAPSHOT_TS).replace(tzinfo=UTC)
    except ValueError:
        raise HurdxenError(
            f"{pin.key}.snapshot: {stamp!r} is not a snapshot timestamp", hint="write it as YYYYMMDDTHHMMSSZ"
        ) from None
    return [(t + d).strftime(SNAPSHOT_TS) for d in SNAPSHOT_RETRIES], ""


def _get_json(url: str, net: Network) -> Any:
    if net.offline:
        return None
    try:
        with _opener(net).open(url, timeout=net.timeout) as resp:
            data = resp.read(MR_MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return None
    if len(data) > MR_MAX_BYTES:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _mr_first_seen(pin: DebPin, net: Network) -> str | None:
    """The first snapshot import that carried the pin's .deb, from the snapshot API (Debian's archive only)."""
    if snapshot_archive(pin) != "debian":
        return None
    base = f"{net.snapshot.rstrip('/')}/mr"
    q = urllib.parse.quote
    found = _get_json(f"{base}/binary/{q(pin.package, safe='')}/", net)
    if not isinstance(found, dict) or not isinstance(found.get("result"), list):
        return None
    for b in found["result"]:
        if not isinstance(b, dict) or b.get("binary_version") != pin.version:
            continue
        src, srcver = str(b.get("source", "")), str(b.get("version", ""))
        files = _get_json(
            f"{base}/package/{q(src, safe='')}/{q(srcver, safe='')}/binfiles/{q(pin.package, safe='')}/"
            f"{q(pin.version, safe='')}?fileinfo=1",
            net,
        )
        if not isinstance(files, dict):
            return None
        runs = []
        info = files.get("fileinfo") if isinstance(files.get("fileinfo"), dict) else {}
        for f in files.get("result") or []:
            if isinstance(f, dict) and f.get("architecture") in (pin.arch, "all"):
                for seen in info.get(f.get("hash"), []) if isinstance(info, dict) else []:
                    if isinstance(seen, dict) and seen.get("archive_name") == "debian":
                        runs.append(str(seen.get("run", "")))
        runs = [r for r in runs if len(r) == 16]
        return min(runs) if runs else None
    return None


def keyring_for(pin: DebPin, cache: Cache) -> tuple[Path, dict[str, Any]]:
    """The keyring file that must have signed the pin's index, and its description for the lock."""
    if pin.keyring_pin is None:
        path = Path(pin.keyring)
        desc: dict[str, Any] = {"path": pin.keyring}
    else:
        kp = pin.keyring_pin
        tree = extract_deb(fetch_deb(kp, cache), cache)
        path = (tree / pin.keyring_file).resolve()
        if ".." in Path(pin.keyring_file).parts or not path.is_relative_to(tree.resolve()) or not path.is_file():
            raise HurdxenError(
                f"{pin.key}.keyring_package: {kp.package} {kp.version} has no file {pin.keyring_file}",
                hint="`file` names the keyring inside the package, e.g. usr/share/keyrings/<name>.gpg (dpkg -c)",
            )
        desc = {"package": kp.package, "version": kp.version, "file": pin.keyring_file}
    if path.is_file():
        desc["fingerprints"] = list(debindex.keyring_fingerprints(path))
    return path, desc


def resolve_at(
    pin: DebPin, cache: Cache, base: str, stamp: str | None, *, strict: bool = True, newest: bool = False
) -> Resolution:
    """Resolve `pin` in the archive tree at `base` (the live archive, or a snapshot of it taken at `stamp`)."""
    key = "settings.snapshot" if stamp else pin.key + ".archive"
    dists = f"{base}/dists/{pin.suite}"
    where = f"{dists}/InRelease"
    keyring, keyring_desc = keyring_for(pin, cache)
    tmp, _ = download(where, cache.tmpdir(), cache.network, f"{pin.name} index", key)
    try:
        signed = debindex.verify_inrelease_signed(tmp.read_bytes(), keyring, where)
    except HurdxenError as e:
        if pin.keyring_pin is None:
            raise
        kp = pin.keyring_pin
        raise HurdxenError(
            e.message,
            hint=f"pin a newer `{pin.key}.keyring_package`: {kp.package} {kp.version} lacks the key (keys rotate)",
        ) from None
    finally:
        tmp.unlink()
    release = debindex.parse_release(signed.text, where)
    if stamp is not None:
        debindex.check_fresh(release, datetime.strptime(stamp, SNAPSHOT_TS).replace(tzinfo=UTC), where, snapshot=True)
    elif strict:
        debindex.check_fresh(release, datetime.now(UTC), where)
    last: HurdxenError | None = None
    for suffix in (".xz", ".gz", ""):
        rel = f"{pin.component}/binary-{pin.arch}/Packages{suffix}"
        try:
            sha, _size = debindex.release_checksum(signed.text, rel, where)
        except HurdxenError as e:
            last = e
            continue
        index = fetch_url_pinned(cache, f"{dists}/{rel}", sha, f"{pin.name} index", key, pinned_by=f"{where}")
        text = debindex.decompress(rel, index.read_bytes()).decode(errors="replace")
        if newest:
            entry = debindex.newest_package(text, pin.package, pin.arch, f"{dists}/{rel}")
        else:
            entry = debindex.find_package(text, pin.package, pin.version, pin.arch, f"{dists}/{rel}")
        return Resolution(entry, f"{base}/{entry.filename}", stamp, signed.signer, keyring_desc)
    assert last is not None
    raise last


def extract_deb(deb: Path, cache: Cache) -> Path:
    """The unpacked data of a .deb, cached by the .deb's hash (dpkg-deb -x semantics)."""
    sha = fsutil.sha256_file(deb)
    final = cache.root / "extracted" / sha
    if final.is_dir():
        return final
    with fsutil.atomic_dir(final) as tmp:
        safeextract.extract_deb(deb, tmp, f"Debian package {deb}")
    return final
