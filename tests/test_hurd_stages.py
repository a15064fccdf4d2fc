"""The from-source toolchain and Hurd stages (recipes/toolchain.toml, recipes/hurd.toml): their specs, identities and
recipe errors, and the shared tree step (hurdxen/stages/toolchain/chain.py) run for real on small fake trees in
Docker. The real 30-minute build is opt-in: tests/test_hurd_real.py."""

from __future__ import annotations

import dataclasses
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from project import SHARED_CACHE, copy_project, docker_answers

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, recipes
from hurdxen.pipeline.context import Context, make_context
from hurdxen.plan import make_plan
from hurdxen.stages.toolchain import chain
from hurdxen.stages.toolchain.chain import Layer, TreeSpec

RECIPES = ("base", "images", "mig", "gnumach", "toolchain", "hurd")
ORDER = [
    "toolchain:gcc1",
    "toolchain:mach-headers",
    "hurd:headers",
    "toolchain:glibc",
    "hurd:system",
    "hurd:dash",
    "hurd:root",
    "toolchain:gcc",
]
AMD64 = [t + "-amd64" for t in ORDER]  # the x86_64-gnu target's stages, after i686-gnu's


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project", ("recipes", "containers"), RECIPES)


def system(root: Path, overrides: dict[str, str] | None = None) -> dict[str, TreeSpec]:
    return {s.task: s for s in make_plan(recipes.load(root, overrides=overrides or {})).system}


def context(root: Path, artifacts: Path, set_env: Callable[[str, str], None]) -> Context:
    set_env("HURDXEN_ARTIFACTS", str(artifacts))
    set_env("HURDXEN_CACHE", str(SHARED_CACHE))
    return make_context(recipes.load(root, overrides={}))


def test_the_stages_come_in_build_order_each_reading_the_one_before(root: Path) -> None:
    specs = system(root)
    assert list(specs) == ORDER + AMD64
    glibc = specs["toolchain:glibc"]
    assert [la.producer.task for la in glibc.layers] == ["toolchain:gcc1", "toolchain:mach-headers", "hurd:headers"]
    assert [u.producer.task for u in glibc.upstream] == ["mig:i686-gnu"]
    assert [la.producer.task for la in specs["hurd:root"].layers] == [
        "toolchain:gcc1",
        "toolchain:glibc",
        "hurd:system",
        "hurd:dash",
    ]
    assert specs["toolchain:mach-headers"].upstream[0].producer.task == "gnumach:source"


def test_recipe_facts_reach_the_step_and_no_script_repeats_them(root: Path) -> None:
    specs = system(root)
    opts = dict(specs["hurd:system"].options)
    assert "--enable-static-progs=ext2fs" in opts["CONFIGURE"].split()
    assert "ext2fs" in opts["HURD_TARGETS"].split()
    assert "ext2fs" not in specs["hurd:system"].script.replace("ext2fs.static", "")  # the list is the recipe's
    g = dict(specs["toolchain:gcc1"].options)
    assert g["GCC_PATCHES"] == "debian/patches/gcc-gfdl-build.diff"
    assert "debian/patches" not in specs["toolchain:gcc1"].script
    outputs = dict(specs["hurd:root"].files)
    assert {"ext2fs.static", "ld.so.1", "exec", "startup", "proc", "auth", "console-run"} <= set(outputs)


def test_identity_follows_inputs_downstream_only(root: Path, tmp_path: Path, restore_env: Callable[..., None]) -> None:
    ctx = context(root, tmp_path / "a", restore_env)
    before = {t: s.identity(ctx) for t, s in system(root).items()}
    moved = system(root, {"toolchain.glibc.pkgversion": "other banner"})
    after = {t: s.identity(ctx) for t, s in moved.items()}
    changed = {t for t in ORDER + AMD64 if before[t] != after[t]}
    # glibc and everything built on it (a shared key: both targets); not gcc stage 1, the headers, nor the Hurd's
    downstream = {"toolchain:glibc", "hurd:system", "hurd:dash", "hurd:root", "toolchain:gcc"}
    assert changed == downstream | {t + "-amd64" for t in downstream}
    # a target's own key moves its own stages only
    moved = system(root, {"toolchain.targets.x86_64-gnu.ldso": "ld-other.so.1"})
    after = {t: s.identity(ctx) for t, s in moved.items()}
    assert {t for t in ORDER + AMD64 if before[t] != after[t]} == {
        "toolchain:glibc-amd64", "hurd:system-amd64", "hurd:dash-amd64", "hurd:root-amd64", "toolchain:gcc-amd64"
    }  # fmt: skip


