"""The boot stage (`doit boot`): three contract stages made from recipes/boot.toml by `specs` (in the plan):

- `boot:hypervisor` — Xen from the pinned orig tarball with PV32 (hurdxen.boot.images), outputs `xen`, `config`;
- `boot:dom0` — Debian's Linux and a deterministic initramfs with the Xen toolstack, outputs `kernel`, `initrd`;
- `boot:check` — every case, booted from the outputs of the gnumach, hurd-modules, pvgrub2 and rootdisk stages
  under those two by the QEMU harness (hurdxen.boot.run); verdicts (hurdxen.boot.cases), with the symbolized crash
  or panic of a guest that died, in its output `report` (`cases.REPORT`), which gates the release bundle.

Each publishes `artifacts/boot/<name>/` atomically with one manifest (`manifest.write`); the check reads the
hypervisor and the dom0 through theirs. The Xen and dom0 builds are also kept by identity under the cache
(`cache/boot/`, shared by project copies and the tests, as fetched sources are): a stage whose identity is there
only links it into its directory.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.boot.cases import CHECK_TASK, REPORT, REPORT_FILE, BootCase, BootReport, Kind, KnownFailure
from hurdxen.boot.images import (
    DOM0_MODULES,
    XEN_CONFIG,
    Dom0Result,
    Dom0Spec,
    HypervisorResult,
    HypervisorSpec,
    build_dom0,
    build_hypervisor,
)
from hurdxen.boot.run import print_report, run_boot_checks
from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources.fetch import TarballPin, fetch_tarball

STAGE = "boot"
HYPERVISOR_TASK = f"{STAGE}:hypervisor"
DOM0_TASK = f"{STAGE}:dom0"


@dataclass(frozen=True)
class CaseSpec:
    """A case as the recipe names it: artefacts by stage name, resolved to files by `resolve_case`."""

    name: str
    kind: Kind
    kernel: str | None
    ramdisk: str | None
    pvgrub: str | None
    expect: tuple[str, ...]
    expect_refusal: str | None
    known_failure: KnownFailure | None
    cmdline: str
    memory_mb: int
    timeout: float
    alive_after: float = 0.0
    disk: str | None = None  # a rootdisk image the guest gets as its first Xen block device
    disk_vdev: str = "hda"
    opt_in: bool = False  # booted only when named (HURDXEN_BOOT_CASES)

    def inputs(self) -> dict[str, str]:
        """The tasks whose outputs the case boots, by role (its recipe key)."""
        named = (
            ("kernel", "gnumach", self.kernel if self.kind != "pvgrub" else None),
            ("ramdisk", "hurd-modules", self.ramdisk),
            ("pvgrub", "pvgrub2", self.pvgrub),
            ("disk", "rootdisk", self.disk),
        )
        return {key: f"{stage}:{name}" for key, stage, name in named if name is not None}


@dataclass(frozen=True)
class BootRecipe:
    image: str
    dom0_image: str
    hypervisor: HypervisorSpec
    dom0: Dom0Spec
    jobs: int
    sessions: int
    cases: tuple[CaseSpec, ...]


def recipe_from(data: Any, source_date_epoch: int, shown: str = "recipes/boot.toml") -> BootRecipe:
    """The validated recipe (schema checked by hurdxen.pipeline.recipes) as specs."""
    xen = data["xen"]
    config = tuple(tuple(kv.split("=", 1)) for kv in xen.get("config", [f"{k}={v}" for k, v in XEN_CONFIG]))
    hv = HypervisorSpec(xen["url"], xen["sha256"], config, source_date_epoch, debug=bool(xen.get("debug", False)))
    d = data["dom0"]
    dom0 = Dom0Spec(d["kernel_release"], tuple(d.get("modules", DOM0_MODULES)), source_date_epoch=source_date_epoch)
    run = data.get("run", {})
    cases = []
    for i, c in enumerate(data["cases"]):
        kind: Kind = c.get("kind") or ("pvgrub" if "pvgrub" in c else "guest")
        need = {"guest": "kernel", "dom0": "kernel", "pvgrub": "pvgrub"}[kind]
        if need not in c:
            raise HurdxenError(f"{shown}: cases[{i}] ({c['name']}): a {kind} case needs `{need}`")
        kf = known_failure(c.get("known_failure"))
        timeout, alive = float(c.get("timeout", run.get("timeout", 120))), float(c.get("alive_after", 0))
        if alive and (not c.get("expect") or alive >= timeout):
            raise HurdxenError(
                f"{shown}: cases[{i}] ({c['name']}).alive_after: {alive:g} s needs `expect` and less than the "
                f"case's timeout ({timeout:g} s)",
                hint="alive_after counts from the last expected line; raise `timeout` or lower `alive_after`",
            )
        cases.append(
            CaseSpec(
                c["name"], kind, c.get("kernel"), c.get("ramdisk"), c.get("pvgrub"), tuple(c.get("expect", ())),
                c.get("expect_refusal"), kf,
                c.get("cmdline", "console=hyp0 root=device:hd0s1"), int(c.get("memory", run.get("memory", 128))),
                timeout, alive, c.get("disk"), c.get("disk_vdev", "hda"), bool(c.get("opt_in", False)),
            )
        )  # fmt: skip
    names = [c.name for c in cases]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise HurdxenError(f"{shown}: cases: duplicate names {', '.join(dups)}", hint="each case needs its own name")
    return BootRecipe(
        data["image"],
        data["dom0_image"],
        hv,
        dom0,
        int(run.get("jobs", 2)),
        int(run.get("sessions", 1)),
        tuple(cases),
    )


# A known failure's signature keys (recipes/boot.toml) and the ending each records (hurdxen.boot.cases).
KNOWN_FAILURE_KEYS = {"crash_in": "crash", "panic": "panic", "refusal": "refusal", "timeout_after": "timeout"}


def known_failure(kf: Any) -> KnownFailure | None:
    """`{crash_in|panic|refusal|timeout_after = "…", reason = "…"}` (the schema allows exactly one signature)."""
    if not kf:
        return None
    key = next(k for k in KNOWN_FAILURE_KEYS if k in kf)
    return KnownFailure(KNOWN_FAILURE_KEYS[key], kf[key], kf["reason"])


def hypervisor_dir(ctx: Context, spec: HypervisorSpec, image: str) -> Path:
    """The identity's build under the cache (cache/boot/xen-<identity>), which the stage links into its directory."""
    return ctx.cache.root / "boot" / f"xen-{spec.identity(image)}"


