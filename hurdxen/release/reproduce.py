"""Reproducibility check: build again somewhere else, under other conditions, and compare every artefact.

`reproduce` calls a build callable with a fresh artifacts directory (the lead wires it to `doit build` in a temp
copy of the project with HURDXEN_ARTIFACTS set). The second build runs with a different path (longer, with a
space), umask, TZ, locale and, naturally, wall-clock time; SOURCE_DATE_EPOCH stays what the recipes say. Then every
file is compared byte for byte. JSON files that differ only in volatile keys (a step's seconds, log names) count as
equal. On any difference diffoscope writes an HTML and a text report and the check fails.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.release.inputs import strip_volatile
from hurdxen.release.spec import SIGNATURE

BuildFn = Callable[[Path], object]  # runs the whole build into the artifacts dir it is given

# Not build outputs: logs and scratch, the doit database, the boot check's serial logs (they carry timings), and
# OpenPGP signatures (they carry their creation time by design).
DEFAULT_EXCLUDE = (
    "logs/*",
    "work/*",
    ".doit*",
    ".lock*",
    "*.lock",
    "boot/*",
    "canary/*",  # `doit canary`'s floating build: not the release's
    f"*/{SIGNATURE}",
    SIGNATURE,
    f"{fsutil.TMP_PREFIX}*",
    f"*/{fsutil.TMP_PREFIX}*",
)


@dataclass(frozen=True)
class Variation:
    """The conditions one build runs under."""

    label: str
    umask: int
    tz: str
    locale: str
    path_suffix: str  # added to the work directory name: a different (and longer) path

    def env(self) -> dict[str, str]:
        return {"TZ": self.tz, "LC_ALL": self.locale, "LANG": self.locale, "LANGUAGE": self.locale.split(".")[0]}


FIRST = Variation("a", 0o022, "UTC", "C.UTF-8", "a")
SECOND = Variation("b", 0o002, "Pacific/Kiritimati", "fr_FR.UTF-8", "b with space/and-a-much-longer-path")


@dataclass(frozen=True)
class Difference:
    path: str
    kind: str  # "content", "only in reference", "only in rebuild"
    report_html: Path | None = None
    report_text: Path | None = None


@dataclass(frozen=True)
class ReproduceResult:
    reference: Path
    rebuild: Path
    compared: tuple[str, ...]
    volatile_only: tuple[str, ...]  # JSON files equal once volatile keys are dropped
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences


@contextlib.contextmanager
def varied(v: Variation) -> Iterator[None]:
    """Set umask, TZ and locale for an in-process build (and for subprocesses it starts); restore them after."""
    saved = {k: os.environ.get(k) for k in v.env()}
    old_umask = os.umask(v.umask)
    os.environ.update(v.env())
    if hasattr(time, "tzset"):
        time.tzset()
    try:
        yield
    finally:
        os.umask(old_umask)
        for k, val in saved.items():
            if val is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = val
        if hasattr(time, "tzset"):
            time.tzset()


def _excluded(rel: str, exclude: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(rel, pat) for pat in exclude)


def tree(root: Path, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if (p.is_file() or p.is_symlink()) and not _excluded(rel, exclude):
            out[rel] = p
    return out


def _same_json_modulo_volatile(a: Path, b: Path) -> bool:
    try:
        return bool(strip_volatile(json.loads(a.read_text())) == strip_volatile(json.loads(b.read_text())))
    except (OSError, ValueError):
        return False


def _packages_in(node: object, out: dict[str, str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image_packages" and isinstance(v, list):
                for line in v:
                    name, _, rest = str(line).partition(" ")
                    out[name] = rest
            else:
                _packages_in(v, out)
    elif isinstance(node, list):
        for v in node:
            _packages_in(v, out)


def package_drift(a: Path, b: Path, most: int = 5) -> str | None:
    """`name old → new` for packages whose version (or presence) differs between two manifests' image lists."""
    try:
        pa: dict[str, str] = {}
        pb: dict[str, str] = {}
        _packages_in(json.loads(a.read_text()), pa)
        _packages_in(json.loads(b.read_text()), pb)
    except (OSError, ValueError):
        return None
    moved = [
        f"{n} {pa.get(n, '(absent)').split(' ')[0]} → {pb.get(n, '(absent)').split(' ')[0]}"
        for n in sorted(set(pa) | set(pb))
        if pa.get(n) != pb.get(n)
    ]
    if not moved:
        return None
    return ", ".join(moved[:most]) + (f" (+{len(moved) - most} more)" if len(moved) > most else "")


