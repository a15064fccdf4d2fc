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


def act_boot_check(
    recipe: boot.BootRecipe, ctx: Context, selected: tuple[str, ...], not_booted: tuple[tuple[str, str], ...]
) -> TaskFailed | None:
    return guarded(boot.stage_check, recipe, ctx, selected, not_booted)


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
    for i, c in enumerate(recipe.cases):
        for key, task in boot.case_inputs_tasks(c).items():
            stg, name = task.split(":", 1)
            if name not in known[stg]:
                raise_recipe_error(
                    r,
                    "boot",
                    f"cases[{i}].{key}: no {stg} output named {name!r}",
                    f"one of: {', '.join(sorted(known[stg])) or '(none: recipes/' + stg + '.toml)'}",
                )
    only = tuple(n for n in os.environ.get("HURDXEN_BOOT_CASES", "").split(",") if n)
    selected = boot.select_cases(recipe, the_plan().opt_in(), only)
    not_booted = boot.left_out(recipe, the_plan().opt_in(), only)
    deps = [t for c in selected for t in boot.case_inputs_tasks(c).values()]
    yield {
        "name": "check",
        "doc": "boot the cases of recipes/boot.toml but the opt-in ones (HURDXEN_BOOT_CASES=a,b for some)",
        "actions": [(act_boot_check, [recipe, ctx, tuple(c.name for c in selected), not_booted])],
        "task_dep": ["boot:hypervisor", "boot:dom0", *dict.fromkeys(deps)],
        # Booted again only when what it boots (the files), how (cases, hypervisor, dom0, the harness) or the
        # selection changed; `doit forget boot:check` forces a new run.
        "file_dep": sorted({str(p) for c in selected for p in boot.case_inputs(ctx, c).values()}),
        "targets": [str(report_path(ctx.artifacts))],
        "uptodate": [config_changed(
            boot.check_identity(recipe, hv_tag, dom0_tag, ",".join(c.name for c in selected)))],
        "verbosity": 2,
    }  # fmt: skip
