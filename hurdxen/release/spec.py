"""The release: what it is called (name, PEP 440 version from the recipe or `git describe`), which stage outputs it
takes, how it is signed, and the names of its metadata files."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline.recipes import Recipes

SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.asc"
MANIFEST = "manifest.json"
PROVENANCE = "provenance.intoto.json"
README = "README.md"
BUNDLE_FORMAT = "hurdxen-release/1"
# Files that are not listed in manifest.json's `files` (they describe the others).
META = (MANIFEST, PROVENANCE, SUMS, SIGNATURE)
# Keys of stage manifests that change from run to run without changing any artefact.
VOLATILE_KEYS = frozenset({"seconds", "log", "logs", "started", "finished", "started_at", "finished_at", "duration"})
OK_VERDICTS = frozenset({"pass", "expected-refusal", "expected"})
KNOWN_FAILURE = "known-failure"
BUILDER_ID = "https://hurdxen.invalid/builder/doit"  # no public home yet; a stable URI is all SLSA needs
BUILD_TYPE = "https://hurdxen.invalid/release/v1"


@dataclass(frozen=True)
class ProjectRevision:
    commit: str | None
    dirty: bool | None
    describe: str | None
    remote: str | None = None


@dataclass(frozen=True)
class ReleaseVersion:
    version: str  # normalised PEP 440
    source: str  # "recipe", "git describe" or "fallback"
    note: str | None = None  # why a fallback was used


@dataclass(frozen=True)
class BundleSpec:
    name: str
    version: ReleaseVersion
    revision: ProjectRevision
    source_date_epoch: int
    kernels: tuple[str, ...] | None  # None: every variant built
    hurd_modules: tuple[str, ...] | None
    pvgrub2: tuple[str, ...] | None
    allow_unbooted: bool
    accept_known_failures: bool
    signing_key: str | None
    gnupghome: str | None
    domains: Mapping[str, Any]  # recipes/domains.toml content
    rootdisks: tuple[str, ...] | None = ()  # rootdisk/<disk> to ship; None: every one built; (): none

    @property
    def release(self) -> str:
        return f"{self.name}-{self.version.version}"


def project_revision(root: Path) -> ProjectRevision:
    """The project's git commit, dirty flag and `git describe --tags --always`; all None outside a git checkout."""
    try:
        import git
    except ImportError:  # pragma: no cover - GitPython is a dependency
        return ProjectRevision(None, None, None)
    try:
        repo = git.Repo(root, search_parent_directories=False)
        commit = repo.head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return ProjectRevision(None, None, None)
    # Untracked files do not change what was built from tracked ones; artifacts/ and cache/ are untracked anyway.
    dirty = repo.is_dirty(untracked_files=False)
    describe = str(repo.git.describe("--tags", "--always", "--abbrev=12"))
    remote = None
    if "origin" in [r.name for r in repo.remotes]:
        url = repo.remotes.origin.url
        remote = url if re.match(r"^[a-z+]+://", url) else None  # a local path would differ between clones
    return ProjectRevision(commit, dirty, describe, remote)


_DESCRIBE = re.compile(r"^(?P<tag>.+)-(?P<n>[0-9]+)-g(?P<sha>[0-9a-f]{4,40})$")


def version_from_describe(describe: str | None, commit: str | None, dirty: bool | None) -> ReleaseVersion:
    """`v1.2.0` → 1.2.0; `v1.2.0-3-gabc` → 1.2.0.post3+gabc; a bare sha or a non-PEP 440 tag → 0.0.0+g<sha>."""
    sha = (commit or "")[:12] or "unknown"
    local_dirty = ".dirty" if dirty else ""
    if not describe:
        return ReleaseVersion(
            f"0.0.0+{'g' + sha if commit else 'unknown'}{local_dirty}", "fallback", "not a git checkout"
        )
    m = _DESCRIBE.match(describe)
    tag, n, dsha = (m.group("tag"), int(m.group("n")), m.group("sha")) if m else (describe, 0, sha)
    if commit and commit.startswith(describe):
        return ReleaseVersion(str(Version(f"0.0.0+g{sha}{local_dirty}")), "fallback", "no tag reachable from HEAD")
    try:
        base = Version(tag[1:] if re.match(r"^[vV][0-9]", tag) else tag)
    except InvalidVersion:
        note = f"tag {tag!r} is not a PEP 440 version"
        return ReleaseVersion(str(Version(f"0.0.0+g{sha}{local_dirty}")), "fallback", note)
    if n == 0:
        text = base.public + (f"+{local_dirty[1:]}" if dirty else "")
    else:
        text = f"{base.public}.post{n}+g{dsha}{local_dirty}"
        try:
            Version(text)
        except InvalidVersion:  # e.g. the tag already is a post-release
            text = f"{base.public}+{n}.g{dsha}{local_dirty}"
    return ReleaseVersion(str(Version(text)), "git describe")


def spec_from_recipes(recipes: Recipes, source_date_epoch: int, allow_unbooted: bool | None = None) -> BundleSpec:
    return spec_from(
        recipes["release"],
        recipes.data.get("domains", {}),
        recipes.root,
        source_date_epoch,
        "rootdisk" in recipes,
        recipes.files.get("release", "recipes/release.toml"),
        allow_unbooted,
    )


def spec_from(
    r: Mapping[str, Any],
    domains: Mapping[str, Any],
    root: Path,
    source_date_epoch: int,
    has_rootdisk: bool,
    shown: str = "recipes/release.toml",
    allow_unbooted: bool | None = None,
    signing_key: str | None = None,
) -> BundleSpec:
    """The release from recipes/release.toml (`r`) and domains.toml, its version from the recipe or `git describe`
    of `root`; the signing key from the recipe, else `signing_key`, else HURDXEN_SIGNING_KEY."""
    rev = project_revision(root)
    if r.get("version"):
        try:
            version = ReleaseVersion(str(Version(r["version"])), "recipe")
        except InvalidVersion:
            raise HurdxenError(
                f"{shown}: version {r['version']!r} is not PEP 440",
                hint="write it like 1.2.0 or 1.2.0rc1, or leave it out to use git describe",
            ) from None
    else:
        version = version_from_describe(rev.describe, rev.commit, rev.dirty)
    inc = r.get("include", {})
    signing = r.get("signing", {})
    key = signing.get("key") or signing_key or os.environ.get("HURDXEN_SIGNING_KEY") or None
    home = signing.get("gnupghome") or None

    def names(k: str) -> tuple[str, ...] | None:
        return tuple(inc[k]) if k in inc else None

    return BundleSpec(
        name=r["name"],
        version=version,
        revision=rev,
        source_date_epoch=source_date_epoch,
        kernels=names("kernels"),
        hurd_modules=names("hurd_modules"),
        pvgrub2=names("pvgrub2"),
        allow_unbooted=bool(r.get("allow_unbooted", False)) if allow_unbooted is None else allow_unbooted,
        accept_known_failures=bool(r.get("accept_known_failures", True)),
        signing_key=key,
        gnupghome=home,
        domains=domains,
        # The disks to ship: none without recipes/rootdisk.toml (a bundle of stand-ins has none), else those chosen
        # in [include] or (None) every one built: `doit build` does not make them (the from-source stages take hours).
        rootdisks=names("rootdisks") if has_rootdisk else (),
    )
