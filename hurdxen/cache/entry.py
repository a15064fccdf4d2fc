"""One cache entry: a stage's outputs and manifest as one OCI artifact, tagged `<stage>-<name>-<identity>`.

    config      the stage manifest (local facts such as `fetched_from` left out)
    layers      one per named output, its bytes as they are (the layer digest is the manifest's sha256), or, for a
                stage whose output is its directory (gnumach:source), one gzipped tar of the tree
    statement   JSON naming the task, identity, config and every layer (path, digest, size, mode)
    signature   a detached OpenPGP signature of the statement

The OCI manifest only locates blobs: what is trusted is the signed statement, and every blob is fetched by the digest
the statement gives and hashed as it streams. Layer names come from the statement and must be the spec's own output
paths; the registry's title annotations must agree with them or the entry is refused.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from hurdxen.core import fsutil, safeextract
from hurdxen.pipeline import manifest, stage
from hurdxen.cache import trust
from hurdxen.cache.config import CacheConfig
from hurdxen.cache.registry import MEDIA_MANIFEST, Registry
from hurdxen.core.errors import HurdxenError, printable

FORMAT = "hurdxen-stage-cache/1"
ARTIFACT = "application/vnd.hurdxen.pipeline.stage.v1"
MEDIA_CONFIG = "application/vnd.hurdxen.pipeline.stage.manifest.v1+json"
MEDIA_OUTPUT = "application/vnd.hurdxen.pipeline.stage.output.v1"
MEDIA_TREE = "application/vnd.hurdxen.pipeline.stage.tree.v1.tar+gzip"
MEDIA_STATEMENT = "application/vnd.hurdxen.pipeline.stage.statement.v1+json"
MEDIA_SIGNATURE = "application/pgp-signature"
TITLE = "org.opencontainers.image.title"
TREE = "."  # the statement's path of a tree layer
# Keys of a stage manifest that describe one machine (mirrors, where an entry came from): not pushed.
LOCAL_KEYS = frozenset({"fetched_from", "archive", "cached_from"})
_HINT = "the entry is refused and the stage built here"


def tag_for(task: str, identity: str) -> str:
    """A tag-safe key: the task for people (cut to fit), the identity for the machine."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", task.replace(":", "-"))[:60]
    return f"{name}-{identity}"


def _refuse(ref: str, why: str) -> HurdxenError:
    return HurdxenError(f"stage cache: {ref}: {why}", hint=_HINT)


def strip_local(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: strip_local(v) for k, v in data.items() if k not in LOCAL_KEYS}
    if isinstance(data, list):
        return [strip_local(v) for v in data]
    return data


