"""Pinned inputs against real servers: an HTTP server in a thread, git repositories made here, a signed apt repo."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import git
import pytest
from aptrepo import AptRepo, GpgKey
from httpserver import TestServer
from tmpfs import small_tmpfs

from hurdxen.core.errors import HurdxenError
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import fetch as sources
from hurdxen.sources import git as sources_git
from hurdxen.sources.fetch import Cache, DebPin, GitPin, Network, TarballPin

GOOD = b"the good tarball\n" * 1000
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
KEY = "mig.source.url"


def cache_files(cache: Cache) -> list[str]:
    """Every file the cache holds (temporary ones included), relative to it."""
    if not cache.root.exists():
        return []
    return sorted(str(p.relative_to(cache.root)) for p in cache.root.rglob("*") if p.is_file())


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache", Network(timeout=10))


def pin(url: str, sha: str = GOOD_SHA) -> TarballPin:
    return TarballPin("mig orig tarball", url, sha, KEY)


def cannot_fetch(url: str, why: str, what: str = "mig orig tarball", key: str = KEY) -> str:
    """The rendered refusal for an input that cannot be fetched, with its hint to override `key`."""
    return (
        f"error: {what}: cannot fetch {url} ({why}) "
        f"(hint: override `{key}` in hurdxen.local.toml (a mirror URL or a local path), "
        "or set `proxy` under [settings])"
    )


# ------------------------------------------------------------------ HTTP


def test_good_file_is_cached_then_works_offline(http_server: TestServer, cache: Cache) -> None:
    url = http_server.add("/good.tar.xz", GOOD)
    path = sources.fetch_tarball(pin(url), cache)
    assert path == cache.blob(GOOD_SHA)
    assert path.read_bytes() == GOOD
    assert path.stat().st_mode & 0o777 == 0o644  # steps run as another user and must read it
    assert cache_files(cache) == [f"blobs/sha256/{GOOD_SHA}"]
    assert sources.is_cached_tarball(pin(url), cache)
    http_server.stop()
    # No server any more: a second fetch is served from the cache, also when the build is offline.
    assert sources.fetch_tarball(pin(url), cache) == path
    offline = Cache(cache.root, Network(offline=True))
    assert sources.fetch_tarball(pin(url), offline) == path
    assert http_server.hits == ["/good.tar.xz"]


def test_server_gone_says_unreachable(http_server: TestServer, cache: Cache) -> None:
    url = http_server.add("/good.tar.xz", GOOD)
    http_server.stop()
    with pytest.raises(HurdxenError) as info:
        sources.fetch_tarball(pin(url), cache)
    assert info.value.render() == cannot_fetch(url, "[Errno 111] Connection refused")
    assert cache_files(cache) == []


def test_offline_and_not_cached(cache: Cache) -> None:
    offline = Cache(cache.root, Network(offline=True))
    with pytest.raises(HurdxenError) as info:
        sources.fetch_tarball(pin("http://127.0.0.1:9/x.tar.xz"), offline)
    assert info.value.render() == (
        "error: mig orig tarball: http://127.0.0.1:9/x.tar.xz is not in the cache and the build is offline "
        "(hint: run once with network access (or drop HURDXEN_OFFLINE) so the cache fills)"
    )


def test_wrong_sha256_caches_nothing(http_server: TestServer, cache: Cache) -> None:
    bad = b"not what was pinned\n"
    url = http_server.add("/bad.tar.xz", bad)
    with pytest.raises(HurdxenError) as info:
        sources.fetch_tarball(pin(url), cache)
    assert info.value.render() == (
        f"error: mig orig tarball: sha256 of {url} is {hashlib.sha256(bad).hexdigest()}, but the recipe pins "
        f"{GOOD_SHA} (hint: the file changed or the URL is wrong; check `{KEY}` (nothing was cached))"
    )
    assert cache_files(cache) == []  # no blob, no temporary file
    assert not cache.has(GOOD_SHA)


def test_truncated_body_caches_nothing(http_server: TestServer, cache: Cache) -> None:
    url = http_server.add("/cut.tar.xz", GOOD, truncate_to=1000)
    with pytest.raises(HurdxenError) as info:
        sources.fetch_tarball(pin(url), cache)
    assert info.value.render() == (
        f"error: mig orig tarball: download of {url} was truncated (1000 of {len(GOOD)} bytes) "
        "(hint: try again; if it persists, the server or proxy is cutting the transfer)"
    )
    assert cache_files(cache) == []


def test_404_names_input_url_and_key(http_server: TestServer, cache: Cache) -> None:
    url = http_server.url + "/gone.tar.xz"
    with pytest.raises(HurdxenError) as info:
        sources.fetch_tarball(pin(url), cache)
    assert info.value.render() == cannot_fetch(url, "HTTP 404 File not found")
    assert cache_files(cache) == []


def test_stale_download_files_are_swept(http_server: TestServer, cache: Cache) -> None:
    tmp = cache.root / "tmp"
    tmp.mkdir(parents=True)
    stale, fresh, other = tmp / ".tmp-dl.killed", tmp / ".tmp-dl.running", tmp / "not-a-download"
    for f in (stale, fresh, other):
        f.write_bytes(b"partial")
    two_hours_ago = time.time() - 2 * 3600
    for f in (stale, other):
        os.utime(f, (two_hours_ago, two_hours_ago))
    url = http_server.add("/good.tar.xz", GOOD)
    sources.fetch_tarball(pin(url), cache)
    assert not stale.exists()
    assert fresh.exists() and other.exists()  # maybe another build's download in progress; not ours to judge
    # One sweep per Cache: a file that turns stale later is left for the next run.
    os.utime(fresh, (two_hours_ago, two_hours_ago))
    sources.fetch_tarball(pin(http_server.add("/other.tar.xz", b"x"), hashlib.sha256(b"x").hexdigest()), cache)
    assert fresh.exists()


def test_redirect_is_followed(http_server: TestServer, cache: Cache) -> None:
    http_server.add("/good.tar.xz", GOOD)
    url = http_server.redirect("/moved.tar.xz", "/good.tar.xz")
    assert sources.fetch_tarball(pin(url), cache).read_bytes() == GOOD
    assert http_server.hits == ["/moved.tar.xz", "/good.tar.xz"]


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_local_file(tmp_path: Path, cache: Cache, form: str) -> None:
    f = tmp_path / "local.tar.xz"
    f.write_bytes(GOOD)
    url = str(f) if form == "path" else f"file://{f}"
    assert sources.fetch_tarball(pin(url), cache).read_bytes() == GOOD
    with pytest.raises(HurdxenError, match=r"cannot fetch .*/missing.tar.xz \(no such file\)"):
        sources.fetch_tarball(pin(str(tmp_path / "missing.tar.xz"), "0" * 64), cache)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (needs root)."""
    with small_tmpfs(tmp_path / "small") as mnt:
        yield mnt


