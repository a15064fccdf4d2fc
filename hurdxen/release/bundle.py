"""The release bundle: <name>-<version>/ plus one deterministic <name>-<version>.tar.gz, in the bundle stage's
directory artifacts/bundle/<name>/ (hurdxen.release.stage).

Contents: kernels/ (gnumach .gz per variant), hurd-modules/ (one per libc pin), pvgrub2/ (images), domains/ (xl
configs), README.md, manifest.json (every pin and hash from the stage manifests, minus volatile fields),
provenance.intoto.json (in-toto Statement v1, SLSA provenance v1), SHA256SUMS (coreutils format) and, when a key
is given, SHA256SUMS.asc (detached, ASCII-armoured).

Everything but SHA256SUMS.asc is a pure function of the stage outputs, the recipes, the project's git revision and
SOURCE_DATE_EPOCH, so two builds are bit-identical. The signature is not: OpenPGP signatures carry their creation
time. It is therefore kept out of the tarball and shipped beside it (publish_dir, publish_oci); it signs SHA256SUMS,
which the tarball does contain.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hurdxen.core import archive, fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.recipes import Recipes
from hurdxen.release import domains, provenance, signing
from hurdxen.release.inputs import Gathered, boot_gate, gather, read_json, strip_volatile
from hurdxen.release.spec import (
    MANIFEST,
    META,
    PROVENANCE,
    README,
    SIGNATURE,
    SUMS,
    BundleSpec,
    spec_from_recipes,
    version_from_describe,
)

# Re-exported: the release's names, as publish, reproduce and users know them.
__all__ = [
    "MANIFEST",
    "META",
    "PROVENANCE",
    "SIGNATURE",
    "SUMS",
    "BundleResult",
    "build_bundle",
    "bundle",
    "load_result",
    "spec_from_recipes",
    "strip_volatile",
    "version_from_describe",
]


# ------------------------------------------------------------------ domain configs


def domain_configs(spec: BundleSpec, g: Gathered) -> list[domains.DomainConfig]:
    cfgs: list[domains.DomainConfig] = []
    for k in g.kernels:
        s = domains.settings_for(spec.domains, "direct", k.variant)
        if not s.enabled:
            continue
        mods = [m for m in g.modules if m.bits in (None, k.bits)]
        if not mods:
            raise HurdxenError(
                f"bundle: no {k.bits}-bit hurd-modules for kernel {k.variant}",
                hint=f"build one, or set domains.kernel.{k.variant}.enabled = false",
            )
        for m in mods:
            name = f"{s.name_prefix}-{k.variant}" + (f"-{m.variant}" if len(mods) > 1 else "")
            cfgs.append(domains.direct_config(spec.release, k, m, s, name))
    for p in g.pvgrubs:
        s = domains.settings_for(spec.domains, "pvgrub2", p.name)
        if s.enabled:
            cfgs.append(domains.pvgrub_config(spec.release, p, s))
    cfgs += disk_configs(spec, g)
    names = [c.path for c in cfgs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise HurdxenError(f"bundle: two domain configs named {dups[0]}", hint="rename a variant or image")
    return cfgs


def disk_configs(spec: BundleSpec, g: Gathered) -> list[domains.DomainConfig]:
    """Per root disk: a direct boot (its kernel and hurd-modules, the disk as hda) and one per pv-grub2 disk-flavour
    image of the kernel's width."""
    cfgs: list[domains.DomainConfig] = []
    for d in g.disks:
        kernel = next((k for k in g.kernels if k.variant == d.kernel), None)
        modules = next((m for m in g.modules if m.variant == d.hurd_modules), None)
        if kernel is None or modules is None:
            missing = f"kernel {d.kernel}" if kernel is None else f"hurd-modules {d.hurd_modules}"
            raise HurdxenError(
                f"bundle: the root disk {d.variant} boots {missing}, which the bundle does not include",
                hint="add it to recipes/release.toml [include], or leave the disk out (include.rootdisks)",
            )
        s = domains.settings_for(spec.domains, "direct", kernel.variant)
        cfgs.append(domains.disk_direct_config(spec.release, d, kernel, modules, s))
        platform = "x86_64-xen" if kernel.bits == 64 else "i386-xen"
        for p in g.pvgrubs:
            if p.flavour == "disk" and p.platform == platform:
                ps = domains.settings_for(spec.domains, "pvgrub2", p.name)
                cfgs.append(domains.disk_pvgrub_config(spec.release, d, p, ps))
    return cfgs


# ------------------------------------------------------------------ tarball


def deterministic_tarball(src: Path, prefix: str, mtime: int, exclude: Iterable[str] = ()) -> bytes:
    """ustar, sorted names, owner 0:0 with empty names, mtime = SOURCE_DATE_EPOCH, modes 0644/0755; gzip without a
    name or time in its header. Same input tree → same bytes (given the same zlib)."""
    skip = set(exclude)
    paths = sorted(
        p for p in src.rglob("*") if str(p.relative_to(src)) not in skip and not p.name.startswith(fsutil.TMP_PREFIX)
    )
    entries = [archive.Entry(prefix + "/", None, 0o755)]
    for p in paths:
        rel = f"{prefix}/{p.relative_to(src)}"
        if p.is_dir() and not p.is_symlink():
            entries.append(archive.Entry(rel + "/", None, 0o755))
            continue
        if p.is_symlink() or not stat.S_ISREG(p.stat().st_mode):
            raise HurdxenError(f"tarball: {p} is not a regular file", hint="a bundle holds plain files only")
        entries.append(archive.Entry(rel, p.read_bytes(), 0o755 if p.stat().st_mode & 0o111 else 0o644))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(archive.ustar(entries, mtime))
    return out.getvalue()


