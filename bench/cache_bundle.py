"""(g') the stage cache end to end: fresh clone -> verified bundle (boot check included), cold against warm.

    HURDXEN_CACHE=/work/cache-shared .venv/bin/python bench/cache_bundle.py [--gnumach-git PATH] [--json FILE]

Two git clones of one tagged commit of this checkout at different paths (one with a space). The first runs
`doit build bundle verify` with an empty stage cache and pushes every stage (cold); the second, with empty
artifacts, runs the same command and pulls them (warm); the two bundle tarballs' sha256 are compared. The registry
is Debian's docker-registry on 127.0.0.1; the Hurd boot modules are gcc-built stand-ins (tests/elfstandins.py) in a
signed apt archive on 127.0.0.1, since debian-ports cannot be reached here: the boot check boots the real GNU Mach
kernels with them (the README's stand-in boot cases). The hypervisor and dom0 of the boot check come from the
source cache in both runs (they are not stages: the stage cache does not hold them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from aptrepo import AptRepo, GpgKey  # noqa: E402
from elfstandins import ElfFactory  # noqa: E402
from ociregistry import drop_key, make_key, run_registry  # noqa: E402
from projectcopy import to_toml  # noqa: E402
from test_hurd_modules_stage import ARCHES, publish_hurd, variant_overlay  # noqa: E402

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True)


def tagged_copy(dest: Path) -> None:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("dodo.py", "recipes", "containers", "hurdxen"):
        src = ROOT / part
        shutil.copytree(src, dest / part, ignore=ignore) if src.is_dir() else shutil.copy(src, dest / part)
    (dest / ".gitignore").write_text("/hurdxen.local.toml\n/artifacts/\n")
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "bench")
    git(dest, "tag", "v1.0.0")


def run(project: Path, source_cache: str, gnupghome: Path) -> tuple[float, str, int]:
    env = {**os.environ, "PYTHONPATH": str(project), "HURDXEN_CACHE": source_cache}
    env["GNUPGHOME"] = str(gnupghome)
    env.pop("HURDXEN_ARTIFACTS", None)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "doit", "build", "bundle", "verify"], cwd=project, env=env, text=True,
                       capture_output=True)  # fmt: skip
    return time.perf_counter() - t0, p.stdout + p.stderr, p.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gnumach-git", default="/work/.mirror/external-mirrors+gnumach/repo")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results-cache-bundle.json")
    a = p.parse_args(argv)
    source_cache = os.environ.get("HURDXEN_CACHE", str(ROOT / "cache"))
    work = Path(tempfile.mkdtemp(prefix="hurdxen-bench-cache-"))
    key = make_key("bench-cache")
    try:
        (work / "elves").mkdir()
        elves, apt_key = ElfFactory(work / "elves"), GpgKey.generate(work / "keys")
        repos = {bits: publish_hurd(AptRepo(work / ARCHES[bits], apt_key), elves, bits) for bits in (32, 64)}
        first, second = work / "first" / "project", work / "second clone" / "project"
        tagged_copy(first)
        git(work, "clone", "-q", str(first), str(second))
        result: dict[str, Any] = {}
        with run_registry(work / "registry") as reg:
            for name, proj, push in (("cold", first, True), ("warm", second, False)):
                settings: dict[str, Any] = {
                    "stage_cache": f"oci+http://{reg.host}/hurdxen/cache",
                    "stage_cache_keyring": str(key.public),
                }
                if push:
                    settings.update(cache_push=True, stage_cache_signing_key=key.fingerprint)
                overlay = {
                    "gnumach": {"source": {"git": a.gnumach_git}},
                    "hurd-modules": {"variants": {**variant_overlay(repos[32], 32), **variant_overlay(repos[64], 64)}},
                    "settings": settings,
                }
                (proj / "hurdxen.local.toml").write_text(to_toml(overlay))
                seconds, out, rc = run(proj, source_cache, key.home)
                if rc != 0:
                    raise SystemExit(f"bench: {name} run failed:\n{out[-4000:]}")
                summary = next(ln for ln in out.splitlines() if ln.startswith("summary:"))
                tarball = next((proj / "artifacts" / "bundle").glob("*/*.tar.gz"))
                result[name] = {
                    "seconds": round(seconds, 1),
                    "summary": summary,
                    "bundle_sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
                }
                print(f"{name}: {seconds:.1f} s  {summary}  {result[name]['bundle_sha256']}", flush=True)
        for r in repos.values():
            r.close()
        apt_key.close()
        result["identical_bundles"] = result["cold"]["bundle_sha256"] == result["warm"]["bundle_sha256"]
        result["machine"] = {"cpus": os.cpu_count()}
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"bundles identical: {result['identical_bundles']}  (JSON: {a.json})")
        return 0 if result["identical_bundles"] else 1
    finally:
        drop_key(key)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
