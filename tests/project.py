"""Helpers for tests that run the pipeline: a throwaway copy of the project, a `doit` runner, Docker availability.

The fixtures built on them are in conftest.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def edit(path: Path, old: str, new: str) -> None:
    """Replace one exact occurrence of `old` (the test fails if the file no longer has it)."""
    text = path.read_text()
    assert old in text, f"{path} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1))


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
        )
        env.update(extra)
        return env

    def _run_kwargs(self, args: tuple[str, ...], extra_env: dict[str, str]) -> dict[str, Any]:
        """How `doit args` runs here: in the project, with its environment, stdout and stderr interleaved as text."""
        return {
            "args": [*DOIT, *args],
            "cwd": self.root,
            "env": self.env(**extra_env),
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "text": True,
        }

    def popen(self, *args: str, **extra_env: str) -> subprocess.Popen[str]:
        # its own process group, so a test can kill all of it
        return subprocess.Popen(**self._run_kwargs(args, extra_env), start_new_session=True)

    def doit(self, *args: str, timeout: float = 900, **extra_env: str) -> DoitRun:
        proc = subprocess.run(**self._run_kwargs(args, extra_env), timeout=timeout)
        return DoitRun(proc.returncode, proc.stdout)


def docker_answers() -> bool:
    try:
        from hurdxen.executors import connect_docker

        connect_docker()
        return True
    except Exception:
        return False
