"""A throwaway copy of the project (dodo.py, recipes/, containers/) and a `doit` runner for end-to-end stage tests.

    proj = ProjectCopy.create(tmp_path / "proj")
    proj.overlay({"gnumach": {"source": {"git": "/path", "commit": "…"}}})   # hurdxen.local.toml in the copy
    r = proj.run_doit("gnumach:xen-pae")                                      # CompletedProcess (stdout+stderr)

doit runs with cwd = the copy (so tasks.py takes the copy's recipes/), PYTHONPATH = this checkout's code,
`HURDXEN_ARTIFACTS` = a temp dir (switchable per call) and the shared download cache (`HURDXEN_CACHE` or the
main checkout's cache), so Debian packages and base images are fetched once for every test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from project import CODE, SHARED_CACHE, copy_project, docker_answers


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def _toml_key(k: str) -> str:
    return k if k.replace("-", "").replace("_", "").isalnum() else _toml_value(k)


def to_toml(data: Mapping[str, Any]) -> str:
    """Enough TOML for overlays: nested tables of scalars, arrays and inline tables (a `{}` value is inline)."""
    lines: list[str] = []

    def table(path: list[str], d: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in d.items() if not (isinstance(v, Mapping) and v)]
        subs = [(k, v) for k, v in d.items() if isinstance(v, Mapping) and v]
        if path and (scalars or not subs):
            lines.append(f"[{'.'.join(_toml_key(p) for p in path)}]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in subs:
            table([*path, k], v)

    table([], data)
    return "\n".join(lines) + "\n"


@dataclass
class ProjectCopy:
    root: Path
    artifacts: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, artifacts: Path | None = None) -> ProjectCopy:
        copy_project(root, recipes=None)
        # No hurdxen.local.toml: the copy starts from the recipes alone (the main checkout's overlay stays there).
        return cls(root, artifacts or root.parent / f"{root.name}-artifacts")

    @property
    def overlay_path(self) -> Path:
        return self.root / "hurdxen.local.toml"

    def overlay(self, data: Mapping[str, Any] | str) -> None:
        """Write the copy's hurdxen.local.toml (replacing it)."""
        self.overlay_path.write_text(data if isinstance(data, str) else to_toml(data))

    def env(self, artifacts: Path | None = None, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("HURDXEN_LOCAL", None)
        env.update(
            PYTHONPATH=str(CODE),
            HURDXEN_CACHE=str(SHARED_CACHE),
            HURDXEN_ARTIFACTS=str(artifacts or self.artifacts),
        )
        env.update(self.env_extra)
        env.update(extra)
        return env

    def run_doit(
        self, *args: str, artifacts: Path | None = None, timeout: float = 1800, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        """`python -m doit ARGS` in the copy; stdout and stderr together in `.stdout`."""
        return subprocess.run(
            [sys.executable, "-m", "doit", *args],
            cwd=self.root,
            env=self.env(artifacts, **extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_hurdxen(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m hurdxen ARGS` (the CLI) with the copy's environment."""
        return subprocess.run(
            [sys.executable, "-m", "hurdxen", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )


def run_doit(proj: ProjectCopy, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return proj.run_doit(*args, **kw)


def clone_artifacts(src: Path, dest: Path) -> Path:
    """A copy of an artifacts dir, doit's state included: tasks done there are up to date in the clone."""
    shutil.copytree(src, dest, symlinks=True)
    for stale in dest.glob(".lock"):
        stale.unlink()
    return dest


def require_docker() -> None:
    if not docker_answers():
        pytest.skip("no Docker engine answers (start dockerd, see scripts/setup.sh)")


@pytest.fixture
def project_copy(tmp_path: Path) -> Iterator[ProjectCopy]:
    yield ProjectCopy.create(tmp_path / "proj")
