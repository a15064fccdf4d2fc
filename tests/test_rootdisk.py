"""The root disk stage (recipes/rootdisk.toml, hurdxen/stages/rootdisk/) run for real: the builder image's mke2fs,
debugfs and e2fsck make the disk from a small fake hurd:root tree and a fake gnumach kernel.gz, both published with the
real manifest writer under the identities the disk's spec expects (so UpstreamFile's and Layer's identity checks
pass). The disk is read back with the host's dumpe2fs and debugfs. Crafted trees and recipes end in one line and leave
the disk built before intact."""

from __future__ import annotations

import dataclasses
import gzip
import io
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from project import SHARED_CACHE, copy_project, docker_answers, edit

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, recipes
from hurdxen.pipeline.context import Context, make_context
from hurdxen.plan import make_plan
from hurdxen.stages import rootdisk
from hurdxen.stages.toolchain.chain import TREE, TREE_FILE, Layer, TreeSpec, UpstreamFile

KERNEL = b"\x7fELF a fake gnumach kernel\n" * 64
EPOCH = 1767225600


def fake_spec(task: str) -> TreeSpec:
    stage, name = task.split(":")
    return TreeSpec(stage_name=stage, name=name, description=f"a fake {task}", script=":", image="builder")


FAKE_ROOT, FAKE_KERNEL = fake_spec("hurd:root"), fake_spec("gnumach:xen-pae")

Member = tuple[str, str, bytes | str]  # name, kind (file, dir, symlink), content or link target


def tar_of(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                t.addfile(info)
            else:
                body = data if isinstance(data, bytes) else data.encode()
                info.size, info.mode = len(body), 0o755
                t.addfile(info, io.BytesIO(body))
    return buf.getvalue()


GOOD: list[Member] = [
    ("./", "dir", ""),
    ("./bin", "dir", ""),
    ("./bin/dash", "file", b"a fake dash\n"),
    ("./bin/sh", "symlink", "dash"),
    ("./hurd", "dir", ""),
    ("./hurd/ext2fs.static", "file", b"a fake ext2fs\n" * 100),
    ("./hurd/pflocal", "file", b"pflocal\n"),
    ("./lib", "dir", ""),
    ("./lib/ld.so.1", "file", b"a fake ld.so\n"),
    ("./lib/ld.so", "symlink", "ld.so.1"),
]


def publish(ctx: Context, spec: TreeSpec, files: dict[str, bytes]) -> None:
    """Publish `files` as `spec`'s outputs (name → bytes), through the one manifest writer, under its identity."""
    out = ctx.artifacts / spec.stage_name / spec.name
    out.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (out / name).write_bytes(body)
    manifest.write_raw(
        out,
        task=spec.task,
        identity=spec.identity(ctx),
        inputs={"fake": "tests/test_rootdisk.py"},
        step=manifest.in_process("tests.test_rootdisk.publish"),
        outputs={("kernel.gz" if n == "kernel.gz" else TREE): n for n in files},
    )


def publish_root(ctx: Context, members: list[Member]) -> None:
    publish(ctx, FAKE_ROOT, {TREE_FILE: tar_of(members)})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project", ("recipes", "containers"), None)


@pytest.fixture
def ctx(root: Path, tmp_path: Path, restore_env: Callable[[str, str], None]) -> Context:
    restore_env("HURDXEN_ARTIFACTS", str(tmp_path / "artifacts"))
    restore_env("HURDXEN_CACHE", str(SHARED_CACHE))
    return make_context(recipes.load(root, overrides={}))


@pytest.fixture
def docker_ctx(ctx: Context) -> Context:
    if not docker_answers():
        pytest.skip("no Docker engine answers")
    from hurdxen.pipeline.containers import ensure_base, ensure_image

    ensure_base(ctx.base, ctx.cache.root, ctx.log("base"))
    ensure_image(ctx.image("builder"), ctx.log("image:builder"))
    publish(ctx, FAKE_KERNEL, {"kernel.gz": gzip.compress(KERNEL, mtime=0)})
    publish_root(ctx, GOOD)
    return ctx


def disk_spec(root: Path, name: str = "hurd-i386", **options: str) -> TreeSpec:
    plan = make_plan(recipes.load(root, overrides={}))
    spec = next(d for d in plan.rootdisks if d.name == name)
    return dataclasses.replace(
        spec,
        layers=(Layer(FAKE_ROOT),),
        upstream_files=(UpstreamFile("KERNEL", FAKE_KERNEL, "kernel.gz"),),
        options=tuple((k, options.get(k, v)) for k, v in spec.options),
    )


def debugfs(image: Path, request: str) -> str:
    r = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True)
    return r.stdout


def built(ctx: Context, spec: TreeSpec) -> dict[str, str]:
    return {n: o.sha256 for n, o in manifest.read_task(ctx.artifacts, spec.task).outputs.items()}


