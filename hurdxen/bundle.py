"""The release bundle: artifacts/release/<name>-<version>/ plus one deterministic <name>-<version>.tar.gz.

Contents: kernels/ (gnumach .gz per variant), hurd-modules/ (one per libc pin), pvgrub2/ (images), domains/ (xl
configs), README.md, manifest.json (every pin and hash from the stage manifests, minus volatile fields),
provenance.intoto.json (in-toto Statement v1, SLSA provenance v1), SHA256SUMS (coreutils format) and, when a key
is given, SHA256SUMS.asc (detached, ASCII-armoured).

Everything but SHA256SUMS.asc is a pure function of the stage outputs, the recipes, the project's git revision and
SOURCE_DATE_EPOCH, so two builds are bit-identical. The signature is not: OpenPGP signatures carry their creation
time. It is therefore kept out of the tarball and shipped beside it (publish_dir, publish_oci); it signs SHA256SUMS,
which the tarball does contain.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import sys
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from hurdxen import domains, fsutil
from hurdxen.context import Context
from hurdxen.errors import HurdxenError
from hurdxen.recipes import Recipes

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


# ------------------------------------------------------------------ spec from the recipes


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
    r = recipes["release"]
    rev = project_revision(recipes.root)
    if r.get("version"):
        try:
            version = ReleaseVersion(str(Version(r["version"])), "recipe")
        except InvalidVersion:
            raise HurdxenError(
                f"{recipes.files.get('release', 'recipes/release.toml')}: version {r['version']!r} is not PEP 440",
                hint="write it like 1.2.0 or 1.2.0rc1, or leave it out to use git describe",
            ) from None
    else:
        version = version_from_describe(rev.describe, rev.commit, rev.dirty)
    inc = r.get("include", {})
    signing = r.get("signing", {})
    key = signing.get("key") or os.environ.get("HURDXEN_SIGNING_KEY") or None
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
        domains=recipes.data.get("domains", {}),
    )


# ------------------------------------------------------------------ gathering stage outputs


@dataclass(frozen=True)
class StageOutput:
    stage: str
    variant: str
    directory: Path
    manifest: Mapping[str, Any]  # without volatile keys

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.variant}"


def strip_volatile(data: Any) -> Any:
    """A stage manifest without run-to-run noise (step seconds, log names)."""
    if isinstance(data, Mapping):
        return {k: strip_volatile(v) for k, v in data.items() if k not in VOLATILE_KEYS}
    if isinstance(data, list):
        return [strip_volatile(v) for v in data]
    return data


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HurdxenError(f"{what}: {path} is missing", hint="rebuild that stage") from None
    except (OSError, ValueError) as e:
        raise HurdxenError(f"{what}: cannot read {path}: {e}", hint="rebuild that stage") from e


def _stage_outputs(artifacts: Path, stage: str, wanted: tuple[str, ...] | None) -> list[StageOutput]:
    base = artifacts / stage
    if wanted is None:
        found = (
            sorted(
                p.name
                for p in base.iterdir()
                if (p / MANIFEST).is_file() and not (stage == "gnumach" and p.name == "source")
            )
            if base.is_dir()
            else []
        )
    else:
        found = list(wanted)
    out = []
    for v in found:
        d = base / v
        if not (d / MANIFEST).is_file():
            raise HurdxenError(
                f"bundle: {stage}/{v} has not been built ({d / MANIFEST} is missing)",
                hint=f"run `doit {stage}:{v}` or drop it from recipes/release.toml [include]",
            )
        out.append(StageOutput(stage, v, d, strip_volatile(read_json(d / MANIFEST, f"{stage}/{v}"))))
    return out


def _check_outputs(so: StageOutput, files: Iterable[str]) -> None:
    """A stage file must still be what its manifest recorded (someone may have rebuilt half a stage by hand)."""
    recorded = so.manifest.get("outputs", {})
    for f in files:
        want = recorded.get(f) if isinstance(recorded, Mapping) else None
        if want is not None and fsutil.sha256_file(so.directory / f) != want:
            raise HurdxenError(
                f"bundle: {so.key}/{f} differs from its manifest", hint=f"rebuild it: `doit {so.stage}:{so.variant}`"
            )


def _one_file(so: StageOutput, pattern: str, what: str) -> str:
    cands = sorted(p.name for p in so.directory.iterdir() if p.is_file() and re.fullmatch(pattern, p.name))
    if len(cands) != 1:
        found = ", ".join(cands) or "none"
        raise HurdxenError(
            f"bundle: {so.key} should hold exactly one {what} ({pattern}), found {found}",
            hint=f"rebuild it: `doit {so.stage}:{so.variant}`",
        )
    return cands[0]


def _bits_of(variant: str, m: Mapping[str, Any]) -> tuple[int, bool | None]:
    recorded = m.get("bits")
    bits = int(recorded) if recorded in (32, 64) else (64 if re.search(r"amd64|x86_64|x86-64|64$", variant) else 32)
    pae = m.get("pae")
    if bits == 64:
        pae = None
    elif pae is None:
        pae = "nopae" not in variant
    return bits, pae


@dataclass(frozen=True)
class Payload:
    """A file that goes into the bundle: where it comes from and what it means."""

    path: str  # in the bundle
    source: Path
    stage: str  # stage/variant


@dataclass(frozen=True)
class Gathered:
    payload: tuple[Payload, ...]
    stages: tuple[StageOutput, ...]
    kernels: tuple[domains.KernelInput, ...]
    kernel_expect: Mapping[str, Mapping[str, Any]]  # bundle path -> {variant, bits, pae, strict}
    modules: tuple[domains.ModulesInput, ...]
    pvgrubs: tuple[domains.PvGrubInput, ...]
    extra_stages: tuple[StageOutput, ...]  # tools the outputs were built with (mig, …): recorded, not shipped


def gather(artifacts: Path, spec: BundleSpec) -> Gathered:
    payload: list[Payload] = []
    kernels: list[domains.KernelInput] = []
    expect: dict[str, Mapping[str, Any]] = {}
    gn = _stage_outputs(artifacts, "gnumach", spec.kernels)
    if not gn:
        raise HurdxenError(f"bundle: no kernels in {artifacts / 'gnumach'}", hint="run `doit gnumach` first")
    for so in gn:
        f = _one_file(so, re.escape(f"gnumach-{so.variant}") + r"\.gz|gnumach-.*\.gz", "gzipped kernel")
        _check_outputs(so, [f])
        bits, pae = _bits_of(so.variant, so.manifest)
        rel = f"kernels/{f}"
        payload.append(Payload(rel, so.directory / f, so.key))
        kernels.append(domains.KernelInput(so.variant, rel, bits, pae))
        strict = bool((so.manifest.get("verify") or {}).get("strict", False))
        expect[rel] = {"variant": so.variant, "bits": bits, "pae": pae, "strict": strict}
    hm = _stage_outputs(artifacts, "hurd-modules", spec.hurd_modules)
    if not hm:
        raise HurdxenError(
            f"bundle: no hurd-modules in {artifacts / 'hurd-modules'}", hint="run `doit hurd-modules` first"
        )
    modules: list[domains.ModulesInput] = []
    for so in hm:
        _one_file(so, "hurd-modules", "hurd-modules")
        _check_outputs(so, ["hurd-modules"])
        rec = (so.manifest.get("ramdisk") or {}).get("sha256")
        if rec and rec != fsutil.sha256_file(so.directory / "hurd-modules"):
            raise HurdxenError(f"bundle: {so.key}/hurd-modules differs from its manifest", hint="rebuild it")
        rel = f"hurd-modules/hurd-modules-{so.variant}"
        payload.append(Payload(rel, so.directory / "hurd-modules", so.key))
        mbits = so.manifest.get("bits")
        modules.append(
            domains.ModulesInput(
                so.variant, rel, int(mbits) if mbits in (32, 64) else None, so.manifest.get("libc_version")
            )
        )
    pg = _stage_outputs(artifacts, "pvgrub2", spec.pvgrub2)
    pvgrubs: list[domains.PvGrubInput] = []
    for so in pg:
        f = _one_file(so, r"pv-grub-.*\.gz", "pv-grub2 image")
        _check_outputs(so, [f])
        m = re.fullmatch(r"pv-grub-(i386-xen|x86_64-xen)-(.+)\.gz", f)
        platform = str(so.manifest.get("platform") or (m.group(1) if m else "i386-xen"))
        flavour = str(so.manifest.get("flavour") or (m.group(2) if m else "disk"))
        rel = f"pvgrub2/{f}"
        if any(p.path == rel for p in payload):
            raise HurdxenError(f"bundle: two pv-grub2 images are both named {f}", hint="rename one in pvgrub2.toml")
        payload.append(Payload(rel, so.directory / f, so.key))
        pvgrubs.append(domains.PvGrubInput(so.variant, rel, platform, flavour))
    # Tools (mig, …): every other stage with a manifest, so the release records what built the kernels.
    shipped = {"gnumach", "hurd-modules", "pvgrub2", "boot", "release", "logs", "work"}
    extra: list[StageOutput] = []
    if artifacts.is_dir():
        for d in sorted(artifacts.iterdir()):
            if d.is_dir() and d.name not in shipped and not d.name.startswith("."):
                extra += _stage_outputs(artifacts, d.name, None)
    return Gathered(
        tuple(payload), tuple([*gn, *hm, *pg]), tuple(kernels), expect, tuple(modules), tuple(pvgrubs), tuple(extra)
    )


# ------------------------------------------------------------------ boot gate


@dataclass(frozen=True)
class BootGate:
    checked: bool  # a report was there and read
    passed: bool
    allow_unbooted: bool
    cases: tuple[tuple[str, str, str], ...]  # (case, verdict, reason)

    def summary(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "passed": self.passed,
            "allow_unbooted": self.allow_unbooted,
            "cases": [{"case": c, "verdict": v, "reason": r} for c, v, r in self.cases],
        }


def boot_gate(artifacts: Path, spec: BundleSpec) -> BootGate:
    """Only a booted release is bundled: every case pass / expected (known failures if the recipe accepts them)."""
    path = artifacts / "boot" / "boot-report.json"
    hint = "run `doit boot`, or bundle anyway with `doit bundle release.allow_unbooted=true` (the manifest says so)"
    if not path.is_file():
        if spec.allow_unbooted:
            return BootGate(False, False, True, ())
        raise HurdxenError(f"bundle: no boot check ({path} is missing)", hint=hint)
    data = read_json(path, "boot")
    raw = data.get("cases", []) if isinstance(data, Mapping) else []
    items = raw.items() if isinstance(raw, Mapping) else ((None, c) for c in raw)
    cases: list[tuple[str, str, str]] = []
    for k, c in items:
        c = c if isinstance(c, Mapping) else {"verdict": c}
        name = str(c.get("case") or c.get("name") or k or "?")
        cases.append((name, str(c.get("verdict", "?")), str(c.get("reason", ""))))
    ok = set(OK_VERDICTS) | ({KNOWN_FAILURE} if spec.accept_known_failures else set())
    bad = [c for c in cases if c[1] not in ok]
    passed = bool(cases) and not bad
    if not passed and not spec.allow_unbooted:
        first = f"case {bad[0][0]}: {bad[0][1]}" + (f" ({bad[0][2]})" if bad[0][2] else "") if bad else "no cases"
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise HurdxenError(f"bundle: the boot check did not pass: {first}{more}", hint=hint)
    return BootGate(True, passed, spec.allow_unbooted, tuple(sorted(cases)))


# ------------------------------------------------------------------ manifest, provenance, README


def _deps_from(node: Any, where: str, out: list[dict[str, Any]]) -> None:
    """Every pin below a stage manifest's inputs: dicts with a sha256 (and url / package), git commits."""
    if isinstance(node, list):
        for i, v in enumerate(node):
            _deps_from(v, f"{where}[{i}]", out)
        return
    if not isinstance(node, Mapping):
        return
    sha = node.get("sha256")
    commit = node.get("commit")
    if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
        if node.get("url"):
            uri = str(node["url"])
        elif node.get("package"):
            q = f"?arch={node['arch']}" if node.get("arch") else ""
            uri = f"pkg:deb/debian/{node['package']}@{node.get('version', '')}{q}"
        else:
            uri = f"hurdxen:{where}" + (f"/{node['path']}" if node.get("path") else "")
        out.append({"name": where, "uri": uri, "digest": {"sha256": sha}})
    if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit):
        url = node.get("git") or node.get("url") or "unknown"
        out.append({"name": where, "uri": f"git+{url}@{commit}", "digest": {"gitCommit": commit}})
    for k, v in sorted(node.items()):
        if k not in ("sha256", "outputs") and isinstance(v, Mapping | list):
            _deps_from(v, f"{where}.{k}", out)