def compare_trees(
    reference: Path, rebuild: Path, report_dir: Path, exclude: tuple[str, ...] = DEFAULT_EXCLUDE
) -> ReproduceResult:
    a, b = tree(reference, exclude), tree(rebuild, exclude)
    diffs: list[Difference] = []
    volatile: list[str] = []
    for rel in sorted(set(a) | set(b)):
        if rel not in b:
            diffs.append(Difference(rel, "only in reference"))
        elif rel not in a:
            diffs.append(Difference(rel, "only in rebuild"))
        elif a[rel].is_symlink() or b[rel].is_symlink():
            if os.readlink(a[rel]) != os.readlink(b[rel]) if a[rel].is_symlink() and b[rel].is_symlink() else True:
                diffs.append(Difference(rel, "content"))
        elif fsutil.sha256_file(a[rel]) != fsutil.sha256_file(b[rel]):
            if rel.endswith(".json") and _same_json_modulo_volatile(a[rel], b[rel]):
                volatile.append(rel)
            elif rel.endswith(".json") and (drift := package_drift(a[rel], b[rel])):
                # The toolchain moved: say which packages, not just that a manifest differs.
                diffs.append(Difference(rel, f"image packages differ: {drift}"))
            else:
                html, text = diffoscope(a[rel], b[rel], report_dir, rel)
                diffs.append(Difference(rel, "content", html, text))
    return ReproduceResult(reference, rebuild, tuple(sorted(set(a) & set(b))), tuple(volatile), tuple(diffs))