def dom0_dir(ctx: Context, spec: Dom0Spec, image: str) -> Path:
    return ctx.cache.root / "boot" / f"dom0-{spec.identity(image)}"


def case_inputs(ctx: Context, case: CaseSpec) -> dict[str, Path]:
    """The artefact files a case boots, by role (kernel, ramdisk, pvgrub, disk)."""
    from hurdxen.stages import rootdisk
    from hurdxen.stages.gnumach import stage as gnumach
    from hurdxen.stages.hurd_modules import ramdisk
    from hurdxen.stages.hurd_modules import stage as hurdmodules
    from hurdxen.stages.pvgrub2.image import output_files

    files: dict[str, Path] = {}
    if case.kernel and case.kind != "pvgrub":
        # The .gz every kernel stage publishes (compiled and prebuilt alike): the same file whether or not it has
        # been built yet, which keeps the check's dependencies stable. Xen unpacks it in no time.
        files["kernel"] = gnumach.out_dir(ctx, case.kernel) / f"{gnumach.kernel_name(case.kernel)}.gz"
    if case.ramdisk:
        files["ramdisk"] = hurdmodules.out_dir(ctx, case.ramdisk) / ramdisk.RAMDISK_NAME
    if case.pvgrub:
        files["pvgrub"] = ctx.artifacts / "pvgrub2" / case.pvgrub / output_files(case.pvgrub)["image"]
    if case.disk:
        files["disk"] = ctx.artifacts / rootdisk.STAGE / case.disk / dict(rootdisk.OUTPUT_FILES)[rootdisk.IMAGE]
    return files


