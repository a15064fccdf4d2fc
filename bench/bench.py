"""hurdxen benchmark: what the doit orchestration costs and what it saves. Not a test; run it by hand.

    HURDXEN_CACHE=/path/to/cache .venv/bin/python bench/bench.py [--runs N] [--gnumach-git PATH]

It works in a temporary copy of the project (never in this checkout) whose hurdxen.local.toml points GNU Mach's
source at --gnumach-git, with fresh artifacts directories, and reports medians of N runs (default 3):

  (a) cold build of the three GNU Mach variants and MIG (`doit gnumach:<variant>...`, whole doit process) against
      the sum of the container steps it runs, made by hand from the stage modules' scripts through the executor;
      their ratio is the orchestration overhead (goal <= 1.05);
  (b) a no-op `doit build` (goal < 1 s) and the cold/no-op ratio;
  (c) an incremental `doit build` after one pv-grub2 image's description changed: which tasks ran, and how long;
  (d) `doit -n 2` against `doit -n 1` on the three kernel variants (goal >= 1.6x on 2 cores);
  (e) `ensure_image` for an image that exists against the first call that builds it (a throwaway tag: a copy of
      containers/builder with one more comment line);
  (f) the boot check: `doit boot:check` (after `doit forget boot:check`; hypervisor and dom0 built) booting every
      case of recipes/boot.toml, its wall time and per booted kernel (wall / cases; goals < 20 s and < 5 s on
      2 cores), with the dom0's start-up and each case's seconds from boot-report.json;
  (g) the stage cache (bench/stage_cache.py, `--only cache`): a cold `doit build` pushing every stage to a
      registry on 127.0.0.1 against a fresh clone pulling them (another path, empty artifacts and source cache,
      offline), then, with the boot check, that clone's `doit boot:check bundle verify` (goal: fresh clone ->
      verified bundle < 90 s); pull and push throughput, the warm run's hit ratio.

Every ratio is measured within the same run. Figures are wall-clock seconds (time.perf_counter) of whole processes
(doit, or a Python process calling ensure_image), except (a)'s raw steps, which are the executor's container runs.
The JSON goes to bench/results.json; the table is printed.

The Hurd ramdisk (hurd-modules) needs debian-ports; where that cannot be reached, pass --without-hurd-modules and
the project copy leaves that recipe out, and the standalone pv-grub2 images that embed its modules and the boot
check; or pass --overlay FILE (a hurdxen.local.toml with stand-in boot modules, e.g. /work/tools/standin-overlay.toml)
to keep them. --only boot measures (f) alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KERNEL_TASKS = ("gnumach:xen-pae", "gnumach:xen-nopae", "gnumach:xen-amd64")
DEFAULT_GIT = "/work/.mirror/external-mirrors+gnumach/repo"
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "artifacts", "cache", "external", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis",
    "hurdxen.local.toml", "results.json",
)  # fmt: skip
INCREMENTAL_IMAGE = "i386-xen-disk"


@dataclass
class DoitRun:
    seconds: float
    executed: list[str]
    output: str


class Project:
    """A temporary project copy and how to run doit in it."""

    def __init__(
        self, workdir: Path, git: str, cache: Path, without_hurd_modules: bool, overlay: Path | None = None
    ) -> None:
        self.root = workdir / "project"
        shutil.copytree(ROOT, self.root, ignore=COPY_IGNORE)
        local = overlay.read_text() if overlay else f'[gnumach.source]\ngit = "{git}"\n'
        (self.root / "hurdxen.local.toml").write_text(local)
        if without_hurd_modules:
            # The standalone pv-grub2 images embed the Hurd's boot modules: they go too, and so does the boot check
            # (its cases boot the ramdisks; it is not part of what is measured).
            (self.root / "recipes" / "hurd-modules.toml").unlink()
            (self.root / "recipes" / "boot.toml").unlink()
            pvgrub = self.root / "recipes" / "pvgrub2.toml"
            head, *blocks = pvgrub.read_text().split("[[images]]")
            kept = [b for b in blocks if not re.search(r'^flavour\s*=\s*"standalone"', b, re.M)]
            pvgrub.write_text(head + "".join("[[images]]" + b for b in kept))
        self.cache = cache
        self.workdir = workdir
        self._n = 0

    def fresh_artifacts(self, label: str) -> Path:
        self._n += 1
        path = self.workdir / f"artifacts-{label}-{self._n}"
        path.mkdir(parents=True)
        return path

    def env(self, artifacts: Path) -> dict[str, str]:
        return {
            **os.environ,
            "HURDXEN_CACHE": str(self.cache),
            "HURDXEN_ARTIFACTS": str(artifacts),
            "PYTHONPATH": str(self.root),
            "HURDXEN_OFFLINE": "1",  # every input is in the cache already: a miss must fail, not download
        }

    def doit(self, artifacts: Path, *args: str, check: bool = True) -> DoitRun:
        cmd = [sys.executable, "-m", "doit", *args[:1], "--db-file", str(artifacts / ".doit.sqlite3"), *args[1:]]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.root, env=self.env(artifacts), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        out = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
        executed = [m.group(1) for m in re.finditer(r"^\.\s+(\S+)\s*$", proc.stdout, re.M)]
        return DoitRun(seconds, executed, out)


def run_doit(project: Project, artifacts: Path, command: str, tasks: Sequence[str], *opts: str) -> DoitRun:
    return project.doit(artifacts, command, *opts, *tasks)


# ------------------------------------------------------------------ (a) the raw container steps


def raw_steps(project: Project, out_root: Path) -> dict[str, float]:
    """Build MIG, the prepared source and the three variants with the same Steps the stages make, calling the
    executor directly; returns each container run's seconds. Inputs (cached tarballs, the git export) are prepared
    outside the timed region: they are not container commands."""
    sys.path.insert(0, str(project.root))
    os.environ["HURDXEN_CACHE"] = str(project.cache)
    os.environ["HURDXEN_ARTIFACTS"] = str(out_root)
    from hurdxen.pipeline import recipes
    from hurdxen.pipeline.context import make_context
    from hurdxen.pipeline.executors import Step, make_executor
    from hurdxen.sources.git import export_git
    from hurdxen.stages.gnumach import source as gnumach_source
    from hurdxen.stages.gnumach import stage as gnumach
    from hurdxen.stages.mig import stage as mig

    r = recipes.load(project.root, overrides={})
    ctx = make_context(r)
    executor = make_executor("docker")
    logs = out_root / "logs"
    times: dict[str, float] = {}

    def run(step: Step) -> None:
        start = time.perf_counter()
        executor.run(step, logs / (step.name.replace(":", "-") + ".log"))
        times[step.name] = time.perf_counter() - start

    # Exactly the stages' own steps (their build_step functions), run one by one without doit.
    migs = {}
    for spec in mig.specs(r):
        orig, debian_tar, headers = mig.fetch_inputs(spec, ctx)
        work, out = out_root / "work" / spec.task.replace(":", "-"), out_root / "mig" / spec.target
        migs[spec.target] = out
        run(mig.build_step(spec, ctx.image_tag(spec.image), orig, debian_tar, headers, work, out))

    src = gnumach_source.source_spec(r)
    assert src.git is not None, "the benchmark builds GNU Mach from git (the overlay)"
    export, srcdir = out_root / "work" / "gnumach-export", out_root / "gnumach" / "source"
    export_git(src.git, ctx.cache, export)
    run(
        gnumach_source.prepare_step(
            src, ctx.image_tag(src.image), export, out_root / "work" / "gnumach-prepare", srcdir
        )
    )
    for v in gnumach.variant_specs(r):
        build_dir = out_root / "work" / v.task.replace(":", "-")
        run(
            gnumach.build_step(
                v, ctx.image_tag(v.image), srcdir, migs[v.mig_target], build_dir, out_root / "gnumach" / v.name
            )
        )
    return times


# ------------------------------------------------------------------ (e) builder-image reuse

IMAGE_SNIPPET = """
import json, sys, time
from pathlib import Path
from hurdxen.pipeline import recipes
from hurdxen.pipeline.containers import ImageSpec, ensure_image
from hurdxen.pipeline.context import make_context
ctx = make_context(recipes.load(Path(sys.argv[1]), overrides={}))
r = ensure_image(ImageSpec("bench-builder", Path(sys.argv[2]), ctx.base), Path(sys.argv[3]))
print(json.dumps({"tag": r.tag, "reused": r.reused}))
"""


def image_call(project: Project, context: Path, log: Path) -> tuple[float, dict[str, Any]]:
    cmd = [sys.executable, "-c", IMAGE_SNIPPET, str(project.root), str(context), str(log)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=project.env(project.workdir), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: ensure_image failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return seconds, result


def remove_image(tag: str) -> None:
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


# ------------------------------------------------------------------ the runs


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def one_run(i: int, project: Project, warm: Path, log: Callable[[str], None]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    # (a) cold doit vs raw steps; alternate the order so neither always meets a colder page cache.
    cold_art = project.fresh_artifacts("cold")
    raw_out = project.workdir / f"raw-{i}"

    def do_cold() -> None:
        run = run_doit(project, cold_art, "run", KERNEL_TASKS)
        res["cold_s"] = run.seconds
        res["cold_executed"] = run.executed
        log(f"  cold doit: {run.seconds:.1f} s ({len(run.executed)} tasks ran)")

    def do_raw() -> None:
        steps = raw_steps(project, raw_out)
        res["raw_steps_s"] = steps
        res["raw_sum_s"] = sum(steps.values())
        log(f"  raw steps: {res['raw_sum_s']:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in steps.items())})")

    for measure in (do_cold, do_raw) if i % 2 == 0 else (do_raw, do_cold):
        measure()
    res["overhead_ratio"] = res["cold_s"] / res["raw_sum_s"]
    shutil.rmtree(raw_out, ignore_errors=True)
    shutil.rmtree(cold_art, ignore_errors=True)

    # (b) no-op
    noop = run_doit(project, warm, "run", ["build"])
    if noop.executed:
        raise SystemExit(f"bench: the no-op build ran {noop.executed}")
    res["noop_s"] = noop.seconds
    res["cold_noop_ratio"] = res["cold_s"] / noop.seconds
    log(f"  no-op doit build: {noop.seconds:.2f} s")

    # (c) incremental: one pv-grub2 image's description
    recipe = project.root / "recipes" / "pvgrub2.toml"
    text = recipe.read_text()
    marker = f'name = "{INCREMENTAL_IMAGE}"'
    head, tail = text.split(marker, 1)
    tail = re.sub(r'(description = "[^"]*?)(?: \(bench \d+\))?"', rf'\1 (bench {i})"', tail, count=1)
    recipe.write_text(head + marker + tail)
    inc = run_doit(project, warm, "run", ["build"])
    res["incremental_s"] = inc.seconds
    res["incremental_executed"] = inc.executed
    log(f"  incremental doit build: {inc.seconds:.1f} s, ran {inc.executed}")

    # (d) -n 2 vs -n 1 on the kernel variants (MIG and the prepared source stay built)
    for n in (1, 2) if i % 2 == 0 else (2, 1):
        project.doit(warm, "forget", *KERNEL_TASKS)
        run = run_doit(project, warm, "run", KERNEL_TASKS, "-n", str(n))
        if sorted(run.executed) != sorted(KERNEL_TASKS):
            raise SystemExit(f"bench: -n {n} ran {run.executed}, expected {KERNEL_TASKS}")
        res[f"kernels_n{n}_s"] = run.seconds
        log(f"  kernels -n {n}: {run.seconds:.1f} s")
    res["parallel_speedup"] = res["kernels_n1_s"] / res["kernels_n2_s"]

    # (e) ensure_image: first call builds a throwaway tag, the second finds it
    context = project.workdir / f"image-context-{i}"
    shutil.copytree(project.root / "containers" / "builder", context)
    with open(context / "Dockerfile", "a") as f:
        f.write(f"# hurdxen benchmark {time.time_ns()}\n")
    first_s, first = image_call(project, context, project.workdir / "image.log")
    second_s, second = image_call(project, context, project.workdir / "image.log")
    remove_image(str(first["tag"]))
    if first["reused"] or not second["reused"]:
        raise SystemExit(f"bench: ensure_image first={first} second={second}")
    res.update(image_first_s=first_s, image_reuse_s=second_s, image_ratio=first_s / second_s)
    log(f"  ensure_image: first {first_s:.2f} s, reuse {second_s:.2f} s")
    return res


def boot_check(project: Project, warm: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """(f) the whole boot check, as `doit boot:check` runs it (hypervisor and dom0 already built)."""
    project.doit(warm, "forget", "boot:check")
    run = run_doit(project, warm, "run", ["boot:check"])
    if "boot:check" not in run.executed:
        raise SystemExit(f"bench: `doit boot:check` did not run: {run.executed}")
    from hurdxen.boot.cases import read_report

    report = read_report(warm)
    if report is None:
        raise SystemExit(f"bench: `doit boot:check` left no report in {warm}")
    cases = {c["case"]: c["seconds"] for c in report["cases"]}
    session: dict[str, Any] = next((x for x in report.get("sessions", []) if x.get("dom0_ready_s")), {})
    res = {
        "boot_s": run.seconds,
        "boot_per_kernel_s": run.seconds / max(1, len(cases)),
        "boot_cases": len(cases),
        "boot_dom0_ready_s": session.get("dom0_ready_s"),
        "boot_case_s": cases,
        "boot_verdicts": {c["case"]: c["verdict"] for c in report["cases"]},
    }
    log(f"  boot check: {run.seconds:.1f} s for {len(cases)} cases ({res['boot_per_kernel_s']:.1f} s per kernel; "
        f"dom0 up in {res['boot_dom0_ready_s']} s; {', '.join(f'{k} {v}' for k, v in cases.items())})")  # fmt: skip
    return res


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [
        "cold_s", "raw_sum_s", "overhead_ratio", "noop_s", "cold_noop_ratio", "incremental_s",
        "kernels_n1_s", "kernels_n2_s", "parallel_speedup", "image_first_s", "image_reuse_s", "image_ratio",
    ]  # fmt: skip
    keys += ["boot_s", "boot_per_kernel_s"]
    return {k: median([r[k] for r in runs]) for k in keys if all(k in r for r in runs)}


def table(s: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    inc = sorted({t for r in runs for t in r.get("incremental_executed", [])})
    rows: list[tuple[str, str, str]] = []
    if "cold_s" in s:
        rows += [
            ("(a) cold doit, 3 GNU Mach variants + MIG", f"{s['cold_s']:.1f} s", ""),
            ("(a) sum of the raw container steps", f"{s['raw_sum_s']:.1f} s", ""),
            ("(a) orchestration overhead (cold / raw)", f"{s['overhead_ratio']:.3f}", "goal <= 1.05"),
            ("(b) no-op doit build", f"{s['noop_s']:.2f} s", "goal < 1 s"),
            ("(b) cold / no-op", f"{s['cold_noop_ratio']:.0f}x", ""),
            ("(c) incremental build (pvgrub2 recipe touched)", f"{s['incremental_s']:.1f} s", f"ran: {', '.join(inc)}"),
            ("(d) 3 kernel variants, doit -n 1", f"{s['kernels_n1_s']:.1f} s", ""),
            ("(d) 3 kernel variants, doit -n 2", f"{s['kernels_n2_s']:.1f} s", ""),
            ("(d) speedup (-n 1 / -n 2)", f"{s['parallel_speedup']:.2f}x", "goal >= 1.6x"),
            ("(e) ensure_image, first call (builds)", f"{s['image_first_s']:.2f} s", ""),
            ("(e) ensure_image, image exists", f"{s['image_reuse_s']:.2f} s", ""),
            ("(e) first / reuse", f"{s['image_ratio']:.1f}x", ""),
        ]  # fmt: skip
    if "boot_s" in s:
        n = runs[0]["boot_cases"]
        rows += [
            (f"(f) boot check, {n} cases (doit boot:check)", f"{s['boot_s']:.1f} s", "goal < 20 s on 2 cores"),
            ("(f) boot check per kernel", f"{s['boot_per_kernel_s']:.1f} s", "goal < 5 s"),
        ]
    w = max(len(r[0]) for r in rows)
    lines = [f"| {'measure'.ljust(w)} | median | note |", f"|{'-' * (w + 2)}|--------|------|"]
    lines += [f"| {a.ljust(w)} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def cache_figures(project: Project, runs: int, boots: bool, out: Path, log: Callable[[str], None]) -> int:
    """(g) alone: its runs, medians, table, and JSON beside the other results (results-cache.json)."""
    import stage_cache

    per_run = stage_cache.measure(project, runs, boots, log)
    keys = ["cache_cold_s", "cache_warm_s", "cache_warm_bundle_s", "pull_mb_s", "push_mb_s", "hit_ratio"]
    s = {k: median([r[k] for r in per_run]) for k in keys if all(k in r for r in per_run)}
    path = out.with_name("results-cache.json") if out.name == "results.json" else out
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    path.write_text(json.dumps({"machine": machine, "runs": runs, "median": s, "per_run": per_run}, indent=2) + "\n")
    rows = stage_cache.rows(s, per_run)
    w = max(len(r[0]) for r in rows)
    print("\n".join([f"| {'measure'.ljust(w)} | median | note |", f"|{'-' * (w + 2)}|--------|------|"]))
    print("\n".join(f"| {a.ljust(w)} | {b} | {c} |" for a, b, c in rows))
    print(f"\n(medians of {runs} runs; JSON: {path})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per figure; each figure is their median (default 3)")
    p.add_argument("--gnumach-git", default=os.environ.get("GNUMACH_SOURCE", DEFAULT_GIT), help="GNU Mach git repo")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("HURDXEN_CACHE", ROOT / "cache")))
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--without-hurd-modules", action="store_true", help="leave the hurd-modules recipe out")
    p.add_argument("--overlay", type=Path, help="the project copy's hurdxen.local.toml (default: GNU Mach's git only)")
    p.add_argument(
        "--only", choices=["boot", "cache"], help="measure (f), the boot check, or (g), the stage cache, alone"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary project copy")
    a = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="hurdxen-bench-"))
    os.chmod(workdir, 0o755)
    try:
        overlay = a.overlay.resolve() if a.overlay else None
        project = Project(workdir, a.gnumach_git, a.cache.resolve(), a.without_hurd_modules, overlay)
        boots = (project.root / "recipes" / "boot.toml").is_file()
        if a.only == "cache":
            return cache_figures(project, a.runs, boots, a.json, log)
        warm = project.fresh_artifacts("warm")
        log("warming up: a full `doit build` (not timed)" + (", the hypervisor and the dom0" if boots else ""))
        start = time.perf_counter()
        first = run_doit(project, warm, "run", ["build", *(["boot:hypervisor", "boot:dom0"] if boots else [])])
        log(f"  {len(first.executed)} tasks in {time.perf_counter() - start:.0f} s")
        runs = []
        for i in range(a.runs):
            log(f"run {i + 1}/{a.runs}")
            res = one_run(i, project, warm, log) if a.only is None else {}
            if boots:
                res.update(boot_check(project, warm, log))
            runs.append(res)
        s = summarise(runs)
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "runs": a.runs,
            "median": s,
            "per_run": runs,
            "without_hurd_modules": a.without_hurd_modules,
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(table(s, runs))
        print(f"\n(medians of {a.runs} runs; JSON: {a.json})")
    finally:
        if a.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
