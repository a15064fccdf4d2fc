"""Git inputs: a bare mirror per URL in the cache, fetched once; an exact commit (and, when pinned, the ref that must
still point at it) exported as a tree. Once the commit is mirrored, nothing here touches the network."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from hurdxen.core import fsutil, safeextract
from hurdxen.core.errors import HurdxenError
from hurdxen.sources.fetch import Cache, GitPin, unreachable


def mirror_dir(cache: Cache, url: str) -> Path:
    return cache.root / "git" / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")


def fetch_git(pin: GitPin, cache: Cache) -> Path:
    """A bare mirror of `pin.url` in the cache that contains `pin.commit`; returns its git dir."""
    import git

    mirror = mirror_dir(cache, pin.url)
    if not mirror.exists():
        tmp = mirror.with_name(fsutil.TMP_PREFIX + mirror.name)
        shutil.rmtree(tmp, ignore_errors=True)
        git.Repo.init(tmp, bare=True)
        os.replace(tmp, mirror)
    repo = git.Repo(mirror)
    if not _has_commit(repo, pin.commit) or pin.ref:
        if cache.network.offline and _has_commit(repo, pin.commit):
            pass
        else:
            try:
                env = (
                    {"http_proxy": cache.network.proxy, "https_proxy": cache.network.proxy}
                    if cache.network.proxy
                    else {}
                )
                with repo.git.custom_environment(**env):
                    repo.git.fetch(
                        "--prune",
                        "--force",
                        "--tags",
                        pin.url,
                        "+refs/heads/*:refs/heads/*",
                        "+refs/tags/*:refs/tags/*",
                    )
            except git.GitCommandError as e:
                if not _has_commit(repo, pin.commit):
                    raise unreachable(pin.name, pin.url, _git_reason(e.stderr), pin.key) from e
    if not _has_commit(repo, pin.commit):
        raise HurdxenError(
            f"{pin.name}: commit {pin.commit} is not in {pin.url}",
            hint=f"check the pinned commit, or point `{pin.key}` at a mirror that has it",
        )
    if pin.ref:
        try:
            at = repo.git.rev_parse("--verify", f"{pin.ref}^{{commit}}")
        except git.GitCommandError as e:
            raise HurdxenError(f"{pin.name}: ref {pin.ref} is not in {pin.url}", hint="check the recipe's `ref`") from e
        if at != _full_commit(repo, pin.commit):
            raise HurdxenError(
                f"{pin.name}: {pin.ref} in {pin.url} now points at {at[:12]}, the recipe pins {pin.commit[:12]}",
                hint="the branch moved: update the pinned commit, or drop `ref` to build the pinned commit as is",
            )
    return mirror


def _git_reason(stderr: str | None) -> str:
    """git's own first `fatal:` line, without GitPython's `stderr: '…'` wrapping."""
    lines = [ln.strip().removeprefix("stderr:").strip().strip("'").strip() for ln in (stderr or "").splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        if ln.startswith(("fatal:", "error:")):
            return ln.split(":", 1)[1].strip()
    return lines[0] if lines else "git fetch failed"


def _has_commit(repo: object, commit: str) -> bool:
    import git

    assert isinstance(repo, git.Repo)
    try:
        repo.git.cat_file("-e", f"{commit}^{{commit}}")
        return True
    except git.GitCommandError:
        return False


def _full_commit(repo: object, commit: str) -> str:
    import git

    assert isinstance(repo, git.Repo)
    return str(repo.git.rev_parse("--verify", f"{commit}^{{commit}}"))


def is_cached_git(pin: GitPin, cache: Cache) -> bool:
    import git

    mirror = mirror_dir(cache, pin.url)
    return mirror.exists() and _has_commit(git.Repo(mirror), pin.commit)


def export_git(pin: GitPin, cache: Cache, dest: Path) -> None:
    """The tree at `pin.commit` as plain files in `dest` (no .git), like an unpacked tarball."""
    import git

    repo = git.Repo(fetch_git(pin, cache))
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as f:
        repo.archive(f, pin.commit, format="tar")
        packed = f.tell()
        f.seek(0)
        # a mirror can serve any tree: its links are checked like a tarball's (git archive's size is the tree's)
        limits = safeextract.Limits(max_ratio=2)
        safeextract.extract_stream(f, packed, dest, f"{pin.name} at {pin.commit[:12]}", limits)