def size_mib(root: Path) -> int:
    return int(recipes.load(root, overrides={})["rootdisk"]["defaults"]["size_mib"])


def test_the_plan_makes_one_disk_per_recipe_entry_reading_hurd_root_and_the_kernel(root: Path) -> None:
    plan = make_plan(recipes.load(root, overrides={}))
    disks = {d.name: d for d in plan.rootdisks}
    assert set(disks) == {"hurd-i386", "hurd-i386-partitioned", "hurd-amd64"}
    # the 64-bit disk: the x86_64-gnu root, the 64-bit kernel, hurd-amd64's boot modules in its menu
    amd64 = disks["hurd-amd64"]
    assert [la.producer.task for la in amd64.layers] == ["hurd:root-amd64"]
    assert [(u.producer.task, u.output) for u in amd64.upstream_files] == [("gnumach:xen-amd64", "kernel.gz")]
    assert "module /lib/ld-x86-64.so.1 exec /hurd/exec" in dict(amd64.options)["GRUB_MENU"]
    d = disks["hurd-i386"]
    assert [la.producer.task for la in d.layers] == ["hurd:root"]
    assert [(u.producer.task, u.output) for u in d.upstream_files] == [("gnumach:xen-pae", "kernel.gz")]
    opts = dict(d.options)
    assert "root=device:hd0" in opts["GRUB_MENU"] and opts["PARTITION"] == ""
    assert "root=device:hd0s1" in dict(disks["hurd-i386-partitioned"].options)["GRUB_MENU"]


@pytest.mark.docker
def test_the_disk_is_a_hurd_ext2_owned_by_root_with_translators_files_and_menu(docker_ctx: Context, root: Path) -> None:
    ctx = docker_ctx
    spec = disk_spec(root)
    rootdisk.build(spec, ctx)
    m = manifest.read_task(ctx.artifacts, spec.task)
    image = m.output(rootdisk.IMAGE)
    assert image.stat().st_size == size_mib(root) << 20
    assert gzip.decompress(m.output(rootdisk.IMAGE_GZ).read_bytes()) == image.read_bytes()
    header = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in header.splitlines())}
    assert fields["Filesystem OS type"] == "Hurd"
    assert fields["Block size"] == "4096" and fields["Inode size"] == "128"
    assert fields["Filesystem UUID"] == "5b1c0a2e-7d4f-4c6b-9a1e-2f3d4c5b6a70"
    assert fields["Directory Hash Seed"] == "0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
    assert fields["Filesystem volume name"] == "hurd"
    # every inode of the tree (and the root) is root's, with SOURCE_DATE_EPOCH times
    names = ["/", "/bin", "/bin/dash", "/bin/sh", "/hurd/ext2fs.static", "/lib/ld.so", "/libexec/runsystem"]
    names += ["/boot/gnumach.gz", "/boot/grub/grub.cfg", "/servers/socket/1", "/dev/null", "/dev/console"]
    for name in names:
        st = debugfs(image, f"stat {name}")
        assert "User:     0   Group:     0" in st, (name, st)
        assert st.count("0x6955b900") == 3, (name, st)  # ctime, atime, mtime
    # the passive translators: gnu.translator holds the command line as argz (NUL-terminated words; debugfs
    # ends its output with a newline)
    assert debugfs(image, "ea_get -V /dev/console gnu.translator") == "/hurd/term\0/dev/console\0device\0console\0\n"
    assert debugfs(image, "ea_get -V /servers/socket/1 gnu.translator") == "/hurd/pflocal\0\n"
    assert debugfs(image, "ea_get -V /dev/null gnu.translator") == "/hurd/null\0\n"
    # the tree, the recipe's files, the kernel and the menu, with their content
    assert debugfs(image, "cat /hurd/ext2fs.static") == "a fake ext2fs\n" * 100
    assert 'Fast link dest: "dash"' in debugfs(image, "stat /bin/sh")
    runsystem = recipes.load(root, overrides={})["rootdisk"]["files"]["/libexec/runsystem"]["text"]
    assert debugfs(image, "cat /libexec/runsystem") == runsystem
    assert "Mode:  0755" in debugfs(image, "stat /libexec/runsystem")
    kernel = subprocess.run(["debugfs", "-R", "cat /boot/gnumach.gz", str(image)], capture_output=True, check=True)
    assert gzip.decompress(kernel.stdout) == KERNEL
    menu = m.output(rootdisk.GRUB_MENU).read_text()
    assert debugfs(image, "cat /boot/grub/grub.cfg") == menu
    assert "multiboot /boot/gnumach.gz console=hyp0 root=device:hd0" in menu
    assert "module" in menu and "/hurd/ext2fs.static" in menu
    # the stage's tree output is what went into the filesystem
    with tarfile.open(m.output(TREE)) as t:
        assert {"./bin/dash", "./libexec/runsystem", "./boot/gnumach.gz", "./dev/console"} <= set(t.getnames())
    subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, check=True)
    assert m.inputs["upstream"]["hurd:root"]["identity"] == FAKE_ROOT.identity(ctx)
    assert m.inputs["upstream"]["gnumach:xen-pae"]["kernel.gz"] == fsutil.sha256_bytes(gzip.compress(KERNEL, mtime=0))


