"""Servers that trickle, stall after their headers, or send more than the signed size; caches whose blobs are
swapped; locks and API answers nested 100,000 deep. Each is refused with one line, in bounded time, with nothing
left in the cache's tmp dir and nothing outside the work area touched."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aptrepo import AptRepo, GpgKey
from httpserver import TestServer

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import fetch as sources
from hurdxen.sources import pinlock
from tests.hostile.harness import Canaries, refused

BODY = bytes(range(256)) * 400  # 100 KiB


def _net(**kw: object) -> sources.Network:
    base = {"timeout": 5, "deadline": 60.0, "min_rate": 0, "rate_grace": 1.0}
    return sources.Network(**{**base, **kw})  # type: ignore[arg-type]


def _clean(cache: sources.Cache) -> None:
    """Nothing half-written is left: the tmp dir is empty and no blob was stored."""
    assert not list(cache.tmpdir().iterdir()), list(cache.tmpdir().iterdir())
    blobs = cache.root / "blobs" / "sha256"
    assert not blobs.exists() or not list(blobs.iterdir())


def _fetch(cache: sources.Cache, url: str, size: int | None = None) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(HurdxenError) as e:
        sources.fetch_url_pinned(cache, url, hashlib.sha256(BODY).hexdigest(), "mig orig tarball", "mig.source.url",
                                 size=size)  # fmt: skip
    return refused(e), time.monotonic() - start


@pytest.mark.parametrize(
    ("route", "net", "words", "bound"),
    [
        ({"rate": 1000}, {"min_rate": 4096}, "B/s, below download_min_rate = 4096", 8),
        ({"stall": 30}, {"timeout": 2}, "no data for 2 s", 8),
        ({"rate": 20000}, {"deadline": 2.0}, "not done after download_deadline = 2 s", 8),
        ({"rate": 1000, "length": False}, {"min_rate": 4096}, "below download_min_rate", 8),
    ],
    ids=["trickle-1000-B/s", "stall-after-headers", "total-deadline", "trickle-without-length"],
)
def test_slow_servers_are_given_up(
    route: dict[str, object], net: dict[str, object], words: str, bound: float, http_server: TestServer,
    tmp_path: Path, canary: Canaries,
) -> None:  # fmt: skip
    url = http_server.add("/mig.orig.tar.xz", BODY, **route)
    cache = sources.Cache(tmp_path / "cache", _net(**net))
    line, took = _fetch(cache, url)
    assert words in line and "nothing was kept" in line and "download_deadline" in line, line
    assert took < bound, took
    _clean(cache)


@pytest.mark.parametrize("length", [True, False], ids=["announced", "unannounced"])
def test_more_than_the_expected_size_is_refused_while_streaming(
    length: bool, http_server: TestServer, tmp_path: Path, canary: Canaries
) -> None:
    """The signed index lists 2 KB; the server sends 20 MB: refused at the header, or at byte 2049."""
    url = http_server.add("/x.deb", BODY * 200, length=length)
    cache = sources.Cache(tmp_path / "cache", _net())
    line, took = _fetch(cache, url, size=2048)
    assert ("announces 20480000 bytes, more than the 2048 expected" if length else "more than the 2048 bytes") in line
    assert took < 10, took
    _clean(cache)


def test_a_local_file_larger_than_its_size_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(BODY)
    cache = sources.Cache(tmp_path / "cache", _net())
    line, _ = _fetch(cache, f"file://{src}", size=100)
    assert f"{len(BODY)} bytes, more than the 100 expected" in line
    _clean(cache)


# ------------------------------------------------------------------ the snapshot API and the lock


def test_a_trickling_or_deeply_nested_snapshot_api_is_bounded(http_server: TestServer) -> None:
    """`hurdxen pins update` asked /mr/ and waited forever on a trickle; a 100,000-deep answer raised
    RecursionError. Both now give no timestamp (the API only picks one), in bounded time."""
    pin = sources.DebPin("hurd", "1:0.9", "amd64", "sid", "http://127.0.0.1:9/debian", "hurd-modules.debian")
    http_server.add("/mr/binary/hurd/", b'{"result": []}' + b" " * 200_000, rate=2000)
    start = time.monotonic()
    assert sources_deb._mr_first_seen(pin, _net(min_rate=8192, timeout=2, snapshot=http_server.url)) is None
    assert time.monotonic() - start < 8
    http_server.add("/mr/binary/hurd/", b"[" * 100_000 + b"]" * 100_000)
    assert sources_deb._mr_first_seen(pin, _net(snapshot=http_server.url)) is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
        (b'{"format": "hurdxen-pins/1", "pins": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001, "nested deeper"),
        (b"[]", "not a hurdxen-pins/1 lock"),
        (b"{", "not JSON"),
        (b" " * (5 << 20), "larger than"),
    ],
    ids=["deep-list", "deep-object", "a-list", "bad-json", "huge"],
)
def test_a_hostile_lock_is_one_line(text: bytes, words: str, tmp_path: Path) -> None:
    lock = tmp_path / "pins.lock"
    lock.write_bytes(text)
    start = time.monotonic()
    with pytest.raises(HurdxenError) as e:
        pinlock.load(lock)
    assert words in refused(e) and time.monotonic() - start < 5


# ------------------------------------------------------------------ swapped cache blobs


@pytest.fixture
def two_debs(tmp_path: Path, apt_signing_key: GpgKey) -> Iterator[tuple[AptRepo, sources.Cache]]:
    with AptRepo(tmp_path / "repo", apt_signing_key) as repo:
        repo.add_deb("gnumach-dev", "2:1.8+git20221224-2", "i386", {"usr/include/mach/x.h": b"/* mach */\n"})
        repo.add_deb("grub-xen-bin", "2.06-13+deb12u2", "amd64", {"usr/lib/grub/x": b"grub\n"})
        cache = sources.Cache(tmp_path / "cache", sources.Network(offline=True), tmp_path / "recipes" / "pins.lock")
        yield repo, cache


def _pin(package: str, version: str, arch: str) -> sources.DebPin:
    return sources.DebPin(package, version, arch, "bookworm", "http://deb.debian.org/debian", "gnumach.debian")


def test_a_lock_pointing_at_another_cached_package_is_refused(two_debs: tuple[AptRepo, sources.Cache]) -> None:
    """The lock (in a pull request's reach) gives gnumach-dev the sha256 of grub-xen-bin's .deb, which is in the
    cache: the task is not "reused", and fetching says what the blob really is."""
    repo, cache = two_debs
    gnumach, grub = repo.debs
    for d in (gnumach, grub):
        data = d.path.read_bytes()
        blob = cache.blob(hashlib.sha256(data).hexdigest())
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
    pin = _pin("gnumach-dev", "2:1.8+git20221224-2", "i386")
    grub_sha = fsutil.sha256_file(grub.path)
    entry = {"package": "gnumach-dev", "version": pin.version, "arch": "i386", "sha256": grub_sha, "url": "x",
             "filename": "pool/main/g/gnumach/gnumach-dev_1.8+git20221224-2_i386.deb"}  # fmt: skip
    assert cache.lock is not None
    pinlock.write(cache.lock, {pin.lock_id: entry})
    assert not sources_deb.is_cached_deb(pin, cache)
    with pytest.raises(HurdxenError) as e:
        sources_deb.fetch_deb(pin, cache)
    line = refused(e)
    assert "the cached .deb" in line and "is grub-xen-bin 2.06-13+deb12u2 (amd64), not the pinned package" in line
    # The real blob under its own hash is accepted.
    pinlock.write(cache.lock, {pin.lock_id: {**entry, "sha256": fsutil.sha256_file(gnumach.path)}})
    assert sources_deb.is_cached_deb(pin, cache) and sources_deb.fetch_deb(pin, cache).is_file()
    # A lock entry filed under the pin but naming another package or file: refused as such.
    pinlock.write(cache.lock, {pin.lock_id: {**entry, "filename": "pool/main/g/grub2/grub-xen-bin_2.06_amd64.deb"}})
    with pytest.raises(HurdxenError) as e:
        sources_deb.fetch_deb(pin, cache)
    assert "the entry names gnumach-dev (i386, grub-xen-bin_2.06_amd64.deb), not gnumach-dev" in refused(e)


def test_a_cache_record_pointing_at_another_package_is_refused(two_debs: tuple[AptRepo, sources.Cache]) -> None:
    """The same through the cache's own record (cache/debian/*.json), which anyone who can write the cache edits."""
    repo, cache = two_debs
    _, grub = repo.debs
    data = grub.path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    cache.blob(sha).parent.mkdir(parents=True, exist_ok=True)
    cache.blob(sha).write_bytes(data)
    pin = _pin("gnumach-dev", "2:1.8+git20221224-2", "i386")
    rec = sources_deb._deb_record(cache, pin)
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps({"sha256": sha}))
    assert not sources_deb.is_cached_deb(pin, cache)
    with pytest.raises(HurdxenError) as e:
        sources_deb.fetch_deb(pin, cache)
    assert "is grub-xen-bin 2.06-13+deb12u2 (amd64), not the pinned package" in refused(e)


