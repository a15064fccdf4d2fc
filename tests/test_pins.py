"""Inputs that last: the snapshot fallback, the pins lock, `hurdxen pins update`, keyring pins and index freshness —
against real signed apt archives and a snapshot-shaped server on 127.0.0.1 (tests/aptrepo.py, tests/httpserver.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aptrepo import AptRepo, GpgKey
from elfstandins import ElfFactory, elves
from httpserver import TestServer
from project import Project

from hurdxen import pins
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import recipes
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import pinlock
from hurdxen.sources.fetch import Cache, DebPin, Network

__all__ = ["elves"]

STAMP = "20231115T000000Z"  # a day after the test archives' first Date (1700000000 = 2023-11-14 22:13 UTC)
DAY = 86400
VARIANT = "hurd-modules.variants.hurd-i386.debian"


def ports_pin(archive: str, keyring: Path | None, version: str, **extra: Any) -> DebPin:
    table = {"archive": archive, "suite": "unstable", "arch": "hurd-i386"} | (
        {"keyring": str(keyring)} if keyring else {}
    )
    return DebPin.from_recipe({**table, "packages": {"libc0.3": version}, **extra}, VARIANT, package="libc0.3")


def commit_recipe(root: Path, archive: str, version: str) -> None:
    """The recipe a pin of `ports_pin` comes from: builds record in the lock only what the committed recipes say."""
    (root / "recipes").mkdir(exist_ok=True)
    (root / "recipes" / "hurd-modules.toml").write_text(
        f'[variants.hurd-i386.debian]\narchive = "{archive}"\npackages = {{ "libc0.3" = "{version}" }}\n'
    )


def point_recipe_at(proj: Project, archive: str, keyring: Path, **extra: str) -> None:
    """Edit the copy's committed hurd-modules recipe (not an overlay: overrides are local and never locked)."""
    recipe = proj.root / "recipes" / "hurd-modules.toml"
    more = "".join(f'\n{k} = "{v}"' for k, v in extra.items())
    # hurd-i386 is built from source by default: its Debian pins are selected with `source = "debian"`
    text = recipe.read_text().replace("http://deb.debian.org/debian-ports", archive)
    text = text.replace('source = "build"', 'source = "debian"')
    recipe.write_text(re.sub(r"^keyring_package = .*$", f'keyring = "{keyring}"{more}', text, flags=re.M))


def cache_for(tmp_path: Path, srv: TestServer, offline: bool = False) -> Cache:
    net = Network(timeout=10, offline=offline, snapshot=srv.url + "/snap")
    return Cache(tmp_path / "cache", net, tmp_path / "recipes" / "pins.lock")


@pytest.fixture
def ports(tmp_path: Path, apt_signing_key: GpgKey) -> Iterator[AptRepo]:
    """A debian-ports-shaped archive (pool-hurd-i386/) that had libc0.3 2.41-6, was snapshotted at STAMP, and has
    since moved on to 2.42-1 (dropping 2.41-6 at once, as debian-ports does)."""
    with AptRepo(tmp_path / "ports", apt_signing_key, ports=True) as repo:
        repo.valid_until = repo.date + 7 * DAY
        repo.add_deb("libc0.3", "2.41-6", "hurd-i386", {"lib/ld.so.1": b"ld.so (Debian GLIBC 2.41-6)\n"})
        repo.publish("unstable", "main", "hurd-i386")
        repo.snapshot(tmp_path / "snapshots", "debian-ports", STAMP)
        repo.drop("libc0.3", "2.41-6")
        repo.add_deb("libc0.3", "2.42-1", "hurd-i386", {"lib/ld.so.1": b"ld.so (Debian GLIBC 2.42-1)\n"})
        repo.date, repo.valid_until = int(time.time()), int(time.time()) + 7 * DAY
        repo.publish("unstable", "main", "hurd-i386")
        yield repo


@pytest.fixture
def served(ports: AptRepo, http_server: TestServer, tmp_path: Path) -> str:
    http_server.serve_dir("/debian-ports", ports.archive)
    http_server.serve_dir("/snap", tmp_path / "snapshots")
    return http_server.url + "/debian-ports"


