"""The shared stage cache (hurdxen/cache/) against a real registry on 127.0.0.1 (Debian's docker-registry).

Entry-level tests use a stage with the contract's shape (a spec, outputs, one manifest by the one writer) so each
hostile case costs a second; tests/test_stage_cache_doit.py runs the real stages through doit in two clones.
Hostile registries are real: blobs overwritten in the registry's own storage, entries pushed with a crafted
statement, and a proxy of ours (tests/ociregistry.py) that stalls, trickles, dies mid-blob or lies about sizes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gpgkey import Key, drop_key, make_key
from ociregistry import LocalRegistry, Proxy, run_registry

from hurdxen.cache import entry, hook
from hurdxen.cache.cli import verify_entry
from hurdxen.cache.config import CacheConfig, Limits, from_settings
from hurdxen.cache.registry import Registry
from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.core.monitor import NullMonitor
from hurdxen.pipeline import manifest, stage

BIG = 300_000  # bytes of the large output: several read calls, and slow enough to trickle


@dataclass(frozen=True)
class ToySpec:
    """A stage spec with the contract's shape: two named outputs, one of them executable, one in a subdirectory."""

    task: str = "toy:one"
    doc: str = "a toy stage"
    salt: str = ""

    def identity(self, ctx: Any) -> str:
        return fsutil.identity("toy", self.task, self.salt)

    def outputs(self, ctx: Any) -> dict[str, Path]:
        d = stage.out_dir(ctx, self.task)
        return {"tool": d / "bin" / "tool", "data": d / "data.bin"}

    def deps(self, ctx: Any) -> stage.Deps:
        return stage.Deps()


@dataclass(frozen=True)
class TreeSpec(ToySpec):
    """A stage whose output is its directory (like gnumach:source): no named outputs."""

    task: str = "toy:tree"

    def outputs(self, ctx: Any) -> dict[str, Path]:
        return {}


@dataclass(frozen=True)
class Ctx:
    artifacts: Path
    stage_cache: CacheConfig | None = None

    def monitor(self) -> NullMonitor:
        return NullMonitor()


