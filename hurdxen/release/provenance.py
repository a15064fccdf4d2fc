"""What a release says about itself: manifest.json (every file, every stage manifest), provenance.intoto.json (an
in-toto Statement with SLSA provenance naming every input of every artefact: sources, patches, packages, builder
images), SHA256SUMS and README.md. All of it is a pure function of the stage outputs and the recipes."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from hurdxen.release import domains
from hurdxen.release.inputs import BootGate, Gathered, StageOutput
from hurdxen.release.spec import (
    BUILD_TYPE,
    BUILDER_ID,
    BUNDLE_FORMAT,
    MANIFEST,
    PROVENANCE,
    SIGNATURE,
    SUMS,
    BundleSpec,
    ProjectRevision,
)


def _deps_from(node: Any, where: str, out: list[dict[str, Any]]) -> None:
    """Every pin below a stage manifest's inputs: dicts with a sha256 (and url / package), git commits."""
    if isinstance(node, list):
        for i, v in enumerate(node):
            _deps_from(v, f"{where}[{i}]", out)
        return
    if not isinstance(node, Mapping):
        return
    sha = node.get("sha256")
    commit = node.get("commit")
    if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
        if node.get("url"):
            uri = str(node["url"])
        elif node.get("package"):
            q = f"?arch={node['arch']}" if node.get("arch") else ""
            uri = f"pkg:deb/debian/{node['package']}@{node.get('version', '')}{q}"
        elif node.get("task"):  # another stage's output (its own inputs are listed under its name)
            uri = f"hurdxen:{node['task']}"
        elif node.get("name"):  # a file of the project, such as a patch of a series
            uri = f"hurdxen:{node.get('path') or node['name']}"
        else:
            uri = f"hurdxen:{where}" + (f"/{node['path']}" if node.get("path") else "")
        out.append({"name": where, "uri": uri, "digest": {"sha256": sha}})
    if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit):
        url = node.get("git") or node.get("url") or "unknown"
        out.append({"name": where, "uri": f"git+{url}@{commit}", "digest": {"gitCommit": commit}})
    for k, v in sorted(node.items()):
        if k not in ("sha256", "outputs") and isinstance(v, Mapping | list):
            _deps_from(v, f"{where}.{k}", out)


INPUT_KEYS = ("inputs", "modules", "memdisk", "source", "debian")


def resolved_dependencies(stages: Iterable[StageOutput], revision: ProjectRevision) -> list[dict[str, Any]]:
    deps: list[dict[str, Any]] = []
    if revision.commit:
        deps.append(
            {
                "name": "hurdxen",
                "uri": f"git+{revision.remote or 'hurdxen'}@{revision.commit}",
                "digest": {"gitCommit": revision.commit},
            }
        )
    for so in stages:
        for key in INPUT_KEYS:
            if key in so.manifest:
                _deps_from(so.manifest[key], f"{so.key}:{key}", deps)
        step = so.manifest.get("step") or {}
        image_id = step.get("image_id") if isinstance(step, Mapping) else None
        if isinstance(image_id, str) and image_id.startswith("sha256:"):
            deps.append(
                {
                    "name": f"{so.key}:image",
                    "uri": f"docker-image:{step.get('image', '')}",
                    "digest": {"sha256": image_id.removeprefix("sha256:")},
                }
            )
    # Every artefact names all of its inputs: the same pin under two artefacts is listed twice, once per name.
    seen: set[str] = set()
    unique = []
    for d in deps:
        k = json.dumps([d["name"], d["uri"], d["digest"]], sort_keys=True)
        if k not in seen:
            seen.add(k)
            unique.append(d)
    return sorted(unique, key=lambda d: (d["name"], d["uri"]))