def test_dropped_version_comes_from_the_snapshot_and_lands_in_the_lock(
    ports: AptRepo, served: str, http_server: TestServer, tmp_path: Path
) -> None:
    cache = cache_for(tmp_path, http_server)
    pin = ports_pin(served, ports.keyring_path, "2.41-6", snapshot=STAMP)
    commit_recipe(tmp_path, served, "2.41-6")
    deb = sources_deb.fetch_deb(pin, cache)
    snap = f"/snap/archive/debian-ports/{STAMP}"
    assert f"{snap}/dists/unstable/InRelease" in http_server.hits  # the snapshot's own signed index
    assert "/debian-ports/dists/unstable/InRelease" in http_server.hits  # the archive was asked first
    want = tmp_path / "snapshots" / "archive" / "debian-ports" / STAMP / "pool-hurd-i386/main/libc/libc0.3"
    assert deb.read_bytes() == (want / "libc0.3_2.41-6_hurd-i386.deb").read_bytes()
    (entry,) = pinlock.load(cache.lock).values()  # type: ignore[arg-type]
    assert entry["url"] == f"{http_server.url}{snap}/pool-hurd-i386/main/libc/libc0.3/libc0.3_2.41-6_hurd-i386.deb"
    assert entry["snapshot"] == STAMP and entry["version"] == "2.41-6"
    assert entry["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest() and entry["size"] == deb.stat().st_size
    assert entry["signed_by"] == ports.key.fingerprint
    assert entry["keyring"] == {"path": str(ports.keyring_path), "fingerprints": [ports.key.fingerprint]}
    # The snapshot's index expired years ago (Valid-Until = Date + 7 days): judged at the snapshot's time, it passes.
    # Offline afterwards, from the lock and the cache, even with a fresh cache record directory.
    http_server.stop()
    for d in (tmp_path / "cache" / "debian").iterdir():
        d.unlink()
    assert sources_deb.fetch_deb(pin, cache_for(tmp_path, http_server, offline=True)) == deb
    assert sources_deb.is_cached_deb(pin, cache_for(tmp_path, http_server, offline=True))


def test_the_lock_supplies_the_snapshot_timestamp(
    ports: AptRepo, served: str, http_server: TestServer, tmp_path: Path
) -> None:
    """A pin the update command resolved from the live archive records when; once the archive drops it, that time
    finds it in the snapshot (the snapshot API does not cover debian-ports)."""
    lock = tmp_path / "recipes" / "pins.lock"
    pin = ports_pin(served, ports.keyring_path, "2.41-6")
    commit_recipe(tmp_path, served, "2.41-6")
    pinlock.write(lock, {pin.lock_id: {"version": "2.41-6", "sha256": "0" * 64, "url": "x", "resolved": STAMP}})
    with pytest.raises(HurdxenError, match=r"the lock .* pins 0000"):  # the lock's sha256 is checked too
        sources_deb.fetch_deb(pin, cache_for(tmp_path, http_server))
    good = hashlib.sha256(ports.build_dir.joinpath("libc0.3_2.41-6_hurd-i386.deb").read_bytes()).hexdigest()
    pinlock.write(lock, {pin.lock_id: {"version": "2.41-6", "sha256": good, "url": "x", "resolved": STAMP}})
    assert sources_deb.fetch_deb(pin, cache_for(tmp_path, http_server)).is_file()
    assert pinlock.load(lock)[pin.lock_id]["snapshot"] == STAMP


def test_a_pin_cached_before_the_lock_existed_is_locked_once_online(
    ports: AptRepo, served: str, http_server: TestServer, tmp_path: Path
) -> None:
    """A cache record from before the lock (filename, sha256, size only) never becomes an incomplete lock entry."""
    pin = ports_pin(served, ports.keyring_path, "2.42-1")
    commit_recipe(tmp_path, served, "2.42-1")
    cache = cache_for(tmp_path, http_server)
    sources_deb.fetch_deb(pin, cache)
    assert cache.lock is not None
    entry = pinlock.load(cache.lock)[pin.lock_id]
    (record,) = (tmp_path / "cache" / "debian").iterdir()
    record.write_text(json.dumps({k: entry[k] for k in ("filename", "sha256", "size")}))
    cache.lock.unlink()
    sources_deb.fetch_deb(pin, cache_for(tmp_path, http_server, offline=True))
    assert not cache.lock.exists()  # offline: nothing to say where it came from yet
    sources_deb.fetch_deb(pin, cache)
    assert pinlock.load(cache.lock)[pin.lock_id]["url"] == entry["url"]


def test_an_overridden_archive_is_not_locked(
    ports: AptRepo, served: str, http_server: TestServer, tmp_path: Path
) -> None:
    """A mirror from an overlay (or a version from the command line) is one machine's fact, not the project's."""
    commit_recipe(tmp_path, "http://deb.debian.org/debian-ports", "2.42-1")
    cache = cache_for(tmp_path, http_server)
    assert sources_deb.fetch_deb(ports_pin(served, ports.keyring_path, "2.42-1"), cache).is_file()
    assert cache.lock is not None and not cache.lock.exists()


def test_gone_from_archive_and_snapshot_names_the_update_command(
    ports: AptRepo, served: str, http_server: TestServer, tmp_path: Path
) -> None:
    pin = ports_pin(served, ports.keyring_path, "2.40-1", snapshot=STAMP)
    with pytest.raises(HurdxenError) as info:
        sources_deb.fetch_deb(pin, cache_for(tmp_path, http_server))
    msg = info.value.render()
    assert msg.startswith(f"error: libc0.3 2.40-1 (hurd-i386, unstable): not in {served} (")
    assert "nor in the snapshot service (" in msg and "versions there: 2.41-6" in msg
    assert msg.endswith(
        f'(hint: `hurdxen pins update` moves `{VARIANT}.packages."libc0.3"` to an existing version, '
        f"or set `{VARIANT}.snapshot`)"
    )
    assert "\n" not in msg


def test_debian_archive_timestamp_from_the_snapshot_api(
    apt_repo: AptRepo, http_server: TestServer, tmp_path: Path
) -> None:
    """For Debian's own archive the machine-readable API (/mr/) says when snapshot first saw the file."""
    apt_repo.add_deb("gnumach-dev", "2:1.8-1", "i386", {"usr/include/mach.h": b"/* 1 */\n"})
    apt_repo.publish("bookworm", "main", "i386")
    apt_repo.snapshot(tmp_path / "snapshots", "debian", STAMP)
    apt_repo.drop("gnumach-dev", "2:1.8-1")
    apt_repo.add_deb("gnumach-dev", "2:1.8-2", "i386", {"usr/include/mach.h": b"/* 2 */\n"})
    apt_repo.publish("bookworm", "main", "i386")
    http_server.serve_dir("/debian", apt_repo.archive)
    http_server.serve_dir("/snap/archive", tmp_path / "snapshots" / "archive")
    sha1 = "4955b5f663b9dccc84d7c264da9c483330ed3fdf"
    http_server.add(
        "/snap/mr/binary/gnumach-dev/",
        json.dumps({"result": [{"binary_version": "2:1.8-1", "source": "gnumach", "version": "2:1.8-1"}]}).encode(),
    )
    http_server.add(
        "/snap/mr/package/gnumach/2%3A1.8-1/binfiles/gnumach-dev/2%3A1.8-1",
        json.dumps(
            {
                "result": [{"architecture": "i386", "hash": sha1}],
                "fileinfo": {sha1: [{"archive_name": "debian", "run": STAMP, "name": "gnumach-dev_1.8-1_i386.deb"}]},
            }
        ).encode(),
    )
    table = {"package": "gnumach-dev", "version": "2:1.8-1", "arch": "i386", "suite": "bookworm"}
    pin = DebPin.from_recipe(
        {**table, "archive": http_server.url + "/debian", "keyring": str(apt_repo.keyring_path)},
        "mig.targets.i686-gnu.headers",
    )
    deb = sources_deb.fetch_deb(pin, cache_for(tmp_path, http_server))
    assert f"/snap/archive/debian/{STAMP}/dists/bookworm/InRelease" in http_server.hits
    assert sources_deb.extract_deb(deb, cache_for(tmp_path, http_server)).joinpath(
        "usr/include/mach.h"
    ).read_bytes() == (b"/* 1 */\n")


def test_expired_live_index_refused_when_resolving(
    ports: AptRepo, served: str, http_server: TestServer, tmp_path: Path
) -> None:
    ports.date, ports.valid_until = int(time.time()) - 30 * DAY, int(time.time()) - 23 * DAY
    ports.write_release()
    pin = ports_pin(served, ports.keyring_path, "2.42-1")
    with pytest.raises(HurdxenError) as info:
        pins.resolve_newest(pin, cache_for(tmp_path, http_server), None)
    msg = info.value.render()
    assert msg.startswith(f"error: {served}/dists/unstable/InRelease: the index expired at ")
    assert "refused as apt does" in msg
    # The snapshot of that time is judged at its own time, with its signature still required.
    res, source = pins.resolve_newest(pin, cache_for(tmp_path, http_server), STAMP)
    assert (res.entry.version, source) == ("2.41-6", f"snapshot {STAMP}")
    (tmp_path / "snapshots/archive/debian-ports" / STAMP / "dists/unstable/InRelease").write_bytes(b"unsigned\n")
    with pytest.raises(HurdxenError, match="is not clearsigned"):
        pins.resolve_newest(pin, cache_for(tmp_path, http_server), STAMP)


# ------------------------------------------------------------------ keyring rotation


@contextlib.contextmanager
def rotated_keyrings(apt_repo: AptRepo, tmp_path: Path, file: str) -> Iterator[tuple[GpgKey, GpgKey]]:
    """An old and a new ports key, each shipped by a version of `test-ports-keyring` (2024.1, 2025.1) in `apt_repo`."""
    old, new = GpgKey.generate(tmp_path / "k-old"), GpgKey.generate(tmp_path / "k-new")
    try:
        for version, key in (("2024.1", old), ("2025.1", new)):
            apt_repo.add_deb("test-ports-keyring", version, "all", {file: key.keyring_path.read_bytes()})
        apt_repo.publish("sid", "main", "all")
        yield old, new
    finally:
        old.close()
        new.close()


def test_keyring_rotation(apt_repo: AptRepo, http_server: TestServer, tmp_path: Path) -> None:
    """The ports index is signed by a new key; the keyring package pinned from Debian's archive decides."""
    with (
        rotated_keyrings(apt_repo, tmp_path, "usr/share/keyrings/ports.gpg") as (_old, new),
        AptRepo(tmp_path / "ports", new, ports=True) as ports,
    ):
        ports.add_deb("libc0.3", "2.42-1", "hurd-i386", {"lib/ld.so.1": b"x"})
        ports.publish("unstable", "main", "hurd-i386")
        http_server.serve_dir("/debian", apt_repo.archive)
        http_server.serve_dir("/debian-ports", ports.archive)

        def pin(version: str) -> DebPin:
            kp = {
                "package": "test-ports-keyring",
                "version": version,
                "suite": "sid",
                "archive": http_server.url + "/debian",
                "keyring": str(apt_repo.keyring_path),  # Debian's archive key verifies the keyring package
                "file": "usr/share/keyrings/ports.gpg",
            }
            return ports_pin(http_server.url + "/debian-ports", None, "2.42-1", keyring_package=kp)

        with pytest.raises(HurdxenError) as info:
            sources_deb.fetch_deb(pin("2024.1"), cache_for(tmp_path, http_server))
        msg = info.value.render()
        assert "signed by a key that is not in the keyring [NO_PUBKEY" in msg
        assert msg.endswith(
            f"(hint: pin a newer `{VARIANT}.keyring_package`: test-ports-keyring 2024.1 lacks the key (keys rotate))"
        )
        cache = cache_for(tmp_path, http_server)
        commit_recipe(tmp_path, http_server.url + "/debian-ports", "2.42-1")
        assert sources_deb.fetch_deb(pin("2025.1"), cache).is_file()
        (entry,) = [e for e in pinlock.load(cache.lock).values() if e["package"] == "libc0.3"]  # type: ignore[arg-type]
        assert entry["signed_by"] == new.fingerprint
        assert entry["keyring"] == {
            "package": "test-ports-keyring",
            "version": "2025.1",
            "file": "usr/share/keyrings/ports.gpg",
            "fingerprints": [new.fingerprint],
        }


# ------------------------------------------------------------------ the update command, end to end


ARCHES = {32: ("hurd-i386", "i386-gnu", "ld.so.1"), 64: ("hurd-amd64", "x86_64-gnu", "ld-x86-64.so.1")}


def publish_set(repo: AptRepo, elves: ElfFactory, hurd: str, libc: str, banner: str | None = None) -> None:
    for bits, (arch, triplet, ldso) in ARCHES.items():
        repo.add_deb(
            "hurd", hurd, arch, {"hurd/ext2fs.static": (elves.static(bits), 0o755)}, depends=f"libc0.3 (>= {libc})"
        )
        repo.add_deb(
            "libc0.3",
            libc,
            arch,
            {f"lib/{triplet}/{ldso}": (elves.ldso(bits, banner or libc), 0o755), f"lib/{ldso}": f"{triplet}/{ldso}"},
        )
    repo.date, repo.valid_until = int(time.time()), int(time.time()) + 7 * DAY
    repo.publish("unstable", "main", tuple(a for a, _, _ in ARCHES.values()))


def test_update_moves_pins_lock_and_rebuild(
    apt_signing_key: GpgKey, elves: ElfFactory, http_server: TestServer, tmp_path: Path
) -> None:
    proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "art")
    old_hurd, old_libc = "1:0.9.git20250420-1", "2.41-6"  # the recipe's pins
    with AptRepo(tmp_path / "ports", apt_signing_key, ports=True) as ports:
        publish_set(ports, elves, old_hurd, old_libc)
        archive = http_server.serve_dir("/debian-ports", ports.archive)
        point_recipe_at(proj, archive, ports.keyring_path)
        r = proj.doit("hurd-modules:hurd-i386")
        assert r.returncode == 0, r.stdout[-3000:]
        lock = pinlock.load(pinlock.path_for(proj.root))
        assert {e["version"] for e in lock.values() if e["package"] == "libc0.3"} == {old_libc}

        # The archive moves on.
        ports.drop("hurd", old_hurd)
        ports.drop("libc0.3", old_libc)
        publish_set(ports, elves, "1:0.9.git20261101-1", "2.42-2")
        up = proj.run_hurdxen("pins", "update", "--only", "hurd-modules")
        assert up.returncode == 0, up.stderr
        assert "1:0.9.git20250420-1" in up.stdout and "1:0.9.git20261101-1" in up.stdout
        assert "2.41-6" in up.stdout and "2.42-2" in up.stdout and "4 of 4 pins moved" in up.stdout
        text = (proj.root / "recipes" / "hurd-modules.toml").read_text()
        assert 'packages = { hurd = "1:0.9.git20261101-1", "libc0.3" = "2.42-2" }' in text
        assert "2.41-6" not in text  # no libc_version repeats the pin (hurd-amd64's went with its stand-ins)
        lock = pinlock.load(pinlock.path_for(proj.root))
        assert {(e["package"], e["version"]) for e in lock.values() if "debian-ports" in e["archive"]} == {
            ("hurd", "1:0.9.git20261101-1"),
            ("libc0.3", "2.42-2"),
        }
        r = proj.doit("hurd-modules:hurd-i386")
        assert r.returncode == 0, r.stdout[-3000:]
        m = json.loads((proj.artifacts / "hurd-modules/hurd-i386/manifest.json").read_text())
        assert m["libc_version"] == "2.42-2"
        assert {p["version"] for p in m["inputs"]["debian"]} == {"1:0.9.git20261101-1", "2.42-2"}

        # An inconsistent set: libc0.3's ld.so says another version. One line, nothing rewritten.
        ports.drop("hurd", "1:0.9.git20261101-1")
        ports.drop("libc0.3", "2.42-2")
        publish_set(ports, elves, "1:0.9.git20261201-1", "2.43-1", banner="2.42-2")
        before = (proj.root / "recipes" / "hurd-modules.toml").read_text(), pinlock.path_for(proj.root).read_text()
        bad = proj.run_hurdxen("pins", "update", "--only", "hurd-modules")
        assert bad.returncode == 1
        assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: hurd-modules.variants.hurd-")
        assert (
            "libc0.3 2.43-1's /lib/" in bad.stderr and "says 2.42-2: refusing to pin an inconsistent set" in bad.stderr
        )
        after = (proj.root / "recipes" / "hurd-modules.toml").read_text(), pinlock.path_for(proj.root).read_text()
        assert after == before


