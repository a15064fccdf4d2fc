"""(g) the stage cache: a cold `doit build` that pushes every stage to a registry against a fresh clone (another
path, empty artifacts, an empty source cache, offline) that pulls them, and, with the boot check, the clone's
`doit boot:check bundle verify` after it. Pull and push throughput come from the per-stage lines the runs print
(`… pulled from REF (N bytes, S s)`); the hit ratio is pulled stages / stage tasks the clone ran.

The registry is Debian's docker-registry on 127.0.0.1 (as in the tests), the signing key a throwaway one.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ociregistry import drop_key, make_key, run_registry

_MOVED = re.compile(r"^stage cache: (\S+) (pulled from|pushed to) \S+ \((\d+) bytes, ([\d.]+) s\)$", re.M)


def _moved(output: str, kind: str) -> tuple[int, float, int]:
    """(bytes, seconds, stages) of the `pulled from` or `pushed to` lines."""
    rows = [(int(m.group(3)), float(m.group(4))) for m in _MOVED.finditer(output) if m.group(2) == kind]
    return sum(b for b, _ in rows), sum(s for _, s in rows), len(rows)


def _with_settings(local: str, extra: str) -> str:
    """The project's overlay with stage-cache keys added to its [settings] table (made if missing)."""
    if "[settings]" in local:
        return local.replace("[settings]\n", "[settings]\n" + extra, 1)
    return local + "\n[settings]\n" + extra


def one_run(i: int, project: Any, host: str, key: Any, boots: bool, log: Callable[[str], None]) -> dict[str, Any]:
    repo = f"bench/run{i}"
    base = (project.root / "hurdxen.local.toml").read_text()
    common = f'stage_cache = "oci+http://{host}/{repo}"\nstage_cache_keyring = "{key.public}"\n'
    first_local = _with_settings(base, common + f'cache_push = true\nstage_cache_signing_key = "{key.fingerprint}"\n')
    (project.root / "hurdxen.local.toml").write_text(first_local)
    cold_art = project.fresh_artifacts("cache-cold")
    log("  (g) cold build, pushing every stage")
    os.environ["GNUPGHOME"] = str(key.home)
    try:
        cold = project.doit(cold_art, "run", "build")
    finally:
        (project.root / "hurdxen.local.toml").write_text(base)
    pushed = _moved(cold.output, "pushed to")
    # The second clone: a copy of the project at another path, nothing built, nothing fetched.
    clone = project.workdir / f"another clone {i}" / "project"
    shutil.copytree(project.root, clone, ignore=shutil.ignore_patterns("artifacts", "cache"))
    (clone / "hurdxen.local.toml").write_text(_with_settings(base, common))
    empty = project.workdir / f"empty cache {i}"
    empty.mkdir()
    saved = project.root, project.cache
    project.root, project.cache = clone, empty
    try:
        warm_art = project.fresh_artifacts("cache-warm")
        log("  (g) fresh clone, warm cache: doit build")
        warm = project.doit(warm_art, "run", "build")
        res: dict[str, Any] = {"cache_cold_s": cold.seconds, "cache_warm_s": warm.seconds}
        if boots:
            project.cache = saved[1]  # the boot check's hypervisor and dom0 come from the source cache
            log("  (g) then doit boot:check bundle verify")
            t0 = time.perf_counter()
            project.doit(warm_art, "run", "boot:check", "bundle", "verify")
            res["cache_warm_bundle_s"] = warm.seconds + time.perf_counter() - t0
    finally:
        project.root, project.cache = saved
    pulled = _moved(warm.output, "pulled from")
    stage_tasks = [t for t in warm.executed if ":" in t and not t.startswith(("sources:", "image:", "boot:"))]
    res.update(
        pull_mb_s=pulled[0] / 1e6 / max(pulled[1], 1e-9),
        push_mb_s=pushed[0] / 1e6 / max(pushed[1], 1e-9),
        pulled_bytes=pulled[0],
        pulled_stages=pulled[2],
        pushed_stages=pushed[2],
        warm_stage_tasks=len(stage_tasks),
        hit_ratio=pulled[2] / max(len(stage_tasks), 1),
        warm_executed=warm.executed,
    )
    return res


def measure(project: Any, runs: int, boots: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    key = make_key("bench-cache")
    try:
        with run_registry(project.workdir / "registry") as reg:
            return [one_run(i, project, reg.host, key, boots, log) for i in range(runs)]
    finally:
        drop_key(key)


def rows(s: dict[str, Any], runs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    r0 = runs[0]
    out = [
        ("(g) cold doit build, pushing every stage", f"{s['cache_cold_s']:.1f} s", f"{r0['pushed_stages']} pushed"),
        ("(g) fresh clone, warm cache: doit build", f"{s['cache_warm_s']:.1f} s", f"{r0['pulled_stages']} pulled"),
        ("(g) cold / warm", f"{s['cache_cold_s'] / s['cache_warm_s']:.0f}x", ""),
        ("(g) pull throughput", f"{s['pull_mb_s']:.0f} MB/s", f"{r0['pulled_bytes'] / 1e6:.1f} MB, 127.0.0.1"),
        ("(g) push throughput (signing included)", f"{s['push_mb_s']:.0f} MB/s", ""),
        ("(g) hit ratio of the warm run", f"{s['hit_ratio']:.2f}", f"of {r0['warm_stage_tasks']} stage tasks"),
    ]
    if "cache_warm_bundle_s" in s:
        out.append(
            (
                "(g) fresh clone -> verified bundle (boot check included)",
                f"{s['cache_warm_bundle_s']:.1f} s",
                "goal < 90 s",
            )
        )
    return out