INPUT_KEYS = ("inputs", "modules", "memdisk", "source", "debian")


def resolved_dependencies(stages: Iterable[StageOutput], revision: ProjectRevision) -> list[dict[str, Any]]:
    deps: list[dict[str, Any]] = []
    if revision.commit:
        deps.append(
            {
                "name": "hurdxen",
                "uri": f"git+{revision.remote or 'hurdxen'}@{revision.commit}",
                "digest": {"gitCommit": revision.commit},
            }
        )
    for so in stages:
        for key in INPUT_KEYS:
            if key in so.manifest:
                _deps_from(so.manifest[key], f"{so.key}:{key}", deps)
        step = so.manifest.get("step") or {}
        image_id = step.get("image_id") if isinstance(step, Mapping) else None
        if isinstance(image_id, str) and image_id.startswith("sha256:"):
            deps.append(
                {
                    "name": f"{so.key}:image",
                    "uri": f"docker-image:{step.get('image', '')}",
                    "digest": {"sha256": image_id.removeprefix("sha256:")},
                }
            )
    seen: set[str] = set()
    unique = []
    for d in deps:
        k = json.dumps([d["uri"], d["digest"]], sort_keys=True)
        if k not in seen:
            seen.add(k)
            unique.append(d)
    return sorted(unique, key=lambda d: (d["name"], d["uri"]))