def kernel_symbols(ctx: Context, case: CaseSpec) -> Path | None:
    """The unstripped kernel that names a crash site: the gnumach stage's output `kernel`, read through its manifest
    (for a pv-grub2 case, of the kernel its manifest says it embeds). None when the kernel stage keeps none (a
    prebuilt Debian kernel) or a manifest is missing or does not match its files: the report then shows raw RIPs."""
    try:
        task = f"gnumach:{case.kernel}" if case.kernel else None
        if case.kind == "pvgrub" and case.pvgrub:
            kernel = manifest.read_task(ctx.artifacts, f"pvgrub2:{case.pvgrub}").inputs.get("kernel")
            task = str(kernel.get("task")) if isinstance(kernel, dict) else None
        if not task or not task.startswith("gnumach:"):
            return None
        m = manifest.read_task(ctx.artifacts, task)
        return m.output("kernel") if "kernel" in m.outputs else None
    except HurdxenError:
        return None


def resolve_case(ctx: Context, case: CaseSpec) -> BootCase:
    files = case_inputs(ctx, case)
    for role, path in files.items():
        if not path.is_file():
            raise HurdxenError(
                f"boot:{case.name}: the {role} {path} is missing",
                hint="build it first (`doit build`), or drop the case from recipes/boot.toml",
            )
    return BootCase(
        case.name, case.kind, files.get("kernel"), files.get("ramdisk"), files.get("pvgrub"), case.expect,
        case.expect_refusal, case.known_failure, case.cmdline, case.memory_mb, case.timeout, kernel_symbols(ctx, case),
        case.alive_after, files.get("disk"), case.disk_vdev,
    )  # fmt: skip


# ------------------------------------------------------------------ the specs


@dataclass(frozen=True)
class HypervisorStageSpec:
    """`boot:hypervisor`: the test Xen, built in `image`."""

    hypervisor: HypervisorSpec
    image: str

    @property
    def task(self) -> str:
        return HYPERVISOR_TASK

    @property
    def doc(self) -> str:
        return "Xen 4.17 with " + ", ".join(f"{k}={v}" for k, v in self.hypervisor.build_config)

    @property
    def pin(self) -> TarballPin:
        return TarballPin("xen orig tarball", self.hypervisor.url, self.hypervisor.sha256, "boot.xen.url")

    def pins(self) -> tuple[TarballPin, ...]:
        """The boot stage's one pinned input: Xen's orig tarball (the dom0 comes from its image)."""
        return (self.pin,)

    def identity(self, ctx: Context) -> str:
        return self.hypervisor.identity(ctx.image_tag(self.image))

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d = stage.out_dir(ctx, self.task)
        return {"xen": d / "xen", "config": d / "xen.config"}

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps((*stage.image_deps(ctx, self.image), stage.pin_task(self.pin)))


@dataclass(frozen=True)
class Dom0StageSpec:
    """`boot:dom0`: Debian's kernel (uncompressed when it can be: Xen then boots it as it is) and the initramfs."""

    dom0: Dom0Spec
    image: str

    @property
    def task(self) -> str:
        return DOM0_TASK

    @property
    def doc(self) -> str:
        return f"Linux {self.dom0.kernel_release} dom0 initramfs with the Xen toolstack"

    def pins(self) -> tuple[TarballPin, ...]:
        return ()

    def identity(self, ctx: Context) -> str:
        return self.dom0.identity(ctx.image_tag(self.image))

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d = stage.out_dir(ctx, self.task)
        return {"kernel": d / "kernel", "initrd": d / "dom0-initrd.img"}

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps(stage.image_deps(ctx, self.image))


