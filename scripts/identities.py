"""Print `task identity` for every spec of the plan (and the base and builder image tags), loaded as doit loads them.

A refactoring that must not rebuild anything keeps this output the same: run it before and after, then `diff`.

    PYTHONPATH=$PWD .venv/bin/python scripts/identities.py > before.txt
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def specs_of(plan: Any) -> Iterator[Any]:
    """Every spec the plan holds, whatever its field (a spec, a tuple of specs, or None)."""
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        for spec in value if isinstance(value, tuple) else (value,):
            if spec is not None and hasattr(spec, "task") and hasattr(spec, "identity"):
                yield spec


def main() -> int:
    from hurdxen import tasks

    tasks.configure(ROOT)
    _, ctx = tasks.load()
    rows: dict[str, str] = {}
    for spec in specs_of(tasks.the_plan()):
        rows[spec.task] = spec.identity(ctx)
    rows["(tag) base"] = ctx.base.tag
    for name, image in ctx.images:
        rows[f"(tag) image:{name}"] = image.tag
    for task, ident in sorted(rows.items()):
        sys.stdout.write(f"{task} {ident}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
