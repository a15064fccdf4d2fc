"""Stage manifests: what went in (pins, hashes), how (the step: executor, image, command) and what came out (named
outputs with their sha256). One writer for every stage, one typed reader for every consumer: a consumer asks for a
producer's output or input by name and never re-spells its file layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import stage
from hurdxen.pipeline.executors import StepResult

if TYPE_CHECKING:
    from hurdxen.pipeline.context import Context
    from hurdxen.pipeline.stage import Spec

MANIFEST = "manifest.json"
# The fields every manifest has; the rest (bits, pae, platform, verify, …) are the stage's own facts.
CORE = ("stage", "variant", "identity", "inputs", "step", "outputs")


def step_record(step: StepResult | Mapping[str, Any]) -> dict[str, Any]:
    """A container step as recorded; an in-process step (no container) describes itself as a mapping."""
    if isinstance(step, StepResult):
        return {
            "executor": step.executor,
            "image": step.image,
            "image_id": step.image_id,
            "command": step.command,
            "seconds": round(step.seconds, 2),
            "log": step.log.name,
        }
    return {"executor": "in-process", **step}


def _image_packages(step: StepResult | Mapping[str, Any], cache: Path | None) -> dict[str, Any]:
    """The step image's installed packages (name version arch), so a manifest says which toolchain built it."""
    if cache is None or not isinstance(step, StepResult) or step.executor != "docker" or not step.image:
        return {}
    from hurdxen.pipeline import containers

    return {"image_packages": containers.installed_packages(step.image, cache)}


def in_process(function: str, **facts: Any) -> dict[str, Any]:
    """The step record of a stage that runs in hurdxen itself (no container): which function did the work."""
    return {"function": function, **facts}


def write(
    out: Path,
    spec: Spec,
    ctx: Context,
    *,
    inputs: Mapping[str, Any],
    step: StepResult | Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `out/manifest.json` for `spec`, whose outputs are being written in `out` (the temporary twin of its
    published directory): its task, identity and every named output with its sha256."""
    final = stage.out_dir(ctx, spec.task)
    outputs = {name: path.relative_to(final).as_posix() for name, path in spec.outputs(ctx).items()}
    return write_raw(
        out,
        task=spec.task,
        identity=spec.identity(ctx),
        inputs=inputs,
        step=step,
        outputs=outputs,
        extra=extra,
        cache=ctx.cache.root,
    )


def write_raw(
    out: Path,
    *,
    task: str,
    identity: str,
    inputs: Mapping[str, Any],
    step: StepResult | Mapping[str, Any],
    outputs: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    """The writer itself, for a caller without a spec: `outputs` maps names to paths relative to `out`. With the
    `cache` directory, a container step's record lists its image's installed packages."""
    stage_name, variant = task.split(":", 1)
    data: dict[str, Any] = {
        "stage": stage_name,
        "variant": variant,
        "identity": identity,
        "inputs": dict(inputs),
        "step": {**step_record(step), **_image_packages(step, cache)},
        "outputs": {n: {"path": rel, "sha256": fsutil.sha256_file(out / rel)} for n, rel in outputs.items()},
    }
    for k, v in (extra or {}).items():
        if k in CORE:
            raise ValueError(f"manifest extra key {k!r} would replace a core field")
        data[k] = v
    fsutil.write_json_atomic(out / MANIFEST, data)
    return data


@dataclass(frozen=True)
class Output:
    path: Path
    sha256: str


@dataclass(frozen=True)
class Manifest:
    directory: Path
    stage: str
    variant: str
    identity: str
    inputs: Mapping[str, Any]
    step: Mapping[str, Any]
    outputs: Mapping[str, Output]
    facts: Mapping[str, Any]  # the stage's own fields (bits, pae, platform, verify, …)
    raw: Mapping[str, Any]  # the whole manifest, as read (the release records it)

    @property
    def task(self) -> str:
        return f"{self.stage}:{self.variant}"

    def output(self, name: str, *, verify: bool = True) -> Path:
        """The output called `name`; with `verify`, its bytes must still be what the manifest recorded."""
        o = self.outputs.get(name)
        if o is None:
            raise HurdxenError(
                f"{self.task}: its manifest names no output {name!r} (it has {', '.join(self.outputs) or 'none'})",
                hint=f"rebuild it: `doit {self.task}`",
            )
        if not o.path.is_file():
            raise HurdxenError(f"{self.task}: {o.path} is missing", hint=f"rebuild it: `doit {self.task}`")
        if verify and fsutil.sha256_file(o.path) != o.sha256:
            raise HurdxenError(
                f"{self.task}: {o.path} differs from its manifest", hint=f"rebuild it: `doit {self.task}`"
            )
        return o.path

    def fact(self, key: str) -> Any:
        if key not in self.facts:
            raise HurdxenError(f"{self.task}: its manifest has no {key!r}", hint=f"rebuild it: `doit {self.task}`")
        return self.facts[key]


def _bad(directory: Path, what: str) -> HurdxenError:
    return HurdxenError(f"{directory / MANIFEST}: {what}", hint="rebuild that stage (`doit <stage>:<name>`)")


def read(directory: Path) -> Manifest:
    """The manifest of one stage output directory, checked for shape (outputs stay inside `directory`)."""
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HurdxenError(
            f"{directory} has not been built ({MANIFEST} is missing)", hint="run its doit task"
        ) from None
    except (OSError, ValueError) as e:
        raise _bad(directory, f"unreadable ({e})") from None
    if not isinstance(data, dict) or any(k not in data for k in CORE):
        missing = [k for k in CORE if not isinstance(data, dict) or k not in data]
        raise _bad(directory, f"lacks {', '.join(missing)}")
    outs: dict[str, Output] = {}
    raw = data["outputs"]
    if not isinstance(raw, dict):
        raise _bad(directory, "outputs is not a table")
    for name, o in raw.items():
        rel = PurePosixPath(str(o.get("path", ""))) if isinstance(o, dict) else PurePosixPath("")
        if not rel.parts or rel.is_absolute() or ".." in rel.parts or not isinstance(o.get("sha256"), str):
            raise _bad(directory, f"outputs.{name}: not a relative path with a sha256")
        outs[str(name)] = Output(directory / rel, o["sha256"])
    return Manifest(
        directory=directory,
        stage=str(data["stage"]),
        variant=str(data["variant"]),
        identity=str(data["identity"]),
        inputs=data["inputs"] if isinstance(data["inputs"], dict) else {},
        step=data["step"] if isinstance(data["step"], dict) else {},
        outputs=outs,
        facts={k: v for k, v in data.items() if k not in CORE},
        raw=data,
    )


def read_task(artifacts: Path, task: str) -> Manifest:
    """The manifest of the output of doit task `<stage>:<name>`."""
    stage, name = task.split(":", 1)
    return read(artifacts / stage / name)
