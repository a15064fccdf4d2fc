"""pv-grub2 images: recipe, configs, memdisk, and real builds with Debian's grub-xen-bin in the builder image."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import os
import tarfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hurdxen.core import fsutil, quoting
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import recipes
from hurdxen.stages.pvgrub2 import config as pvgrub_config
from hurdxen.stages.pvgrub2 import elf as pvgrub_elf
from hurdxen.stages.pvgrub2 import grub as pvgrub_grub
from hurdxen.stages.pvgrub2 import image as pvgrub_image
from hurdxen.stages.pvgrub2 import stage as pvgrub

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pvgrub2.toml"
SDE = 1700000000
HURD_MODULE_LINE = (
    "module /hurd/ext2fs.static ext2fs '--multiboot-command-line=${kernel-command-line}' "
    "'--host-priv-port=${host-port}' '--device-master-port=${device-port}' '--exec-server-task=${exec-task}' "
    "-T typed '${root}' '$(task-create)' '$(task-resume)'"
)
EXEC_MODULE_LINE = "module /lib/ld.so.1 exec /hurd/exec '$(exec-task=task-create)'"
LDSO64 = "/lib/ld-x86-64.so.1"
# The kernels (bits, PAE) and the Hurd's boot modules pv-grub2 takes from the gnumach and hurd-modules recipes.
PRODUCERS = pvgrub.Producers.of(recipes.load(ROOT))


def recipe_data() -> dict[str, Any]:
    with open(RECIPE, "rb") as f:
        return tomllib.load(f)


def image(name: str, **changes: Any) -> pvgrub_config.PvGrubImageSpec:
    data = recipe_data()
    for img in data["images"]:
        if img["name"] == name:
            img.update(changes)
    return pvgrub.spec_from_recipe(data, PRODUCERS).get(name)


# ------------------------------------------------------------------------------------------------ no engine


def test_recipe_resolves_defaults() -> None:
    r = pvgrub.spec_from_recipe(recipe_data(), PRODUCERS)
    assert r.grub.package == "grub-xen-bin" and r.grub.version == "2.06-13+deb12u2" and r.grub.arch == "amd64"
    assert len(r.images) == 7  # and the stand-in image, x86_64-xen-standin (a standalone one)
    assert {(i.platform, i.flavour) for i in r.images} == {
        (p, f) for p in ("i386-xen", "x86_64-xen") for f in ("disk", "hurd", "standalone")
    }
    hurd = r.get("i386-xen-hurd")
    assert hurd.root == "device:hd0s1"
    assert [m.path for m in hurd.boot_modules] == ["/hurd/ext2fs.static", "/lib/ld.so.1"]
    assert hurd.boot_modules[1].args == ("exec", "/hurd/exec", "$(exec-task=task-create)")


def test_an_image_names_its_ramdisk_to_embed_a_standin() -> None:
    """A stand-in is never the ramdisk for a kernel: x86_64-xen-standalone embeds hurd-amd64's modules, the image
    that names standin-amd64-traps the stand-in's; `ramdisk` is a standalone image's only, and must fit its kernel."""
    from hurdxen.plan import make_plan

    plan = make_plan(recipes.load(ROOT))
    images = {s.image.name: s for s in plan.pvgrub2}
    held = {n: s.ramdisk.name for n, s in images.items() if s.ramdisk is not None}
    assert held == {
        "i386-xen-standalone": "hurd-i386",
        "x86_64-xen-standalone": "hurd-amd64",
        "x86_64-xen-standin": "standin-amd64-traps",
    }
    for changes, message in (
        ({"flavour": "hurd"}, r"ramdisk: only a standalone image embeds one"),
        ({"ramdisk": "no-such"}, r"ramdisk: no hurd-modules variant named 'no-such'"),
        ({"ramdisk": "standin-i386-terminate"}, r"ramdisk: standin-i386-terminate is not made for kernel 'xen-amd64'"),
    ):
        with pytest.raises(HurdxenError, match=message):
            image("x86_64-xen-standin", **changes)


@pytest.mark.parametrize(
    ("platform", "kernel", "arch"),
    [("i386-xen", "xen-amd64", 4), ("x86_64-xen", "xen-pae", 2), ("i386-xen", "xen-nopae", 1)],
)
def test_recipe_refuses_kernel_platform_mismatch(platform: str, kernel: str, arch: int) -> None:
    data = recipe_data()
    data["images"][0].update(platform=platform, kernels=[kernel])
    with pytest.raises(HurdxenError) as e:
        pvgrub.spec_from_recipe(data, PRODUCERS)
    msg = str(e.value)
    assert f"kernel variant {kernel}" in msg and platform in msg
    assert f"error: incompatible architecture: {arch}." in msg
    assert "hint:" in msg


@pytest.mark.parametrize(
    ("path", "value", "expect"),
    [
        (("defaults", "root"), "hd0s1", "GNU Mach root device"),
        (("images", 0, "platform"), "i386-xen_pvh", "expected one of 'i386-xen', 'x86_64-xen'"),
        (("images", 0, "kernels"), ["xen-486"], "no gnumach kernel named 'xen-486'"),
        (("grub", "version"), "two", "Debian version"),
        (("images", 0, "bogus"), 1, "images[0].bogus: unknown key"),
        (("defaults", "boot_modules"), [{"path": "/hurd/ext2fs.static", "args": ["ext2fs"]}], "unknown key"),
    ],
)
def test_schema_messages(path: tuple[Any, ...], value: Any, expect: str) -> None:
    data = recipe_data()
    d: Any = data
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value
    with pytest.raises(HurdxenError) as e:
        pvgrub.spec_from_recipe(data, PRODUCERS)
    assert expect in str(e.value)
    assert str(e.value).startswith("error: recipes/pvgrub2.toml: ")


def test_locales_refused() -> None:
    data = recipe_data()
    data["defaults"]["fonts"] = True
    with pytest.raises(HurdxenError, match=r"defaults\.fonts = true is not supported"):
        pvgrub.spec_from_recipe(data, PRODUCERS)


def test_standalone_carries_one_kernel() -> None:
    data = recipe_data()
    data["images"][2]["kernels"] = ["xen-pae", "xen-pae"]  # schema: unique
    with pytest.raises(HurdxenError, match=r"duplicate|non-unique|unique"):
        pvgrub.spec_from_recipe(data, PRODUCERS)


def test_grub_word() -> None:
    assert quoting.grub_word("root=device:hd0s1") == "root=device:hd0s1"
    assert quoting.grub_word("(memdisk)/boot/gnumach.gz") == "(memdisk)/boot/gnumach.gz"
    assert quoting.grub_word("${root}") == "'${root}'"
    assert quoting.grub_word("$(task-create)") == "'$(task-create)'"
    assert quoting.grub_word("it's") == "'it'\\''s'"
    assert quoting.grub_word("a b") == "'a b'"


def test_hurd_config_is_the_field_notes_entry() -> None:
    cfg = pvgrub_config.render_config(image("i386-xen-hurd"))
    lines = [ln.strip() for ln in cfg.splitlines()]
    assert "multiboot /boot/gnumach.gz console=hyp0 root=device:hd0s1" in lines
    assert HURD_MODULE_LINE in lines
    assert EXEC_MODULE_LINE in lines
    assert lines.index("boot") > lines.index(EXEC_MODULE_LINE)
    assert any(ln.startswith("search --no-floppy --file --set=root --hint=xen/xvda,") for ln in lines)


def test_standalone_config() -> None:
    cfg = pvgrub_config.render_config(image("x86_64-xen-standalone", root="part:1:device:xvd0"))
    body = [ln for ln in cfg.splitlines() if ln and not ln.startswith("#")]
    assert body[1:4] == [
        "insmod gzio",
        "multiboot (memdisk)/boot/gnumach.gz console=hyp0 root=part:1:device:xvd0",
        "module (memdisk)" + HURD_MODULE_LINE.removeprefix("module "),
    ]
    # hurd-amd64's dynamic linker
    assert body[4] == "module (memdisk)" + EXEC_MODULE_LINE.removeprefix("module ").replace("/lib/ld.so.1", LDSO64)
    assert body[5] == "boot"


def test_disk_config_uses_xen_grub_env_and_avoids_memdisk() -> None:
    cfg = pvgrub_config.render_config(image("i386-xen-disk"))
    assert "set pvgrub_cfg=/boot/grub/grub.cfg" in cfg
    assert '"${xen_grub_env_cfg}"' in cfg
    assert 'configfile "${pvgrub_cfg}"' in cfg
    # the memdisk holds a /boot/grub/grub.cfg as well: the config must not hand over to itself
    assert 'if [ "${root}" = memdisk ]; then' in cfg


def test_config_commands() -> None:
    cfg = pvgrub_config.render_config(image("i386-xen-disk", extra_config="set debug=xen; xen_ls"))
    cmds = set(pvgrub_config.config_commands(cfg))
    assert {"set", "[", "search", "echo", "configfile", "xen_ls"} <= cmds
    assert "then" not in cmds and "fi" not in cmds


def _tar_headers(data: bytes) -> Iterator[bytes]:
    off = 0
    while off + 512 <= len(data) and data[off : off + 512].strip(b"\0"):
        h = data[off : off + 512]
        yield h
        size = int(h[124:136].strip(b"\0 ") or b"0", 8)
        off += 512 + (size + 511) // 512 * 512


def test_memdisk_is_reproducible_ustar() -> None:
    files = {"lib/ld.so.1": b"y" * 700, "boot/grub/grub.cfg": b"boot\n", "hurd/ext2fs.static": b"x" * 10}
    old = os.umask(0o077)
    try:
        a, listing = pvgrub_grub.build_memdisk(files, SDE)
    finally:
        os.umask(old)
    b, _ = pvgrub_grub.build_memdisk(dict(reversed(list(files.items()))), SDE)
    assert a == b
    names = [e.path for e in listing]
    assert names == sorted(names)
    assert names == ["boot/", "boot/grub/", "boot/grub/grub.cfg", "hurd/", "hurd/ext2fs.static", "lib/", "lib/ld.so.1"]
    for h in _tar_headers(a):
        assert h[257:265] == b"ustar\x0000"  # POSIX ustar, no GNU or pax headers
        assert h[156:157] in (b"0", b"5")
        assert int(h[108:116].strip(b"\0 "), 8) == 0 and int(h[116:124].strip(b"\0 "), 8) == 0
        assert int(h[136:148].strip(b"\0 "), 8) == SDE
        assert h[265:297].rstrip(b"\0") == b"root"
    with tarfile.open(fileobj=io.BytesIO(a)) as t:
        modes = {m.name: m.mode for m in t.getmembers()}
    assert modes["boot"] == 0o755 and modes["lib/ld.so.1"] == 0o644
    assert pvgrub_grub.memdisk_listing(a) == listing


def test_memdisk_refuses_bad_paths() -> None:
    with pytest.raises(HurdxenError):
        pvgrub_grub.build_memdisk({"../x": b""}, SDE)


# ------------------------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="session")
def grub_tree() -> Path:
    """grub-xen-bin as the recipe pins it, through hurdxen.sources.fetch (signed InRelease, Packages, .deb hash)."""
    from hurdxen.sources.fetch import Cache

    try:
        return pvgrub.fetch_grub_tree(pvgrub.spec_from_recipe(recipe_data(), PRODUCERS), Cache.default())
    except HurdxenError as e:
        if "cannot fetch" in str(e) or "offline" in str(e):
            pytest.skip(str(e))
        raise


def test_module_closure_and_commands(grub_tree: Path) -> None:
    for name in ("i386-xen-standalone", "x86_64-xen-disk"):
        spec = image(name)
        pdir = pvgrub_grub.grub_platform_dir(grub_tree, spec.platform)
        mods = pvgrub_grub.module_closure(pvgrub_grub.image_modules(spec), pdir)
        assert {"memdisk", "tar", "normal", "linux", "gzio"} <= set(mods)
        assert len(mods) <= spec.module_limit
        pvgrub_grub.check_commands(pvgrub_config.render_config(spec), mods, pdir, name)
    with pytest.raises(HurdxenError, match="does not exist"):
        pvgrub_grub.module_closure(["nosuchmod"], pdir)


def test_command_without_module_refused(grub_tree: Path) -> None:
    spec = image("i386-xen-disk", extra_config="xen_ls")
    pdir = pvgrub_grub.grub_platform_dir(grub_tree, spec.platform)
    mods = pvgrub_grub.module_closure(pvgrub_grub.image_modules(spec), pdir)
    with pytest.raises(HurdxenError) as e:
        pvgrub_grub.check_commands(pvgrub_config.render_config(spec), mods, pdir, "pvgrub:x")
    assert "`xen_ls`" in str(e.value) and "'lsxen'" in str(e.value)
    spec = image("i386-xen-disk", extra_config="xen_ls", modules=["lsxen"])
    mods = pvgrub_grub.module_closure(pvgrub_grub.image_modules(spec), pdir)
    pvgrub_grub.check_commands(pvgrub_config.render_config(spec), mods, pdir, "pvgrub:x")


# ------------------------------------------------------------------------------------------------ engine

FAKE_KERNEL_C = r"""
__attribute__((used, section("__xen_guest"))) static const char xen_guest[] =
  "GUEST_OS=Mach,GUEST_VER=1.8,XEN_VER=xen-3.0,VIRT_BASE=" VIRT ",ELF_PADDR_OFFSET=" VIRT
  ",HYPERCALL_PAGE=0x2,PAE=" PAE ",LOADER=generic";
