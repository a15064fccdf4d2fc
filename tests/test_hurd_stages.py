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
    assert list(specs) == ORDER
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
    changed = {t for t in ORDER if before[t] != after[t]}
    # glibc and everything built on it; not gcc stage 1, the headers, nor the Hurd's headers
    assert changed == {"toolchain:glibc", "hurd:system", "hurd:dash", "hurd:root", "toolchain:gcc"}


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
        ("toolchain.target", "x86_64-gnu", "toolchain.target", "expected one of 'i686-gnu'"),
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
    with pytest.raises(HurdxenError, match=r"^error: recipes/toolchain.toml: target: recipes/mig.toml builds no MIG"):
        toolchain.specs(r, [m for m in plan.mig if m.target != "i686-gnu"], plan.gnumach_source)
    with pytest.raises(HurdxenError, match=r"GNU Mach's headers need recipes/gnumach\.toml's source"):
        toolchain.specs(r, plan.mig, None)


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