def _tools() -> dict[str, str]:
    from importlib import metadata

    out = {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    for dist in ("hurdxen", "packaging"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_manifest(
    spec: BundleSpec,
    g: Gathered,
    gate: BootGate,
    files: Mapping[str, str],
    domain_cfgs: Iterable[domains.DomainConfig],
    signing_fpr: str | None,
) -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT,
        "name": spec.name,
        "version": spec.version.version,
        "version_source": spec.version.source,
        "version_note": spec.version.note,
        "release": spec.release,
        "source_date_epoch": spec.source_date_epoch,
        "project": {"commit": spec.revision.commit, "dirty": spec.revision.dirty, "describe": spec.revision.describe},
        "boot": gate.summary(),
        "signed": signing_fpr is not None,
        "signing_key": signing_fpr,
        "files": dict(sorted(files.items())),
        "kernels": dict(sorted(g.kernel_expect.items())),
        "hurd_modules": {
            m.path: {"variant": m.variant, "bits": m.bits, "libc_version": m.libc_version} for m in g.modules
        },
        "pvgrub2": {p.path: {"image": p.name, "platform": p.platform, "flavour": p.flavour} for p in g.pvgrubs},
        "domains": {d.path: {"name": d.name, "boot": d.boot, "warnings": list(d.warnings)} for d in domain_cfgs},
        "stages": {so.key: so.manifest for so in g.stages},
        "tools": {"stages": {so.key: so.manifest for so in g.extra_stages}, "bundler": _tools()},
        "inputs": resolved_dependencies([*g.stages, *g.extra_stages], spec.revision),
        "images": image_packages([*g.stages, *g.extra_stages]),
    }


def image_packages(stages: Iterable[StageOutput]) -> dict[str, list[str]]:
    """Each step image's installed packages (`name version arch`), as the stage manifests recorded them: the
    toolchain that built the release, like a .buildinfo."""
    out: dict[str, list[str]] = {}
    for so in stages:
        step = so.manifest.get("step") or {}
        if isinstance(step, Mapping) and isinstance(step.get("image"), str) and step.get("image_packages"):
            out.setdefault(step["image"], list(step["image_packages"]))
    return dict(sorted(out.items()))


def make_provenance(spec: BundleSpec, subjects: Mapping[str, str], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """in-toto Statement v1 with a SLSA provenance v1 predicate; no start/finish times (it must be reproducible)."""
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(subjects.items())],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "release": spec.release,
                    "include": {"kernels": spec.kernels, "hurd_modules": spec.hurd_modules, "pvgrub2": spec.pvgrub2},
                    "allow_unbooted": spec.allow_unbooted,
                    "domains": dict(spec.domains),
                },
                "internalParameters": {"source_date_epoch": spec.source_date_epoch, "project": manifest["project"]},
                "resolvedDependencies": manifest["inputs"],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": manifest["tools"]["bundler"]},
                "metadata": {"invocationId": f"{spec.release}@{spec.revision.commit or 'unknown'}"},
            },
        },
    }


