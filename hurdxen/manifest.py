"""Stage manifests: what went in (pins, hashes, image, command) and what came out (sha256 of each output)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hurdxen import fsutil
from hurdxen.executors import StepResult

MANIFEST = "manifest.json"


def outputs_of(out_dir: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every regular file below `out_dir`, by relative path."""
    files: dict[str, str] = {}
    for p in sorted(out_dir.rglob("*")):
        rel = str(p.relative_to(out_dir))
        if p.is_file() and not p.is_symlink() and rel not in exclude:
            files[rel] = fsutil.sha256_file(p)
    return files


def write_stage_manifest(
    out_dir: Path,
    *,
    stage: str,
    variant: str,
    identity: str,
    inputs: Mapping[str, Any],
    step: StepResult | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "stage": stage,
        "variant": variant,
        "identity": identity,
        "inputs": dict(inputs),
        "outputs": outputs_of(out_dir),
    }
    if step is not None:
        data["step"] = {
            "executor": step.executor,
            "image": step.image,
            "image_id": step.image_id,
            "command": step.command,
            "seconds": round(step.seconds, 2),
            "log": step.log.name,
        }
    if extra:
        data.update(extra)
    fsutil.write_json_atomic(out_dir / MANIFEST, data)
    return data