def test_the_hurd_mirror_changes_no_identity_but_the_commit_does(
    root: Path, tmp_path: Path, restore_env: Callable[..., None]
) -> None:
    ctx = context(root, tmp_path / "a", restore_env)
    base = system(root)["hurd:headers"]
    mirrored = system(root, {"hurd.source.git": "/srv/mirror/hurd.git"})["hurd:headers"]
    assert mirrored.identity(ctx) == base.identity(ctx)
    assert mirrored.git[0][2] == "https://git.savannah.gnu.org/git/hurd/hurd.git"  # the canonical URL is recorded
    other = system(root, {"hurd.source.commit": "0" * 40})["hurd:headers"]
    assert other.identity(ctx) != base.identity(ctx)


@pytest.mark.parametrize(
    ("word", "value", "where", "what"),
    [
        ("hurd.source.commit", "v0.9", "hurd.source.commit", "expected a full 40-digit commit id"),
        ("hurd.configure", '["--prefix=/usr; rm -rf /"]', "hurd.configure[0]", "one word without spaces"),
        ("hurd.targets", '["../etc"]', "hurd.targets[0]", "a top-level directory"),
        ("hurd.root.files", '["/etc/shadow"]', "hurd.root.files[0]", "a relative path inside the root"),
        ("hurd.root.files", '["lib/../../x"]', "hurd.root.files[0]", "a relative path inside the root"),
        (
            "toolchain.gcc.debian_patches",
            '["debian/patches/../../x"]',
            "toolchain.gcc.debian_patches[0]",
            "a path inside",
        ),
        ("toolchain.glibc.source.sha256", "abc", "toolchain.glibc.source.sha256", "64 lower-case hex digits"),
        ("toolchain.targets.sparc-gnu.ldso", "ld.so.1", "toolchain.targets.sparc-gnu", "unknown name (expected one of"),
        ("toolchain.targets.x86_64-gnu.ldso", "/lib/ld.so", "toolchain.targets.x86_64-gnu.ldso", "ld.so's file"),
        ("toolchain.targets.x86_64-gnu.suffix", "_64", "toolchain.targets.x86_64-gnu.suffix", "such as -amd64"),
        (
            "toolchain.targets.x86_64-gnu.gcc.edits",
            '[{file = "gcc/t", match = "a b", from = "x", to = "y"}]',
            "toolchain.targets.x86_64-gnu.gcc.edits[0].match",
            "letters, digits",
        ),
    ],
)
def test_recipe_errors_name_the_file_and_the_key(root: Path, word: str, value: str, where: str, what: str) -> None:
    with pytest.raises(HurdxenError) as e:
        recipes.load(root, overrides={word: value})
    text = e.value.render()
    assert text.startswith(f"error: the command line: {where}: ") and what in text, text


def test_an_unknown_key_in_the_recipe_file_is_named(root: Path) -> None:
    path = root / "recipes" / "hurd.toml"
    path.write_text(path.read_text().replace("[dash]\n", "[dash]\nflavour = 1\n"))
    with pytest.raises(HurdxenError, match=r"^error: recipes/hurd.toml: dash.flavour: unknown key"):
        recipes.load(root, overrides={})