def sums_text(files: Mapping[str, str]) -> str:
    """coreutils format: `sha256sum -c SHA256SUMS` checks it (two spaces: text mode, which is binary-safe on Unix)."""
    return "".join(f"{h}  {n}\n" for n, h in sorted(files.items()))


def make_readme(
    spec: BundleSpec,
    g: Gathered,
    gate: BootGate,
    cfgs: list[domains.DomainConfig],
    files: Mapping[str, str],
    signing_fpr: str | None,
) -> str:
    r = spec.release
    base = f"{spec.domains.get('install_dir', '/srv/xen').rstrip('/')}/{r}"
    lines = [
        f"# {r}: GNU Mach and the Hurd's boot modules for Xen PV guests",
        "",
        f"Built by hurdxen from commit {spec.revision.commit or 'unknown'}"
        + (" (with uncommitted changes)" if spec.revision.dirty else "")
        + f", SOURCE_DATE_EPOCH {spec.source_date_epoch} ({_iso(spec.source_date_epoch)}).",
    ]
    if spec.version.note:
        lines.append(f"Version {spec.version.version} is a fallback: {spec.version.note}.")
    lines += ["", "## Contents", "", "| file | what |", "|---|---|"]
    for k in g.kernels:
        arch = "64-bit" if k.bits == 64 else ("32-bit PAE" if k.pae else "32-bit non-PAE")
        lines.append(f"| {k.path} | GNU Mach {k.variant} ({arch}), gzipped |")
    for m in g.modules:
        libc = f", libc0.3 {m.libc_version}" if m.libc_version else ""
        lines.append(f"| {m.path} | the Hurd's boot modules (ext2fs + exec) as one ramdisk{libc} |")
    for p in g.pvgrubs:
        lines.append(f"| {p.path} | pv-grub2 {p.platform}, flavour {p.flavour} |")
    for c in cfgs:
        lines.append(f"| {c.path} | xl config: {'direct boot' if c.boot == 'direct' else 'through pv-grub2'} |")
    lines += [
        f"| {MANIFEST} | every input pin and hash, tool and image versions |",
        f"| {PROVENANCE} | in-toto / SLSA v1 provenance |",
        f"| {SUMS} | sha256 of every file |",
        "",
        "## Verify",
        "",
        "```sh",
        f"sha256sum -c {SUMS}",
    ]
    if signing_fpr:
        lines += [f"gpg --verify {SIGNATURE} {SUMS}   # expect key {signing_fpr}", "```", ""]
        lines += [
            f"{SIGNATURE} is shipped beside the tarball, not inside it (a signature carries its own time, the "
            "tarball is reproducible), and signs the SHA256SUMS that is inside.",
        ]
    else:
        lines += [
            "```",
            "",
            "**This release is not signed**: there is no SHA256SUMS.asc; check SHA256SUMS against "
            "a copy obtained over a trusted channel.",
        ]
    lines += [
        "",
        "With hurdxen: `python -m hurdxen verify-release DIR-OR-TARBALL [--keyring KEY.asc]` also checks "
        "manifest.json and the kernels' Xen notes.",
        "",
        "## Boot check",
        "",
    ]
    if not gate.checked:
        lines.append("**Not boot-tested**: built with allow_unbooted, no boot report was there.")
    elif not gate.passed:
        lines.append("**The boot check did not pass**; bundled anyway with allow_unbooted:")
    for case, verdict, why in gate.cases:
        lines.append(f"- {case}: {verdict}" + (f" ({why})" if why else ""))
    lines += [
        "",
        "## Boot",
        "",
        "Needs a hypervisor that runs 32-bit PV guests (CONFIG_PV32=y; Debian's Xen is built without it).",
        "",
        "```sh",
        f"tar -xzf {r}.tar.gz -C {base.rsplit('/', 1)[0]}",
    ]
    for c in cfgs:
        lines.append(f"xl create -c {base}/{c.path}")
    lines += [
        "```",
        "",
        '- direct: `kernel` = gnumach, `ramdisk` = hurd-modules, `extra = "root=device:hd0"`. Xen disks are usually '
        "not partitioned; for partition N write `root=part:N:device:hd0` (`domains.root`).",
        "- pv-grub2: `kernel` = the pv-grub2 image, no ramdisk; GRUB loads gnumach and the modules.",
        "- Edit `disk`, `memory` (32-bit GNU Mach: at most ~580 MB) and `vif` in the config, or rebuild with "
        "`doit bundle domains.memory=…`.",
        "",
        "Common failures:",
        "",
        f"- `{domains.DOMU_NOT_PAE}`: a non-PAE kernel on a PAE hypervisor; use the xen-pae kernel.",
        "- `Found 32-bit PV kernel, but CONFIG_PV32 missing`: rebuild Xen with CONFIG_PV32=y.",
        "- `bootstrap_create: No bootstrap code loaded with the kernel!`: the ramdisk line is missing.",
        "- `error: incompatible architecture: 2.` (pv-grub2): a 32-bit kernel given to the 64-bit image.",
    ]
    warnings = [w for c in cfgs for w in c.warnings]
    if warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ domain configs