void _start(void) { for (;;) ; }
"""
FAKE_KERNEL_SCRIPT = r"""
cd "$OUT"
cc="gcc -Os -nostdlib -static -fno-pic -no-pie -Wl,--build-id=none"
$cc -m32 -Wl,-Ttext-segment=0xC0000000 -DVIRT='"0xC0000000"' -DPAE='"yes[extended-cr3]"' -o xen-pae k.c
$cc -m32 -Wl,-Ttext-segment=0xC0000000 -DVIRT='"0xC0000000"' -DPAE='"no"' -o xen-nopae k.c
$cc -m64 -mcmodel=kernel -Wl,-Ttext-segment=0xffffffff80000000 -DVIRT='"0xffffffff80000000"' -DPAE='"yes"' \
  -o xen-amd64 k.c
gzip -9n -k xen-pae
printf 'fake ext2fs.static\n' >ext2fs.static
printf 'fake ld.so\n' >ld.so.1
"""


@pytest.fixture(scope="session")
def builder_tag() -> str:
    from hurdxen.pipeline.executors import connect_docker

    tag = os.environ.get("HURDXEN_BUILDER_IMAGE")
    try:
        client = connect_docker()
    except HurdxenError as e:
        pytest.skip(str(e))
    if tag:
        return tag
    images = sorted(client.images(name="hurdxen/builder"), key=lambda i: i["Created"], reverse=True)
    for i in images:
        for t in i.get("RepoTags") or []:
            return str(t)
    pytest.skip("no hurdxen/builder image in the engine (build it first, or set HURDXEN_BUILDER_IMAGE)")


@pytest.fixture(scope="session")
def executor() -> Any:
    from hurdxen.pipeline.executors import make_executor

    return make_executor("docker")


@pytest.fixture(scope="session")
def fake_inputs(tmp_path_factory: pytest.TempPathFactory, executor: Any, builder_tag: str) -> Path:
    """Tiny ELF 'kernels' with GNU Mach's __xen_guest string (PAE, non-PAE, 64-bit), made by gcc in the builder."""
    from hurdxen.pipeline.executors import Mount, Step

    d = tmp_path_factory.mktemp("fake-kernels")
    (d / "k.c").write_text(FAKE_KERNEL_C)
    d.chmod(0o777)
    step = Step("test:fake-kernels", FAKE_KERNEL_SCRIPT, builder_tag, (Mount(d, "OUT", "/out", writable=True),))
    executor.run(step, d / "build.log")
    return d