def test_rewrite_keeps_everything_else(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    src = Path(__file__).resolve().parent.parent / "recipes"
    for name in ("hurd-modules", "pvgrub2", "mig", "gnumach"):
        (tmp_path / "recipes" / f"{name}.toml").write_text((src / f"{name}.toml").read_text())
    pins.rewrite(
        tmp_path,
        {
            'hurd-modules.variants.hurd-amd64.debian.packages."libc0.3"': "2.42-1",
            "pvgrub2.grub.sha256": "a" * 64,
            "mig.targets.x86_64-gnu.headers.version": "2:1.9-1",
        },
    )
    r = recipes.load(tmp_path, overrides={}, overlay=tmp_path / "none.toml")
    assert r["hurd-modules"]["variants"]["hurd-amd64"]["debian"]["packages"]["libc0.3"] == "2.42-1"
    assert r["hurd-modules"]["variants"]["hurd-i386"]["debian"]["packages"]["libc0.3"] == "2.41-6"
    assert r["pvgrub2"]["grub"]["sha256"] == "a" * 64
    assert r["mig"]["targets"]["x86_64-gnu"]["headers"]["version"] == "2:1.9-1"
    assert r["mig"]["targets"]["i686-gnu"]["headers"]["version"] == "2:1.8+git20221224-2"
    lines = lambda n: (src / f"{n}.toml").read_text().splitlines()  # noqa: E731
    for n, changed in (("hurd-modules", 1), ("pvgrub2", 1), ("mig", 1), ("gnumach", 0)):
        new = (tmp_path / "recipes" / f"{n}.toml").read_text().splitlines()
        assert sum(a != b for a, b in zip(lines(n), new, strict=True)) == changed


def test_canary_builds_floating_inputs_in_a_copy(
    apt_signing_key: GpgKey, elves: ElfFactory, http_server: TestServer, tmp_path: Path
) -> None:
    """GNU Mach's branch head and the newest packages are built in a copy; the project's recipes stay as pinned."""
    import git

    proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "art")
    mach = git.Repo.init(tmp_path / "gnumach", initial_branch="master")
    (tmp_path / "gnumach" / "README").write_text("GNU Mach\n")
    mach.index.add(["README"])
    head = mach.index.commit("head of master").hexsha
    with AptRepo(tmp_path / "ports", apt_signing_key, ports=True) as ports:
        publish_set(ports, elves, "1:0.9.git20261101-1", "2.42-2")
        where = {"archive": http_server.serve_dir("/debian-ports", ports.archive), "keyring": str(ports.keyring_path)}
        proj.overlay(
            {
                "gnumach": {"source": {"git": str(tmp_path / "gnumach")}},
                "hurd-modules": {"variants": {a: {"source": "debian", "debian": where} for a, _, _ in ARCHES.values()}},
            }
        )
        before = {p: p.read_text() for p in (proj.root / "recipes").glob("*.toml")}
        r = proj.run_hurdxen("canary", "--root", str(proj.root), "hurd-modules:hurd-i386")
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"canary: \d+ input\(s\) moved; the floating set builds", r.stdout), r.stdout
        assert {p: p.read_text() for p in (proj.root / "recipes").glob("*.toml")} == before  # release path untouched
        report = json.loads((proj.artifacts / "canary" / "report.json").read_text())
        drift = {d["input"]: d for d in report["drift"]}
        assert drift["gnumach.source.commit"]["floating"] == head and drift["gnumach.source.commit"]["moved"]
        assert drift[f'{VARIANT}.packages."libc0.3"']["floating"] == "2.42-2"
        assert drift[f"{VARIANT}.packages.hurd"]["floating"] == "1:0.9.git20261101-1"
        m = json.loads((proj.artifacts / "canary/artifacts/hurd-modules/hurd-i386/manifest.json").read_text())
        assert m["libc_version"] == "2.42-2"
        assert report["build"]["ok"] is True


