"""Shared fixtures. The apt archive fixtures live in tests/aptrepo.py, next to the fixture class; project copies, the
`doit` runner and the HTTP server in tests/project.py and tests/httpserver.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aptrepo import apt_repo, apt_signing_key
from httpserver import TestServer
from project import Project, copy_project, docker_answers

__all__ = ["apt_repo", "apt_signing_key"]


@pytest.fixture
def recipe_root(tmp_path: Path) -> Path:
    """A project directory holding a copy of recipes/ only (enough for recipes.load)."""
    return copy_project(tmp_path / "project", ("recipes",))


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A copy of dodo.py, recipes/ and containers/ with its own artifacts directory, sharing the source cache."""
    root = copy_project(tmp_path / "project")
    return Project(root, tmp_path / "artifacts")


@pytest.fixture(scope="session")
def docker_client() -> object:
    if not docker_answers():
        pytest.skip("no Docker engine answers")
    from hurdxen.pipeline.executors import connect_docker

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