def test_a_target_without_mig_or_gnumach_is_one_line(root: Path) -> None:
    from hurdxen.stages import toolchain

    r = recipes.load(root, overrides={})
    plan = make_plan(r)
    with pytest.raises(
        HurdxenError,
        match=r"^error: recipes/toolchain.toml: targets.x86_64-gnu: recipes/mig.toml builds no MIG for x86_64-gnu",
    ):
        toolchain.specs(r, [m for m in plan.mig if m.target != "x86_64-gnu"], plan.gnumach_source)
    with pytest.raises(HurdxenError, match=r"GNU Mach's headers need recipes/gnumach\.toml's source"):
        toolchain.specs(r, plan.mig, None)


def cut_from_table(path: Path, table: str) -> None:
    """Drop a recipe's last block: from the blank line before `table` (its comment, then its tables) to the end."""
    head = path.read_text()
    head = head[: head.index(table)]
    path.write_text(head[: head.rindex("\n\n") + 1])


def test_a_second_target_leaves_the_first_ones_stages_as_they_were(
    root: Path, tmp_path: Path, restore_env: Callable[..., None]
) -> None:
    """The i686-gnu stages' identities (a 30-minute build) do not depend on the x86_64-gnu tables being there."""
    ctx = context(root, tmp_path / "a", restore_env)
    both = {t: s.identity(ctx) for t, s in system(root).items()}
    for name, table in (("toolchain", "[targets.x86_64-gnu]"), ("hurd", "[per_target.x86_64-gnu")):
        cut_from_table(root / "recipes" / f"{name}.toml", table)
    alone = {t: s.identity(ctx) for t, s in system(root).items()}
    assert list(alone) == ORDER
    assert alone == {t: both[t] for t in ORDER}


def test_the_x86_64_target_is_data_its_scripts_the_same_templates(root: Path) -> None:
    specs = system(root)
    i686, amd64 = specs["toolchain:gcc1"], specs["toolchain:gcc1-amd64"]
    # binutils: Debian's package for i686-gnu, its source tarball for x86_64-gnu
    assert [e for e, _ in i686.debs] == ["BINUTILS"] and not amd64.debs
    assert [e for e, _ in amd64.tarballs] == ["BINUTILS_ORIG", "GCC_ORIG", "GCC_DEBIAN"]
    opts = dict(amd64.options)
    assert opts["TARGET"] == "x86_64-gnu" and "--disable-werror" in opts["BINUTILS_CONFIGURE"].split()
    assert opts["GCC_EDITS"] == "gcc/config/i386/t-gnu64 m64= lib64 lib"
    assert "GCC_EDITS" not in dict(i686.options) and "GCC_EDITS" not in i686.script  # no edits: no fragment
    # every layer and upstream of a target's stage is its own target's
    for t in AMD64:
        s = specs[t]
        assert all(la.producer.task in AMD64 for la in s.layers), t
        assert [u.producer.task for u in s.upstream] in ([], ["gnumach:source"], ["mig:x86_64-gnu"]), t
        assert dict(s.options).get("TARGET", "x86_64-gnu") == "x86_64-gnu", t
        assert "@" not in s.script.replace('"$@"', ""), t  # every marker filled
    mach = specs["toolchain:mach-headers-amd64"]
    assert 'CC="gcc" LD="ld"' in mach.script and 'CC="gcc -m32"' in specs["toolchain:mach-headers"].script
    assert 'CC="gcc"' in specs["hurd:headers-amd64"].script
    assert dict(specs["toolchain:glibc-amd64"].files)["ld-x86-64.so.1"] == "ld-x86-64.so.1"
    assert "ld-x86-64.so*" in specs["hurd:root-amd64"].script
    root_files = dict(specs["hurd:root-amd64"].files)
    assert "ld-x86-64.so.1" in root_files and "ld.so.1" not in root_files
    make_targets = [dict(specs[t].options)["HURD_TARGETS"] for t in ("hurd:system", "hurd:system-amd64")]
    assert make_targets[0] == make_targets[1]