def test_doit_build_falls_back_to_the_snapshot_and_then_runs_offline(
    apt_signing_key: GpgKey, elves: ElfFactory, http_server: TestServer, tmp_path: Path
) -> None:
    """The recipe's versions are gone from the (ports-shaped) archive; the snapshot of the day still has them."""
    proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "art")
    old_hurd, old_libc = "1:0.9.git20250420-1", "2.41-6"  # the recipe's pins
    with AptRepo(tmp_path / "ports", apt_signing_key, ports=True) as ports:
        publish_set(ports, elves, old_hurd, old_libc)
        ports.date, ports.valid_until = 1700000000, 1700000000 + 7 * DAY
        ports.publish("unstable", "main", tuple(a for a, _, _ in ARCHES.values()))
        ports.snapshot(tmp_path / "snapshots", "debian-ports", STAMP)
        ports.drop("hurd", old_hurd)
        ports.drop("libc0.3", old_libc)
        publish_set(ports, elves, "1:0.9.git20261101-1", "2.42-2")
        archive = http_server.serve_dir("/debian-ports", ports.archive)
        http_server.serve_dir("/snap", tmp_path / "snapshots")
        point_recipe_at(proj, archive, ports.keyring_path, snapshot=STAMP)
        proj.overlay({"settings": {"snapshot": http_server.url + "/snap"}})
        cache = tmp_path / "cache"
        r = proj.doit("hurd-modules:hurd-i386", HURDXEN_CACHE=str(cache))
        assert r.returncode == 0, r.stdout[-3000:]
        lock = pinlock.load(pinlock.path_for(proj.root))
        ports_entries = {e["package"]: e for e in lock.values() if e["arch"] == "hurd-i386"}
        assert {p: e["version"] for p, e in ports_entries.items()} == {"hurd": old_hurd, "libc0.3": old_libc}
        for e in ports_entries.values():
            assert e["snapshot"] == STAMP and e["signed_by"] == ports.key.fingerprint
            assert e["url"].startswith(f"{http_server.url}/snap/archive/debian-ports/{STAMP}/pool-hurd-i386/")
        m = json.loads((proj.artifacts / "hurd-modules/hurd-i386/manifest.json").read_text())
        assert m["libc_version"] == old_libc
    # Both servers gone: the lock and the cache are enough.
    http_server.stop()
    r = proj.doit("-a", "hurd-modules:hurd-i386", HURDXEN_CACHE=str(cache), HURDXEN_OFFLINE="1")
    assert r.returncode == 0, r.stdout[-3000:]