def test_a_served_deb_larger_than_the_signed_size(
    tmp_path: Path, apt_signing_key: GpgKey, http_server: TestServer, canary: Canaries
) -> None:
    """6 GiB were once written to the cache's tmp dir for a .deb the signed index lists at ~2 KB: now the download
    stops at the listed size."""
    with AptRepo(tmp_path / "repo", apt_signing_key) as repo:
        deb = repo.add_deb("gnumach-dev", "1.8-1", "i386", {"x": b"x"})
        repo.publish("bookworm", "main", "i386")
        base = http_server.serve_dir("/debian", repo.archive)
        http_server.add(f"/debian/{repo.path_of(deb).relative_to(repo.archive)}", BODY * 500, length=False)
        pin = sources.DebPin("gnumach-dev", "1.8-1", "i386", "bookworm", base, "gnumach.debian",
                             keyring=str(repo.keyring_path))  # fmt: skip
        cache = sources.Cache(tmp_path / "cache", _net())
        start = time.monotonic()
        with pytest.raises(HurdxenError) as e:
            sources_deb.fetch_deb(pin, cache)
        line = refused(e)
        assert f"more than the {deb.path.stat().st_size} bytes expected" in line, line
        assert time.monotonic() - start < 20
        assert not list(cache.tmpdir().iterdir())


def test_the_download_bounds_are_settings(tmp_path: Path) -> None:
    from project import copy_project

    from hurdxen.pipeline import recipes
    from hurdxen.pipeline.context import make_context

    root = copy_project(tmp_path / "project", ("recipes",), recipes=None)
    net = make_context(recipes.load(root)).cache.network
    assert (net.deadline, net.min_rate, net.rate_grace) == (1800, 16384, 15.0)
    (root / "hurdxen.local.toml").write_text("[settings]\ndownload_deadline = 120\ndownload_min_rate = 1000\n")
    net = make_context(recipes.load(root)).cache.network
    assert (net.deadline, net.min_rate) == (120, 1000)
    (root / "hurdxen.local.toml").write_text("[settings]\ndownload_deadline = 0\n")
    with pytest.raises(HurdxenError) as e:
        recipes.load(root)
    assert "settings.download_deadline" in refused(e, hint=False)