def test_the_64_bit_ramdisk_and_disk_are_made_from_the_x86_64_root(root: Path) -> None:
    """hurd-modules:hurd-amd64 (opt-in: `doit build` stays as it was) takes its modules from hurd:root-amd64."""
    full = copy_project(root.parent / "full", ("recipes", "containers"), None)
    plan = make_plan(recipes.load(full, overrides={}))
    hm = {h.name: h for h in plan.hurd_modules}["hurd-amd64"]
    assert hm.source == "build" and hm.opt_in and hm.libc_version == "2.43"
    assert [(u.producer.task, u.output) for u in hm.upstream] == [
        ("hurd:root-amd64", "ext2fs.static"),
        ("hurd:root-amd64", "ld-x86-64.so.1"),
    ]
    assert {h.name: h for h in plan.hurd_modules}["hurd-i386"].upstream[0].producer.task == "hurd:root"


def test_the_gcc_edit_fragment_edits_the_line_it_names_or_fails(tmp_path: Path) -> None:
    import subprocess

    from hurdxen.stages.toolchain import gcc

    t = tmp_path / "gcc" / "config" / "i386"
    t.mkdir(parents=True)
    (t / "t-gnu64").write_text("MULTILIB_OSDIRNAMES = m64=../lib64$(call if_multiarch,:x86_64-gnu)\nx32=../lib64\n")
    env = {"PATH": "/usr/bin:/bin", "GCC_EDITS": "gcc/config/i386/t-gnu64 m64= lib64 lib"}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", gcc.EDIT_GCC], cwd=tmp_path, env=env, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert (t / "t-gnu64").read_text().splitlines() == [
        "MULTILIB_OSDIRNAMES = m64=../lib$(call if_multiarch,:x86_64-gnu)",
        "x32=../lib64",
    ]
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", gcc.EDIT_GCC], cwd=tmp_path, env=env, capture_output=True)
    assert r.returncode != 0 and b"no line of gcc/config/i386/t-gnu64 holds m64= and lib64" in r.stdout


def test_two_targets_with_one_suffix_or_an_unknown_per_target_table_are_one_line(root: Path) -> None:
    with pytest.raises(HurdxenError, match=r"targets.x86_64-gnu.suffix: '', as i686-gnu's"):
        system(root, {"toolchain.targets.x86_64-gnu.suffix": ""})
    cut_from_table(root / "recipes" / "toolchain.toml", "[targets.x86_64-gnu]")
    with pytest.raises(
        HurdxenError, match=r"^error: recipes/hurd.toml: per_target.x86_64-gnu: recipes/toolchain.toml has no target"
    ):
        system(root)


# ------------------------------------------------------------------ the tree step, for real on small fakes

PRODUCER = r"""
mkdir -p "$DEST/usr/include" "$DEST/lib"
echo "$GREETING" > "$DEST/usr/include/fake.h"
printf 'lib' > "$DEST/lib/libfake.so.1"
touch -d @0 "$DEST/lib/libfake.so.1"
cp "$DEST/usr/include/fake.h" "$OUT/fake.h"
"""
CONSUMER = r"""
test -f "$SYSROOT/usr/include/fake.h"
cat "$SYSROOT/usr/include/fake.h" > "$DEST/seen.txt"
cp "$SYSROOT/lib/libfake.so.1" "$DEST/"
"""


def fake(name: str, script: str, greeting: str = "hello", layers: tuple[Layer, ...] = ()) -> TreeSpec:
    files = (("fake.h", "fake.h"),) if "fake.h" in script and "OUT" in script else ()
    return TreeSpec(
        stage_name="hurd",
        name=name,
        description=f"a fake tree stage {name}",
        script=script,
        image="builder",
        layers=layers,
        options=(("GREETING", greeting),),
        files=files,
    )


@pytest.fixture
def docker_ctx(root: Path, tmp_path: Path, restore_env: Callable[..., None]) -> Context:
    if not docker_answers():
        pytest.skip("no Docker engine answers")
    from hurdxen.pipeline.containers import ensure_base, ensure_image

    ctx = context(root, tmp_path / "artifacts", restore_env)
    ensure_base(ctx.base, ctx.cache.root, ctx.log("base"))
    ensure_image(ctx.image("builder"), ctx.log("image:builder"))
    return ctx


