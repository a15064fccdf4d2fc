"""Debian packages pinned at an exact version, verified through their suite's signed index: from the recipe's
archive first, then the snapshot service; what was resolved is recorded so later builds need neither."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil, safeextract
from hurdxen.core.errors import HurdxenError, printable
from hurdxen.sources import debindex
from hurdxen.sources.fetch import Cache, DebPin, Network, Unreachable, download, fetch_url_pinned, stream

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
MAX_INRELEASE = 32 << 20  # Debian's largest is a few hundred KB


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


def known_sha256(pin: DebPin, cache: Cache) -> str | None:
    from hurdxen.sources import pinlock

    if pin.sha256:
        return pin.sha256
    locked = pinlock.lookup(cache.lock, pin) if cache.lock else None
    if locked:
        return str(locked["sha256"])
    known = _read_record(_deb_record(cache, pin))
    return str(known["sha256"]) if known is not None else None


def is_cached_deb(pin: DebPin, cache: Cache) -> bool:
    """The pin's .deb is in the cache and is that package (else the task runs, and fetch_deb says what is wrong)."""
    sha = known_sha256(pin, cache)
    if sha is None or not cache.has(sha):
        return False
    try:
        check_identity(cache.blob(sha), pin, "the cached")
    except HurdxenError:
        return False
    return True


def check_identity(deb: Path, pin: DebPin, which: str) -> None:
    """The package is what the pin names — its control file's Package, Version and Architecture — not merely a
    blob whose hash some record (a lock entry in a pull request's reach, a cache record) pointed at."""
    ctl = safeextract.deb_control(deb, f"{pin.name}: {which} .deb {deb.name[:16]}")
    got = (ctl.get("Package", "?"), ctl.get("Version", "?"), ctl.get("Architecture", "?"))
    if got[0] != pin.package or got[1] != pin.version or got[2] not in (pin.arch, "all"):
        raise HurdxenError(
            f"{pin.name}: {which} .deb {deb.name[:16]}… is {printable(got[0], 80)} {printable(got[1], 80)} "
            f"({printable(got[2], 40)}), not the pinned package",
            hint="the sha256 in recipes/pins.lock (or the recipe) names another package: restore the lock from git "
            "or run `hurdxen pins update`",
        )


def fetch_deb(pin: DebPin, cache: Cache) -> Path:
    """The .deb for `pin`, verified: the suite's InRelease signature, the Packages index hash, the .deb hash.

    From the cache when the lock (or an earlier fetch) names its sha256; else from the archive, then the snapshot."""
    from hurdxen.sources import pinlock

    rec = _deb_record(cache, pin)
    sha = known_sha256(pin, cache)
    if sha and cache.verified(sha):  # re-hashed: an edited cached blob is refetched
        check_identity(cache.blob(sha), pin, "the cached")
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
        cache, res.url, res.entry.sha256, pin.name, pin.key + ".archive", pinned_by=f"the signed index of {pin.suite}",
        size=res.entry.size,
    )  # fmt: skip
    check_identity(path, pin, "the downloaded")
    info = lock_entry(pin, res)
    fsutil.write_json_atomic(rec, info)
    if cache.lock and pinlock.committed(cache.lock, pin):
        pinlock.record(cache.lock, pin, info)
    return path


def _fill_lock(pin: DebPin, cache: Cache, rec: Path, sha: str) -> None:
    """Record a cached pin in the lock. A record from before the lock existed lacks where the .deb came from and who
    signed it: resolve once more (online) to learn it; offline, the lock waits for the next online build."""
    from hurdxen.sources import pinlock

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