# ------------------------------------------------------------------ the command


@dataclass(frozen=True)
class BundleResult:
    name: str
    version: str
    directory: Path  # artifacts/bundle/<name>/<name>-<version>/
    tarball: Path  # artifacts/bundle/<name>/<name>-<version>.tar.gz (without the signature)
    tarball_sha256: str
    sums: Path
    signature: Path | None
    manifest: Path
    files: Mapping[str, str] = field(default_factory=dict)  # every file in the bundle but the signature
    signed_by: str | None = None
    boot_passed: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def release(self) -> str:
        return f"{self.name}-{self.version}"


def build_bundle(artifacts: Path, spec: BundleSpec, out_root: Path) -> BundleResult:
    """Gather, gate on the boot check, write the bundle directory (atomically) in `out_root`, then its tarball."""
    gate = boot_gate(artifacts, spec)
    g = gather(artifacts, spec)
    cfgs = domain_configs(spec, g)
    warnings = [w for c in cfgs for w in c.warnings]
    if spec.version.note:
        warnings.append(f"version {spec.version.version}: {spec.version.note}")
    if not gate.passed:
        warnings.append("bundled without a passing boot check (release.allow_unbooted)")

    files: dict[str, str] = {p.path: fsutil.sha256_file(p.source) for p in g.payload}
    texts: dict[str, bytes] = {c.path: c.text.encode() for c in cfgs}
    files.update({k: fsutil.sha256_bytes(v) for k, v in texts.items()})
    # The fingerprint goes into README and manifest before signing; sign_sums checks it is the one that signed.
    fpr = signing.fingerprint(spec.signing_key, spec.gnupghome) if spec.signing_key else None
    readme = provenance.make_readme(spec, g, gate, cfgs, files, fpr).encode()
    texts[README] = readme
    files[README] = fsutil.sha256_bytes(readme)
    manifest = provenance.make_manifest(spec, g, gate, files, cfgs, fpr)
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    subjects = {**files, MANIFEST: fsutil.sha256_bytes(manifest_bytes)}
    prov = (json.dumps(provenance.make_provenance(spec, subjects, manifest), indent=2, sort_keys=True) + "\n").encode()
    all_files = {**subjects, PROVENANCE: fsutil.sha256_bytes(prov)}
    sums = provenance.sums_text(all_files).encode()
    all_files[SUMS] = fsutil.sha256_bytes(sums)

    final = out_root / spec.release
    tarball = out_root / f"{spec.release}.tar.gz"
    signed_by = None
    with fsutil.atomic_dir(final) as tmp:
        for p in g.payload:
            fsutil.write_atomic(tmp / p.path, p.source.read_bytes())
        for rel, data in texts.items():
            fsutil.write_atomic(tmp / rel, data)
        fsutil.write_atomic(tmp / MANIFEST, manifest_bytes)
        fsutil.write_atomic(tmp / PROVENANCE, prov)
        fsutil.write_atomic(tmp / SUMS, sums)
        for dirpath in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            os.chmod(dirpath, 0o755)  # whatever the umask
        if spec.signing_key:
            _, signed_by = signing.sign_sums(tmp / SUMS, spec.signing_key, spec.gnupghome)
            if fpr and signed_by.upper() != fpr.upper():
                raise HurdxenError(
                    f"sign: gpg signed with {signed_by}, expected {fpr}", hint="use the full fingerprint"
                )
        data = deterministic_tarball(tmp, spec.release, spec.source_date_epoch, exclude=[SIGNATURE])
        fsutil.write_atomic(tarball, data)
    return BundleResult(
        name=spec.name,
        version=spec.version.version,
        directory=final,
        tarball=tarball,
        tarball_sha256=fsutil.sha256_bytes(data),
        sums=final / SUMS,
        signature=final / SIGNATURE if signed_by else None,
        manifest=final / MANIFEST,
        files=all_files,
        signed_by=signed_by,
        boot_passed=gate.passed,
        warnings=tuple(warnings),
    )


def bundle(ctx: Context, recipes: Recipes) -> BundleResult:
    """What `doit bundle` does, for the recipes' release: the bundle stage's entry point on its one spec."""
    from hurdxen.release import stage

    (spec,) = stage.specs(recipes, ctx.source_date_epoch, None)
    return stage.build(spec, ctx)


def load_result(directory: Path, warnings: tuple[str, ...] = ()) -> BundleResult:
    """A BundleResult for an existing bundle directory (for `publish` without rebuilding)."""
    m = read_json(directory / MANIFEST, "bundle")
    tarball = directory.parent / f"{m['release']}.tar.gz"
    if not tarball.is_file():
        raise HurdxenError(f"bundle: {tarball} is missing", hint="run `doit bundle` again")
    sig = directory / SIGNATURE
    sums = {n: h for h, n in (line.split("  ", 1) for line in (directory / SUMS).read_text().splitlines())}
    sums[SUMS] = fsutil.sha256_file(directory / SUMS)
    return BundleResult(
        name=m["name"],
        version=m["version"],
        directory=directory,
        tarball=tarball,
        tarball_sha256=fsutil.sha256_file(tarball),
        sums=directory / SUMS,
        signature=sig if sig.is_file() else None,
        manifest=directory / MANIFEST,
        files=sums,
        signed_by=m.get("signing_key"),
        boot_passed=bool(m.get("boot", {}).get("passed")),
        warnings=warnings,
    )