def members(tar: Path) -> list[tuple[str, int, int, int]]:
    with tarfile.open(tar) as t:
        return [(m.name, m.uid, m.gid, int(m.mtime)) for m in t.getmembers()]


@pytest.mark.docker
def test_a_tree_is_published_with_its_manifest_and_read_by_name(docker_ctx: Context) -> None:
    ctx = docker_ctx
    producer = fake("producer", PRODUCER)
    chain.build(producer, ctx)
    m = manifest.read_task(ctx.artifacts, producer.task)
    assert m.identity == producer.identity(ctx)
    assert m.output("fake.h").read_text() == "hello\n"
    tree = m.output(chain.TREE)
    names = {n for n, *_ in members(tree)}
    assert {"./usr/include/fake.h", "./lib/libfake.so.1"} <= names
    # deterministic: root-owned, every mtime SOURCE_DATE_EPOCH
    assert {(u, g, t) for _, u, g, t in members(tree)} == {(0, 0, ctx.source_date_epoch)}
    assert m.inputs["options"] == {"GREETING": "hello"}
    assert m.step["executor"] == "docker" and m.step["image"].startswith("hurdxen/builder:")

    consumer = fake("consumer", CONSUMER, layers=(Layer(producer),))
    chain.build(consumer, ctx)
    c = manifest.read_task(ctx.artifacts, consumer.task)
    assert c.inputs["upstream"]["hurd:producer"]["sha256"] == m.outputs[chain.TREE].sha256
    with tarfile.open(c.output(chain.TREE)) as t:
        seen = t.extractfile("./seen.txt")
        assert seen is not None and seen.read() == b"hello\n"


@pytest.mark.docker
def test_the_same_inputs_give_the_same_bytes(docker_ctx: Context, tmp_path: Path) -> None:
    ctx = docker_ctx
    producer = fake("producer", PRODUCER)
    chain.build(producer, ctx)
    first = fsutil.sha256_file(manifest.read_task(ctx.artifacts, producer.task).output(chain.TREE))
    shutil.rmtree(ctx.artifacts / "hurd")
    chain.build(producer, ctx)
    assert fsutil.sha256_file(manifest.read_task(ctx.artifacts, producer.task).output(chain.TREE)) == first


@pytest.mark.docker
def test_a_stale_producer_is_refused_and_a_failed_step_keeps_the_old_tree(docker_ctx: Context) -> None:
    ctx = docker_ctx
    producer = fake("producer", PRODUCER)
    chain.build(producer, ctx)
    consumer = fake("consumer", CONSUMER, layers=(Layer(dataclasses.replace(producer, options=(("GREETING", "x"),))),))
    with pytest.raises(HurdxenError, match=r"hurd:consumer: hurd:producer's published output is stale"):
        chain.build(consumer, ctx)
    good = manifest.read_task(ctx.artifacts, producer.task).outputs[chain.TREE].sha256
    broken = dataclasses.replace(producer, script=PRODUCER + "\nexit 3\n")
    with pytest.raises(HurdxenError, match=r"hurd:producer: `docker run .*` exited with 3"):
        chain.build(broken, ctx)
    assert manifest.read_task(ctx.artifacts, producer.task).output(chain.TREE)  # still there, still its hash
    assert manifest.read_task(ctx.artifacts, producer.task).outputs[chain.TREE].sha256 == good


def test_the_host_executor_is_refused_in_one_line(root: Path, tmp_path: Path, restore_env: Callable[..., None]) -> None:
    restore_env("HURDXEN_EXECUTOR", "host")
    ctx = context(root, tmp_path / "a", restore_env)
    with pytest.raises(HurdxenError, match="run in the builder image only"):
        chain.build(fake("producer", PRODUCER), ctx)