def manifest_record(pin: DebPin, deb: Path, cache: Cache) -> dict[str, Any]:
    """What a stage manifest records of a Debian package it used — the one record, whatever the stage: the package,
    version, architecture and suite the recipe pins and the sha256 of the bytes used. Where they came from is a local
    fact, kept apart as `archive` (the recipe's archive) and `fetched_from` (the URL that served the .deb, and the
    snapshot when one did, as the lock recorded it); bundles and stage-cache entries leave both out."""
    record: dict[str, Any] = {
        "package": pin.package,
        "version": pin.version,
        "arch": pin.arch,
        "suite": pin.suite,
        "sha256": fsutil.sha256_file(deb),
        "archive": pin.archive,
    }
    from hurdxen.sources import pinlock

    locked = pinlock.lookup(cache.lock, pin) if cache.lock else None
    known = locked or _read_record(_deb_record(cache, pin)) or {}
    if isinstance(known.get("url"), str) and known.get("sha256") == record["sha256"]:
        served = {"url": known["url"]}
        if isinstance(known.get("snapshot"), str):
            served["snapshot"] = known["snapshot"]
        record["fetched_from"] = served
    return record


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
    snap = _reason(last, pin) if last else why
    raise HurdxenError(
        f"{pin.name}: not in {pin.archive} ({_reason(live, pin)}) nor in the snapshot service ({snap})",
        hint=f"`hurdxen pins update` moves `{pin.version_key or pin.key}` to an existing version, "
        f"or set `{pin.key}.snapshot`",
    )


def _reason(e: HurdxenError, pin: DebPin) -> str:
    """A nested error without the pin's name, which the outer message already starts with."""
    for prefix in (f"{pin.name} index: ", f"{pin.name}: "):
        if e.message.startswith(prefix):
            return e.message[len(prefix) :]
    return e.message


def snapshot_archive(pin: DebPin) -> str:
    """The snapshot service's name for the pin's archive: the archive URL's last path segment (debian,
    debian-ports, debian-security)."""
    name = urllib.parse.urlparse(pin.archive).path.rstrip("/").rsplit("/", 1)[-1]
    return name or "debian"


def _snapshot_stamps(pin: DebPin, cache: Cache) -> tuple[list[str], str]:
    from hurdxen.sources import pinlock

    locked = pinlock.lookup(cache.lock, pin) if cache.lock else None
    stamp = pin.snapshot or (locked or {}).get("snapshot") or (locked or {}).get("resolved")
    if not stamp:
        stamp = _mr_first_seen(pin, cache.network)
    if not stamp:
        return [], (
            "no snapshot timestamp"  # the hint says where to set one
            + ("" if snapshot_archive(pin) == "debian" else ": the snapshot API does not index debian-ports")
        )
    try:
        t = datetime.strptime(stamp, SNAPSHOT_TS).replace(tzinfo=UTC)
    except ValueError:
        raise HurdxenError(
            f"{pin.key}.snapshot: {stamp!r} is not a snapshot timestamp", hint="write it as YYYYMMDDTHHMMSSZ"
        ) from None
    return [(t + d).strftime(SNAPSHOT_TS) for d in SNAPSHOT_RETRIES], ""


def _get_json(url: str, net: Network) -> Any:
    """A snapshot API answer, or None (it only picks a timestamp): bounded in size, time and nesting."""
    if net.offline:
        return None
    data = bytearray()
    try:
        stream(url, net, data.extend, "snapshot API", "settings.snapshot", limit=MR_MAX_BYTES)
        return fsutil.loads_json_bounded(bytes(data))
    except (HurdxenError, ValueError):
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
    tmp, _ = download(where, cache.tmpdir(), cache.network, f"{pin.name} index", key, limit=MAX_INRELEASE)
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
            sha, size = debindex.release_checksum(signed.text, rel, where)
        except HurdxenError as e:
            last = e
            continue
        index = fetch_url_pinned(cache, f"{dists}/{rel}", sha, f"{pin.name} index", key, pinned_by=where, size=size)
        packages = debindex.load_index(rel, index.read_bytes(), sha)
        if newest:
            entry = debindex.newest_package(packages, pin.package, pin.arch, f"{dists}/{rel}")
        else:
            entry = debindex.find_package(packages, pin.package, pin.version, pin.arch, f"{dists}/{rel}")
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
