"""The hurd-modules stage's sources, for real on small fakes: `build` reads a fake hurd:root's published outputs by
name through its manifest (its identity checked); `disk` reads tiny ext2 images made with `mke2fs -d` through debugfs
(good ones, a whole disk with an MBR, and hostile ones: not ext2, lacking ld.so.1, symlinks that escape or loop, a
mismatched libc, a file over the size limit). The disk step runs under the host executor here (the same script the
builder image runs; one test runs it in Docker).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from elfstandins import ElfFactory, elves
from project import SHARED_CACHE, amd64_from_debian, copy_project, docker_answers, to_toml

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, recipes
from hurdxen.pipeline.context import Context, make_context
from hurdxen.stages.hurd_modules import stage
from hurdxen.stages.hurd_modules.format import parse_ramdisk
from hurdxen.stages.toolchain.chain import Layer, TreeSpec

__all__ = ["elves"]  # the fixture, imported for pytest

RECIPES = ("base", "images", "hurd-modules")
LIBC = "2.41-6"
LIBC_SO = b"\0GNU C Library (Debian GLIBC %s) stable release version 2.41.\n\0"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "project", ("recipes", "containers"), RECIPES)
    amd64_from_debian(root)
    return root


def load(root: Path, tmp_path: Path, variant: dict[str, Any]) -> recipes.Recipes:
    tmp_path.mkdir(parents=True, exist_ok=True)
    overlay = tmp_path / "overlay.toml"
    overlay.write_text(to_toml({"hurd-modules": {"variants": {"hurd-i386": variant}}}))
    return recipes.load(root, overrides={}, overlay=overlay)


def context(r: recipes.Recipes, tmp_path: Path, set_env: Callable[[str, str], None], executor: str = "host") -> Context:
    set_env("HURDXEN_ARTIFACTS", str(tmp_path / "artifacts"))
    set_env("HURDXEN_CACHE", str(SHARED_CACHE))
    set_env("HURDXEN_EXECUTOR", executor)
    return make_context(r)


def i386(r: recipes.Recipes, system: tuple[TreeSpec, ...] = ()) -> stage.HurdModulesSpec:
    return next(s for s in stage.specs(r, system) if s.name == "hurd-i386")


# ------------------------------------------------------------------ build: a fake hurd:root


def fake_root(glibc: str = "2.43") -> TreeSpec:
    """hurd:root as the plan makes it, in shape: named outputs, a glibc layer whose recipe fact is the version."""
    glibc_layer = TreeSpec("toolchain", "glibc", "a fake glibc", "true", "toolchain", facts=(("glibc_version", glibc),))
    files = (("ext2fs.static", "ext2fs.static"), ("ld.so.1", "ld.so.1"), ("exec", "exec"))
    return TreeSpec("hurd", "root", "a fake root", "true", "toolchain", layers=(Layer(glibc_layer),), files=files)


def publish(ctx: Context, producer: TreeSpec, files: dict[str, bytes]) -> Path:
    """What the producer's stage publishes: its files and its manifest (identity and each output's sha256)."""
    out = ctx.artifacts / "hurd" / "root"
    out.mkdir(parents=True)
    (out / "tree.tar").write_bytes(b"a tree")
    for name, data in files.items():
        (out / name).write_bytes(data)
    upstream = {"hurd:system": {"identity": "1" * 64, "into": "sysroot", "sha256": "2" * 64}}
    manifest.write_raw(
        out,
        task=producer.task,
        identity=producer.identity(ctx),
        inputs={"upstream": upstream},
        step={"function": "a test"},
        outputs={"tree": "tree.tar", **{n: n for n in files}},
    )
    system = ctx.artifacts / "hurd" / "system"
    system.mkdir()
    manifest.write_raw(
        system,
        task="hurd:system",
        identity="1" * 64,
        inputs={"hurd_src": {"git": "https://git.savannah.gnu.org/git/hurd/hurd.git", "commit": "d" * 40}},
        step={"function": "a test"},
        outputs={},
    )
    return out


def test_build_reads_the_producers_outputs_by_name(
    root: Path, tmp_path: Path, restore_env: Callable[..., None], elves: ElfFactory
) -> None:
    r = recipes.load(root, overrides={})
    producer = fake_root()
    spec = i386(r, (producer,))
    assert (spec.source, spec.libc_version) == ("build", "2.43")  # the glibc layer's, not a repeated recipe value
    ctx = context(r, tmp_path, restore_env)
    assert producer.task in spec.deps(ctx).tasks
    static, ldso = elves.static(32), elves.ldso(32, "2.43")
    publish(ctx, producer, {"ext2fs.static": static, "ld.so.1": ldso, "exec": b"x"})
    res = stage.build(spec, ctx)
    assert [m.data for m in parse_ramdisk(res.path.read_bytes()).modules] == [static, ldso]
    m = manifest.read_task(ctx.artifacts, spec.task)
    assert m.inputs["source"] == "build"
    built = m.inputs["build"]["hurd:root"]
    assert built["identity"] == producer.identity(ctx)
    assert built["outputs"] == {"ext2fs.static": fsutil.sha256_bytes(static), "ld.so.1": fsutil.sha256_bytes(ldso)}
    assert built["sources"] == {
        "hurd:system.hurd_src": {"git": "https://git.savannah.gnu.org/git/hurd/hurd.git", "commit": "d" * 40}
    }
    assert m.fact("libc_version") == "2.43"
    # The producer's identity is part of the consumer's: a rebuilt Hurd rebuilds the ramdisk.
    other = dataclasses.replace(producer, options=(("X", "y"),))
    assert i386(r, (other,)).identity(ctx) != spec.identity(ctx)


def test_build_refuses_a_stale_or_tampered_producer(
    root: Path, tmp_path: Path, restore_env: Callable[..., None], elves: ElfFactory
) -> None:
    r = recipes.load(root, overrides={})
    producer = fake_root()
    ctx = context(r, tmp_path, restore_env)
    out = publish(ctx, producer, {"ext2fs.static": elves.static(32), "ld.so.1": elves.ldso(32, "2.43")})
    stale = i386(r, (dataclasses.replace(producer, options=(("X", "y"),)),))
    with pytest.raises(HurdxenError, match=r"hurd:root's published output is stale"):
        stage.build(stale, ctx)
    (out / "ld.so.1").write_bytes(elves.ldso(32, "2.43") + b"!")
    with pytest.raises(HurdxenError, match=r"ld\.so\.1 differs from its manifest"):
        stage.build(i386(r, (producer,)), ctx)
    assert not (ctx.artifacts / "hurd-modules").exists() or not any((ctx.artifacts / "hurd-modules").iterdir())


def test_build_checks_ldso_against_the_toolchains_glibc(
    root: Path, tmp_path: Path, restore_env: Callable[..., None], elves: ElfFactory
) -> None:
    r = recipes.load(root, overrides={})
    producer = fake_root()
    ctx = context(r, tmp_path, restore_env)
    publish(ctx, producer, {"ext2fs.static": elves.static(32), "ld.so.1": elves.ldso(32, "2.42")})
    with pytest.raises(HurdxenError, match=r"hurd-modules:hurd-i386: module 'ld\.so\.1' is from glibc 2\.42, but"):
        stage.build(i386(r, (producer,)), ctx)


def test_build_recipe_errors_are_one_line(root: Path, tmp_path: Path) -> None:
    r = recipes.load(root, overrides={})
    with pytest.raises(HurdxenError, match=r"variants\.hurd-i386\.build\.root: no stage publishes hurd:root"):
        i386(r, ())
    bare = dataclasses.replace(fake_root(), files=(("ext2fs.static", "ext2fs.static"),))
    with pytest.raises(HurdxenError, match=r"hurd:root publishes no ld\.so\.1"):
        i386(r, (bare,))
    pinned = load(root, tmp_path, {"libc_version": "2.41-6"})
    with pytest.raises(HurdxenError, match=r"libc_version: 2\.41-6, but hurd:root has glibc 2\.43"):
        i386(pinned, (fake_root(),))


# ------------------------------------------------------------------ disk: tiny ext2 images


def good_tree(tree: Path, elves: ElfFactory, libc: str = LIBC, ldso_libc: str = LIBC) -> Path:
    """An installed Hurd's layout, as Debian has it: /lib/ld.so.1 a symlink into the multiarch directory."""
    (tree / "hurd").mkdir(parents=True)
    (tree / "lib" / "i386-gnu").mkdir(parents=True)
    (tree / "hurd" / "ext2fs.static").write_bytes(elves.static(32))
    (tree / "lib" / "i386-gnu" / "ld.so.1").write_bytes(elves.ldso(32, ldso_libc))
    (tree / "lib" / "ld.so.1").symlink_to("i386-gnu/ld.so.1")
    (tree / "lib" / "i386-gnu" / "libc.so.0.3").write_bytes(LIBC_SO % libc.encode())
    return tree


