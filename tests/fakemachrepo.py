"""tests/fixtures/fakemach as a git repository (what `gnumach.source.git` points at), a small patch series for it,
and the overlay that makes a project copy build it.

The commit is made with fixed names and dates, so its id is the same in every run.
"""

from __future__ import annotations

import difflib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.core.fsutil import sha256_file

FAKEMACH = Path(__file__).resolve().parent / "fixtures" / "fakemach"
PATCH_NAME = "0001-fakemach-banner.patch"
PATCHED_BANNER = "GNU Mach 1.8 (fakemach, patched by hurdxen)"


@dataclass(frozen=True)
class FakeMach:
    repo: Path
    commit: str
    patches: Path  # a patch dir with `series` and PATCH_NAME
    patch_sha256: str

    def overlay(self, variants: dict[str, Any] | None = None, patch_sha256: str | None = None) -> dict[str, Any]:
        """[gnumach] of an overlay: the fake source at its commit, the fake patch series, optional variant keys."""
        g: dict[str, Any] = {
            "source": {"git": str(self.repo), "commit": self.commit},
            "patches": {"dir": str(self.patches), "sha256": {PATCH_NAME: patch_sha256 or self.patch_sha256}},
        }
        if variants:
            g["variants"] = variants
        return {"gnumach": g}


def make_fakemach_repo(root: Path) -> FakeMach:
    import git

    work = root / "fakemach.git-work"
    shutil.copytree(FAKEMACH, work)
    env = {
        "GIT_AUTHOR_NAME": "hurdxen tests",
        "GIT_AUTHOR_EMAIL": "tests@invalid",
        "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
        "GIT_COMMITTER_NAME": "hurdxen tests",
        "GIT_COMMITTER_EMAIL": "tests@invalid",
        "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
    }
    repo = git.Repo.init(work, initial_branch="master")
    with repo.git.custom_environment(**env):
        repo.git.add("-A")
        repo.git.commit("-q", "-m", "fakemach")
    commit = repo.head.commit.hexsha
    assert os.access(work / "configure", os.X_OK)

    patches = root / "fakemach-patches"
    patches.mkdir()
    old = (FAKEMACH / "kernel.c").read_text()
    new = old.replace("GNU Mach 1.8 (fakemach)", PATCHED_BANNER)
    assert new != old
    diff = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), "a/kernel.c", "b/kernel.c"
    )
    (patches / PATCH_NAME).write_text("fakemach: a banner the tests can find\n\n" + "".join(diff))
    (patches / "series").write_text(PATCH_NAME + "\n")
    return FakeMach(work, commit, patches, sha256_file(patches / PATCH_NAME))