def _tools() -> dict[str, str]:
    from importlib import metadata

    out = {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    for dist in ("hurdxen", "packaging"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_manifest(
    spec: BundleSpec,
    g: Gathered,
    gate: BootGate,
    files: Mapping[str, str],
    domain_cfgs: Iterable[domains.DomainConfig],
    signing_fpr: str | None,
) -> dict[str, Any]:
    out = {
        "format": BUNDLE_FORMAT,
        "name": spec.name,
        "version": spec.version.version,
        "version_source": spec.version.source,
        "version_note": spec.version.note,
        "release": spec.release,
        "source_date_epoch": spec.source_date_epoch,
        "project": {"commit": spec.revision.commit, "dirty": spec.revision.dirty, "describe": spec.revision.describe},
        "boot": gate.summary(),
        "signed": signing_fpr is not None,
        "signing_key": signing_fpr,
        "files": dict(sorted(files.items())),
        "kernels": dict(sorted(g.kernel_expect.items())),
        "hurd_modules": {
            m.path: {"variant": m.variant, "bits": m.bits, "libc_version": m.libc_version} for m in g.modules
        },
        "pvgrub2": {p.path: {"image": p.name, "platform": p.platform, "flavour": p.flavour} for p in g.pvgrubs},
        "domains": {d.path: {"name": d.name, "boot": d.boot, "warnings": list(d.warnings)} for d in domain_cfgs},
        "stages": {so.key: so.manifest for so in g.stages},
        "tools": {"stages": {so.key: so.manifest for so in g.extra_stages}, "bundler": _tools()},
        "inputs": resolved_dependencies([*g.stages, *g.extra_stages], spec.revision),
        "images": image_packages([*g.stages, *g.extra_stages]),
    }
    if g.disks:  # only then, so a bundle without disks stays byte for byte what it was
        out["rootdisks"] = {d.path: disk_record(d, g) for d in g.disks}
    return out


def disk_record(d: domains.DiskInput, g: Gathered) -> dict[str, Any]:
    return {
        "disk": d.variant,
        "image_sha256": d.sha256,
        "kernel": d.kernel,
        "hurd_modules": d.hurd_modules,
        "root": d.root,
        "partitioned": d.partitioned,
        "grub_config": d.grub_config,
        "made_from": [{"stage": t, "identity": i, "tree_sha256": s} for t, i, s in d.trees],
        "sources": disk_sources(d, g),
    }


def disk_sources(d: domains.DiskInput, g: Gathered) -> list[dict[str, Any]]:
    """What the disk holds was built from: the pinned sources (git commits, tarballs, packages) of its tree stage, of
    every stage below it (`inputs.upstream` names them) and of its kernel, read from their manifests."""
    by_key = {so.key: so.manifest for so in (*g.stages, *g.extra_stages)}
    todo, seen, out = [*(t for t, _, _ in d.trees), f"gnumach:{d.kernel}"], set(), []
    while todo:
        task = todo.pop(0)
        if task in seen:
            continue
        seen.add(task)
        m = by_key.get(task.replace(":", "/"))
        if m is None:
            out.append({"stage": task, "missing": "its manifest is not recorded in this bundle: sources not listed"})
            continue
        inputs = m.get("inputs", {})
        for env, v in sorted(inputs.items()):
            if env in ("upstream", "options") or not isinstance(v, Mapping):
                continue
            pins = [(env, v)] + [(f"{env}.{k}", w) for k, w in sorted(v.items()) if isinstance(w, Mapping)]
            for name, pin in pins:
                if "commit" in pin or "sha256" in pin:
                    out.append(
                        {"stage": task, "input": name, **{k: pin[k] for k in sorted(pin) if isinstance(pin[k], str)}}
                    )
        todo += sorted(inputs.get("upstream", {}))
    return out


def image_packages(stages: Iterable[StageOutput]) -> dict[str, list[str]]:
    """Each step image's installed packages (`name version arch`), as the stage manifests recorded them: the
    toolchain that built the release, like a .buildinfo."""
    out: dict[str, list[str]] = {}
    for so in stages:
        step = so.manifest.get("step") or {}
        if isinstance(step, Mapping) and isinstance(step.get("image"), str) and step.get("image_packages"):
            out.setdefault(step["image"], list(step["image_packages"]))
    return dict(sorted(out.items()))


def make_provenance(spec: BundleSpec, subjects: Mapping[str, str], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """in-toto Statement v1 with a SLSA provenance v1 predicate; no start/finish times (it must be reproducible)."""
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": n, "digest": {"sha256": d}} for n, d in sorted(subjects.items())],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "release": spec.release,
                    "include": {
                        "kernels": spec.kernels,
                        "hurd_modules": spec.hurd_modules,
                        "pvgrub2": spec.pvgrub2,
                        **({"rootdisks": spec.rootdisks} if spec.rootdisks else {}),
                    },
                    "allow_unbooted": spec.allow_unbooted,
                    "domains": dict(spec.domains),
                },
                "internalParameters": {"source_date_epoch": spec.source_date_epoch, "project": manifest["project"]},
                "resolvedDependencies": manifest["inputs"],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": manifest["tools"]["bundler"]},
                "metadata": {"invocationId": f"{spec.release}@{spec.revision.commit or 'unknown'}"},
            },
        },
    }


