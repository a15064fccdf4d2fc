"""The stage contract: what every stage module provides, and what `tasks.py` makes doit tasks from.

A stage module (`mig.py` is the model) has
- frozen specs made from the recipes (its `specs(...)`; cross-recipe checks run once in `plan.make_plan`),
  each one a `Spec`: a task name, a doc line, `identity(ctx)` covering its inputs, options, step script and image
  (the task's one `config_changed`), `outputs(ctx)` (named), `deps(ctx)` (tasks and files it reads), `pins()`
  (the pinned inputs it fetches itself: the plan makes the sources stage from them);
- one entry point `build(spec, ctx) -> result` per spec kind, which publishes its directory atomically with one
  manifest (`manifest.write`: inputs, step and outputs are required). Consumers read it with `manifest.read`.

A `Stage` names the doit basename, its doc line and its entry point — or, for a stage with several spec kinds
(gnumach: the source tree, variants, prebuilt kernels), a table from spec type to entry point, so no entry point
switches on the kind. Entry points are module-level functions, so a task's action stays picklable (`doit -n 2`).
A stage whose product is kept outside `artifacts/` (sources: the cache; base and image: the Docker engine) has no
outputs of its own beside its manifest, which records where the product is; its `present` check re-runs the task
when the product is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hurdxen.core import fsutil

if TYPE_CHECKING:
    from hurdxen.pipeline.context import Context
    from hurdxen.sources.fetch import Pin


@dataclass(frozen=True)
class Deps:
    """What a spec reads besides the cache: other tasks (images, sources, upstream stages) and plain files."""

    tasks: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()

    def __add__(self, other: Deps) -> Deps:
        return Deps(tuple(dict.fromkeys((*self.tasks, *other.tasks))), (*self.files, *other.files))


class Spec(Protocol):
    @property
    def task(self) -> str:
        """`<stage>:<name>`, the doit task and the artefact directory `artifacts/<stage>/<name>`."""
        ...

    @property
    def doc(self) -> str: ...

    def identity(self, ctx: Context) -> str: ...

    def outputs(self, ctx: Context) -> Mapping[str, Path]: ...

    def deps(self, ctx: Context) -> Deps: ...

    def pins(self) -> tuple[Pin, ...]:
        """The pinned inputs this spec fetches itself (each one a `sources:` task it waits for); its producers'
        pins are theirs. The plan's `sources` stage is made from every spec's pins."""
        ...


Build = Callable[[Any, "Context"], object]  # an entry point: build(spec, ctx)


Present = Callable[[Any, "Context"], bool]  # present(spec, ctx): what it made outside artifacts/ is still there


@dataclass(frozen=True)
class Stage:
    name: str  # the doit basename and the directory under artifacts/
    doc: str
    build: Build | Mapping[type, Build]  # the entry point, or one per spec type
    # For a stage whose product lives outside artifacts/ (an image in the engine, a blob in the cache): whether it
    # is still there; its task runs again when it is not, whatever doit remembers.
    present: Present | None = None
    cacheable: bool = True  # the shared stage cache may hold it (not sources and images: fetched or built here)
    docker_only: bool = False  # no tasks under the host executor (the builder images)

    def entry(self, spec: object) -> Build:
        """The entry point that builds `spec`."""
        if not isinstance(self.build, Mapping):
            return self.build
        try:
            return self.build[type(spec)]
        except KeyError:
            raise TypeError(f"stage {self.name} has no entry point for {type(spec).__name__}") from None


@dataclass(frozen=True)
class Param:
    """A command-line parameter of an action (`doit verify --bundle PATH`)."""

    name: str  # the key in the action's options
    long: str  # --long
    help: str
    default: str = ""


@dataclass(frozen=True)
class Action:
    """A task that makes nothing: it checks or ships what a stage made (the release's verify, publish, reproduce),
    so it runs every time it is asked for. `run(spec, ctx, options)` acts on the output of one spec of its stage;
    `options` holds its parameters' values. `tasks.action_task` makes the doit task, the same for every action."""

    name: str  # the doit task
    doc: str
    run: Callable[[Any, Context, Mapping[str, Any]], object]
    needs: tuple[str, ...] = ()  # tasks it waits for
    params: tuple[Param, ...] = ()


@runtime_checkable
class Late(Protocol):
    """A spec whose inputs and output names are known only when its task is about to run (the bundle: named by
    `git describe`, packing whatever kernels are built). Besides its identity, `current(ctx)` — asked by doit then —
    says whether its published manifest still records what it would read now; its task's target is that manifest.
    It cannot be looked up by identity beforehand, so it is never pulled from or pushed to the stage cache."""

    def current(self, ctx: Context) -> bool: ...


def out_dir(ctx: Context, task: str) -> Path:
    """`artifacts/<stage>/<name>` for the task `<stage>:<name>`."""
    stage, name = task.split(":", 1)
    return ctx.artifacts / stage / name


def identity(stage: str, spec: object, *parts: Any) -> str:
    """A stage's identity: its spec's fields (inputs, options), plus the step script, the image tag and upstream
    identities the caller passes."""
    fields = spec.__dict__ if hasattr(spec, "__dict__") else spec
    return fsutil.identity(stage, fields, *parts)


def image_deps(ctx: Context, image: str) -> tuple[str, ...]:
    """The image task a step in `image` waits for (none under the host executor)."""
    return (f"image:{image}",) if ctx.executor_kind == "docker" else ()


def pin_tasks(pins: Sequence[Pin]) -> tuple[str, ...]:
    """The `sources:` tasks of `pins`."""
    return tuple(pin_task(p) for p in pins)


def pin_task(pin: Any) -> str:
    """The `sources:` task that fetches a pin (DebPin, TarballPin, GitPin) into the cache."""
    from hurdxen.sources.fetch import DebPin

    if isinstance(pin, DebPin):
        return f"sources:{pin.package}_{pin.version.split(':')[-1]}_{pin.arch}"
    return f"sources:{pin.name.replace(' ', '-')}"


def by_name(specs: Sequence[Any]) -> dict[str, Any]:
    """Specs by the name part of their task."""
    return {s.task.split(":", 1)[1]: s for s in specs}