@dataclass(frozen=True)
class CheckSpec:
    """`boot:check`: every case of the recipe (or those HURDXEN_BOOT_CASES names, `only`) under the hypervisor and
    dom0 stages; `producers` are the specs of the outputs the cases boot."""

    cases: tuple[CaseSpec, ...]
    hypervisor: HypervisorStageSpec
    dom0: Dom0StageSpec
    jobs: int
    sessions: int
    producers: tuple[stage.Spec, ...]  # the gnumach, hurd-modules, pvgrub2 and rootdisk specs the selected cases boot
    only: tuple[str, ...] = ()
    opt_in_tasks: frozenset[str] = frozenset()  # what `doit build` leaves out: a case booting one is opt-in

    @property
    def task(self) -> str:
        return CHECK_TASK

    @property
    def doc(self) -> str:
        return "boot the cases of recipes/boot.toml but the opt-in ones (HURDXEN_BOOT_CASES=a,b for some)"

    def pins(self) -> tuple[TarballPin, ...]:
        return ()  # what it boots is its producers'

    def selected(self) -> tuple[CaseSpec, ...]:
        """The cases a run boots: those `only` names (HURDXEN_BOOT_CASES), or else every case that is not opt-in,
        itself or through an input the plan leaves out of `doit build` (an unfetchable debian-ports ramdisk would
        otherwise fail the whole check on a fresh machine)."""
        if self.only:
            return tuple(c for c in self.cases if c.name in self.only)
        return tuple(c for c in self.cases if not c.opt_in and not set(c.inputs().values()) & self.opt_in_tasks)

    def left_out(self) -> tuple[tuple[str, str], ...]:
        """The cases a run does not boot, each with why (for the report and the bundle's README)."""
        chosen = {c.name for c in self.selected()}
        why = "not named in HURDXEN_BOOT_CASES" if self.only else "opt-in: HURDXEN_BOOT_CASES=<name> boots it"
        return tuple((c.name, why) for c in self.cases if c.name not in chosen)

    def identity(self, ctx: Context) -> str:
        """What it boots (the cases, and their producers by identity; their bytes are its file_dep), under what
        (hypervisor, dom0), which cases, and how it judges (the harness, verdict and diagnostics code)."""
        from hurdxen.boot import cases as bootcases
        from hurdxen.boot import diag as bootdiag
        from hurdxen.boot import run as bootrun

        code = [fsutil.sha256_file(Path(m.__file__)) for m in (bootrun, bootcases, bootdiag) if m.__file__]
        return stage.identity(
            STAGE, {"cases": [c.__dict__ for c in self.cases], "only": [c.name for c in self.selected()]},
            self.hypervisor.identity(ctx),
            self.dom0.identity(ctx), code, sorted((p.task, p.identity(ctx)) for p in self.producers),
        )  # fmt: skip

    def outputs(self, ctx: Context) -> dict[str, Path]:
        return {REPORT: stage.out_dir(ctx, self.task) / REPORT_FILE}

    def deps(self, ctx: Context) -> stage.Deps:
        # Booted again when what it boots (the files), how (cases, hypervisor, dom0, the harness) or the selection
        # changed; `doit forget boot:check` forces a new run.
        files = sorted({p for c in self.selected() for p in case_inputs(ctx, c).values()})
        producers = tuple(dict.fromkeys(p.task for p in self.producers))
        return stage.Deps((self.hypervisor.task, self.dom0.task, *producers), tuple(files))


BootSpec = HypervisorStageSpec | Dom0StageSpec | CheckSpec