def diffoscope(a: Path, b: Path, report_dir: Path, rel: str) -> tuple[Path | None, Path | None]:
    """diffoscope --html and --text for one pair; (None, None) when diffoscope is not installed (then `cmp`)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = rel.replace("/", "_")
    html, text = report_dir / f"{stem}.diffoscope.html", report_dir / f"{stem}.diffoscope.txt"
    exe = shutil.which("diffoscope")
    if exe is None:
        cmp = subprocess.run(["cmp", str(a), str(b)], capture_output=True, text=True, check=False)
        fsutil.write_atomic(text, f"diffoscope not installed (apt-get install diffoscope-minimal)\n{cmp.stdout}")
        return None, text
    # Exit status 1 means "differences found"; only >1 is diffoscope failing.
    p = subprocess.run(
        [
            exe,
            "--html",
            str(html),
            "--text",
            str(text),
            "--no-progress",
            "--exclude-directory-metadata=recursive",
            str(a),
            str(b),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if p.returncode > 1:
        fsutil.write_atomic(text, f"diffoscope failed ({p.returncode}):\n{p.stderr[-2000:]}")
        return (html if html.is_file() else None), text
    return html, text


def reproduce(
    build: BuildFn,
    work: Path,
    *,
    reference: Path | None = None,
    report_dir: Path | None = None,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    first: Variation = FIRST,
    second: Variation = SECOND,
    keep: bool = False,
) -> ReproduceResult:
    """Build into a clean directory under `work` (twice, unless a `reference` artifacts dir is given), compare,
    and raise HurdxenError naming the first difference and the diffoscope report when the builds differ."""
    work.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="reproduce-", dir=work))
    report_dir = report_dir or work / "reproduce-report"
    try:
        if reference is None:
            reference = base / first.path_suffix / "artifacts"
            reference.mkdir(parents=True)
            with varied(first):
                build(reference)
        rebuild = base / second.path_suffix / "artifacts"
        rebuild.mkdir(parents=True)
        with varied(second):
            build(rebuild)
        if report_dir.exists():
            shutil.rmtree(report_dir)
        # The work and report directories may sit inside the reference artifacts dir: they are not artefacts.
        for inner in (work, report_dir):
            with contextlib.suppress(ValueError):
                exclude = (*exclude, f"{inner.resolve().relative_to(reference.resolve())}/*")
        result = compare_trees(reference, rebuild, report_dir, exclude)
        if not result.compared and not result.differences:
            raise HurdxenError("reproduce: the builds produced no files to compare", hint="check the build callable")
        if result.differences:
            d = result.differences[0]
            more = f" (+{len(result.differences) - 1} more)" if len(result.differences) > 1 else ""
            see = d.report_html or d.report_text
            raise ReproduceError(
                f"reproduce: {d.path} differs between builds ({d.kind}){more}",
                hint=f"see {see}" if see else f"compare {reference / d.path} and {rebuild / d.path}",
                result=result,
            )
        return result
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


class ReproduceError(HurdxenError):
    """A failed reproduction; `.result` holds every difference and its report."""

    def __init__(self, message: str, hint: str | None, result: ReproduceResult) -> None:
        super().__init__(message, hint)
        self.result = result


def project_copy(root: Path, dest: Path) -> Path:
    """A clone of the project with the working tree's changes and the local overlay, so the copy builds exactly
    what `root` would (the bundle records the git revision, dirty or not)."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(root), str(dest)], check=True)
    changed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--modified", "--others", "--exclude-standard"],
            cwd=root,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    deleted = set(
        subprocess.run(["git", "ls-files", "-z", "--deleted"], cwd=root, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    for rel in [*filter(None, changed), "hurdxen.local.toml"]:
        src = root / rel
        if rel in deleted:
            (dest / rel).unlink(missing_ok=True)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def own_code(copy: Path, env: dict[str, str]) -> Path:
    """The hurdxen package a process started like the rebuild imports; it must be the copy's own (the revision
    being reproduced), never whatever hurdxen the interpreter's environment has installed."""
    import sys

    if not (copy / "hurdxen" / "__init__.py").is_file():
        raise HurdxenError(
            f"reproduce: the revision in {copy} has no hurdxen/ package",
            hint="reproduce a checkout that holds the code with its recipes (commit hurdxen/)",
        )
    probe = subprocess.run(
        [sys.executable, "-c", "import hurdxen; print(hurdxen.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
    if found is None or not found.is_relative_to((copy / "hurdxen").resolve()):
        raise HurdxenError(
            f"reproduce: the rebuild would run hurdxen from {found or 'nowhere'}, not from {copy}",
            hint="PYTHONPATH must name the clean copy; check for a sitecustomize or a .pth that imports hurdxen",
        )
    return found


def rebuild(root: Path, art: Path, cache: Path) -> Path:
    """`doit build bundle` into `art` in a clean copy of `root`, run by the copy's own code; returns the copy."""
    import sys

    copy = project_copy(root, art.parent / "project")
    env = {
        **os.environ,
        "HURDXEN_ARTIFACTS": str(art),
        "HURDXEN_CACHE": str(cache),
        "PYTHONPATH": str(copy),
        "HURDXEN_STAGE_CACHE": "off",  # the rebuild builds every stage itself: a cache would compare with itself
    }
    own_code(copy, env)
    proc = subprocess.run(
        [sys.executable, "-m", "doit", "build", "bundle"], cwd=copy, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:] + proc.stderr.splitlines()[-15:])
        raise HurdxenError(
            f"reproduce: the rebuild in {copy} failed:\n{tail}",
            hint="run the same `doit build bundle` there to see why",
        )
    return copy


def other_releases(artifacts: Path, release: str) -> tuple[str, ...]:
    """Exclusion patterns for bundles the rebuild does not make: those of other revisions, which an artifacts tree
    from before the bundle stage kept under artifacts/release/ (the stage's directory, artifacts/bundle/<name>/,
    holds only this revision's, `release`)."""
    d = artifacts / "release"
    names = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    return tuple(pat for n in names for pat in (f"release/{glob.escape(n)}", f"release/{glob.escape(n)}/*"))


def reproduce_project(root: Path, artifacts: Path, cache: Path, release: str | None = None) -> ReproduceResult:
    """`doit reproduce`: rebuild `doit build bundle` in a clean copy and compare with `artifacts` (of its releases,
    only `release`, this revision's, when given)."""
    return reproduce(
        lambda art: rebuild(root, art, cache),
        artifacts / "reproduce-work",
        reference=artifacts,
        report_dir=artifacts / "reproduce-report",
        exclude=(*DEFAULT_EXCLUDE, *(other_releases(artifacts, release) if release else ())),
    )
