"""The one harness for tests that run the pipeline: a throwaway copy of the project and a `doit` runner.

    proj = Project.create(tmp_path / "proj")                                   # every recipe; or copy_project(…)
    proj.overlay({"gnumach": {"source": {"git": "/path", "commit": "…"}}})     # hurdxen.local.toml in the copy
    r = proj.doit("gnumach:xen-pae")                                           # DoitRun: returncode, output

doit runs with cwd = the copy (so tasks.py takes the copy's recipes/), PYTHONPATH = this checkout's code,
`HURDXEN_ARTIFACTS` = a directory outside the copy (switchable per call) and the shared download cache
(`HURDXEN_CACHE` or the main checkout's cache), so Debian packages and base images are fetched once for every test.
The fixtures built on it are in conftest.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The code under test: this checkout, whatever hurdxen the venv has installed.
CODE = Path(__file__).resolve().parent.parent
# Debian downloads are shared between test runs (and with the main checkout) so they happen once.
SHARED_CACHE = Path(os.environ.get("HURDXEN_CACHE") or CODE / "cache")
DOIT = [sys.executable, "-m", "doit"]


# The foundation's recipes: the base rootfs, the builder images, MIG. Enough for `doit build` to exercise the whole
# machinery (images, sources, steps, lock, up-to-date checks) in under a minute; the later stages have their own tests.
FOUNDATION = ("base", "images", "mig")


def copy_project(
    dest: Path,
    parts: tuple[str, ...] = ("dodo.py", "recipes", "containers"),
    recipes: tuple[str, ...] | None = FOUNDATION,
) -> Path:
    """Copy the project's files into `dest`; keep only the recipes named in `recipes` (None: all of them)."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in parts:
        src = CODE / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        else:
            shutil.copy2(src, dest / part)
    if recipes is not None and (dest / "recipes").is_dir():
        for f in (dest / "recipes").glob("*.toml"):
            if f.stem not in recipes:
                f.unlink()
    return dest


def amd64_from_debian(root: Path) -> None:
    """hurd-modules' hurd-amd64 from its Debian pins: a project copy without the toolchain recipes has no
    hurd:root-amd64 to build its default from."""
    path = root / "recipes" / "hurd-modules.toml"
    text = path.read_text()
    at = text.index("[variants.hurd-amd64]")
    path.write_text(text[:at] + text[at:].replace('source = "build"', 'source = "debian"', 1))


def edit(path: Path, old: str, new: str) -> None:
    """Replace one exact occurrence of `old` (the test fails if the file no longer has it)."""
    text = path.read_text()
    assert old in text, f"{path} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1))


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
class DoitRun:
    returncode: int
    output: str  # stdout and stderr interleaved

    @property
    def stdout(self) -> str:
        """The same text, under subprocess's name."""
        return self.output

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
    env_extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, artifacts: Path | None = None) -> Project:
        """A copy with every recipe and no hurdxen.local.toml (the main checkout's overlay stays there)."""
        copy_project(root, recipes=None)
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

    def _run_kwargs(self, args: tuple[str, ...], artifacts: Path | None, extra_env: dict[str, str]) -> dict[str, Any]:
        """How `doit args` runs here: in the project, with its environment, stdout and stderr interleaved as text."""
        return {
            "args": [*DOIT, *args],
            "cwd": self.root,
            "env": self.env(artifacts, **extra_env),
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "text": True,
        }

    def popen(self, *args: str, **extra_env: str) -> subprocess.Popen[str]:
        # its own process group, so a test can kill all of it
        return subprocess.Popen(**self._run_kwargs(args, None, extra_env), start_new_session=True)

    def doit(self, *args: str, artifacts: Path | None = None, timeout: float = 1800, **extra_env: str) -> DoitRun:
        proc = subprocess.run(**self._run_kwargs(args, artifacts, extra_env), timeout=timeout, check=False)
        return DoitRun(proc.returncode, proc.stdout)

    def run_hurdxen(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m hurdxen ARGS` (the CLI) with the copy's environment; stdout and stderr apart."""
        return subprocess.run(
            [sys.executable, "-m", "hurdxen", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )


def docker_answers() -> bool:
    try:
        from hurdxen.pipeline.executors import connect_docker

        connect_docker()
        return True
    except Exception:
        return False


def clone_artifacts(src: Path, dest: Path) -> Path:
    """A copy of an artifacts dir, doit's state included: tasks done there are up to date in the clone."""
    shutil.copytree(src, dest, symlinks=True)
    for stale in dest.glob(".lock"):
        stale.unlink()
    return dest


def require_docker() -> None:
    if not docker_answers():
        pytest.skip("no Docker engine answers (start dockerd, see scripts/setup.sh)")