def build_toy(spec: ToySpec, ctx: Ctx) -> None:
    """What a stage does: write outputs into the temporary twin, one manifest, one rename."""
    with fsutil.atomic_dir(stage.out_dir(ctx, spec.task)) as out:
        if isinstance(spec, TreeSpec):
            (out / "src" / "sub").mkdir(parents=True)
            (out / "src" / "sub" / "a.c").write_text("int main(void){return 0;}\n")
            os.symlink("sub/a.c", out / "src" / "link.c")
            (out / "configure").write_text("#!/bin/sh\n")
            os.chmod(out / "configure", 0o755)
        else:
            (out / "bin").mkdir()
            (out / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
            os.chmod(out / "bin" / "tool", 0o755)
            (out / "data.bin").write_bytes(bytes(range(256)) * (BIG // 256))
        rel = {n: p.relative_to(stage.out_dir(ctx, spec.task)).as_posix() for n, p in spec.outputs(ctx).items()}
        inputs = {"source": {"sha256": "1" * 64, "fetched_from": "/home/someone/mirror"}}
        manifest.write_raw(
            out, task=spec.task, identity=spec.identity(ctx), inputs=inputs, step={"function": "toy"}, outputs=rel
        )


def files_of(d: Path) -> dict[str, tuple[bytes | str, int]]:
    out: dict[str, tuple[bytes | str, int]] = {}
    for p in sorted(d.rglob("*")):
        key = p.relative_to(d).as_posix()
        if p.is_symlink():
            out[key] = (os.readlink(p), 0)
        elif p.is_file():
            out[key] = (p.read_bytes(), p.stat().st_mode & 0o777)
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="module")
def keys() -> Iterator[tuple[Key, Key]]:
    good, bad = make_key("cache"), make_key("mallory")
    yield good, bad
    drop_key(good)
    drop_key(bad)


_repo_count = 0


@pytest.fixture
def config(registry: LocalRegistry, keys: tuple[Key, Key], monkeypatch: pytest.MonkeyPatch) -> CacheConfig:
    """A fresh repository per test, trusting `good`, pushing with it, with short stall limits."""
    global _repo_count
    _repo_count += 1
    good, _ = keys
    monkeypatch.setenv("GNUPGHOME", str(good.home))
    monkeypatch.delenv("HURDXEN_STAGE_CACHE", raising=False)
    c = from_settings(
        {
            "stage_cache": f"oci+http://{registry.host}/test/repo{_repo_count}",
            "stage_cache_keyring": str(good.public),
            "cache_push": True,
            "stage_cache_signing_key": good.fingerprint,
            "stage_cache_timeout": 2,
        },
        Path("/"),
    )
    assert c is not None
    hook._tags.clear()
    return c


def pushed(tmp_path: Path, config: CacheConfig, spec: ToySpec | None = None) -> tuple[ToySpec, Ctx]:
    spec = spec or ToySpec()
    a = Ctx(tmp_path / "a" / "artifacts", config)
    build_toy(spec, a)
    assert entry.push(spec, a, config) == config.ref(entry.tag_for(spec.task, spec.identity(a)))
    return spec, a


def refused(spec: ToySpec, ctx: Ctx, config: CacheConfig, match: str) -> HurdxenError:
    with pytest.raises(HurdxenError, match=match) as e:
        entry.pull(spec, ctx, config)
    line = e.value.render()
    assert "\n" not in line and line.startswith("error: stage cache") and "(hint: " in line
    d = stage.out_dir(ctx, spec.task)
    assert not d.exists(), "nothing half-written is published"
    assert not list(d.parent.glob(".tmp-*")) if d.parent.exists() else True
    return e.value


# ------------------------------------------------------------------ the good path


def test_pull_reproduces_outputs_and_records_where_from(tmp_path: Path, config: CacheConfig) -> None:
    spec, a = pushed(tmp_path, config)
    b = Ctx(tmp_path / "b" / "elsewhere with space" / "artifacts", config)
    fact = entry.pull(spec, b, config)
    src, dst = stage.out_dir(a, spec.task), stage.out_dir(b, spec.task)
    got, want = files_of(dst), files_of(src)
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {
        k: v for k, v in want.items() if k != "manifest.json"
    }
    assert got["bin/tool"][1] == 0o755 and got["data.bin"][1] == 0o644
    m_b = json.loads((dst / "manifest.json").read_text())
    m_a = json.loads((src / "manifest.json").read_text())
    assert m_b.pop("cached_from") == fact and fact["ref"].endswith(entry.tag_for(spec.task, spec.identity(b)))
    assert fact["signer"] == config.signers[0] if config.signers else fact["signer"]
    # The pusher's local facts (its mirror) stay on its machine; everything else is its manifest.
    assert m_a["inputs"]["source"].pop("fetched_from") and m_b == m_a
    assert manifest.read(dst).output("data").read_bytes() == (src / "data.bin").read_bytes()


def test_a_tree_stage_round_trips(tmp_path: Path, config: CacheConfig) -> None:
    spec, a = pushed(tmp_path, config, TreeSpec())
    b = Ctx(tmp_path / "b" / "artifacts", config)
    entry.pull(spec, b, config)
    got, want = files_of(stage.out_dir(b, spec.task)), files_of(stage.out_dir(a, spec.task))
    assert got.pop("manifest.json") != want.pop("manifest.json") and got == want
    assert got["src/link.c"] == ("sub/a.c", 0) and got["configure"][1] == 0o755


def test_push_is_skipped_when_the_entry_exists_and_tags_list_it(tmp_path: Path, config: CacheConfig) -> None:
    spec, a = pushed(tmp_path, config)
    assert entry.push(spec, a, config) is None
    assert hook.available(config, NullMonitor()) == {entry.tag_for(spec.task, spec.identity(a))}


def test_a_changed_input_never_matches(tmp_path: Path, config: CacheConfig) -> None:
    spec, a = pushed(tmp_path, config)
    other = dataclasses.replace(spec, salt="another patch")
    assert other.identity(a) != spec.identity(a)
    assert hook.probe(config, other, Ctx(tmp_path / "c", config)) == (False, False)
    assert hook.probe(config, spec, Ctx(tmp_path / "c", config)) == (True, True)
    refused(other, Ctx(tmp_path / "c", config), config, "answered 404")
    build_toy(other, Ctx(tmp_path / "c", config))  # built here, not pushed: its images and sources can wait
    assert hook.probe(config, other, Ctx(tmp_path / "c", config)) == (False, True)
    assert hook.probe(None, other, Ctx(tmp_path / "c", config)) == (False, False)  # no cache: as today


def test_hook_pulls_a_hit_and_builds_a_miss_then_pushes(tmp_path: Path, config: CacheConfig) -> None:
    spec, _ = pushed(tmp_path, config)
    b = Ctx(tmp_path / "b", config)
    built: list[str] = []

    def build(s: ToySpec, ctx: Ctx) -> None:
        built.append(s.task)
        build_toy(s, ctx)

    hook.run(build, spec, b, hit=True)
    assert built == [] and hook.cached_from([str(stage.out_dir(b, spec.task) / "manifest.json")])
    miss = dataclasses.replace(spec, salt="new")
    hook.run(build, miss, b, hit=False)
    assert built == [miss.task] and hook.cached_from([str(stage.out_dir(b, miss.task) / "manifest.json")]) is None
    assert Registry(config).has_manifest(entry.tag_for(miss.task, miss.identity(b)))


def test_verify_fetches_and_hashes_every_blob(tmp_path: Path, config: CacheConfig) -> None:
    spec, a = pushed(tmp_path, config)
    c = verify_entry(Registry(config), entry.tag_for(spec.task, spec.identity(a)))
    assert c.task == spec.task and sum(x.size for x in c.layers) > BIG - 256


def test_no_setting_means_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HURDXEN_STAGE_CACHE", raising=False)
    assert from_settings({}, Path("/")) is None
    monkeypatch.setenv("HURDXEN_STAGE_CACHE", "off")
    assert (
        from_settings({"stage_cache": "oci://example.org/x", "stage_cache_keyring": "/nonexistent"}, Path("/")) is None
    )


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"stage_cache": "http://host/repo"}, "is not an OCI repository"),
        ({"stage_cache": "oci://host/repo"}, "needs stage_cache_keyring"),
        ({"stage_cache": "oci://host/repo", "stage_cache_keyring": "/nonexistent.asc"}, "does not exist"),
    ],
)
def test_bad_settings_are_one_line(settings: dict[str, Any], match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HURDXEN_STAGE_CACHE", raising=False)
    with pytest.raises(HurdxenError, match=match) as e:
        from_settings(settings, Path("/"))
    assert "settings." in e.value.render()


# ------------------------------------------------------------------ hostile entries


def _oci(reg: Registry, tag: str) -> dict[str, Any]:
    return json.loads(reg.manifest(tag)[0])


def _layer(oci: dict[str, Any], media: str) -> dict[str, Any]:
    return next(x for x in oci["layers"] if x["mediaType"] == media)


def _put_blob(reg: Registry, data: bytes) -> tuple[str, int]:
    digest = f"sha256:{fsutil.sha256_bytes(data)}"
    reg.push_blob(digest, len(data), data)
    return digest, len(data)


def _resign(reg: Registry, tag: str, statement: dict[str, Any], key: str, **layer_edits: Any) -> None:
    """Re-push the entry's OCI manifest with a new statement signed by `key` (a crafted entry)."""
    from hurdxen.cache import trust

    body = entry.manifest_bytes(statement)
    sig = trust.sign(body, key)
    oci = _oci(reg, tag)
    for media, data in ((entry.MEDIA_STATEMENT, body), (entry.MEDIA_SIGNATURE, sig)):
        d, n = _put_blob(reg, data)
        _layer(oci, media).update(digest=d, size=n)
    for x in oci["layers"]:
        if x["mediaType"] == entry.MEDIA_OUTPUT and x["annotations"]["org.opencontainers.image.title"] in layer_edits:
            x.update(layer_edits[x["annotations"]["org.opencontainers.image.title"]])
    reg.put_manifest(tag, json.dumps(oci).encode())


def _statement(reg: Registry, tag: str) -> dict[str, Any]:
    st = _layer(_oci(reg, tag), entry.MEDIA_STATEMENT)
    return json.loads(reg.blob_bytes(st["digest"], st["size"]))


def test_unsigned_entry_is_refused(tmp_path: Path, config: CacheConfig) -> None:
    spec, a = pushed(tmp_path, config)
    reg, tag = Registry(config), entry.tag_for(spec.task, spec.identity(a))
    oci = _oci(reg, tag)
    oci["layers"] = [x for x in oci["layers"] if x["mediaType"] not in (entry.MEDIA_SIGNATURE, entry.MEDIA_STATEMENT)]
    reg.put_manifest(tag, json.dumps(oci).encode())
    refused(spec, Ctx(tmp_path / "b", config), config, "unsigned")


def test_entry_signed_by_another_key_is_refused(tmp_path: Path, config: CacheConfig, keys: tuple[Key, Key]) -> None:
    spec, a = pushed(tmp_path, config)
    reg, tag = Registry(config), entry.tag_for(spec.task, spec.identity(a))
    os.environ["GNUPGHOME"] = str(keys[1].home)
    _resign(reg, tag, _statement(reg, tag), keys[1].fingerprint)
    refused(spec, Ctx(tmp_path / "b", config), config, "which is not in public.asc")


def test_signer_outside_the_allowed_fingerprints_is_refused(tmp_path: Path, config: CacheConfig) -> None:
    spec, _ = pushed(tmp_path, config)
    strict = dataclasses.replace(config, signers=("0" * 40,))
    refused(spec, Ctx(tmp_path / "b", strict), strict, "not one of stage_cache_signers")


def test_changed_statement_is_a_bad_signature(tmp_path: Path, config: CacheConfig) -> None:
    spec, a = pushed(tmp_path, config)
    reg, tag = Registry(config), entry.tag_for(spec.task, spec.identity(a))
    oci = _oci(reg, tag)
    st = _layer(oci, entry.MEDIA_STATEMENT)
    body = reg.blob_bytes(st["digest"], st["size"]).replace(b'"mode": 420', b'"mode": 493')
    st["digest"], st["size"] = _put_blob(reg, body)
    reg.put_manifest(tag, json.dumps(oci).encode())
    refused(spec, Ctx(tmp_path / "b", config), config, "BAD signature")


def test_swapped_blob_in_registry_storage_is_refused(
    tmp_path: Path, config: CacheConfig, registry: LocalRegistry
) -> None:
    """The registry's own files overwritten (same size, other bytes): it serves them, the stream hash catches it."""
    spec, a = pushed(tmp_path, config)
    data = stage.out_dir(a, spec.task) / "data.bin"
    blob = registry.blob_file(f"sha256:{fsutil.sha256_file(data)}")
    original = blob.read_bytes()
    try:
        blob.write_bytes(original[:-1] + b"\0")
        refused(spec, Ctx(tmp_path / "b", config), config, "has other bytes")
    finally:
        blob.write_bytes(original)


def test_swapped_config_is_refused(tmp_path: Path, config: CacheConfig) -> None:
    """An OCI manifest pointing at another stage manifest (one that would list evil outputs)."""
    spec, a = pushed(tmp_path, config)
    reg, tag = Registry(config), entry.tag_for(spec.task, spec.identity(a))
    oci = _oci(reg, tag)
    d, n = _put_blob(reg, b'{"stage": "toy"}\n')
    oci["config"].update(digest=d, size=n)
    reg.put_manifest(tag, json.dumps(oci).encode())
    refused(spec, Ctx(tmp_path / "b", config), config, "config is not the signed stage manifest")


def test_huge_blob_is_refused_at_its_size(tmp_path: Path, config: CacheConfig, registry: LocalRegistry) -> None:
    spec, a = pushed(tmp_path, config)
    blob = registry.blob_file(f"sha256:{fsutil.sha256_file(stage.out_dir(a, spec.task) / 'data.bin')}")
    original = blob.read_bytes()
    try:
        with open(blob, "ab") as f:
            f.truncate(64 << 20)  # the registry now serves 64 MiB for that digest
        refused(spec, Ctx(tmp_path / "b", config), config, "announces 67108864 bytes where the entry says")
    finally:
        blob.write_bytes(original)


def test_entry_larger_than_the_limit_is_refused_before_download(tmp_path: Path, config: CacheConfig) -> None:
    spec, _ = pushed(tmp_path, config)
    small = dataclasses.replace(config, limits=dataclasses.replace(config.limits, max_entry=BIG // 2))
    reg = Registry(config)
    before = len(reg.tags())
    refused(spec, Ctx(tmp_path / "b", small), small, "larger than 150000 bytes")
    assert len(reg.tags()) == before


@pytest.mark.parametrize("name", ["../../escaped", "/etc/evil", "bin/../../x", "a\\..\\b"])
def test_signed_layer_name_that_escapes_is_refused(
    tmp_path: Path, config: CacheConfig, keys: tuple[Key, Key], name: str
) -> None:
    """Even an entry the trusted key signed may not name a file outside the stage directory."""
    spec, a = pushed(tmp_path, config)
    reg, tag = Registry(config), entry.tag_for(spec.task, spec.identity(a))
    st = _statement(reg, tag)
    st["layers"][0]["path"] = name
    _resign(reg, tag, st, keys[0].fingerprint)
    refused(spec, Ctx(tmp_path / "b" / "artifacts", config), config, "escapes the output directory|are not exactly")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "b" / "escaped").exists()


def test_title_annotation_that_escapes_is_refused(tmp_path: Path, config: CacheConfig, keys: tuple[Key, Key]) -> None:
    spec, a = pushed(tmp_path, config)
    reg, tag = Registry(config), entry.tag_for(spec.task, spec.identity(a))
    oci = _oci(reg, tag)
    _layer(oci, entry.MEDIA_OUTPUT)["annotations"]["org.opencontainers.image.title"] = "../../../../etc/cron.d/x"
    reg.put_manifest(tag, json.dumps(oci).encode())
    refused(spec, Ctx(tmp_path / "b", config), config, "escapes the output directory")


def test_entry_signed_for_another_stage_is_refused(tmp_path: Path, config: CacheConfig, keys: tuple[Key, Key]) -> None:
    """A good signature on another stage's statement, replayed under this stage's tag."""
    spec, a = pushed(tmp_path, config)
    reg, tag = Registry(config), entry.tag_for(spec.task, spec.identity(a))
    st = _statement(reg, tag)
    st["task"] = "toy:other"
    _resign(reg, tag, st, keys[0].fingerprint)
    refused(spec, Ctx(tmp_path / "b", config), config, "tagged otherwise")


def test_previous_outputs_survive_a_refused_pull(tmp_path: Path, config: CacheConfig, registry: LocalRegistry) -> None:
    spec, a = pushed(tmp_path, config)
    b = Ctx(tmp_path / "b", config)
    old = dataclasses.replace(spec, salt="old")
    build_toy(old, b)  # an earlier build of the stage, in the same directory
    before = files_of(stage.out_dir(b, spec.task))
    blob = registry.blob_file(f"sha256:{fsutil.sha256_file(stage.out_dir(a, spec.task) / 'data.bin')}")
    original = blob.read_bytes()
    try:
        blob.write_bytes(b"\0" * len(original))
        with pytest.raises(HurdxenError, match="has other bytes"):
            entry.pull(spec, b, config)
    finally:
        blob.write_bytes(original)
    assert files_of(stage.out_dir(b, spec.task)) == before
    assert not list(stage.out_dir(b, spec.task).parent.glob(".tmp-*"))


# ------------------------------------------------------------------ hostile registries (a proxy of ours in front)


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("stall", "broke off|too slow"),
        ("trickle", "too slow"),
        ("die", "broke off|ended after"),
        ("lie", "announces"),
        ("more", "more than the"),
    ],
)
def test_misbehaving_registry_is_cut_off(tmp_path: Path, config: CacheConfig, mode: str, match: str) -> None:
    spec, a = pushed(tmp_path, config)
    data = stage.out_dir(a, spec.task) / "data.bin"
    with Proxy(config.registry, mode, {f"sha256:{fsutil.sha256_file(data)}"}) as proxy:
        via = dataclasses.replace(config, registry=proxy.host, limits=Limits(timeout=1.0))
        import time

        t0 = time.monotonic()
        refused(spec, Ctx(tmp_path / "b", via), via, match)
        assert time.monotonic() - t0 < 10, "bounded: the limits end it, not the registry"
        assert any("/blobs/" in h for h in proxy.hits)


