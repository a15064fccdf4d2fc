"""The boot stage (`doit boot`): recipes/boot.toml's cases, booted from the outputs of the gnumach, hurd-modules and
pvgrub2 stages under the test hypervisor and Linux dom0 (hurdxen.boot.images) by the QEMU harness
(hurdxen.boot.run); verdicts (hurdxen.boot.cases), with the symbolized crash or panic of a guest that died, in
artifacts/boot/boot-report.json, which gates the release bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.boot.cases import BootCase, BootReport, Kind, KnownFailure, report_path
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

STAGE = "boot"


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
    opt_in: bool = False  # booted only when HURDXEN_BOOT_CASES names it

    def selected(self, only: Sequence[str]) -> bool:
        """Whether a run asking for `only` (every case when empty) boots this case: an opt-in case only by name."""
        return self.name in only if (only or self.opt_in) else True


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


def hypervisor_dir(ctx: Any, spec: HypervisorSpec, image: str) -> Path:
    return Path(ctx.cache.root) / "boot" / f"xen-{spec.identity(image)}"


def dom0_dir(ctx: Any, spec: Dom0Spec, image: str) -> Path:
    return Path(ctx.cache.root) / "boot" / f"dom0-{spec.identity(image)}"


def case_inputs(ctx: Any, case: CaseSpec) -> dict[str, Path]:
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
        files["pvgrub"] = Path(ctx.artifacts) / "pvgrub2" / case.pvgrub / output_files(case.pvgrub)["image"]
    if case.disk:
        files["disk"] = Path(ctx.artifacts) / rootdisk.STAGE / case.disk / dict(rootdisk.OUTPUT_FILES)[rootdisk.IMAGE]
    return files


def kernel_symbols(ctx: Any, case: CaseSpec) -> Path | None:
    """The unstripped kernel that names a crash site: the gnumach stage's output `kernel`, read through its manifest
    (for a pv-grub2 case, of the kernel its manifest says it embeds). None when the kernel stage keeps none (a
    prebuilt Debian kernel) or a manifest is missing or does not match its files: the report then shows raw RIPs."""
    from hurdxen.pipeline import manifest

    try:
        task = f"gnumach:{case.kernel}" if case.kernel else None
        if case.kind == "pvgrub" and case.pvgrub:
            kernel = manifest.read_task(Path(ctx.artifacts), f"pvgrub2:{case.pvgrub}").inputs.get("kernel")
            task = str(kernel.get("task")) if isinstance(kernel, dict) else None
        if not task or not task.startswith("gnumach:"):
            return None
        m = manifest.read_task(Path(ctx.artifacts), task)
        return m.output("kernel") if "kernel" in m.outputs else None
    except HurdxenError:
        return None


def resolve_case(ctx: Any, case: CaseSpec) -> BootCase:
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


def stage_hypervisor(recipe: BootRecipe, ctx: Any) -> HypervisorResult:
    from hurdxen.sources.fetch import TarballPin, fetch_tarball

    tag = ctx.image_tag(recipe.image)
    pin = TarballPin("xen orig tarball", recipe.hypervisor.url, recipe.hypervisor.sha256, "boot.xen.url")
    tarball = fetch_tarball(pin, ctx.cache)
    return build_hypervisor(
        recipe.hypervisor, tarball, hypervisor_dir(ctx, recipe.hypervisor, tag), ctx.executor(), tag,
        Path(ctx.artifacts) / "logs" / STAGE, ctx.monitor(),
    )  # fmt: skip


def stage_dom0(recipe: BootRecipe, ctx: Any) -> Dom0Result:
    if ctx.executor_kind != "docker":
        raise HurdxenError(
            "boot:dom0 needs the docker executor (the dom0 files come from the boot-dom0 image)",
            hint="unset HURDXEN_EXECUTOR=host for the boot stage",
        )
    tag = ctx.image_tag(recipe.dom0_image)
    return build_dom0(
        recipe.dom0, dom0_dir(ctx, recipe.dom0, tag), ctx.executor(), tag, Path(ctx.artifacts) / "logs" / STAGE,
        ctx.monitor(),
    )  # fmt: skip


def check_identity(recipe: BootRecipe, hv_tag: str, dom0_tag: str, only: str) -> str:
    """boot:check's one `config_changed`: what it boots (the cases), under what (hypervisor, dom0), which cases, and
    how it judges (the harness, verdict and diagnostics code). Its inputs' bytes are its file_dep."""
    from hurdxen.boot import cases as bootcases
    from hurdxen.boot import diag as bootdiag
    from hurdxen.boot import run as bootrun

    code = [fsutil.sha256_file(Path(m.__file__)) for m in (bootrun, bootcases, bootdiag) if m.__file__]
    return fsutil.identity(
        # opt_in only where set: the other cases' identities stay what they were
        [{k: v for k, v in c.__dict__.items() if k != "opt_in" or v} for c in recipe.cases],
        recipe.hypervisor.identity(hv_tag), recipe.dom0.identity(dom0_tag), only,
        code,
    )  # fmt: skip


def stage_check(recipe: BootRecipe, ctx: Any, only: Sequence[str] = ()) -> BootReport:
    """Entry point of `doit boot`: hypervisor and dom0 (cached), every case, verdict table, manifest.

    Raises HurdxenError when a case fails or passes further than its recorded known failure (a known failure or an
    expected refusal is not a failure)."""
    cases = [resolve_case(ctx, c) for c in recipe.cases if c.selected(only)]
    hv = stage_hypervisor(recipe, ctx)
    dom0 = stage_dom0(recipe, ctx) if any(c.kind != "dom0" for c in cases) else None
    out = report_path(ctx.artifacts)
    monitor = ctx.monitor()
    report = run_boot_checks(
        cases,
        hv,
        dom0,
        Path(ctx.artifacts) / "logs" / STAGE,
        ctx.source_date_epoch,
        monitor,
        recipe.jobs,
        recipe.sessions,
    )
    print_report(report, monitor)
    summary = report.summary()
    for c, r in zip(cases, summary["cases"], strict=True):
        r["inputs"] = {role: {"path": str(p), "sha256": fsutil.sha256_file(p)} for role, p in c.files().items()}
    fsutil.write_json_atomic(out, summary)  # read by the bundle's boot gate
    failed = [r for r in report.results if not r.ok]
    if failed:
        first = failed[0]
        hint = f"serial logs in {first.log.parent}; verdicts in {out}"
        if first.verdict == "xpass":
            hint = f"record what case {first.case.name} does now in recipes/boot.toml; {hint}"
        raise HurdxenError(
            f"boot: {len(failed)} of {len(report.results)} cases failed; {first.case.name}: {first.reason}", hint=hint
        )
    return report