def _kernels(d: Path) -> dict[str, Path]:
    return {"xen-pae": d / "xen-pae.gz", "xen-nopae": d / "xen-nopae", "xen-amd64": d / "xen-amd64"}


def _modules(d: Path) -> dict[str, Path]:
    # One fake ld.so under both names: /lib/ld.so.1 (i386) and /lib/ld-x86-64.so.1 (x86_64 images).
    return {"/hurd/ext2fs.static": d / "ext2fs.static", "/lib/ld.so.1": d / "ld.so.1", LDSO64: d / "ld.so.1"}


def make(
    spec: pvgrub_config.PvGrubImageSpec,
    out: Path,
    grub_tree: Path,
    kernel: Path | None,
    modules: dict[str, Path],
    executor: Any,
    tag: str,
) -> pvgrub_image.PvGrubResult:
    """One image made as its stage makes it (a scratch directory, the step logged, the outputs published in one
    rename), with the kernel and module files given instead of read from producers' manifests."""
    log = out.parent / "logs" / f"{spec.name}.log"
    with fsutil.scratch_dir(out.parent, "work") as work, fsutil.atomic_dir(out) as tmp:
        inputs = pvgrub_image.Inputs(grub_tree, kernel, modules)
        made = pvgrub_image.make_image(spec, inputs, SDE, tag, work, lambda step: executor.run(step, log))
        made.write(tmp)
    res = pvgrub_image.PvGrubResult(made, out, 0)
    published = res.path("image").read_bytes()
    assert made.facts(tag, SDE)["image"] == {
        "file": res.path("image").name,
        "sha256": hashlib.sha256(published).hexdigest(),
        "size": len(published),
    }
    return res


