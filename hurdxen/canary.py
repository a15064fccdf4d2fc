"""`doit canary`: build with floating inputs — GNU Mach's branch head, the newest packages of every Debian pin —
and report the drift against the pins (what moved; whether it still builds, boots and verifies).

The release path is untouched: the canary works in a copy of the project (its recipes rewritten there, never here)
with its own artifacts directory, and writes artifacts/canary/report.json plus a table on the console.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hurdxen import pins
from hurdxen.boot.cases import read_report
from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import recipes
from hurdxen.sources import fetch as sources
from hurdxen.sources import pinlock
from hurdxen.sources.fetch import Cache

BRANCH = "master"  # GNU Mach's development branch
# What the canary builds in its copy: every stage the release ships (each verifies what it makes) and the boot check.
TASKS = ("build", "boot")
REPORT = "report.json"


@dataclass(frozen=True)
class Drift:
    input: str  # the recipe key path of the pin
    pinned: str
    floating: str | None  # None: could not be resolved (then `note` says why)
    note: str = ""

    @property
    def moved(self) -> bool:
        return self.floating is not None and self.floating != self.pinned


def git_head(url: str, branch: str, net: sources.Network) -> str:
    env = dict(os.environ, **({"http_proxy": net.proxy, "https_proxy": net.proxy} if net.proxy else {}))
    p = subprocess.run(
        ["git", "ls-remote", url, f"refs/heads/{branch}"], capture_output=True, text=True, env=env, timeout=net.timeout
    )
    words = p.stdout.split()
    if p.returncode != 0 or not words:
        raise HurdxenError(f"canary: no branch {branch} in {url} ({p.stderr.strip() or 'empty answer'})")
    return words[0]


def drift(r: recipes.Recipes, cache: Cache, branch: str = BRANCH) -> list[Drift]:
    """Floating versions of every pin: GNU Mach's branch head and the newest signed version of each Debian pin."""
    out: list[Drift] = []
    src = r["gnumach"]["source"] if "gnumach" in r else {}
    if "git" in src:
        try:
            out.append(Drift("gnumach.source.commit", src["commit"], git_head(src["git"], branch, cache.network)))
        except (HurdxenError, subprocess.TimeoutExpired) as e:
            out.append(Drift("gnumach.source.commit", src["commit"], None, str(e)))
    for _stage, pin in pins.collect(r):
        try:
            res, _ = pins.resolve_newest(pin, cache, None)
            out.append(Drift(pin.version_key, pin.version, res.entry.version))
        except HurdxenError as e:
            out.append(Drift(pin.version_key, pin.version, None, e.message))
    return out


def project_copy(root: Path, dest: Path) -> Path:
    """What a build reads from the project: dodo.py, the recipes, the containers and the local overlay."""
    dest.mkdir(parents=True)
    for part in ("dodo.py", "recipes", "containers", "hurdxen.local.toml"):
        src = root / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        elif src.is_file():
            shutil.copy2(src, dest / part)
    return dest


def run(
    root: Path, artifacts: Path, cache: Cache, branch: str = BRANCH, tasks: tuple[str, ...] = TASKS
) -> dict[str, Any]:
    """Resolve the floating inputs, build them in a copy of the project, write and return the report."""
    r = recipes.load(root, overrides={})
    moved = drift(r, cache, branch)
    work = artifacts / "canary"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copy = project_copy(root, work / "project")
    edits = {d.input: d.floating for d in moved if d.moved and d.floating is not None}
    for d in moved:  # libc0.3's pin is also the variant's libc_version
        variant = d.input.split(".debian.")[0]
        stated = pinlock.get_key(r.data, pinlock.split_key(variant + ".libc_version")) is not None
        if d.moved and d.floating and d.input.endswith('.packages."libc0.3"') and stated:
            edits[variant + ".libc_version"] = d.floating
    pins.rewrite(copy, edits)
    env = {**os.environ, "HURDXEN_ARTIFACTS": str(work / "artifacts"), "HURDXEN_CACHE": str(cache.root)}
    env["HURDXEN_STAGE_CACHE"] = "off"  # floating inputs: nothing to pull, nothing anyone should pull
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, "-m", "doit", "--continue", *tasks],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    (work / "build.log").write_text(proc.stdout + proc.stderr)
    try:
        boot = read_report(work / "artifacts")
    except HurdxenError:
        boot = None  # a report that does not match its manifest says nothing
    report = {
        "branch": branch,
        "drift": [asdict(d) | {"moved": d.moved} for d in moved],
        "build": {"tasks": list(tasks), "ok": proc.returncode == 0, "log": "build.log"},
        "boot": boot.get("ok") if boot is not None else None,
    }
    fsutil.write_json_atomic(work / REPORT, report)
    return report


def table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"canary: floating inputs against the pins (GNU Mach {report['branch']})", title_justify="left")
    for col in ("input", "pinned", "floating"):
        t.add_column(col)
    for d in report["drift"]:
        floating = d["floating"] if d["floating"] is not None else f"? {d['note']}"
        t.add_row(d["input"], d["pinned"], f"[bold]{floating}[/bold]" if d["moved"] else floating)
    return t


def cli(argv: list[str]) -> int:
    """`hurdxen canary [--root DIR] [--branch master]`; exit 1 when the floating build fails (the pins still hold)."""
    import argparse

    from rich.console import Console

    from hurdxen.pipeline import context

    p = argparse.ArgumentParser(prog="hurdxen canary", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--root", type=Path, default=Path.cwd())
    p.add_argument("--branch", default=BRANCH)
    p.add_argument("tasks", nargs="*", default=list(TASKS), help="doit tasks to build (default: build)")
    a = p.parse_args(argv)
    ctx = context.make_context(recipes.load(a.root.resolve(), overrides={}))
    report = run(ctx.root, ctx.artifacts, ctx.cache, a.branch, tuple(a.tasks))
    Console(width=None if sys.stdout.isatty() else 200).print(table(report))
    build = "builds" if report["build"]["ok"] else "does NOT build"
    boot = {True: ", boots", False: ", does NOT boot", None: ""}[report["boot"]]
    moved = sum(d["moved"] for d in report["drift"])
    print(f"canary: {moved} input(s) moved; the floating set {build}{boot} (report: {ctx.artifacts}/canary/{REPORT})")
    return 0 if report["build"]["ok"] else 1