def specs(
    recipes: Recipes,
    kernels: Sequence[Any],
    hurd_modules: Sequence[Any],
    pvgrubs: Sequence[Any],
    rootdisks: Sequence[Any],
    only: Sequence[str] = (),
    opt_in_tasks: frozenset[str] = frozenset(),
) -> list[BootSpec]:
    """The three boot stages from recipes/boot.toml; a case naming an output no stage makes fails here, at plan
    time, naming the file and key."""
    if "boot" not in recipes:
        return []
    shown = recipes.files.get("boot", "recipes/boot.toml")
    recipe = recipe_from(recipes["boot"], int(recipes["base"]["base"]["source_date_epoch"]), shown)
    unknown = sorted(set(only) - {c.name for c in recipe.cases})
    if unknown:
        # Else a typo boots nothing and publishes an empty report over the last one.
        raise HurdxenError(
            f"HURDXEN_BOOT_CASES: no case named {unknown[0]!r} in {shown}",
            hint=f"one of: {', '.join(c.name for c in recipe.cases)}",
        )
    hv = HypervisorStageSpec(recipe.hypervisor, recipe.image)
    dom0 = Dom0StageSpec(recipe.dom0, recipe.dom0_image)
    known: dict[str, dict[str, Any]] = {
        "gnumach": {k.name: k for k in kernels},
        "hurd-modules": {s.name: s for s in hurd_modules},
        "pvgrub2": stage.by_name(pvgrubs),
        "rootdisk": {d.name: d for d in rootdisks},
    }
    for i, c in enumerate(recipe.cases):
        for key, task in c.inputs().items():
            stg, name = task.split(":", 1)
            if name not in known[stg]:
                raise HurdxenError(
                    f"{shown}: cases[{i}].{key}: no {stg} output named {name!r}",
                    hint=f"one of: {', '.join(sorted(known[stg])) or '(none: recipes/' + stg + '.toml)'}",
                )
    check = CheckSpec(recipe.cases, hv, dom0, recipe.jobs, recipe.sessions, (), tuple(only), opt_in_tasks)
    # Only what the selected cases boot: an opt-in ramdisk is not built for a check that leaves its cases out.
    producers = {
        t: known[t.split(":", 1)[0]][t.split(":", 1)[1]] for c in check.selected() for t in c.inputs().values()
    }
    return [hv, dom0, dataclasses.replace(check, producers=tuple(producers.values()))]


def only_from_env() -> tuple[str, ...]:
    """HURDXEN_BOOT_CASES=a,b: the cases a run boots (all when unset)."""
    return tuple(n for n in os.environ.get("HURDXEN_BOOT_CASES", "").split(",") if n)


# ------------------------------------------------------------------ the entry points


