"""What a release takes from the stages: every stage output read through its typed manifest (outputs and facts by
name, never by file-name patterns), and the boot check's verdicts that gate it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.boot.cases import CHECK_TASK, read_report
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest
from hurdxen.release import domains
from hurdxen.release.spec import KNOWN_FAILURE, OK_VERDICTS, VOLATILE_KEYS, BundleSpec

# Keys of stage manifests that describe this machine, not the release: where bytes were fetched from, and the stage
# cache entry a stage was pulled from (a bundle is the same byte for byte whether its stages were built or pulled).
LOCAL_KEYS = frozenset({"fetched_from", "archive", "cached_from"})
# Stages whose manifests describe this machine's cache and engine rather than what a release was built from.
NOT_RECORDED = frozenset({"sources", "base", "image"})


@dataclass(frozen=True)
class StageOutput:
    stage: str
    variant: str
    directory: Path
    manifest: Mapping[str, Any]  # without volatile and local keys

    @property
    def key(self) -> str:
        return f"{self.stage}/{self.variant}"


def strip_volatile(data: Any) -> Any:
    """A stage manifest without run-to-run noise (step seconds, log names) and local facts (mirrors)."""
    if isinstance(data, Mapping):
        return {k: strip_volatile(v) for k, v in data.items() if k not in VOLATILE_KEYS | LOCAL_KEYS}
    if isinstance(data, list):
        return [strip_volatile(v) for v in data]
    return data


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HurdxenError(f"{what}: {path} is missing", hint="rebuild that stage") from None
    except (OSError, ValueError) as e:
        raise HurdxenError(f"{what}: cannot read {path}: {e}", hint="rebuild that stage") from e


def _built(artifacts: Path, stage: str, wanted: tuple[str, ...] | None, output: str) -> list[manifest.Manifest]:
    """The outputs of `stage` that have an output named `output`: those `wanted`, or every one built."""
    base = artifacts / stage
    if wanted is None:
        names = sorted(p.name for p in base.iterdir() if (p / manifest.MANIFEST).is_file()) if base.is_dir() else []
        found = [manifest.read(base / n) for n in names]
        return [m for m in found if output in m.outputs]
    out = []
    for n in wanted:
        if not (base / n / manifest.MANIFEST).is_file():
            raise HurdxenError(
                f"bundle: {stage}/{n} has not been built ({base / n / manifest.MANIFEST} is missing)",
                hint=f"run `doit {stage}:{n}` or drop it from recipes/release.toml [include]",
            )
        out.append(manifest.read(base / n))
    return out


def is_standin(m: manifest.Manifest, standins: frozenset[str]) -> bool:
    """A stand-in ramdisk (hurd-modules' `standin` source: gcc-built, not the Hurd) or a pv-grub2 image that holds
    one's modules (`standins`: those ramdisks' tasks). Users want the real modules: the bundle never ships these."""
    if m.stage == "hurd-modules":
        return m.inputs.get("source") == "standin"
    held = m.inputs.get("boot_modules") or {}
    return any(isinstance(b, Mapping) and b.get("task") in standins for b in held.values())


def _without_standins(
    found: list[manifest.Manifest], wanted: tuple[str, ...] | None, standins: frozenset[str]
) -> tuple[list[manifest.Manifest], list[str]]:
    """`found` without the stand-ins, and their tasks; a stand-in named in [include] is refused."""
    keep, left = [], []
    for m in found:
        if not is_standin(m, standins):
            keep.append(m)
        elif wanted is not None:
            raise HurdxenError(
                f"bundle: {m.stage}/{m.variant} is a gcc-built stand-in (hurdxen/data/standins/), not the Hurd: a "
                "release does not ship it",
                hint="drop it from recipes/release.toml [include]",
            )
        else:
            left.append(m.task)
    return keep, left


def _stage_output(m: manifest.Manifest) -> StageOutput:
    return StageOutput(m.stage, m.variant, m.directory, strip_volatile(m.raw))


@dataclass(frozen=True)
class Payload:
    """A file that goes into the bundle: where it comes from and what it means."""

    path: str  # in the bundle
    source: Path
    stage: str  # stage/variant


@dataclass(frozen=True)
class Gathered:
    payload: tuple[Payload, ...]
    stages: tuple[StageOutput, ...]
    kernels: tuple[domains.KernelInput, ...]
    kernel_expect: Mapping[str, Mapping[str, Any]]  # bundle path -> {variant, bits, pae, strict}
    modules: tuple[domains.ModulesInput, ...]
    pvgrubs: tuple[domains.PvGrubInput, ...]
    extra_stages: tuple[StageOutput, ...]  # tools the outputs were built with (mig, …): recorded, not shipped
    disks: tuple[domains.DiskInput, ...] = ()
    standins: tuple[str, ...] = ()  # the stand-in ramdisks and images built here, left out (tasks)


def gather(artifacts: Path, spec: BundleSpec) -> Gathered:
    payload: list[Payload] = []
    kernels: list[domains.KernelInput] = []
    expect: dict[str, Mapping[str, Any]] = {}
    gn = _built(artifacts, "gnumach", spec.kernels, "kernel.gz")
    if not gn:
        raise HurdxenError(f"bundle: no kernels in {artifacts / 'gnumach'}", hint="run `doit gnumach` first")
    for m in gn:
        f = m.output("kernel.gz")
        bits = int(m.fact("bits"))
        pae = None if bits == 64 else bool(m.fact("pae") is not False)
        rel = f"kernels/{f.name}"
        payload.append(Payload(rel, f, m.task.replace(":", "/")))
        kernels.append(domains.KernelInput(m.variant, rel, bits, pae))
        strict = bool((m.facts.get("verify") or {}).get("strict", False))
        expect[rel] = {"variant": m.variant, "bits": bits, "pae": pae, "strict": strict}
    hm, standins = _without_standins(
        _built(artifacts, "hurd-modules", spec.hurd_modules, "ramdisk"), spec.hurd_modules, frozenset()
    )
    if not hm:
        raise HurdxenError(
            f"bundle: no hurd-modules in {artifacts / 'hurd-modules'}", hint="run `doit hurd-modules` first"
        )
    modules: list[domains.ModulesInput] = []
    for m in hm:
        rel = f"hurd-modules/hurd-modules-{m.variant}"
        payload.append(Payload(rel, m.output("ramdisk"), f"{m.stage}/{m.variant}"))
        modules.append(domains.ModulesInput(m.variant, rel, int(m.fact("bits")), str(m.fact("libc_version"))))
    standin_ramdisks = frozenset(standins)
    pg, left = _without_standins(_built(artifacts, "pvgrub2", spec.pvgrub2, "image.gz"), spec.pvgrub2, standin_ramdisks)
    standins += left
    pvgrubs: list[domains.PvGrubInput] = []
    for m in pg:
        f = m.output("image.gz")
        rel = f"pvgrub2/{f.name}"
        if any(p.path == rel for p in payload):
            raise HurdxenError(f"bundle: two pv-grub2 images are both named {f.name}", hint="rename one")
        payload.append(Payload(rel, f, f"{m.stage}/{m.variant}"))
        pvgrubs.append(domains.PvGrubInput(m.variant, rel, str(m.fact("platform")), str(m.fact("flavour"))))
    rd = _built(artifacts, "rootdisk", spec.rootdisks, "image.gz") if spec.rootdisks != () else []
    disks = [_disk(m) for m in rd]
    payload += [Payload(d.path, m.output("image.gz"), f"{m.stage}/{m.variant}") for d, m in zip(disks, rd, strict=True)]
    # Tools (mig, …): every other stage with a manifest, so the release records what built the kernels (and the
    # from-source stages the disks were made from). Not tools: the boot stage (its verdicts are the gate), the bundle
    # stage itself (and "release", where bundles were published before they were a stage), logs and scratch; nor the
    # sources, base and image stages: every stage manifest already names its pins (with the hashes of the bytes
    # used) and its step's image tag and id.
    shipped = {"gnumach", "hurd-modules", "pvgrub2", "boot", "bundle", "release", "logs", "work", *NOT_RECORDED} | (
        {"rootdisk"} if rd else set()
    )
    extra: list[StageOutput] = []
    if artifacts.is_dir():
        for d in sorted(artifacts.iterdir()):
            if d.is_dir() and d.name not in shipped and not d.name.startswith("."):
                names = sorted(p.name for p in d.iterdir() if (p / manifest.MANIFEST).is_file())
                extra += [_stage_output(manifest.read(d / n)) for n in names]
    stages = [_stage_output(m) for m in (*gn, *hm, *pg, *rd)]
    return Gathered(
        tuple(payload),
        tuple(stages),
        tuple(kernels),
        expect,
        tuple(modules),
        tuple(pvgrubs),
        tuple(extra),
        tuple(disks),
        tuple(standins),
    )


def _task_variant(m: manifest.Manifest, key: str, stage: str) -> str:
    task = str(m.fact(key))
    if not task.startswith(f"{stage}:"):
        raise HurdxenError(f"bundle: {m.task}'s manifest names {key} {task!r}, not a {stage} task", hint="rebuild it")
    return task.split(":", 1)[1]


def _disk(m: manifest.Manifest) -> domains.DiskInput:
    """A root disk as its manifest describes it: the kernel and hurd-modules it was made for, root=, and where its
    contents came from (the tree stage it was made from, by identity, and that stage's own sources)."""
    options = m.inputs.get("options", {})
    upstream = m.inputs.get("upstream", {})
    trees = {t: u for t, u in upstream.items() if isinstance(u, Mapping) and "into" in u}
    return domains.DiskInput(
        variant=m.variant,
        path=f"rootdisk/{m.variant}.img.gz",
        kernel=_task_variant(m, "kernel", "gnumach"),
        hurd_modules=_task_variant(m, "hurd_modules", "hurd-modules"),
        root=str(m.fact("hurd_root")),
        partitioned=bool(options.get("PARTITION")),
        grub_config=str(options.get("GRUB_CONFIG", "")),
        trees=tuple((t, str(u.get("identity", "")), str(u.get("sha256", ""))) for t, u in sorted(trees.items())),
        sha256=m.outputs["image"].sha256 if "image" in m.outputs else "",
    )


# ------------------------------------------------------------------ boot gate


@dataclass(frozen=True)
class BootGate:
    checked: bool  # a report was there and read
    passed: bool
    allow_unbooted: bool
    cases: tuple[tuple[str, str, str], ...]  # (case, verdict, reason)
    not_booted: tuple[tuple[str, str], ...] = ()  # (case, why): the recipe's cases this check did not boot

    def summary(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "passed": self.passed,
            "allow_unbooted": self.allow_unbooted,
            "cases": [{"case": c, "verdict": v, "reason": r} for c, v, r in self.cases],
            **({"not_booted": [{"case": c, "reason": r} for c, r in self.not_booted]} if self.not_booted else {}),
        }


def boot_gate(artifacts: Path, spec: BundleSpec) -> BootGate:
    """Only a booted release is bundled: every case pass / expected (known failures if the recipe accepts them)."""
    hint = "run `doit boot`, or bundle anyway with `doit bundle release.allow_unbooted=true` (the manifest says so)"
    data = read_report(artifacts)
    if data is None:
        if spec.allow_unbooted:
            return BootGate(False, False, True, ())
        raise HurdxenError(f"bundle: no boot check ({CHECK_TASK} has not run)", hint=hint)
    raw = data.get("cases", []) if isinstance(data, Mapping) else []
    items = raw.items() if isinstance(raw, Mapping) else ((None, c) for c in raw)
    cases: list[tuple[str, str, str]] = []
    for k, c in items:
        c = c if isinstance(c, Mapping) else {"verdict": c}
        name = str(c.get("case") or c.get("name") or k or "?")
        cases.append((name, str(c.get("verdict", "?")), str(c.get("reason", ""))))
    ok = set(OK_VERDICTS) | ({KNOWN_FAILURE} if spec.accept_known_failures else set())
    bad = [c for c in cases if c[1] not in ok]
    passed = bool(cases) and not bad
    if not passed and not spec.allow_unbooted:
        first = f"case {bad[0][0]}: {bad[0][1]}" + (f" ({bad[0][2]})" if bad[0][2] else "") if bad else "no cases"
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise HurdxenError(f"bundle: the boot check did not pass: {first}{more}", hint=hint)
    left = data.get("not_booted", []) if isinstance(data, Mapping) else []
    not_booted = tuple(
        sorted((str(n.get("case", "?")), str(n.get("reason", ""))) for n in left if isinstance(n, Mapping))
        if isinstance(left, list)
        else ()
    )
    return BootGate(True, passed, spec.allow_unbooted, tuple(sorted(cases)), not_booted)