@pytest.mark.docker
def test_two_builds_are_byte_identical_and_the_partitioned_disk_has_its_mbr(docker_ctx: Context, root: Path) -> None:
    ctx = docker_ctx
    spec = disk_spec(root)
    rootdisk.build(spec, ctx)
    first = built(ctx, spec)
    rootdisk.build(spec, ctx)
    assert built(ctx, spec) == first
    part = disk_spec(root, "hurd-i386-partitioned")
    rootdisk.build(part, ctx)
    raw = manifest.read_task(ctx.artifacts, part.task).output(rootdisk.IMAGE).read_bytes()
    assert raw[510:512] == b"\x55\xaa" and raw[446 + 4] == 0x83
    assert int.from_bytes(raw[446 + 8 : 446 + 12], "little") == rootdisk.FIRST_SECTOR
    assert int.from_bytes(raw[446 + 12 : 446 + 16], "little") == size_mib(root) << 11
    start = rootdisk.FIRST_SECTOR * 512  # the filesystem, one MiB in (its own menu: root=device:hd0s1)
    assert len(raw) == start + (size_mib(root) << 20) and raw[start + 1024 + 56 : start + 1024 + 58] == b"\x53\xef"


@pytest.mark.docker
@pytest.mark.parametrize(
    ("members", "what"),
    [
        ([("./etc", "dir", ""), ("./etc/../../out/x", "file", b"x")], r"unsafe member .*has a `\.\.` component"),
        ([("/etc/passwd", "file", b"x")], r"unsafe member '/etc/passwd': it has an absolute name"),
        (
            [("./boot", "symlink", "../../out")],
            r"unsafe member '(\./)?boot': it is a symlink to '\.\./\.\./out', outside",
        ),
        ([("./boot", "symlink", "/out")], r"unsafe member '(\./)?boot': it is a symlink to the absolute path '/out'"),
        ([("./boot", "symlink", "hurd")], r"the recipe writes /boot/gnumach\.gz but the tree's /boot is a symlink"),
        ([("./dev", "file", b"x")], r"the recipe writes /dev/console but the tree's /dev is a file"),
        ([("./libexec/runsystem", "dir", "")], r"writes /libexec/runsystem over a dir of the tree"),
        ([("./a\nwrite /etc/passwd x", "file", b"x")], r"a name with a quote, backslash or control character"),
        ([('./a"b', "file", b"x")], r"a name with a quote, backslash or control character"),
        ([("./big", "file", b"\0" * (9 << 20))], r"the tree needs at least \d+ MiB .* more than a 8 MiB filesystem"),
    ],
)
def test_a_crafted_tree_is_one_line_and_the_disk_built_before_stays(
    docker_ctx: Context, root: Path, members: list[Member], what: str
) -> None:
    ctx = docker_ctx
    spec = disk_spec(root, SIZE_MIB="8")
    rootdisk.build(spec, ctx)
    before = built(ctx, spec)
    publish_root(ctx, [*GOOD, *members])
    with pytest.raises(HurdxenError) as e:
        rootdisk.build(spec, ctx)
    text = e.value.render()
    assert text.startswith("error: rootdisk:hurd-i386: ") and "\n" not in text, text
    assert re.search(what, text), text
    assert built(ctx, spec) == before
    for name in before:
        manifest.read_task(ctx.artifacts, spec.task).output(name)  # still there, still its recorded bytes


def test_a_recipe_path_leaving_the_disk_is_refused_naming_the_file_and_key(root: Path) -> None:
    path = root / "recipes" / "rootdisk.toml"
    for bad in ("/../etc/x", "/etc/../../x", "etc/x", "/etc/x y"):
        text = path.read_text()
        edit(path, '[files."/libexec/runsystem"]', f'[files."{bad}"]\ntext = "x"\n\n[files."/libexec/runsystem"]')
        with pytest.raises(HurdxenError) as e:
            recipes.load(root, overrides={})
        line = e.value.render()
        assert line.startswith("error: recipes/rootdisk.toml: files") and "\n" not in line, line
        path.write_text(text)
    with pytest.raises(HurdxenError, match=r"^error: the command line: rootdisk.defaults.kernel_path: "):
        recipes.load(root, overrides={"rootdisk.defaults.kernel_path": "/boot/../../gnumach.gz"})