def domain_configs(spec: BundleSpec, g: Gathered) -> list[domains.DomainConfig]:
    cfgs: list[domains.DomainConfig] = []
    for k in g.kernels:
        s = domains.settings_for(spec.domains, "direct", k.variant)
        if not s.enabled:
            continue
        mods = [m for m in g.modules if m.bits in (None, k.bits)]
        if not mods:
            raise HurdxenError(
                f"bundle: no {k.bits}-bit hurd-modules for kernel {k.variant}",
                hint=f"build one, or set domains.kernel.{k.variant}.enabled = false",
            )
        for m in mods:
            name = f"{s.name_prefix}-{k.variant}" + (f"-{m.variant}" if len(mods) > 1 else "")
            cfgs.append(domains.direct_config(spec.release, k, m, s, name))
    for p in g.pvgrubs:
        s = domains.settings_for(spec.domains, "pvgrub2", p.name)
        if s.enabled:
            cfgs.append(domains.pvgrub_config(spec.release, p, s))
    names = [c.path for c in cfgs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise HurdxenError(f"bundle: two domain configs named {dups[0]}", hint="rename a variant or image")
    return cfgs


# ------------------------------------------------------------------ signing


def sign_sums(sums: Path, key: str, gnupghome: str | None) -> tuple[Path, str]:
    """Detached ASCII-armoured signature of SHA256SUMS; returns (signature, signer fingerprint)."""
    import gnupg

    home = gnupghome or os.environ.get("GNUPGHOME") or None
    try:
        gpg = gnupg.GPG(gnupghome=home)
    except (OSError, ValueError) as e:
        raise HurdxenError(f"sign: cannot run gpg: {e}", hint="apt-get install gnupg") from e
    secret = gpg.list_keys(secret=True, keys=[key])
    if not secret:
        raise HurdxenError(
            f"sign: no secret key {key!r} in {home or '~/.gnupg'}",
            hint="check release.signing.key / HURDXEN_SIGNING_KEY and release.signing.gnupghome (gpg -K lists keys)",
        )
    passphrase = os.environ.get("HURDXEN_SIGNING_PASSPHRASE")  # never recorded anywhere
    sig_path = sums.with_name(SIGNATURE)
    with open(sums, "rb") as f:
        result = gpg.sign_file(
            f, keyid=key, detach=True, binary=False, passphrase=passphrase, extra_args=["--digest-algo", "SHA256"]
        )
    if not result or not result.data:
        status = getattr(result, "status", None) or getattr(result, "stderr", "")[-200:]
        raise HurdxenError(
            f"sign: gpg could not sign with {key!r}: {status}",
            hint="is the key protected? set HURDXEN_SIGNING_PASSPHRASE or use gpg-agent",
        )
    fsutil.write_atomic(sig_path, result.data)
    return sig_path, str(result.fingerprint or secret[0]["fingerprint"])


# ------------------------------------------------------------------ tarball


def _norm_mode(path: Path) -> int:
    return 0o755 if path.is_dir() or (path.stat().st_mode & 0o111) else 0o644


def deterministic_tarball(src: Path, prefix: str, mtime: int, exclude: Iterable[str] = ()) -> bytes:
    """ustar, sorted names, owner 0:0 with empty names, mtime = SOURCE_DATE_EPOCH, modes 0644/0755; gzip without a
    name or time in its header. Same input tree → same bytes (given the same zlib)."""
    skip = set(exclude)
    entries = sorted(
        p for p in src.rglob("*") if str(p.relative_to(src)) not in skip and not p.name.startswith(fsutil.TMP_PREFIX)
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, path: Path | None) -> None:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = mtime
            if path is None or path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                return
            if path.is_symlink() or not stat.S_ISREG(path.stat().st_mode):
                raise HurdxenError(f"tarball: {path} is not a regular file", hint="a bundle holds plain files only")
            info.mode = _norm_mode(path)
            info.size = path.stat().st_size
            with open(path, "rb") as f:
                tar.addfile(info, f)

        add(prefix + "/", None)
        for p in entries:
            rel = str(p.relative_to(src))
            add(f"{prefix}/{rel}" + ("/" if p.is_dir() else ""), p)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


# ------------------------------------------------------------------ the command


@dataclass(frozen=True)
class BundleResult:
    name: str
    version: str
    directory: Path  # artifacts/release/<name>-<version>/
    tarball: Path  # artifacts/release/<name>-<version>.tar.gz (without the signature)
    tarball_sha256: str
    sums: Path
    signature: Path | None
    manifest: Path
    files: Mapping[str, str] = field(default_factory=dict)  # every file in the bundle but the signature
    signed_by: str | None = None
    boot_passed: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def release(self) -> str:
        return f"{self.name}-{self.version}"


def release_dir(artifacts: Path) -> Path:
    return artifacts / "release"


def build_bundle(artifacts: Path, spec: BundleSpec) -> BundleResult:
    """Gather, gate on the boot check, write the bundle directory atomically, then its tarball."""
    gate = boot_gate(artifacts, spec)
    g = gather(artifacts, spec)
    cfgs = domain_configs(spec, g)
    warnings = [w for c in cfgs for w in c.warnings]
    if spec.version.note:
        warnings.append(f"version {spec.version.version}: {spec.version.note}")
    if not gate.passed:
        warnings.append("bundled without a passing boot check (release.allow_unbooted)")

    files: dict[str, str] = {p.path: fsutil.sha256_file(p.source) for p in g.payload}
    texts: dict[str, bytes] = {c.path: c.text.encode() for c in cfgs}
    files.update({k: fsutil.sha256_bytes(v) for k, v in texts.items()})
    # The fingerprint goes into README and manifest before signing; sign_sums checks it is the one that signed.
    fpr = _fingerprint(spec.signing_key, spec.gnupghome) if spec.signing_key else None
    readme = make_readme(spec, g, gate, cfgs, files, fpr).encode()
    texts[README] = readme
    files[README] = fsutil.sha256_bytes(readme)
    manifest = make_manifest(spec, g, gate, files, cfgs, fpr)
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    subjects = {**files, MANIFEST: fsutil.sha256_bytes(manifest_bytes)}
    prov = (json.dumps(make_provenance(spec, subjects, manifest), indent=2, sort_keys=True) + "\n").encode()
    all_files = {**subjects, PROVENANCE: fsutil.sha256_bytes(prov)}
    sums = sums_text(all_files).encode()
    all_files[SUMS] = fsutil.sha256_bytes(sums)

    out_root = release_dir(artifacts)
    final = out_root / spec.release
    tarball = out_root / f"{spec.release}.tar.gz"
    signed_by = None
    with fsutil.atomic_dir(final) as tmp:
        for p in g.payload:
            fsutil.write_atomic(tmp / p.path, p.source.read_bytes())
        for rel, data in texts.items():
            fsutil.write_atomic(tmp / rel, data)
        fsutil.write_atomic(tmp / MANIFEST, manifest_bytes)
        fsutil.write_atomic(tmp / PROVENANCE, prov)
        fsutil.write_atomic(tmp / SUMS, sums)
        for dirpath in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            os.chmod(dirpath, 0o755)  # whatever the umask
        if spec.signing_key:
            _, signed_by = sign_sums(tmp / SUMS, spec.signing_key, spec.gnupghome)
            if fpr and signed_by.upper() != fpr.upper():
                raise HurdxenError(
                    f"sign: gpg signed with {signed_by}, expected {fpr}", hint="use the full fingerprint"
                )
        data = deterministic_tarball(tmp, spec.release, spec.source_date_epoch, exclude=[SIGNATURE])
        fsutil.write_atomic(tarball, data)
    return BundleResult(
        name=spec.name,
        version=spec.version.version,
        directory=final,
        tarball=tarball,
        tarball_sha256=fsutil.sha256_bytes(data),
        sums=final / SUMS,
        signature=final / SIGNATURE if signed_by else None,
        manifest=final / MANIFEST,
        files=all_files,
        signed_by=signed_by,
        boot_passed=gate.passed,
        warnings=tuple(warnings),
    )


def _gpg(gnupghome: str | None) -> Any:
    import gnupg

    return gnupg.GPG(gnupghome=gnupghome or os.environ.get("GNUPGHOME") or None)


def _fingerprint(key: str, gnupghome: str | None) -> str:
    """The signing key's full fingerprint, checked before anything is written."""
    keys = _gpg(gnupghome).list_keys(secret=True, keys=[key])
    if not keys:
        raise HurdxenError(
            f"sign: no secret key {key!r} in {gnupghome or os.environ.get('GNUPGHOME') or '~/.gnupg'}",
            hint="check release.signing.key / HURDXEN_SIGNING_KEY and release.signing.gnupghome (gpg -K lists keys)",
        )
    if len(keys) != 1:
        raise HurdxenError(f"sign: {key!r} matches {len(keys)} secret keys", hint="give the full fingerprint")
    return str(keys[0]["fingerprint"])


def bundle(ctx: Context, recipes: Recipes, *, allow_unbooted: bool | None = None) -> BundleResult:
    """Entry point (`doit bundle`): the release bundle from ctx.artifacts' stage outputs."""
    spec = spec_from_recipes(recipes, ctx.source_date_epoch, allow_unbooted)
    return build_bundle(ctx.artifacts, spec)


def load_result(directory: Path) -> BundleResult:
    """A BundleResult for an existing bundle directory (for `publish` without rebuilding)."""
    m = read_json(directory / MANIFEST, "bundle")
    tarball = directory.parent / f"{m['release']}.tar.gz"
    if not tarball.is_file():
        raise HurdxenError(f"bundle: {tarball} is missing", hint="run `doit bundle` again")
    sig = directory / SIGNATURE
    sums = {n: h for h, n in (line.split("  ", 1) for line in (directory / SUMS).read_text().splitlines())}
    sums[SUMS] = fsutil.sha256_file(directory / SUMS)
    return BundleResult(
        name=m["name"],
        version=m["version"],
        directory=directory,
        tarball=tarball,
        tarball_sha256=fsutil.sha256_file(tarball),
        sums=directory / SUMS,
        signature=sig if sig.is_file() else None,
        manifest=directory / MANIFEST,
        files=sums,
        signed_by=m.get("signing_key"),
        boot_passed=bool(m.get("boot", {}).get("passed")),
    )