def _build(
    spec: pvgrub_config.PvGrubImageSpec, out: Path, grub_tree: Path, inputs: Path, executor: Any, tag: str
) -> pvgrub_image.PvGrubResult:
    kernel = _kernels(inputs)[spec.kernels[0].name] if spec.flavour == "standalone" else None
    return make(spec, out, grub_tree, kernel, _modules(inputs), executor, tag)


def _embedded_tar(image_bytes: bytes) -> bytes:
    """The memdisk found in the image by its first ustar header (independent of the `mods` walk)."""
    at = image_bytes.find(b"ustar\x0000")
    assert at > 257, "no ustar header in the image"
    start = at - 257
    end = start
    for h in _tar_headers(image_bytes[start:]):
        size = int(h[124:136].strip(b"\0 ") or b"0", 8)
        end += 512 + (size + 511) // 512 * 512
    return image_bytes[start : end + 1024]


@pytest.mark.docker
@pytest.mark.parametrize("name", [f"{p}-{f}" for p in ("i386-xen", "x86_64-xen") for f in pvgrub_config.FLAVOURS])
def test_build_each_image(
    name: str, tmp_path: Path, grub_tree: Path, fake_inputs: Path, executor: Any, builder_tag: str
) -> None:
    spec = image(name)
    res = _build(spec, tmp_path / "out", grub_tree, fake_inputs, executor, builder_tag)

    # written, and what the result says
    for output in ("image", "image.gz", "config", "memdisk"):
        assert res.path(output).is_file()
    made, image_path = res.made, res.path("image")
    assert image_path.read_bytes() == made.image and res.path("image.gz").read_bytes() == made.image_gz
    assert gzip.decompress(made.image_gz) == made.image
    assert not list((tmp_path / "out").glob(".tmp-*"))

    # checks run: grub-script-check, grub-file on the image (and kernel), ELF, Xen notes, modules, memdisk
    joined = " | ".join(made.checks)
    platform = pvgrub_config.PLATFORMS[spec.platform]
    assert "grub-script-check" in joined
    assert f"grub-file {platform.grub_file_check} image" in joined
    assert ("kernel" in joined) == (spec.flavour == "standalone")
    facts = pvgrub_elf.elf_facts(image_path)
    assert facts.bits == platform.bits and facts.machine == platform.machine
    assert facts.xen_notes[pvgrub_elf.XEN_ELFNOTE_GUEST_OS].rstrip(b"\0") == b"GRUB"
    assert facts.xen_arch in platform.accepts
    assert len(made.modules) <= spec.module_limit

    # the memdisk inside the image holds what the recipe said
    objs = pvgrub_elf.read_image_objects(image_path)
    assert objs.prefix == "(memdisk)/boot/grub"
    assert sorted(objs.modules) == list(made.modules)
    tar_bytes = _embedded_tar(made.image)
    assert tar_bytes == res.path("memdisk").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
        members = {m.name: m for m in t.getmembers()}
        assert t.extractfile("boot/grub/grub.cfg").read().decode() == made.config  # type: ignore[union-attr]
        if spec.flavour == "standalone":
            given = _kernels(fake_inputs)[spec.kernels[0].name]
            kname = "boot/gnumach.gz" if given.suffix == ".gz" else "boot/gnumach"
            assert t.extractfile(kname).read() == given.read_bytes()  # type: ignore[union-attr]
            assert f"multiboot (memdisk)/{kname} console=hyp0 root=device:hd0s1" in made.config
            assert t.extractfile("hurd/ext2fs.static").read() == b"fake ext2fs.static\n"  # type: ignore[union-attr]
            ldso = "lib/ld.so.1" if spec.platform == "i386-xen" else LDSO64.lstrip("/")
            assert t.extractfile(ldso).read() == b"fake ld.so\n"  # type: ignore[union-attr]
        else:
            assert set(members) == {"boot", "boot/grub", "boot/grub/grub.cfg"}
    assert {e.path for e in made.listing} == {n + "/" if members[n].isdir() else n for n in members}


