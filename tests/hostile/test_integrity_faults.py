"""A cache someone else can write, and a build killed with SIGKILL: the next run re-hashes what it uses and ends
what the killed run left running, before it sweeps the directories those processes write into."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import executors
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import fetch as sources
from tests.hostile.harness import refused

CODE = Path(__file__).resolve().parents[2]


def _pin(tmp_path: Path, data: bytes) -> tuple[sources.Cache, sources.TarballPin, Path]:
    src = tmp_path / "mirror" / "mig.orig.tar.xz"
    src.parent.mkdir()
    src.write_bytes(data)
    pin = sources.TarballPin("mig orig tarball", f"file://{src}", fsutil.sha256_bytes(data), "mig.source.url")
    return sources.Cache(tmp_path / "cache"), pin, src


def test_edited_cached_blob_is_refetched(tmp_path: Path) -> None:
    cache, pin, _ = _pin(tmp_path, b"the real source")
    blob = sources.fetch_tarball(pin, cache)
    blob.write_bytes(b"the real sourcE")  # one byte changed, as by anyone who can write the cache
    assert sources.fetch_tarball(pin, cache).read_bytes() == b"the real source"


def test_edited_cached_blob_same_size_and_mtime(tmp_path: Path) -> None:
    """Even with the size and mtime put back, a new process hashes again (the memo is per process)."""
    cache, pin, _ = _pin(tmp_path, b"the real source")
    blob = sources.fetch_tarball(pin, cache)
    st = blob.stat()
    sources._VERIFIED.clear()  # a new run
    blob.write_bytes(b"the real sourcE")
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sources.fetch_tarball(pin, cache).read_bytes() == b"the real source"


def test_edited_cached_blob_offline_is_one_line(tmp_path: Path) -> None:
    cache, pin, src = _pin(tmp_path, b"the real source")
    blob = sources.fetch_tarball(pin, cache)
    blob.write_bytes(b"tampered")
    src.unlink()
    with pytest.raises(HurdxenError) as e:
        sources.fetch_tarball(pin, cache)
    assert "mig orig tarball" in refused(e)
    assert not blob.exists(), "the tampered blob must not stay in the cache"


@pytest.mark.parametrize("record", [b"[]", b"{", b'{"sha256": 5}', b'{"sha256": "../../etc/passwd"}', b"\xff"])
def test_damaged_deb_record_is_not_trusted(record: bytes, tmp_path: Path) -> None:
    pin = sources.DebPin("hurd", "1:0.9", "hurd-i386", "sid", "http://127.0.0.1:9/debian", "hurd-modules.debian")
    cache = sources.Cache(tmp_path / "cache")
    rec = sources_deb._deb_record(cache, pin)
    rec.parent.mkdir(parents=True)
    rec.write_bytes(record)
    assert not sources_deb.is_cached_deb(pin, cache)


# ------------------------------------------------------------------------------------------------ kill -9

RUNNER = """
import sys
from pathlib import Path
from hurdxen.pipeline.executors import HostExecutor, Step
state, marker = Path(sys.argv[1]), sys.argv[2]
step = Step("test:configure", f"echo started > {marker}; sleep 300 & sleep 300; wait", "none")
HostExecutor(state).run(step, state / "logs" / "step.log")
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_killed_builds_steps_are_ended_by_the_next_run(tmp_path: Path) -> None:
    state, marker = tmp_path / "artifacts", tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(CODE)}
    build = subprocess.Popen([sys.executable, "-c", RUNNER, str(state), str(marker)], env=env)
    try:
        # Bounded polls, generous for a loaded machine: the build's start and the group's end are what is tested.
        # The step can start before its group record is renamed into place (written atomically once the group
        # exists): wait for the record itself, not its temporary file.
        groups = state / executors.STEP_GROUPS
        records: list[Path] = []
        for _ in range(1200):
            records = [r for r in groups.iterdir() if r.name.isdigit()] if groups.is_dir() else []
            if marker.exists() and records:
                break
            time.sleep(0.05)
        (record,) = records
        pgid = int(record.name)
        build.send_signal(signal.SIGKILL)  # the build dies; its step (bash, two sleeps) keeps running
        build.wait()
        members = executors._group_members(pgid, record.read_text())
        assert members and all(_alive(p) for p in members), "the step should have outlived the build"
        assert executors.end_stale_steps(state) == [pgid]
        for _ in range(600):
            if not any(_alive(p) for p in members):
                break
            time.sleep(0.05)
        assert not any(_alive(p) for p in members)
        assert not list((state / executors.STEP_GROUPS).iterdir())
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()


def test_a_recycled_group_id_is_left_alone(tmp_path: Path) -> None:
    """A record whose group now belongs to a process without our token: nothing is killed."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        d = tmp_path / executors.STEP_GROUPS
        d.mkdir()
        (d / str(other.pid)).write_text("0" * 32)
        assert executors.end_stale_steps(tmp_path) == []
        assert other.poll() is None
        assert not (d / str(other.pid)).exists()
    finally:
        other.kill()
        other.wait()


def test_garbage_records_are_dropped(tmp_path: Path) -> None:
    d = tmp_path / executors.STEP_GROUPS
    d.mkdir()
    (d / "not-a-pid").write_text("x")
    (d / "1").write_text("token")  # init: never ours (no token in its environment)
    assert executors.end_stale_steps(tmp_path) == []
    assert not list(d.iterdir())


def test_finished_step_leaves_no_process(tmp_path: Path) -> None:
    """A step that starts a daemon and exits: the daemon goes with it (its group is ended)."""
    pidfile = tmp_path / "pid"
    step = executors.Step("test:daemon", f"(sleep 300 & echo $! > {pidfile}); true", "none")
    executors.HostExecutor(tmp_path).run(step, tmp_path / "log")
    pid = int(pidfile.read_text())
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.05)
    assert not _alive(pid)
    assert json.dumps(sorted(p.name for p in (tmp_path / executors.STEP_GROUPS).iterdir())) == "[]"