def mke2fs(tree: Path, image: Path) -> Path:
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext2", "-o", "hurd", "-b", "4096", "-d", str(tree), str(image), "2M"],
        check=True,
        env={"E2FSPROGS_FAKE_TIME": "1700000000", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    return image


def with_mbr(fs: Path, disk: Path, first_sector: int = 2048) -> Path:
    """A whole disk: an MBR with one partition (type 0x83) at `first_sector`, then the filesystem."""
    size = fs.stat().st_size // 512
    entry = b"\0\xfe\xff\xff\x83\xfe\xff\xff" + first_sector.to_bytes(4, "little") + size.to_bytes(4, "little")
    mbr = bytes(446) + entry + bytes(48) + b"\x55\xaa"
    disk.write_bytes(mbr + bytes((first_sector - 1) * 512) + fs.read_bytes())
    return disk


def disk_variant(image: Path, **more: Any) -> dict[str, Any]:
    return {"source": "disk", "disk": {"path": str(image), "sha256": fsutil.sha256_file(image), **more}}


def build_disk(root: Path, tmp_path: Path, set_env: Callable[..., None], variant: dict[str, Any]) -> Context:
    r = load(root, tmp_path, variant)
    ctx = context(r, tmp_path, set_env)
    stage.build(i386(r), ctx)
    return ctx


def test_disk_image_gives_its_modules_and_its_libc(
    root: Path, tmp_path: Path, restore_env: Callable[..., None], elves: ElfFactory
) -> None:
    image = mke2fs(good_tree(tmp_path / "tree", elves), tmp_path / "hurd.img")
    ctx = build_disk(root, tmp_path, restore_env, disk_variant(image))
    m = manifest.read_task(ctx.artifacts, "hurd-modules:hurd-i386")
    ramdisk = parse_ramdisk(m.output("ramdisk").read_bytes())
    assert [x.data for x in ramdisk.modules] == [elves.static(32), elves.ldso(32, LIBC)]
    assert m.fact("libc_version") == LIBC  # read from the image: the recipe states none
    disk = m.inputs["disk"]
    assert m.inputs["source"] == "disk" and disk["sha256"] == fsutil.sha256_file(image)
    assert disk["modules"] == {"ext2fs.static": "/hurd/ext2fs.static", "ld.so.1": "/lib/i386-gnu/ld.so.1"}
    assert disk["libc"] == {"path": "/lib/i386-gnu/libc.so.0.3", "version": LIBC}
    assert str(tmp_path) not in json.dumps(m.raw["inputs"])  # no host path in what the bundle may carry


def test_a_whole_disk_by_partition_number_gives_the_same_ramdisk(
    root: Path, tmp_path: Path, restore_env: Callable[..., None], elves: ElfFactory
) -> None:
    fs = mke2fs(good_tree(tmp_path / "tree", elves), tmp_path / "fs.img")
    first = build_disk(root, tmp_path / "a", restore_env, disk_variant(fs))
    disk = with_mbr(fs, tmp_path / "disk.img")
    second = build_disk(root, tmp_path / "b", restore_env, disk_variant(disk, partition=1))
    a, b = (manifest.read_task(c.artifacts, "hurd-modules:hurd-i386") for c in (first, second))
    assert a.output("ramdisk").read_bytes() == b.output("ramdisk").read_bytes()
    with pytest.raises(HurdxenError, match=r"disk\.partition: .* has no partition 2"):
        build_disk(root, tmp_path / "c", restore_env, disk_variant(disk, partition=2))
    with pytest.raises(HurdxenError, match=r"disk\.partition: .* has no MBR partition table"):
        build_disk(root, tmp_path / "d", restore_env, disk_variant(fs, partition=1))


def hostile(tree: Path, elves: ElfFactory, case: str) -> Path:
    good_tree(tree, elves)
    link = tree / "lib" / "ld.so.1"
    if case == "missing":
        link.unlink()
    elif case == "escape":
        link.unlink()
        link.symlink_to("../../../../../lib/i386-gnu/ld.so.1")
    elif case == "loop":
        link.unlink()
        link.symlink_to("ld.so.2")
        (tree / "lib" / "ld.so.2").symlink_to("/lib/ld.so.1")
    elif case == "directory":
        link.unlink()
        link.mkdir()
    elif case == "quote":
        link.unlink()
        link.symlink_to('i386-gnu/x" "/tmp/evil')
    elif case == "wrong-libc":
        (tree / "lib" / "i386-gnu" / "libc.so.0.3").write_bytes(LIBC_SO % b"2.40-1")
    elif case == "no-libc":
        (tree / "lib" / "i386-gnu" / "libc.so.0.3").unlink()
    return tree


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"lacks /lib/ld\.so\.1"),
        ("escape", r"/lib/ld\.so\.1: a symlink leads above the image's root"),
        ("loop", r"/lib/ld\.so\.1: more than 16 symlinks \(a loop\?\)"),
        ("directory", r"/lib/ld\.so\.1: /lib/ld\.so\.1 is a directory, not a regular file"),
        ("quote", r"a name with quotes, backslashes or control characters"),
        ("wrong-libc", r"/lib/i386-gnu/ld\.so\.1 is from glibc 2\.41-6, but its libc\.so is 2\.40-1"),
        ("no-libc", r"has no libc\.so \(looked at /lib/i386-gnu/libc\.so\.0\.3"),
    ],
)
def test_a_hostile_image_is_one_line_and_nothing_is_published(
    root: Path, tmp_path: Path, restore_env: Callable[..., None], elves: ElfFactory, case: str, message: str
) -> None:
    image = mke2fs(hostile(tmp_path / "tree", elves, case), tmp_path / "hurd.img")
    with pytest.raises(HurdxenError, match=message) as e:
        build_disk(root, tmp_path, restore_env, disk_variant(image))
    # one line, naming the file that set the disk (the overlay) and the key
    line = e.value.render()
    assert line.count("\n") == 0 and line.startswith(
        f"error: {tmp_path / 'overlay.toml'}: hurd-modules.variants.hurd-i386.disk"
    )
    assert not (tmp_path / "artifacts" / "hurd-modules" / "hurd-i386").exists()
    assert not Path("/tmp/evil").exists()


