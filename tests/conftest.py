"""Shared fixtures: a throwaway copy of the project, a `doit` runner, Docker availability."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .httpserver import TestServer

# The code under test: this checkout, whatever hurdxen the venv has installed.
CODE = Path(__file__).resolve().parent.parent
# Debian downloads are shared between test runs (and with the main checkout) so they happen once.
SHARED_CACHE = Path(os.environ.get("HURDXEN_CACHE") or CODE / "cache")
DOIT = [sys.executable, "-m", "doit"]


def copy_project(dest: Path, parts: tuple[str, ...] = ("dodo.py", "recipes", "containers")) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for part in parts:
        src = CODE / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        else:
            shutil.copy2(src, dest / part)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    """Replace one exact occurrence of `old` (the test fails if the file no longer has it)."""
    text = path.read_text()
    assert old in text, f"{path} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def recipe_root(tmp_path: Path) -> Path:
    """A project directory holding a copy of recipes/ only (enough for recipes.load)."""
    return copy_project(tmp_path / "project", ("recipes",))


@dataclass
class DoitRun:
    returncode: int
    output: str  # stdout and stderr interleaved

    @property
    def executed(self) -> list[str]:
        """Tasks doit ran (`.  name`)."""
        return [line[3:].strip() for line in self.output.splitlines() if line.startswith(".  ")]

    @property
    def up_to_date(self) -> list[str]:
        """Tasks doit skipped (`-- name`)."""
        return [line[3:].strip() for line in self.output.splitlines() if line.startswith("-- ")]


@dataclass
class Project:
    root: Path
    artifacts: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(CODE),
            HURDXEN_CACHE=str(SHARED_CACHE),
            HURDXEN_ARTIFACTS=str(self.artifacts),
            HURDXEN_QUIET="1",
        )
        env.update(extra)
        return env

    def popen(self, *args: str, **extra_env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*DOIT, *args],
            cwd=self.root,
            env=self.env(**extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, so a test can kill all of it
        )

    def doit(self, *args: str, timeout: float = 900, **extra_env: str) -> DoitRun:
        proc = subprocess.run(
            [*DOIT, *args],
            cwd=self.root,
            env=self.env(**extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        return DoitRun(proc.returncode, proc.stdout)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A copy of dodo.py, recipes/ and containers/ with its own artifacts directory, sharing the source cache."""
    root = copy_project(tmp_path / "project")
    return Project(root, tmp_path / "artifacts")


def docker_answers() -> bool:
    try:
        from hurdxen.executors import connect_docker

        connect_docker()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_client() -> object:
    if not docker_answers():
        pytest.skip("no Docker engine answers")
    from hurdxen.executors import connect_docker

    return connect_docker()


@pytest.fixture
def restore_env() -> Iterator[Callable[[str, str], None]]:
    saved = dict(os.environ)

    def set_env(k: str, v: str) -> None:
        os.environ[k] = v

    yield set_env
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def http_server() -> Iterator[TestServer]:
    """A started HTTP server on 127.0.0.1 (see tests/httpserver.py), stopped afterwards."""
    srv = TestServer().start()
    try:
        yield srv
    finally:
        srv.stop()