@pytest.mark.docker
def test_two_builds_are_identical(
    tmp_path: Path,
    grub_tree: Path,
    fake_inputs: Path,
    executor: Any,
    builder_tag: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = image("i386-xen-standalone")
    a_dir, b_dir = tmp_path / "a" / "deep" / "out", tmp_path / "b"
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        a = _build(spec, a_dir, grub_tree, fake_inputs, executor, builder_tag)
        time.sleep(1.2)
        monkeypatch.setenv("TZ", "Pacific/Kiritimati")
        time.tzset()
        monkeypatch.chdir(a_dir)
        os.umask(0o077)
        b = _build(spec, b_dir, grub_tree, fake_inputs, executor, builder_tag)
    finally:
        os.umask(old)
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
    names = [f"pv-grub-{spec.name}{suffix}" for suffix in ("", ".gz", ".grub.cfg", ".memdisk.tar")]
    for name in names:
        assert (a_dir / name).read_bytes() == (b_dir / name).read_bytes(), name
    # What the manifest records of them too (test_pvgrub_stage compares whole manifests across artifact dirs).
    assert a.made.facts(builder_tag, SDE) == b.made.facts(builder_tag, SDE)


@pytest.mark.docker
def test_invalid_config_refused_with_checker_message(
    tmp_path: Path, grub_tree: Path, fake_inputs: Path, executor: Any, builder_tag: str
) -> None:
    spec = image("x86_64-xen-hurd", extra_config="if [ -n x ]; then\n  echo unterminated")
    out = tmp_path / "out"
    with pytest.raises(HurdxenError) as e:
        _build(spec, out, grub_tree, fake_inputs, executor, builder_tag)
    msg = str(e.value)
    assert "fails grub-script-check" in msg and "syntax error" in msg
    assert "out of memory" not in msg
    assert not list(out.glob("pv-grub-*")) and not (out / "manifest.json").exists()
    assert not list(out.parent.glob(".tmp-*"))


@pytest.mark.docker
@pytest.mark.parametrize(
    ("name", "kernel", "arch"),
    [("i386-xen-standalone", "xen-amd64", 4), ("x86_64-xen-standalone", "xen-pae", 2)],
)
def test_kernel_file_of_wrong_architecture_refused(
    name: str, kernel: str, arch: int, tmp_path: Path, grub_tree: Path, fake_inputs: Path, executor: Any
) -> None:
    """A kernel file handed in under the image's variant but built for the other architecture."""
    spec = image(name)
    with pytest.raises(HurdxenError) as e:
        make(spec, tmp_path / "out", grub_tree, _kernels(fake_inputs)[kernel], _modules(fake_inputs), executor, "-")
    assert f"error: incompatible architecture: {arch}." in str(e.value)


@pytest.mark.docker
def test_kernel_facts(fake_inputs: Path) -> None:
    arch = {v: pvgrub_elf.elf_facts(p).xen_arch for v, p in _kernels(fake_inputs).items()}
    assert arch == {"xen-pae": 2, "xen-nopae": 1, "xen-amd64": 4}
    assert pvgrub_elf.elf_facts(_kernels(fake_inputs)["xen-pae"]).gzipped


@pytest.mark.docker
def test_non_pae_kernel_refused(tmp_path: Path, grub_tree: Path, fake_inputs: Path, executor: Any) -> None:
    spec = image("i386-xen-standalone")
    nopae = _kernels(fake_inputs)["xen-nopae"]
    with pytest.raises(HurdxenError, match=r"incompatible architecture: 1\."):
        make(spec, tmp_path / "out", grub_tree, nopae, _modules(fake_inputs), executor, "-")


@pytest.mark.docker
def test_module_limit(tmp_path: Path, grub_tree: Path, fake_inputs: Path, executor: Any, builder_tag: str) -> None:
    spec = image("i386-xen-hurd", module_limit=10)
    with pytest.raises(HurdxenError, match="more than module_limit 10"):
        _build(spec, tmp_path, grub_tree, fake_inputs, executor, builder_tag)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "key", "refused"),
    [
        ("i386-xen-standalone", "i386-486", None),
        ("x86_64-xen-standalone", "amd64-486", None),
        # trixie's 64-bit kernel: __xen_guest says VIRT_BASE=0x40000000, the ELF is linked at 0xffffffff80000000
        ("x86_64-xen-standalone", "amd64", "VIRT_BASE 0x40000000"),
    ],
)
def test_debian_gnumach_standalone(
    name: str,
    key: str,
    refused: str | None,
    tmp_path: Path,
    grub_tree: Path,
    fake_inputs: Path,
    executor: Any,
    builder_tag: str,
) -> None:
    """Debian's real gnumach Xen kernels: GRUB's own check (grub-file) and xenverify decide."""
    from debian_kernels import fetch_kernel

    kernel = fetch_kernel(key)
    spec = image(name)

    def build() -> pvgrub_image.PvGrubResult:
        return make(spec, tmp_path / "out", grub_tree, kernel, _modules(fake_inputs), executor, builder_tag)

    if refused:
        with pytest.raises(HurdxenError, match=rf"^error: pvgrub2:{name}: .*{refused}") as e:
            build()
        assert e.value.hint  # xenverify's hint, kept by the label
        assert not (tmp_path / "out").exists()
        return
    res = build()
    assert any(c.startswith("grub-file") and c.endswith("kernel") for c in res.made.checks)
    assert any(c.startswith("xenverify OK") for c in res.made.checks)
    with tarfile.open(res.path("memdisk")) as t:
        assert t.extractfile("boot/gnumach.gz").read() == kernel.read_bytes()  # type: ignore[union-attr]


def test_copy_of_recipe_untouched() -> None:
    data = recipe_data()
    before = copy.deepcopy(data)
    pvgrub.spec_from_recipe(data, PRODUCERS)
    assert data == before