def manifest_bytes(data: Mapping[str, Any]) -> bytes:
    """A manifest as `fsutil.write_json_atomic` writes it."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Layer:
    path: str  # relative to the stage directory; TREE for a tree layer
    digest: str
    size: int
    mode: int  # 0o755 or 0o644 (a tree keeps its members' modes)

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size, "mode": self.mode}


# ------------------------------------------------------------------ push


def _blob(data: bytes) -> tuple[str, int]:
    return f"sha256:{fsutil.sha256_bytes(data)}", len(data)


def _tree_tar(directory: Path, dest: Path) -> None:
    with tarfile.open(dest, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(directory.rglob("*")):
            rel = p.relative_to(directory).as_posix()
            if rel == manifest.MANIFEST:
                continue
            info = tar.gettarinfo(str(p), rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            elif info.isdir() or info.issym():
                tar.addfile(info)


def push(spec: stage.Spec, ctx: Any, config: CacheConfig) -> str | None:
    """Push the stage just built here; returns the reference, or None when the registry already has it."""
    assert config.signing_key is not None
    final = stage.out_dir(ctx, spec.task)
    m = manifest.read(final)
    if "cached_from" in m.facts:
        return None
    identity = spec.identity(ctx)
    tag = tag_for(spec.task, identity)
    reg = Registry(config)
    if reg.has_manifest(tag):
        return None
    config_data = manifest_bytes(strip_local(m.raw))
    layers: list[tuple[Layer, Path]] = []
    with tempfile.TemporaryDirectory(prefix="hurdxen-cache-push-", dir=ctx.artifacts) as tmp:
        if m.outputs:
            for name, out in sorted(m.outputs.items()):
                path = m.output(name)  # its bytes must still be what the manifest says
                mode = 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644
                rel = path.relative_to(final).as_posix()
                layers.append((Layer(rel, f"sha256:{out.sha256}", path.stat().st_size, mode), path))
        else:
            tree = Path(tmp) / "tree.tar.gz"
            _tree_tar(final, tree)
            layers.append((Layer(TREE, f"sha256:{fsutil.sha256_file(tree)}", tree.stat().st_size, 0o755), tree))
        cdigest, csize = _blob(config_data)
        statement = manifest_bytes(
            {
                "format": FORMAT,
                "task": spec.task,
                "identity": identity,
                "manifest": {"digest": cdigest, "size": csize},
                "layers": [layer.as_json() for layer, _ in layers],
            }
        )
        signature = trust.sign(statement, config.signing_key)
        sdigest, ssize = _blob(statement)
        gdigest, gsize = _blob(signature)
        for digest, size, data in (
            (cdigest, csize, config_data),
            (sdigest, ssize, statement),
            (gdigest, gsize, signature),
        ):
            reg.push_blob(digest, size, data)
        for layer, path in layers:
            reg.push_blob(layer.digest, layer.size, path)
    oci = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": ARTIFACT,
        "config": {"mediaType": MEDIA_CONFIG, "digest": cdigest, "size": csize},
        "layers": [
            *(
                {
                    "mediaType": MEDIA_TREE if layer.path == TREE else MEDIA_OUTPUT,
                    "digest": layer.digest,
                    "size": layer.size,
                    "annotations": {TITLE: layer.path},
                }
                for layer, _ in layers
            ),
            {"mediaType": MEDIA_STATEMENT, "digest": sdigest, "size": ssize},
            {"mediaType": MEDIA_SIGNATURE, "digest": gdigest, "size": gsize},
        ],
        "annotations": {"io.github.hurdxen.task": spec.task, "io.github.hurdxen.identity": identity},
    }
    reg.put_manifest(tag, json.dumps(oci, sort_keys=True, separators=(",", ":")).encode())
    return config.ref(tag)


# ------------------------------------------------------------------ pull


@dataclass(frozen=True)
class Checked:
    """An entry whose statement is signed by a trusted key and agrees with its OCI manifest."""

    ref: str
    digest: str  # the OCI manifest's
    signer: str
    task: str
    identity: str
    config: bytes  # the stage manifest, its digest checked
    layers: tuple[Layer, ...]


def _json(data: bytes, ref: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise _refuse(ref, f"its {what} is not JSON") from None
    if not isinstance(doc, dict):
        raise _refuse(ref, f"its {what} is not a JSON object")
    return doc


def _safe_path(ref: str, raw: Any) -> str:
    p = PurePosixPath(str(raw))
    if str(raw) == TREE:
        return TREE
    if not p.parts or p.is_absolute() or ".." in p.parts or str(p) != str(raw) or "\\" in str(raw):
        raise _refuse(ref, f"layer name {printable(raw, 80)!r} escapes the output directory")
    return str(p)


def _layers(ref: str, statement: Mapping[str, Any], limit: int) -> tuple[Layer, ...]:
    out = []
    total = 0
    raw = statement.get("layers")
    if not isinstance(raw, list) or not raw or len(raw) > 4096:
        raise _refuse(ref, "its statement lists no layers")
    for item in raw:
        if not isinstance(item, dict):
            raise _refuse(ref, "a layer of its statement is not an object")
        path = _safe_path(ref, item.get("path"))
        digest, size, mode = item.get("digest"), item.get("size"), item.get("mode")
        if not (isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)):
            raise _refuse(ref, f"layer {path}: not a sha256 digest")
        if not isinstance(size, int) or size < 0 or mode not in (0o755, 0o644):
            raise _refuse(ref, f"layer {path}: bad size or mode")
        total += size
        if total > limit:
            raise _refuse(ref, f"the entry is larger than {limit} bytes (stage_cache_max_bytes)")
        out.append(Layer(path, digest, size, int(mode)))
    if len({layer.path for layer in out}) != len(out):
        raise _refuse(ref, "its statement names a layer twice")
    return tuple(out)


def check(reg: Registry, tag: str) -> Checked:
    """Fetch and check an entry's metadata: OCI manifest, signed statement, stage manifest. No output is fetched."""
    config = reg.config
    ref = config.ref(tag)
    body, digest = reg.manifest(tag)
    oci = _json(body, ref, "OCI manifest")
    raw_layers = oci.get("layers")
    layers: list[Any] = raw_layers if isinstance(raw_layers, list) else []
    by_type: dict[str, list[dict[str, Any]]] = {}
    for item in layers:
        if isinstance(item, dict):
            by_type.setdefault(str(item.get("mediaType")), []).append(item)
    st, sg = by_type.get(MEDIA_STATEMENT, []), by_type.get(MEDIA_SIGNATURE, [])
    if len(st) != 1 or len(sg) != 1:
        raise _refuse(ref, "unsigned (no statement and signature layer)")
    try:
        statement = reg.blob_bytes(str(st[0]["digest"]), int(st[0]["size"]))
        signature = reg.blob_bytes(str(sg[0]["digest"]), min(int(sg[0]["size"]), 64 << 10))
    except (KeyError, TypeError, ValueError):
        raise _refuse(ref, "a statement or signature layer without digest and size") from None
    signer = trust.verify(statement, signature, config, ref)
    doc = _json(statement, ref, "statement")
    if doc.get("format") != FORMAT or not isinstance(doc.get("task"), str) or not isinstance(doc.get("identity"), str):
        raise _refuse(ref, f"its statement is not {FORMAT}")
    if tag_for(doc["task"], doc["identity"]) != tag:
        raise _refuse(ref, f"signed for {printable(doc['task'])} {printable(doc['identity'], 16)}…, tagged otherwise")
    entry_layers = _layers(ref, doc, config.limits.max_entry)
    titles = {
        str(item.get("digest")): item["annotations"].get(TITLE) if isinstance(item.get("annotations"), dict) else None
        for t in (MEDIA_OUTPUT, MEDIA_TREE)
        for item in by_type.get(t, [])
    }
    for item in titles.values():
        if item is not None:
            _safe_path(ref, item)
    for layer in entry_layers:
        if titles.get(layer.digest) not in (layer.path, None):
            raise _refuse(ref, f"layer {layer.path}: the OCI manifest names it {printable(titles[layer.digest], 80)!r}")
    raw_cfg = doc.get("manifest")
    cfg: dict[str, Any] = raw_cfg if isinstance(raw_cfg, dict) else {}
    cdigest, csize = cfg.get("digest"), cfg.get("size")
    if not isinstance(cdigest, str) or not isinstance(csize, int):
        raise _refuse(ref, "its statement does not name the stage manifest")
    oci_config = oci.get("config")
    if not isinstance(oci_config, dict) or oci_config.get("digest") != cdigest:
        raise _refuse(ref, "the OCI manifest's config is not the signed stage manifest")
    config_bytes = reg.blob_bytes(cdigest, csize)
    return Checked(ref, digest, signer, doc["task"], doc["identity"], config_bytes, entry_layers)