def sums_text(files: Mapping[str, str]) -> str:
    """coreutils format: `sha256sum -c SHA256SUMS` checks it (two spaces: text mode, which is binary-safe on Unix)."""
    return "".join(f"{h}  {n}\n" for n, h in sorted(files.items()))


def disk_readme(g: Gathered) -> list[str]:
    """Where each root disk's contents came from, as the stage manifests record it, and what was checked."""
    if not g.disks:
        return []
    lines = ["## Root disks", ""]
    for d in g.disks:
        made = ", ".join(f"{t} (identity {i[:16]}…, tree sha256 {s[:16]}…)" for t, i, s in d.trees) or "no tree"
        lines += [
            f"### {d.path}",
            "",
            f"- Made here by the rootdisk stage (`doit rootdisk:{d.variant}`) from {made}: that tree, gnumach "
            f"{d.kernel} as /boot/gnumach.gz and a GRUB menu ({d.grub_config}) booting it with hurd-modules "
            f"{d.hurd_modules}'s boot modules, root={d.root}"
            + (", in an MBR as partition 1." if d.partitioned else ", the filesystem the whole disk."),
            f"- Unpacked (`gunzip -k`), its sha256 is {d.sha256}.",
            "- Checked when it was made: `e2fsck -fn` found no error. Whether it boots: only the boot check's disk "
            "cases above say so; a case that names no disk did not read it.",
            "- The tree's sources, from the manifests of the stages that built it:",
        ]
        for s in disk_sources(d, g):
            if "missing" in s:
                lines.append(f"  - {s['stage']}: {s['missing']}")
                continue
            what = s.get("git") or s.get("url") or s.get("package") or s["input"]
            pin = s.get("commit") or s.get("version") or s.get("sha256", "")
            lines.append(f"  - {s['stage']} {s['input']}: {what} {'commit ' if 'commit' in s else ''}{pin}")
        lines.append("")
    return lines


