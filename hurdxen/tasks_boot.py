"""doit tasks of the boot check: the hypervisor, the dom0 and the check of every case in recipes/boot.toml."""

from __future__ import annotations

import os
from collections.abc import Iterator

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from hurdxen.boot import stage as boot
from hurdxen.boot.cases import report_path
from hurdxen.pipeline.context import Context
from hurdxen.sources.fetch import TarballPin
from hurdxen.stages.pvgrub2 import stage as pvgrub
from hurdxen.tasks import (
    TaskDict,
    boot_recipe,
    guarded,
    image_deps,
    load,
    pin_task_name,
    raise_recipe_error,
    the_plan,
)


def act_boot_hypervisor(recipe: boot.BootRecipe, ctx: Context) -> TaskFailed | None:
    return guarded(boot.stage_hypervisor, recipe, ctx)


def act_boot_dom0(recipe: boot.BootRecipe, ctx: Context) -> TaskFailed | None:
    return guarded(boot.stage_dom0, recipe, ctx)


def act_boot_check(recipe: boot.BootRecipe, ctx: Context) -> TaskFailed | None:
    only = tuple(n for n in os.environ.get("HURDXEN_BOOT_CASES", "").split(",") if n)
    return guarded(boot.stage_check, recipe, ctx, only)


def task_boot() -> Iterator[TaskDict]:
    """boot: a PV32 Xen in QEMU (TCG) with a Linux dom0 boots every kernel, ramdisk and pv-grub2 image"""
    r, ctx = load()
    yield {"basename": "boot", "name": None, "doc": task_boot.__doc__}
    if "boot" not in r:
        return
    recipe = boot_recipe(r)
    hv_tag, dom0_tag = ctx.image_tag(recipe.image), ctx.image_tag(recipe.dom0_image)
    hv_dir = boot.hypervisor_dir(ctx, recipe.hypervisor, hv_tag)
    yield {
        "name": "hypervisor",
        "doc": "Xen 4.17 with " + ", ".join(f"{k}={v}" for k, v in recipe.hypervisor.build_config),
        "actions": [(act_boot_hypervisor, [recipe, ctx])],
        "task_dep": [*image_deps(ctx, recipe.image), pin_task_name(
            TarballPin("xen orig tarball", recipe.hypervisor.url, recipe.hypervisor.sha256, "boot.xen.url"))],
        "targets": [str(hv_dir / "xen")],
        "uptodate": [config_changed(recipe.hypervisor.identity(hv_tag))],
    }  # fmt: skip
    yield {
        "name": "dom0",
        "doc": f"Linux {recipe.dom0.kernel_release} dom0 initramfs with the Xen toolstack",
        "actions": [(act_boot_dom0, [recipe, ctx])],
        "task_dep": image_deps(ctx, recipe.dom0_image),
        "targets": [str(boot.dom0_dir(ctx, recipe.dom0, dom0_tag) / "dom0-initrd.img")],
        "uptodate": [config_changed(recipe.dom0.identity(dom0_tag))],
    }
    known = {
        "gnumach": {k.name for k in the_plan().kernels},
        "hurd-modules": {s.name for s in the_plan().hurd_modules},
        "pvgrub2": set(pvgrub.by_name(the_plan().pvgrub2)),
        "rootdisk": {d.name for d in the_plan().rootdisks},
    }
    only = tuple(n for n in os.environ.get("HURDXEN_BOOT_CASES", "").split(",") if n)
    # What the run boots needs building: the cases HURDXEN_BOOT_CASES names, or every case but the opt-in ones.
    wanted = [c for c in recipe.cases if c.selected(only)]
    deps: list[str] = []
    for i, c in enumerate(recipe.cases):
        if c not in wanted:
            continue
        for stg, key, name in (
            ("gnumach", "kernel", c.kernel if c.kind != "pvgrub" else None),
            ("hurd-modules", "ramdisk", c.ramdisk),
            ("pvgrub2", "pvgrub", c.pvgrub),
            ("rootdisk", "disk", c.disk),
        ):
            if name is None:
                continue
            if name not in known[stg]:
                raise_recipe_error(
                    r,
                    "boot",
                    f"cases[{i}].{key}: no {stg} output named {name!r}",
                    f"one of: {', '.join(sorted(known[stg])) or '(none: recipes/' + stg + '.toml)'}",
                )
            deps.append(f"{stg}:{name}")
    yield {
        "name": "check",
        "doc": "boot every case of recipes/boot.toml (HURDXEN_BOOT_CASES=a,b for some); verdicts in the manifest",
        "actions": [(act_boot_check, [recipe, ctx])],
        "task_dep": ["boot:hypervisor", "boot:dom0", *dict.fromkeys(deps)],
        # Booted again only when what it boots (the files), how (cases, hypervisor, dom0, the harness) or the
        # selection changed; `doit forget boot:check` forces a new run.
        "file_dep": sorted({str(p) for c in wanted for p in boot.case_inputs(ctx, c).values()}),
        "targets": [str(report_path(ctx.artifacts))],
        "uptodate": [config_changed(
            boot.check_identity(recipe, hv_tag, dom0_tag, os.environ.get("HURDXEN_BOOT_CASES", "")))],
        "verbosity": 2,
    }  # fmt: skip