def test_full_disk_is_one_clear_line(http_server: TestServer, small_disk: Path) -> None:
    big = bytes(range(256)) * (12 * 1024)  # 3 MB: more than the disk holds
    url = http_server.add("/big.tar.xz", big)
    cache = Cache(small_disk / "cache", Network(timeout=10))
    with pytest.raises(HurdxenError) as info:
        sources.fetch_tarball(pin(url, hashlib.sha256(big).hexdigest()), cache)
    assert info.value.render() == (
        f"error: mig orig tarball: no space left on the disk holding {cache.root}/tmp (nothing partial was kept) "
        f"(hint: free some space there (`df -h {cache.root}/tmp`), or point HURDXEN_CACHE / HURDXEN_ARTIFACTS at a "
        "larger disk)"
    )
    assert cache_files(cache) == []


# ------------------------------------------------------------------ git


@pytest.fixture
def upstream(tmp_path: Path) -> tuple[Path, list[str]]:
    """A bare repository with two commits on `main`: (its path, [first, second])."""
    bare = tmp_path / "upstream.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    work = git.Repo.init(tmp_path / "work", initial_branch="main")
    with work.config_writer() as c:
        c.set_value("user", "name", "Test")
        c.set_value("user", "email", "test@example.invalid")
    commits = []
    for n in (1, 2):
        (tmp_path / "work" / "version").write_text(f"{n}\n")
        (tmp_path / "work" / "sub").mkdir(exist_ok=True)
        (tmp_path / "work" / "sub" / f"file{n}").write_text(f"file {n}\n")
        work.index.add(["version", f"sub/file{n}"])
        commits.append(work.index.commit(f"commit {n}").hexsha)
        work.git.push(str(bare), "main:main")
    return bare, commits