def make_readme(
    spec: BundleSpec,
    g: Gathered,
    gate: BootGate,
    cfgs: list[domains.DomainConfig],
    files: Mapping[str, str],
    signing_fpr: str | None,
) -> str:
    r = spec.release
    base = f"{spec.domains.get('install_dir', '/srv/xen').rstrip('/')}/{r}"
    lines = [
        f"# {r}: GNU Mach and the Hurd's boot modules for Xen PV guests",
        "",
        f"Built by hurdxen from commit {spec.revision.commit or 'unknown'}"
        + (" (with uncommitted changes)" if spec.revision.dirty else "")
        + f", SOURCE_DATE_EPOCH {spec.source_date_epoch} ({_iso(spec.source_date_epoch)}).",
    ]
    if spec.version.note:
        lines.append(f"Version {spec.version.version} is a fallback: {spec.version.note}.")
    lines += ["", "## Contents", "", "| file | what |", "|---|---|"]
    for k in g.kernels:
        arch = "64-bit" if k.bits == 64 else ("32-bit PAE" if k.pae else "32-bit non-PAE")
        lines.append(f"| {k.path} | GNU Mach {k.variant} ({arch}), gzipped |")
    for m in g.modules:
        libc = f", libc0.3 {m.libc_version}" if m.libc_version else ""
        lines.append(f"| {m.path} | the Hurd's boot modules (ext2fs + exec) as one ramdisk{libc} |")
    for p in g.pvgrubs:
        lines.append(f"| {p.path} | pv-grub2 {p.platform}, flavour {p.flavour} |")
    for d in g.disks:
        lines.append(f"| {d.path} | the Hurd's root disk {d.variant} (ext2 for the Hurd), gzipped; see Root disks |")
    for c in cfgs:
        lines.append(f"| {c.path} | xl config: {'direct boot' if c.boot == 'direct' else 'through pv-grub2'} |")
    lines += [
        f"| {MANIFEST} | every input pin and hash, tool and image versions |",
        f"| {PROVENANCE} | in-toto / SLSA v1 provenance |",
        f"| {SUMS} | sha256 of every file |",
        "",
    ]
    if g.standins:
        lines += [
            f"Left out: {', '.join(g.standins)}: gcc-built stand-in boot modules (hurdxen/data/standins/), not the "
            "Hurd. They prove kernel paths in the boot check's stand-in cases; a release ships the real modules only.",
            "",
        ]
    lines += [
        "## Verify",
        "",
        "```sh",
        f"sha256sum -c {SUMS}",
    ]
    if signing_fpr:
        lines += [f"gpg --verify {SIGNATURE} {SUMS}   # expect key {signing_fpr}", "```", ""]
        lines += [
            f"{SIGNATURE} is shipped beside the tarball, not inside it (a signature carries its own time, the "
            "tarball is reproducible), and signs the SHA256SUMS that is inside.",
        ]
    else:
        lines += [
            "```",
            "",
            "**This release is not signed**: there is no SHA256SUMS.asc; check SHA256SUMS against "
            "a copy obtained over a trusted channel.",
        ]
    lines += [
        "",
        "With hurdxen: `python -m hurdxen verify-release DIR-OR-TARBALL [--keyring KEY.asc]` also checks "
        "manifest.json and the kernels' Xen notes.",
        "",
        *disk_readme(g),
        "## Boot check",
        "",
    ]
    if not gate.checked:
        lines.append("**Not boot-tested**: built with allow_unbooted, no boot report was there.")
    elif not gate.passed:
        lines.append("**The boot check did not pass**; bundled anyway with allow_unbooted:")
    for case, verdict, why in gate.cases:
        lines.append(f"- {case}: {verdict}" + (f" ({why})" if why else ""))
    for case, why in gate.not_booted:
        lines.append(f"- {case}: not booted ({why})")
    lines += [
        "",
        "## Boot",
        "",
        "Needs a hypervisor that runs 32-bit PV guests (CONFIG_PV32=y; Debian's Xen is built without it).",
        "",
        "```sh",
        f"tar -xzf {r}.tar.gz -C {base.rsplit('/', 1)[0]}",
    ]
    for c in cfgs:
        lines.append(f"xl create -c {base}/{c.path}")
    lines += [
        "```",
        "",
        '- direct: `kernel` = gnumach, `ramdisk` = hurd-modules, `extra = "root=device:hd0"`. Xen disks are usually '
        "not partitioned; for partition N write `root=part:N:device:hd0` (`domains.root`).",
        "- pv-grub2: `kernel` = the pv-grub2 image, no ramdisk; GRUB loads gnumach and the modules.",
        "- Edit `disk`, `memory` (32-bit GNU Mach: at most ~580 MB) and `vif` in the config, or rebuild with "
        "`doit bundle domains.memory=…`.",
        "",
        "Common failures:",
        "",
        f"- `{domains.DOMU_NOT_PAE}`: a non-PAE kernel on a PAE hypervisor; use a PAE kernel.",
        "- `Found 32-bit PV kernel, but CONFIG_PV32 missing`: rebuild Xen with CONFIG_PV32=y.",
        "- `bootstrap_create: No bootstrap code loaded with the kernel!`: the ramdisk line is missing.",
        "- `error: incompatible architecture: 2.` (pv-grub2): a 32-bit kernel given to the 64-bit image.",
    ]
    warnings = [w for c in cfgs for w in c.warnings]
    if warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings]]
    return "\n".join(lines) + "\n"