def test_registry_gone_mid_run_is_a_refusal_then_a_local_build(tmp_path: Path, config: CacheConfig) -> None:
    spec, _ = pushed(tmp_path, config)
    with Proxy(config.registry) as proxy:
        via = dataclasses.replace(config, registry=proxy.host, push=False)
        b = Ctx(tmp_path / "b", via)
        assert hook.probe(via, spec, b)[0]
    # the proxy is gone: the hit seen at task generation now meets a closed port
    built: list[str] = []
    hook.run(lambda s, c: (built.append(s.task), build_toy(s, c)), spec, b, hit=True)
    assert built == [spec.task] and hook.cached_from([str(stage.out_dir(b, spec.task) / "manifest.json")]) is None


def test_unreachable_registry_means_no_hits(tmp_path: Path, config: CacheConfig) -> None:
    from ociregistry import free_port

    dead = dataclasses.replace(config, url="oci+http://dead", registry=f"127.0.0.1:{free_port()}")
    notes: list[str] = []

    class Notes(NullMonitor):
        def note(self, text: str) -> None:
            notes.append(text)

    @dataclass(frozen=True)
    class NoteCtx(Ctx):
        def monitor(self) -> NullMonitor:
            return Notes()

    assert hook.probe(dead, ToySpec(), NoteCtx(tmp_path, dead)) == (False, False)
    assert len(notes) == 1 and "not used this run" in notes[0]