def gitpin(url: str, commit: str, ref: str | None = None) -> GitPin:
    return GitPin("gnumach git", url, commit, "gnumach.source.url", ref=ref)


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_git_exports_the_pinned_commit(
    upstream: tuple[Path, list[str]], cache: Cache, tmp_path: Path, form: str
) -> None:
    bare, (first, _second) = upstream
    url = str(bare) if form == "path" else f"file://{bare}"
    dest = tmp_path / "export"
    sources_git.export_git(gitpin(url, first), cache, dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["sub", "sub/file1", "version"]
    assert (dest / "version").read_text() == "1\n"
    assert sources_git.is_cached_git(gitpin(url, first), cache)
    # Short commit ids work too, and a cached commit needs no upstream any more.
    bare.rename(tmp_path / "moved-away.git")
    dest2 = tmp_path / "export2"
    sources_git.export_git(gitpin(url, first[:12]), cache, dest2)
    assert (dest2 / "version").read_text() == "1\n"


def test_git_ref_still_at_pin(upstream: tuple[Path, list[str]], cache: Cache, tmp_path: Path) -> None:
    bare, (_first, second) = upstream
    sources_git.export_git(gitpin(str(bare), second, ref="main"), cache, tmp_path / "e")
    assert (tmp_path / "e" / "version").read_text() == "2\n"


def test_git_branch_moved(upstream: tuple[Path, list[str]], cache: Cache) -> None:
    bare, (first, second) = upstream
    with pytest.raises(HurdxenError) as info:
        sources_git.fetch_git(gitpin(str(bare), first, ref="main"), cache)
    assert info.value.render() == (
        f"error: gnumach git: main in {bare} now points at {second[:12]}, the recipe pins {first[:12]} "
        "(hint: the branch moved: update the pinned commit, or drop `ref` to build the pinned commit as is)"
    )


def test_git_missing_commit(upstream: tuple[Path, list[str]], cache: Cache) -> None:
    bare, _ = upstream
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(HurdxenError) as info:
        sources_git.fetch_git(gitpin(str(bare), missing), cache)
    assert info.value.render() == (
        f"error: gnumach git: commit {missing} is not in {bare} "
        "(hint: check the pinned commit, or point `gnumach.source.url` at a mirror that has it)"
    )


def test_git_unreachable(tmp_path: Path, cache: Cache) -> None:
    url = str(tmp_path / "nothing-here.git")
    with pytest.raises(HurdxenError) as info:
        sources_git.fetch_git(gitpin(url, "0" * 40), cache)
    assert info.value.render() == cannot_fetch(
        url, f"'{url}' does not appear to be a git repository", "gnumach git", "gnumach.source.url"
    )


# ------------------------------------------------------------------ Debian packages from a signed index


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKey]:
    """A key that did not sign the archive."""
    key = GpgKey.generate(tmp_path_factory.mktemp("other-key"), "Other Archive <test@invalid>")
    yield key
    key.close()


@pytest.fixture
def repo(apt_repo: AptRepo) -> AptRepo:
    """A signed repository with one package, built for two architectures (i386 first)."""
    apt_repo.add_deb("hello-headers", "2:1.0-1", "i386", {"usr/include/hello.h": b"#define HELLO 1\n"})
    apt_repo.add_deb("hello-headers", "2:1.0-1", "amd64", {"usr/include/hello.h": b"#define HELLO 2\n"})
    apt_repo.publish(suite="testing", component="main", arch=("i386", "amd64"))
    return apt_repo


@pytest.fixture
def apt_server(repo: AptRepo, http_server: TestServer) -> str:
    return http_server.serve_dir("/debian", repo.archive)


def debpin(archive: str, keyring: Path, arch: str = "i386", sha256: str | None = None) -> DebPin:
    table = {"package": "hello-headers", "version": "2:1.0-1", "arch": arch, "suite": "testing", "archive": archive}
    extra = {"sha256": sha256} if sha256 else {}
    return DebPin.from_recipe({**table, "keyring": str(keyring), **extra}, "mig.targets.i686-gnu.headers")


def test_deb_from_signed_index(repo: AptRepo, apt_server: str, cache: Cache, http_server: TestServer) -> None:
    p = debpin(apt_server, repo.keyring_path)
    deb = sources_deb.fetch_deb(p, cache)
    assert deb.read_bytes() == repo.path_of(repo.debs[0]).read_bytes()
    assert sources_deb.is_cached_deb(p, cache)
    tree = sources_deb.extract_deb(deb, cache)
    assert (tree / "usr/include/hello.h").read_text() == "#define HELLO 1\n"
    assert "/debian/dists/testing/InRelease" in http_server.hits
    assert "/debian/dists/testing/main/binary-i386/Packages.xz" in http_server.hits
    # Cached: no network needed.
    http_server.stop()
    assert sources_deb.fetch_deb(p, Cache(cache.root, Network(offline=True))) == deb
    # The other architecture is a different package.
    assert not sources_deb.is_cached_deb(debpin(apt_server, repo.keyring_path, arch="amd64"), cache)