def test_update_moves_a_rotated_keyring_first(
    apt_repo: AptRepo, elves: ElfFactory, http_server: TestServer, tmp_path: Path
) -> None:
    """The ports archive is now signed by a new key: the build names the keyring pin; `pins update` moves the keyring
    package (from the Debian-shaped archive) and reads the ports index with it; the rebuild passes."""
    with rotated_keyrings(apt_repo, tmp_path, "usr/share/keyrings/p.gpg") as (_old, new):
        debian = http_server.serve_dir("/debian", apt_repo.archive)
        with AptRepo(tmp_path / "ports", new, ports=True) as ports:
            publish_set(ports, elves, "1:0.9.git20250420-1", "2.41-6")
            ports_url = http_server.serve_dir("/debian-ports", ports.archive)
            proj = Project.create(tmp_path / "proj", artifacts=tmp_path / "art")
            recipe = proj.root / "recipes" / "hurd-modules.toml"
            text = recipe.read_text().replace("http://deb.debian.org/debian-ports", ports_url)
            text = text.replace('source = "build"', 'source = "debian"')  # hurd-i386's Debian pins, selected
            kp = (
                f'keyring_package = {{ package = "test-ports-keyring", version = "2024.1", suite = "sid", '
                f'archive = "{debian}", keyring = "{apt_repo.keyring_path}", file = "usr/share/keyrings/p.gpg" }}'
            )
            text = re.sub(r"^keyring_package = .*$", kp, text, flags=re.M)
            recipe.write_text(text)
            r = proj.doit("hurd-modules:hurd-i386")
            assert r.returncode != 0
            assert f"pin a newer `{VARIANT}.keyring_package`: test-ports-keyring 2024.1 lacks the key" in r.stdout
            up = proj.run_hurdxen("pins", "update", "--only", "hurd-modules")
            assert up.returncode == 0, up.stderr
            assert recipe.read_text().count('package = "test-ports-keyring", version = "2025.1"') == 2
            lock = pinlock.load(pinlock.path_for(proj.root))
            libc = next(e for e in lock.values() if e["package"] == "libc0.3" and e["arch"] == "hurd-i386")
            assert libc["signed_by"] == new.fingerprint and libc["keyring"]["version"] == "2025.1"
            r = proj.doit("hurd-modules:hurd-i386")
            assert r.returncode == 0, r.stdout[-3000:]