def _expect(ref: str, entry: Checked, spec: stage.Spec, ctx: Any) -> dict[str, Any]:
    """The stage manifest, which must describe exactly the spec's task, identity and named outputs."""
    data = _json(entry.config, ref, "stage manifest")
    final = stage.out_dir(ctx, spec.task)
    want = {name: p.relative_to(final).as_posix() for name, p in spec.outputs(ctx).items()}
    outs = data.get("outputs") if isinstance(data.get("outputs"), dict) else None
    if (
        f"{data.get('stage')}:{data.get('variant')}" != spec.task
        or data.get("identity") != entry.identity
        or outs is None
        or any(k not in data for k in manifest.CORE)
    ):
        raise _refuse(ref, f"its stage manifest is not that of {spec.task} {entry.identity[:16]}…")
    got = {n: o.get("path") if isinstance(o, dict) else None for n, o in outs.items()}
    if got != want:
        raise _refuse(ref, f"its outputs {sorted(got)} are not {spec.task}'s {sorted(want)}")
    layers = {layer.path: layer for layer in entry.layers}
    if not want:
        if set(layers) != {TREE}:
            raise _refuse(ref, "a stage without named outputs needs exactly one tree layer")
        return data
    if set(layers) != set(want.values()):
        raise _refuse(ref, "its layers are not exactly the stage's outputs")
    for name, rel in want.items():
        if layers[rel].digest != f"sha256:{outs[name].get('sha256')}":
            raise _refuse(ref, f"layer {rel}: its digest is not the sha256 the stage manifest records")
    return data


def pull(spec: stage.Spec, ctx: Any, config: CacheConfig) -> dict[str, Any]:
    """Pull the entry of `spec`'s identity, check everything, publish its directory in one rename; returns the
    `cached_from` fact recorded in its manifest. Any doubt is a HurdxenError and nothing is left behind."""
    identity = spec.identity(ctx)
    tag = tag_for(spec.task, identity)
    reg = Registry(config)
    entry = check(reg, tag)
    ref = entry.ref
    if entry.task != spec.task or entry.identity != identity:
        raise _refuse(ref, f"it is not {spec.task} {identity[:16]}…")
    data = _expect(ref, entry, spec, ctx)
    final = stage.out_dir(ctx, spec.task)
    fact = {"ref": ref, "digest": entry.digest, "signer": entry.signer}
    with fsutil.atomic_dir(final) as tmp:
        for layer in entry.layers:
            if layer.path == TREE:
                with tempfile.TemporaryDirectory(prefix="hurdxen-cache-pull-", dir=ctx.artifacts) as work:
                    tarball = Path(work) / "tree.tar.gz"
                    with open(tarball, "xb") as f:
                        reg.blob_to(layer.digest, layer.size, f)
                    safeextract.extract(tarball, tmp, f"stage cache entry {ref}")
                continue
            dest = tmp / layer.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.parent.resolve().is_relative_to(tmp.resolve()):
                raise _refuse(ref, f"layer name {layer.path!r} escapes the output directory")
            with open(dest, "xb") as f:
                reg.blob_to(layer.digest, layer.size, f)
            os.chmod(dest, layer.mode)
        fsutil.write_json_atomic(tmp / manifest.MANIFEST, {**data, "cached_from": fact})
        manifest.read(tmp)  # its shape, as every consumer will read it
    return fact