def _link(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (the identity's build under the cache), or a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_hypervisor_stage(spec: HypervisorStageSpec, ctx: Context) -> HypervisorResult:
    """Entry point of `boot:hypervisor`: build Xen (or reuse the identity's build under the cache), publish
    artifacts/boot/hypervisor/ with its manifest."""
    tag = ctx.image_tag(spec.image)
    tarball = fetch_tarball(spec.pin, ctx.cache)
    built = build_hypervisor(
        spec.hypervisor, tarball, hypervisor_dir(ctx, spec.hypervisor, tag), ctx.executor(), tag,
        ctx.artifacts / "logs" / STAGE, ctx.monitor(),
    )  # fmt: skip
    outs = spec.outputs(ctx)
    with fsutil.atomic_dir(stage.out_dir(ctx, spec.task)) as out:
        for name, src in (("xen", built.xen), ("config", built.config)):
            _link(src, out / outs[name].name)
        manifest.write(
            out, spec, ctx,
            inputs={"source": {"url": spec.hypervisor.url, "sha256": spec.hypervisor.sha256},
                    "config": [f"{k}={v}" for k, v in spec.hypervisor.build_config]},
            step=manifest.in_process("hurdxen.boot.images.build_hypervisor", image=tag, reused=built.reused),
            extra={"debug": spec.hypervisor.debug},
        )  # fmt: skip
    return built


def build_dom0_stage(spec: Dom0StageSpec, ctx: Context) -> Dom0Result:
    """Entry point of `boot:dom0`: collect the dom0 in its image (or reuse the identity's build under the cache),
    publish artifacts/boot/dom0/ with its manifest."""
    if ctx.executor_kind != "docker":
        raise HurdxenError(
            "boot:dom0 needs the docker executor (the dom0 files come from the boot-dom0 image)",
            hint="unset HURDXEN_EXECUTOR=host for the boot stage",
        )
    tag = ctx.image_tag(spec.image)
    built = build_dom0(
        spec.dom0, dom0_dir(ctx, spec.dom0, tag), ctx.executor(), tag, ctx.artifacts / "logs" / STAGE, ctx.monitor()
    )
    outs = spec.outputs(ctx)
    with fsutil.atomic_dir(stage.out_dir(ctx, spec.task)) as out:
        _link(built.kernel, out / outs["kernel"].name)
        _link(built.initrd, out / outs["initrd"].name)
        manifest.write(
            out, spec, ctx,
            inputs={"kernel_release": spec.dom0.kernel_release, "modules": list(spec.dom0.modules),
                    "programs": list(spec.dom0.programs), "files": list(spec.dom0.files)},
            step=manifest.in_process("hurdxen.boot.images.build_dom0", image=tag, reused=built.reused),
            extra={"kernel_format": "vmlinux" if built.kernel.name == "vmlinux" else "bzImage"},
        )  # fmt: skip
    return built


def hypervisor_of(ctx: Context, spec: HypervisorStageSpec) -> HypervisorResult:
    """The published hypervisor, read through its manifest (sha256 checked)."""
    m = manifest.read_task(ctx.artifacts, spec.task)
    xen = m.output("xen")
    return HypervisorResult(xen, m.output("config"), m.identity, m.outputs["xen"].sha256, 0.0, True,
                            bool(m.facts.get("debug", False)))  # fmt: skip


def dom0_of(ctx: Context, spec: Dom0StageSpec) -> Dom0Result:
    m = manifest.read_task(ctx.artifacts, spec.task)
    return Dom0Result(m.output("kernel"), m.output("initrd"), m.identity, m.outputs["initrd"].sha256, 0.0, True)


def build_check(spec: CheckSpec, ctx: Context) -> BootReport:
    """Entry point of `boot:check`: every selected case, the verdict table, then artifacts/boot/check/ (the report
    and the manifest) published atomically — also when a case failed, so the verdicts can be read; then a
    HurdxenError when a case failed or passed further than its recorded known failure (a known failure or an
    expected refusal is not a failure)."""
    cases = [resolve_case(ctx, c) for c in spec.selected()]
    hv = hypervisor_of(ctx, spec.hypervisor)
    dom0 = dom0_of(ctx, spec.dom0) if any(c.kind != "dom0" for c in cases) else None
    monitor = ctx.monitor()
    start = time.monotonic()
    logs = ctx.artifacts / "logs" / STAGE
    report = run_boot_checks(cases, hv, dom0, logs, ctx.source_date_epoch, monitor, spec.jobs, spec.sessions)
    print_report(report, monitor)
    for name, why in spec.left_out():
        monitor.note(f"not booted: {name} ({why})")
    summary = {**report.summary(), "not_booted": [{"case": n, "reason": why} for n, why in spec.left_out()]}
    booted: dict[str, Any] = {}
    for c, r in zip(cases, summary["cases"], strict=True):
        r["inputs"] = {role: {"path": str(p), "sha256": fsutil.sha256_file(p)} for role, p in c.files().items()}
        booted[c.name] = {role: v["sha256"] for role, v in r["inputs"].items()}
    final = stage.out_dir(ctx, spec.task)
    with fsutil.atomic_dir(final) as out:
        fsutil.write_json_atomic(out / REPORT_FILE, summary)
        manifest.write(
            out, spec, ctx,
            inputs={"hypervisor": {"task": spec.hypervisor.task, "identity": hv.identity, "sha256": hv.sha256},
                    "dom0": {"task": spec.dom0.task, "identity": dom0.identity if dom0 else None,
                             "initrd_sha256": dom0.initrd_sha256 if dom0 else None},
                    "cases": booted},
            step=manifest.in_process("hurdxen.boot.run.run_boot_checks", seconds=round(time.monotonic() - start, 2),
                                     sessions=spec.sessions, jobs=spec.jobs),
            extra={"ok": report.ok},
        )  # fmt: skip
    failed = [r for r in report.results if not r.ok]
    if failed:
        first = failed[0]
        hint = f"serial logs in {first.log.parent}; verdicts in {final / REPORT_FILE}"
        if first.verdict == "xpass":
            hint = f"record what case {first.case.name} does now in recipes/boot.toml; {hint}"
        raise HurdxenError(
            f"boot: {len(failed)} of {len(report.results)} cases failed; {first.case.name}: {first.reason}", hint=hint
        )
    return report


# The entry point of each spec kind (tasks.stage_tasks picks it by type).
BUILDS: Mapping[type, stage.Build] = {
    HypervisorStageSpec: build_hypervisor_stage,
    Dom0StageSpec: build_dom0_stage,
    CheckSpec: build_check,
}
