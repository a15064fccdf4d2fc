"""The same refusals through real `doit` processes (a representative subset: the rest run in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from project import Project, copy_project

from tests.hostile.harness import one_line


@pytest.fixture
def proj(tmp_path: Path) -> Project:
    return Project(copy_project(tmp_path / "project"), tmp_path / "artifacts")


def _refused(proj: Project, *args: str) -> str:
    run = proj.doit("list", *args, timeout=120)
    assert run.returncode != 0, run.output
    return one_line(run.output)


def test_doit_misspelled_overlay_table(proj: Project) -> None:
    (proj.root / "hurdxen.local.toml").write_text("[mig.sorce]\nurl = 'http://x/y'\n")
    assert _refused(proj).startswith("error: hurdxen.local.toml: mig.sorce: unknown key")


def test_doit_command_line_empty_component(proj: Project) -> None:
    assert "the command line: mig..image: empty key component" in _refused(proj, "mig..image=x")


def test_doit_non_utf8_overlay(proj: Project) -> None:
    (proj.root / "hurdxen.local.toml").write_bytes(b"[mig]\nimage = '\xff'\n")
    assert "hurdxen.local.toml: not UTF-8" in _refused(proj)


def test_doit_nul_in_recipe_string(proj: Project) -> None:
    (proj.root / "hurdxen.local.toml").write_text('[mig.targets.i686-gnu]\ncompiler = "gcc\\u0000-m32"\n')
    assert "NUL" in _refused(proj)


def test_doit_list_refuses_an_escape_in_a_recipe_string(proj: Project) -> None:
    """`doit list --all` printed a raw ESC from a compiler name (gnumach.variants.*.cc, mig's compiler): now the
    recipe is refused before any task."""
    (proj.root / "hurdxen.local.toml").write_text('[mig.targets.i686-gnu]\ncompiler = "gcc\\u001b]0;owned\\u0007"\n')
    run = proj.doit("list", "--all", timeout=120)
    assert run.returncode != 0 and "\x1b" not in run.output, run.output
    line = one_line(run.output)
    assert "mig.targets.i686-gnu.compiler: contains the control character U+001B at offset 3" in line, line


@pytest.mark.parametrize(
    ("text", "words"),
    [(b"[]", "not a hurdxen-pins/1 lock"), (b"{", "not JSON"), (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
     (b" " * (5 << 20), "larger than")],
    ids=["a-list", "bad-json", "deep", "huge"],
)  # fmt: skip
def test_doit_refuses_a_bad_pins_lock_before_any_task(text: bytes, words: str, proj: Project) -> None:
    """A bad recipes/pins.lock was refused inside doit's up-to-date check: a ~40-line traceback. Now one line."""
    (proj.root / "recipes" / "pins.lock").write_bytes(text)
    line = _refused(proj)
    assert "pins.lock" in line and words in line, line