def test_not_ext2_wrong_hash_pinned_libc_and_size_limit(
    root: Path, tmp_path: Path, restore_env: Callable[..., None], elves: ElfFactory
) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x7fELF" + bytes(1 << 20))
    with pytest.raises(HurdxenError, match=r"junk\.img is not an ext2 filesystem \(no ext2 magic"):
        build_disk(root, tmp_path / "a", restore_env, disk_variant(junk))
    image = mke2fs(good_tree(tmp_path / "tree", elves), tmp_path / "hurd.img")
    with pytest.raises(HurdxenError, match=r"hurd\.img has sha256 [0-9a-f]{64}, pinned 0{64}"):
        build_disk(
            root, tmp_path / "b", restore_env, {**disk_variant(image), "disk": {"path": str(image), "sha256": "0" * 64}}
        )
    with pytest.raises(HurdxenError, match=r"has libc 2\.41-6, but the variant pins libc_version 2\.40-1"):
        build_disk(root, tmp_path / "c", restore_env, {**disk_variant(image), "libc_version": "2.40-1"})
    with pytest.raises(HurdxenError, match=r"/hurd/ext2fs\.static: \d+ bytes, over the limit of 4096"):
        build_disk(root, tmp_path / "d", restore_env, disk_variant(image, max_bytes=4096))


@pytest.mark.docker
def test_the_disk_step_runs_in_the_builder_image(
    root: Path, tmp_path: Path, restore_env: Callable[..., None], elves: ElfFactory
) -> None:
    if not docker_answers():
        pytest.skip("no Docker engine answers")
    from hurdxen.pipeline.containers import ensure_base, ensure_image

    image = mke2fs(good_tree(tmp_path / "tree", elves), tmp_path / "hurd.img")
    image.chmod(0o644)
    r = load(root, tmp_path, disk_variant(image))
    ctx = context(r, tmp_path, restore_env, executor="docker")
    ensure_base(ctx.base, ctx.cache.root, ctx.log("base"))
    ensure_image(ctx.image("builder"), ctx.log("image:builder"))
    spec = i386(r)
    assert "image:builder" in spec.deps(ctx).tasks and Path(image) in spec.deps(ctx).files
    stage.build(spec, ctx)
    m = manifest.read_task(ctx.artifacts, spec.task)
    assert m.inputs["disk"]["step"]["executor"] == "docker"
    assert [x.data for x in parse_ramdisk(m.output("ramdisk").read_bytes()).modules][1] == elves.ldso(32, LIBC)
    shutil.rmtree(ctx.artifacts)