def test_deb_signed_by_another_key_is_refused(apt_server: str, cache: Cache, other_key: GpgKey) -> None:
    with pytest.raises(HurdxenError) as info:
        sources_deb.fetch_deb(debpin(apt_server, other_key.keyring_path), cache)
    msg = info.value.render()
    assert msg.startswith(
        f"error: {apt_server}/dists/testing/InRelease: signature check failed: "
        "signed by a key that is not in the keyring [NO_PUBKEY "
    )
    assert msg.endswith(
        f"(hint: the index is not signed by a valid key in {other_key.keyring_path}, or was altered; check the "
        "archive URL and the recipe's keyring)"
    )
    assert cache_files(cache) == []


def test_deb_missing_keyring(apt_server: str, cache: Cache, tmp_path: Path) -> None:
    with pytest.raises(HurdxenError) as info:
        sources_deb.fetch_deb(debpin(apt_server, tmp_path / "nope.gpg"), cache)
    assert info.value.render() == (
        f"error: {apt_server}/dists/testing/InRelease: keyring {tmp_path}/nope.gpg does not exist "
        "(hint: install debian-archive-keyring, or set the recipe's `keyring` to the archive's binary keyring)"
    )


def test_deb_tampered_is_refused(repo: AptRepo, apt_server: str, cache: Cache) -> None:
    i386 = repo.debs[0]
    signed = hashlib.sha256(repo.path_of(i386).read_bytes()).hexdigest()
    data = repo.tamper_deb("hello-headers", "i386").read_bytes()
    with pytest.raises(HurdxenError) as info:
        sources_deb.fetch_deb(debpin(apt_server, repo.keyring_path), cache)
    assert info.value.render() == (
        f"error: hello-headers 2:1.0-1 (i386, testing): sha256 of {apt_server}/{i386.pool_path} is "
        f"{hashlib.sha256(data).hexdigest()}, but the signed index of testing pins {signed} "
        "(hint: the file changed or the URL is wrong; check `mig.targets.i686-gnu.headers.archive` "
        "(nothing was cached))"
    )
    assert not any(f.startswith("debian/") for f in cache_files(cache))  # no record of the package
    assert not cache.has(hashlib.sha256(data).hexdigest())


def test_deb_tampered_index_is_refused(repo: AptRepo, apt_server: str, cache: Cache) -> None:
    (repo.dists / "main/binary-i386/Packages.xz").write_bytes(b"garbage")
    with pytest.raises(HurdxenError) as info:
        sources_deb.fetch_deb(debpin(apt_server, repo.keyring_path), cache)
    assert "but " + f"{apt_server}/dists/testing/InRelease pins " in info.value.render()


def test_deb_pinned_sha256_must_match(repo: AptRepo, apt_server: str, cache: Cache) -> None:
    signed = hashlib.sha256(repo.path_of(repo.debs[0]).read_bytes()).hexdigest()
    with pytest.raises(HurdxenError) as info:
        sources_deb.fetch_deb(debpin(apt_server, repo.keyring_path, sha256="f" * 64), cache)
    assert info.value.render() == (
        f"error: hello-headers 2:1.0-1 (i386, testing): the signed index lists sha256 {signed}, the recipe pins "
        f"{'f' * 64} (hint: check `mig.targets.i686-gnu.headers`: the archive carries a different build of that "
        "version)"
    )
    assert sources_deb.fetch_deb(debpin(apt_server, repo.keyring_path, sha256=signed), cache).is_file()


def test_deb_version_not_in_index(repo: AptRepo, apt_server: str, cache: Cache) -> None:
    p = DebPin.from_recipe(
        {"package": "hello-headers", "version": "2:9.9-9", "arch": "i386", "suite": "testing", "archive": apt_server}
        | {"keyring": str(repo.keyring_path)},
        "k",
    )
    offline_snapshot = Cache(cache.root, Network(timeout=10, snapshot="file:///nonexistent"))
    with pytest.raises(HurdxenError) as info:
        sources_deb.fetch_deb(p, offline_snapshot)
    assert info.value.render() == (
        f"error: hello-headers 2:9.9-9 (i386, testing): not in {apt_server} ({apt_server}/dists/testing/main/"
        "binary-i386/Packages.xz: package hello-headers 2:9.9-9 for i386 is not in the index (versions there: "
        "2:1.0-1)) nor in the snapshot service (no snapshot timestamp) "
        "(hint: `hurdxen pins update` moves `k.version` to an existing version, or set `k.snapshot`)"
    )


def test_deb_record_is_json(repo: AptRepo, apt_server: str, cache: Cache) -> None:
    sources_deb.fetch_deb(debpin(apt_server, repo.keyring_path), cache)
    (record,) = (cache.root / "debian").iterdir()
    data = json.loads(record.read_text())
    assert data["filename"] == repo.debs[0].pool_path
    assert data["size"] == repo.path_of(repo.debs[0]).stat().st_size