# ------------------------------------------------------------------ hurdxen cache verify / prune


def test_cli_verify_reports_and_prune_deletes_refused_entries(
    tmp_path: Path, config: CacheConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    from hurdxen.cache.cli import cmd_ls, cmd_prune, cmd_verify

    spec, a = pushed(tmp_path, config)
    bad = dataclasses.replace(spec, salt="unsigned later")
    build_toy(bad, a)
    entry.push(bad, a, config)
    reg = Registry(config)
    good_tag, bad_tag = entry.tag_for(spec.task, spec.identity(a)), entry.tag_for(bad.task, bad.identity(a))
    oci = _oci(reg, bad_tag)
    oci["layers"] = [x for x in oci["layers"] if x["mediaType"] != entry.MEDIA_SIGNATURE]
    reg.put_manifest(bad_tag, json.dumps(oci).encode())
    capsys.readouterr()
    assert cmd_ls(reg) == 0 and capsys.readouterr().out.count("toy:one") == 2
    assert cmd_verify(reg) == 1
    out = capsys.readouterr().out
    assert f"ok       {good_tag}" in out and f"refused  {bad_tag}" in out and "unsigned" in out
    cmd_prune(reg, tmp_path, refused=True, stale=False, dry_run=True)
    assert capsys.readouterr().out.startswith(f"would delete  {bad_tag}") and bad_tag in reg.tags()
    cmd_prune(reg, tmp_path, refused=True, stale=False, dry_run=False)
    assert capsys.readouterr().out.startswith(f"deleted  {bad_tag}")
    assert reg.tags() == {good_tag} and cmd_verify(reg) == 0


def test_bundle_record_is_the_same_built_or_pulled(tmp_path: Path, config: CacheConfig) -> None:
    """What the bundle records of a stage (release_inputs.strip_volatile: no volatile keys, no local facts) is the
    same for the pusher's built stage and the puller's pulled one: `cached_from` is a local fact like
    `fetched_from`. (bench/cache_bundle.py shows the whole chain: two bundle tarballs with one sha256.)"""
    from hurdxen.release.inputs import strip_volatile

    spec, a = pushed(tmp_path, config)
    b = Ctx(tmp_path / "b", config)
    entry.pull(spec, b, config)
    built, pulled = manifest.read(stage.out_dir(a, spec.task)), manifest.read(stage.out_dir(b, spec.task))
    assert "cached_from" in pulled.raw and "fetched_from" in json.dumps(built.raw)
    assert strip_volatile(built.raw) == strip_volatile(pulled.raw)


def test_credentials_come_from_the_docker_config(
    tmp_path: Path, config: CacheConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that wants a login (Basic challenge): the `auths` entry `docker login` writes is used; without
    it, pushing and pulling are one line each."""
    import base64

    from ociregistry import htpasswd_line

    with run_registry(tmp_path / "locked", htpasswd_line("ci", "s3cret")) as locked:
        cfg = dataclasses.replace(config, registry=locked.host)
        spec = ToySpec()
        a = Ctx(tmp_path / "a", cfg)
        build_toy(spec, a)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
        with pytest.raises(HurdxenError, match="answered 401"):
            entry.push(spec, a, cfg)
        docker = tmp_path / "docker"
        docker.mkdir()
        auth = base64.b64encode(b"ci:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {f"http://{locked.host}": {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        assert entry.push(spec, a, cfg) is not None
        b = Ctx(tmp_path / "b", cfg)
        entry.pull(spec, b, cfg)
        assert (stage.out_dir(b, spec.task) / "data.bin").read_bytes() == (
            stage.out_dir(a, spec.task) / "data.bin"
        ).read_bytes()
