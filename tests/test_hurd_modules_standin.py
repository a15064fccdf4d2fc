"""The hurd-modules `standin` source, for real: the stand-in boot modules compiled by the stage's step from
hurdxen/data/standins/ (the host executor here, the builder image in the docker test), checked as a ramdisk, and
never taken as "the ramdisk for a kernel" by pv-grub2 images, root disks or the plan."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from elfstandins import TERMINATE32_SRC, TRAPS64_OK, TRAPS64_SRC, ElfFactory, elves
from project import CODE as REPO
from project import SHARED_CACHE, amd64_from_debian, copy_project, docker_answers, to_toml

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, recipes
from hurdxen.pipeline.context import Context, make_context
from hurdxen.plan import make_plan
from hurdxen.stages.hurd_modules import sources, stage
from hurdxen.stages.hurd_modules.elf import STANDIN_LIBC, ldso_version
from hurdxen.stages.hurd_modules.format import parse_ramdisk
from hurdxen.stages.pvgrub2 import stage as pvgrub
from hurdxen.stages.toolchain.chain import Layer, TreeSpec

__all__ = ["elves"]  # the fixture, imported for pytest

RECIPES = ("base", "images", "hurd-modules")
TRAPS = "standin-amd64-traps"
TERMINATE = "standin-i386-terminate"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="no host gcc")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "project", ("recipes", "containers"), RECIPES)
    amd64_from_debian(root)
    return root


def fake_root() -> TreeSpec:
    """hurd:root in shape, for hurd-i386's build source (the plan's; not built here)."""
    glibc = TreeSpec("toolchain", "glibc", "a fake glibc", "true", "toolchain", facts=(("glibc_version", "2.43"),))
    files = (("ext2fs.static", "ext2fs.static"), ("ld.so.1", "ld.so.1"))
    return TreeSpec("hurd", "root", "a fake root", "true", "toolchain", layers=(Layer(glibc),), files=files)


def load(root: Path, tmp_path: Path, variants: dict[str, Any] | None = None) -> recipes.Recipes:
    tmp_path.mkdir(parents=True, exist_ok=True)
    overlay = tmp_path / "overlay.toml"
    overlay.write_text(to_toml({"hurd-modules": {"variants": variants}}) if variants else "")
    return recipes.load(root, overrides={}, overlay=overlay)


def spec_of(r: recipes.Recipes, name: str) -> stage.HurdModulesSpec:
    return next(s for s in stage.specs(r, (fake_root(),)) if s.name == name)


def context(r: recipes.Recipes, tmp_path: Path, set_env: Callable[[str, str], None], executor: str = "host") -> Context:
    set_env("HURDXEN_ARTIFACTS", str(tmp_path / "artifacts"))
    set_env("HURDXEN_CACHE", str(SHARED_CACHE))
    set_env("HURDXEN_EXECUTOR", executor)
    return make_context(r)


def check_traps_ramdisk(ctx: Context, spec: stage.HurdModulesSpec) -> manifest.Manifest:
    """The published ramdisk: the traps stand-in first (it enters the kernel with `syscall`, 0f 05, after each
    negative trap number), then the stand-in ld.so, whose banner says no glibc; the manifest calls them stand-ins."""
    m = manifest.read_task(ctx.artifacts, spec.task)
    static, ldso = (x.data for x in parse_ramdisk(m.output("ramdisk").read_bytes()).modules)
    for trap in (-25, -26, -28, -30):  # mach_msg_trap, mach_reply_port, mach_task_self, mach_print
        assert b"\x48\xc7\xc0" + trap.to_bytes(4, "little", signed=True) + b"\x0f\x05" in static, trap
    assert TRAPS64_OK.encode() in static
    assert ldso_version(ldso) == STANDIN_LIBC and b"GLIBC" not in ldso and b"not glibc" in ldso
    assert m.fact("libc_version") == STANDIN_LIBC and m.fact("bits") == 64
    assert m.inputs["source"] == "standin"
    described = m.inputs["standin"]["modules"]
    assert described["ext2fs.static"]["described"] == (
        "gcc-built stand-in from hurdxen/data/standins/traps64.c, not the Hurd"
    )
    assert described["ext2fs.static"]["sha256"] == fsutil.sha256_bytes(TRAPS64_SRC.encode())
    assert described["ld-x86-64.so.1"]["source"] == "hurdxen/data/standins/ldso.c"
    assert described["ext2fs.static"]["flags"][0] == "-m64"
    assert m.output("module:ext2fs.static").read_bytes() == static
    return m


def test_standin_variants_compile_their_sources(root: Path, tmp_path: Path, restore_env: Callable[..., None]) -> None:
    r = load(root, tmp_path)
    ctx = context(r, tmp_path, restore_env)
    traps, term = spec_of(r, TRAPS), spec_of(r, TERMINATE)
    assert (traps.source, traps.libc_version, traps.default_ramdisk, traps.opt_in) == (
        "standin",
        "stand-in",
        False,
        False,
    )
    assert traps.doc == "stand-ins, 64-bit, for xen-amd64: gcc-built, not the Hurd (no glibc)"
    assert sources.STANDIN_DIR / "traps64.c" in traps.deps(ctx).files
    stage.build(traps, ctx)
    m = check_traps_ramdisk(ctx, traps)
    assert m.inputs["standin"]["step"]["executor"] == "host"
    stage.build(term, ctx)
    m32 = manifest.read_task(ctx.artifacts, term.task)
    static = parse_ramdisk(m32.output("ramdisk").read_bytes()).modules[0].data
    lcall = bytes.fromhex("9a00000000 0700")  # the i386 trap gate: lcall $7,$0 after the trap number in %eax
    assert b"\xb8" + (-26).to_bytes(4, "little", signed=True) + lcall in static
    assert m32.inputs["standin"]["modules"]["ext2fs.static"]["sha256"] == fsutil.sha256_bytes(TERMINATE32_SRC.encode())
    # The same sources and words give the same bytes (no path or time is compiled in).
    first = m32.output("ramdisk").read_bytes()
    shutil.rmtree(ctx.artifacts / "hurd-modules")
    stage.build(term, ctx)
    assert manifest.read_task(ctx.artifacts, term.task).output("ramdisk").read_bytes() == first


def test_identity_covers_sources_flags_and_image(root: Path, tmp_path: Path, restore_env: Callable[..., None]) -> None:
    r = load(root, tmp_path)
    ctx = context(r, tmp_path, restore_env)
    traps = spec_of(r, TRAPS)
    assert traps.standin is not None
    one = traps.standin.modules[0]
    edited = dataclasses.replace(one, sha256="0" * 64)  # the source's bytes changed
    other_src = dataclasses.replace(
        traps, standin=dataclasses.replace(traps.standin, modules=(edited, *traps.standin.modules[1:]))
    )
    assert other_src.identity(ctx) != traps.identity(ctx)
    flags = dict(r["hurd-modules"]["variants"][TRAPS]["standin"]["modules"]["ext2fs.static"])
    flags["flags"] = [*flags["flags"], "-O2"]
    r2 = load(root, tmp_path / "b", {TRAPS: {"standin": {"modules": {"ext2fs.static": flags}}}})
    assert spec_of(r2, TRAPS).identity(ctx) != traps.identity(ctx)
    docker_ctx = dataclasses.replace(ctx, executor_kind="docker")
    assert traps.identity(docker_ctx) != traps.identity(ctx)  # the builder image's tag, not "host"
    assert "image:builder" in traps.deps(docker_ctx).tasks


def test_a_standin_is_never_the_ramdisk_for_a_kernel() -> None:
    """The default recipes: xen-amd64's ramdisk (the plan's, pv-grub2's standalone image's) stays the Debian one,
    xen-pae's the Hurd built here, though a stand-in lists each kernel; root disks take hurd-i386's modules."""
    plan = make_plan(recipes.load(REPO))
    names = {h.name: h for h in plan.hurd_modules}
    assert {"xen-amd64"} == set(names[TRAPS].kernels) and "xen-pae" in names[TERMINATE].kernels
    assert not names[TRAPS].default_ramdisk and not names[TERMINATE].default_ramdisk
    got = plan.hurd_modules_for("xen-amd64")
    assert got is not None and got.name == "hurd-amd64"
    got = plan.hurd_modules_for("xen-pae")
    assert got is not None and got.name == "hurd-i386"
    images = {s.image.name: s for s in plan.pvgrub2}
    standalone = images["x86_64-xen-standalone"].ramdisk
    assert standalone is not None and standalone.name == "hurd-amd64"
    standalone = images["i386-xen-standalone"].ramdisk
    assert standalone is not None and standalone.name == "hurd-i386"
    for d in plan.rootdisks:  # their GRUB menus list hurd-i386's (the 64-bit disk hurd-amd64's) modules, no stand-in's
        arch = "hurd-amd64" if d.name == "hurd-amd64" else "hurd-i386"
        assert dict(d.facts)["hurd_modules"] == f"hurd-modules:{arch}"
    # Only stand-ins list a kernel: no ramdisk for it, and a standalone image that needs one is refused.
    only = tuple(h for h in plan.hurd_modules if h.name != "hurd-amd64")
    assert stage.ramdisk_for(only, "xen-amd64") is None
    producers = pvgrub.Producers(plan.kernels, only)
    assert producers.ramdisk_for("xen-amd64") is None
    r = recipes.load(REPO)
    with pytest.raises(
        HurdxenError, match=r"x86_64-xen-standalone\): no hurd-modules variant lists kernel 'xen-amd64'"
    ):
        pvgrub.spec_from_recipe(r["pvgrub2"], producers)


def test_standin_recipe_errors_are_one_line(root: Path, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"default_ramdisk": True}, r"default_ramdisk: true, but a stand-in is never the ramdisk of a real image"),
        ({"libc_version": "2.41-6"}, r"libc_version: a stand-in has no glibc"),
        (
            {"standin": {"modules": {"exec": {"source": "spin.c", "flags": []}}}},
            r"standin\.modules: exec: the stand-ins must be the variant's modules",
        ),
        (
            {"standin": {"modules": {"ext2fs.static": {"source": "nothere.c", "flags": []}}}},
            r"standin\.modules\.ext2fs\.static\.source: no hurdxen/data/standins/nothere\.c",
        ),
    ]
    for n, (variant, message) in enumerate(cases):
        r = load(root, tmp_path / str(n), {TRAPS: variant})
        with pytest.raises(HurdxenError, match=message):
            spec_of(r, TRAPS)
    # The schema refuses a flag that is not one option word.
    with pytest.raises(HurdxenError, match=r"flags\[0\]"):
        load(
            root,
            tmp_path / "x",
            {TRAPS: {"standin": {"modules": {"ext2fs.static": {"source": "traps64.c", "flags": ["-O1 -g"]}}}}},
        )


@pytest.mark.docker
def test_the_standin_step_runs_in_the_builder_image(
    root: Path, tmp_path: Path, restore_env: Callable[..., None]
) -> None:
    """The builder image's gcc (gcc-multilib: -m32 and -m64, -static -nostdlib) compiles the same stand-ins."""
    if not docker_answers():
        pytest.skip("no Docker engine answers")
    from hurdxen.pipeline.containers import ensure_base, ensure_image

    r = load(root, tmp_path)
    ctx = context(r, tmp_path, restore_env, executor="docker")
    ensure_base(ctx.base, ctx.cache.root, ctx.log("base"))
    ensure_image(ctx.image("builder"), ctx.log("image:builder"))
    traps = spec_of(r, TRAPS)
    stage.build(traps, ctx)
    m = check_traps_ramdisk(ctx, traps)
    assert m.inputs["standin"]["step"]["executor"] == "docker"
    stage.build(spec_of(r, TERMINATE), ctx)
    shutil.rmtree(ctx.artifacts)


def test_the_standin_ldso_claims_no_glibc(elves: ElfFactory) -> None:
    """The stand-in ld.so's banner gives libc version `stand-in`: a variant pinned to a real glibc refuses it, and
    the Debian-banner build the tests use elsewhere still reads as that glibc."""
    from hurdxen.stages.hurd_modules.elf import check_module, variant_for

    standin = elves.ldso_standin(64)
    assert ldso_version(standin) == STANDIN_LIBC
    assert check_module("ld-x86-64.so.1", "ld.so", standin, variant_for(64), STANDIN_LIBC).ldso_version == "stand-in"
    with pytest.raises(HurdxenError, match=r"is from glibc stand-in, but the pinned libc0\.3 version is 2\.41-6"):
        check_module("ld-x86-64.so.1", "ld.so", standin, variant_for(64), "2.41-6")
    assert ldso_version(elves.ldso(64, "2.41-6")) == "2.41-6"
