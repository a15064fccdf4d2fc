"""Making one pv-grub2 image: GRUB's module tree (dependencies, which module provides which command), the memdisk
(a reproducible ustar: grub-mkstandalone 2.06 writes file mtimes in directory-read order), and one executor step
running grub-script-check, grub-file and grub-mkimage in the builder image (no network). `make_image` works in the
directory and runs the step it is given and returns the image in memory; the stage (`stage.build`) publishes it
with its manifest.

Checks before anything is written: every command of the configuration against the embedded modules,
`grub-script-check`, a standalone kernel with `grub-file` and xenverify, and the image itself: ELF class and
machine, Xen notes, `grub-file --is-…-xen-…-domu`, the module count and the embedded memdisk read back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError, labelled
from hurdxen.pipeline.executors import Mount, Step, StepResult
from hurdxen.stages.pvgrub2.config import (
    CONFIG_IN_MEMDISK,
    PLATFORMS,
    PREFIX,
    STANDALONE_KERNEL_GZ,
    STANDALONE_KERNEL_RAW,
    Platform,
    PvGrubImageSpec,
    check_kernel_variants,
    incompatible_message,
    render_config,
)
from hurdxen.stages.pvgrub2.elf import (
    XEN_ARCH_I386,
    XEN_ARCH_X86_64,
    XEN_ELFNOTE_GUEST_OS,
    XEN_ELFNOTE_XEN_VERSION,
    elf_facts,
    read_image_objects,
    report_facts,
)
from hurdxen.stages.pvgrub2.grub import (
    MemdiskEntry,
    build_memdisk,
    check_commands,
    grub_platform_dir,
    image_modules,
    module_closure,
)
from hurdxen.xen import verify as xenverify

STAGE = "pvgrub2"


# ---------------------------------------------------------------------------------------------------- build


BUILD_SCRIPT = r"""
cd "$WORK"
rc=0; grub-script-check grub.cfg >check-script.log 2>&1 || rc=$?
echo "$rc" >check-script.rc
[ "$rc" = 0 ] || exit 0
if [ -f kernel ]; then
  rc=0; grub-file "$GRUB_FILE_CHECK" kernel || rc=$?
  echo "$rc" >check-kernel.rc
  [ "$rc" = 0 ] || exit 0
fi
echo "+ grub-mkimage -O $PLATFORM -p '$PREFIX' -m memdisk.tar $MODULES"
grub-mkimage -O "$PLATFORM" -d "$GRUB" -p "$PREFIX" -m memdisk.tar -o image.bin $MODULES
rc=0; grub-file "$GRUB_FILE_CHECK" image.bin || rc=$?
echo "$rc" >check-image.rc
gzip -9n -c image.bin >image.bin.gz
ls -l image.bin image.bin.gz
"""


@dataclass(frozen=True)
class Inputs:
    """What one image is made from: the extracted grub-xen-bin package (or its usr/lib/grub/<platform>) and, for a
    standalone image, the kernel and the boot modules (path in the memdisk, e.g. /hurd/ext2fs.static -> file)."""

    grub_tree: Path
    kernel: Path | None = None
    modules: Mapping[str, Path] = field(default_factory=dict)


def _standalone_files(
    spec: PvGrubImageSpec, inputs: Inputs, where: str, notes: list[str]
) -> tuple[dict[str, bytes], str]:
    """The memdisk's files for a standalone image (config aside) and the kernel's name among them."""
    kernel = spec.kernels[0]
    variant = kernel.name
    kpath = inputs.kernel
    if kpath is None:
        raise HurdxenError(
            f"{where}: no kernel given for variant {variant}",
            hint=f"the gnumach stage for {variant} provides it",
        )
    # Xen's own view of the kernel (notes, __xen_guest, address window), read once: GRUB's view comes from the same
    # report. Errors refuse (after the architecture check, which names the platform), warnings are recorded.
    bits: Literal[32, 64] = 64 if kernel.bits == 64 else 32
    report = xenverify.inspect_kernel(
        kpath, xenverify.KernelExpectation(bits=bits, pae=kernel.pae if bits == 32 else None)
    )
    facts = report_facts(report)
    platform = PLATFORMS[spec.platform]
    arch = facts.xen_arch
    if facts.bits != platform.bits or (arch is not None and arch not in platform.accepts):
        shown_arch = arch if arch is not None else (XEN_ARCH_X86_64 if facts.bits == 64 else XEN_ARCH_I386)
        msg, _ = incompatible_message(
            spec.platform, shown_arch, f"kernel {kpath.name} (given for {variant}) is a {facts.bits}-bit ELF and"
        )
        raise HurdxenError(f"{where}: {msg}", hint=f"the file given for {variant} must be {kernel.describe}")
    with labelled(where):
        warnings = xenverify.check_report(report)
    notes.append(f"xenverify {report.verdict}" + (f" ({', '.join(w.code for w in warnings)})" if warnings else ""))
    kname = STANDALONE_KERNEL_GZ if facts.gzipped else STANDALONE_KERNEL_RAW
    files = {kname: kpath.read_bytes()}
    for m in spec.boot_modules:
        src = inputs.modules.get(m.path)
        if src is None:
            raise HurdxenError(
                f"{where}: no file given for boot module {m.path}",
                hint="the hurd-modules stage provides ext2fs.static and ld.so",
            )
        name = m.path.lstrip("/")
        if name in files or name == CONFIG_IN_MEMDISK:
            raise HurdxenError(f"{where}: boot module {m.path} clashes with /{name} in the memdisk")
        files[name] = src.read_bytes()
    return files, kname


def _read_rc(work: Path, name: str) -> int | None:
    p = work / f"check-{name}.rc"
    return int(p.read_text().strip()) if p.exists() else None


@dataclass(frozen=True)
class Image:
    """One image made and checked, in memory until its stage publishes it."""

    spec: PvGrubImageSpec
    config: str
    memdisk: bytes
    listing: tuple[MemdiskEntry, ...]
    modules: tuple[str, ...]  # embedded, dependencies included
    image: bytes
    image_gz: bytes
    checks: tuple[str, ...]
    step: StepResult

    def write(self, out: Path) -> None:
        """The image's output files into `out` (its stage's temporary directory), named by `output_files`."""
        names = output_files(self.spec.name)
        fsutil.write_atomic(out / names["image"], self.image)
        fsutil.write_atomic(out / names["image.gz"], self.image_gz)
        fsutil.write_atomic(out / names["config"], self.config)
        fsutil.write_atomic(out / names["memdisk"], self.memdisk)

    def facts(self, image_tag: str, sde: int) -> dict[str, Any]:
        """The manifest's own facts of the image."""
        spec, names = self.spec, output_files(self.spec.name)
        return {
            "name": spec.name,
            "platform": spec.platform,
            "flavour": spec.flavour,
            "kernels": [asdict(k) for k in spec.kernels],
            "image": {"file": names["image"], "sha256": fsutil.sha256_bytes(self.image), "size": len(self.image)},
            "image_gz": {
                "file": names["image.gz"],
                "sha256": fsutil.sha256_bytes(self.image_gz),
                "size": len(self.image_gz),
            },
            "modules": list(self.modules),
            "memdisk": [asdict(e) for e in self.listing],
            "prefix": PREFIX,
            "checks": list(self.checks),
            "builder_image": image_tag,
            "source_date_epoch": sde,
            "spec_identity": spec.identity,
        }


@dataclass(frozen=True)
class PvGrubResult:
    """One image published in `directory`; what was made (config, memdisk listing, modules, checks) is `made`'s."""

    made: Image
    directory: Path
    seconds: float

    def path(self, output: str) -> Path:
        """A published file by its output name (image, image.gz, config, memdisk: `output_files`)."""
        return self.directory / output_files(self.made.spec.name)[output]


def make_image(
    spec: PvGrubImageSpec,
    inputs: Inputs,
    source_date_epoch: int,
    image_tag: str,
    work: Path,
    run: Callable[[Step], StepResult],
) -> Image:
    """Make and check one image in the scratch directory `work`, its step run by `run` (the stage's executor, log
    and monitor). Every check passes before anything is returned: a caller that publishes only what this returns
    never publishes a bad image."""
    where = f"{STAGE}:{spec.name}"
    check_kernel_variants(spec, where)
    platform = PLATFORMS[spec.platform]
    pdir = grub_platform_dir(inputs.grub_tree, spec.platform)

    files: dict[str, bytes] = {}
    kernel_notes: list[str] = []
    kname = STANDALONE_KERNEL_GZ
    if spec.flavour == "standalone":
        files, kname = _standalone_files(spec, inputs, where, kernel_notes)
    config = render_config(spec, kname)
    modules = module_closure(image_modules(spec), pdir, where)
    if len(modules) > spec.module_limit:
        raise HurdxenError(
            f"{where}: the image would embed {len(modules)} modules, more than module_limit {spec.module_limit}",
            hint=f"drop extra modules or raise module_limit in recipes/pvgrub2.toml ({' '.join(modules)})",
        )
    check_commands(config, modules, pdir, where)

    files[CONFIG_IN_MEMDISK] = config.encode()
    memdisk, listing = build_memdisk(files, source_date_epoch)
    fsutil.write_atomic(work / "grub.cfg", config)
    fsutil.write_atomic(work / "memdisk.tar", memdisk)
    if spec.flavour == "standalone":
        fsutil.write_atomic(work / "kernel", files[kname])
    step = Step(
        name=where,
        script=BUILD_SCRIPT,
        image=image_tag,
        mounts=(
            Mount(pdir, "GRUB", "/grub", writable=False),
            Mount(work, "WORK", "/work", writable=True),
        ),
        env=(
            ("PLATFORM", spec.platform),
            ("PREFIX", PREFIX),
            ("MODULES", " ".join(modules)),
            ("GRUB_FILE_CHECK", platform.grub_file_check),
            ("SOURCE_DATE_EPOCH", str(source_date_epoch)),
            ("TZ", "UTC"),
            ("LC_ALL", "C.UTF-8"),
        ),
    )
    step_result = run(step)
    checks = (*kernel_notes, *_check_outputs(spec, work, config, memdisk, modules, platform, where, step_result.log))
    return Image(
        spec=spec,
        config=config,
        memdisk=memdisk,
        listing=listing,
        modules=modules,
        image=(work / "image.bin").read_bytes(),
        image_gz=(work / "image.bin.gz").read_bytes(),
        checks=checks,
        step=step_result,
    )


def _check_outputs(
    spec: PvGrubImageSpec,
    work: Path,
    config: str,
    memdisk: bytes,
    modules: tuple[str, ...],
    platform: Platform,
    where: str,
    log_path: Path,
) -> tuple[str, ...]:
    checks = []
    if _read_rc(work, "script") != 0:
        text = (work / "check-script.log").read_text(errors="replace") if (work / "check-script.log").exists() else ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        # grub-script-check 2.06 prints spurious `error: out of memory.` lines before the real ones.
        useful = [ln for ln in lines if "out of memory" not in ln] or lines
        m = re.search(r"Syntax error at line (\d+)", text)
        at = ""
        if m:
            n = int(m.group(1))
            cfg_lines = config.splitlines()
            if 0 < n <= len(cfg_lines):
                at = f"; line {n}: {cfg_lines[n - 1].strip()!r}"
        raise HurdxenError(
            f"{where}: the generated grub.cfg fails grub-script-check: {' / '.join(useful) or 'no output'}{at}",
            hint="check the image's extra_config and boot module words in recipes/pvgrub2.toml",
        )
    checks.append("grub-script-check")
    if spec.flavour == "standalone":
        if _read_rc(work, "kernel") != 0:
            raise HurdxenError(
                f"{where}: `grub-file {platform.grub_file_check}` refuses the kernel for {spec.kernels[0]} "
                f"(GRUB's Xen loader would not boot it); see {log_path}",
                hint="check the kernel's Xen notes (__xen_guest PAE=yes for 32-bit, a 64-bit ELF for x86_64)",
            )
        checks.append(f"grub-file {platform.grub_file_check} kernel")
    if not (work / "image.bin").is_file():
        raise HurdxenError(f"{where}: grub-mkimage wrote no image", hint=f"see {log_path}")
    if _read_rc(work, "image") != 0:
        raise HurdxenError(
            f"{where}: `grub-file {platform.grub_file_check}` refuses the image itself", hint=f"see {log_path}"
        )
    checks.append(f"grub-file {platform.grub_file_check} image")

    facts = elf_facts(work / "image.bin")
    if facts.bits != platform.bits or facts.machine != platform.machine:
        raise HurdxenError(
            f"{where}: the image is a {facts.bits}-bit {facts.machine} ELF, {spec.platform} needs "
            f"{platform.bits}-bit {platform.machine}",
            hint="the grub tree passed is not the platform's (usr/lib/grub/<platform>)",
        )
    checks.append(f"ELF {facts.bits}-bit {facts.machine}")
    guest_os = facts.xen_notes.get(XEN_ELFNOTE_GUEST_OS, b"").rstrip(b"\0")
    xen_version = facts.xen_notes.get(XEN_ELFNOTE_XEN_VERSION, b"").rstrip(b"\0")
    if guest_os != b"GRUB" or xen_version != b"xen-3.0":
        raise HurdxenError(
            f"{where}: the image lacks GRUB's Xen notes (GUEST_OS={guest_os!r}, XEN_VERSION={xen_version!r})",
            hint="Xen would refuse it as a PV kernel; is the grub tree a Xen port?",
        )
    if facts.xen_arch not in (None, *platform.accepts):
        raise HurdxenError(f"{where}: the image's own Xen notes say architecture {facts.xen_arch}")
    checks.append("Xen notes GUEST_OS=GRUB XEN_VERSION=xen-3.0")

    objs = read_image_objects(work / "image.bin")
    if tuple(sorted(objs.modules)) != modules:
        raise HurdxenError(
            f"{where}: the image embeds {' '.join(sorted(objs.modules))}, expected {' '.join(modules)}",
            hint="report this: grub-mkimage resolved dependencies differently from moddep.lst",
        )
    if len(objs.modules) > spec.module_limit:
        raise HurdxenError(f"{where}: {len(objs.modules)} modules > module_limit {spec.module_limit}")
    checks.append(f"{len(objs.modules)} modules <= {spec.module_limit}")
    embedded = objs.memdisk or b""
    if embedded[: len(memdisk)] != memdisk or embedded[len(memdisk) :].strip(b"\0"):
        raise HurdxenError(f"{where}: the memdisk in the image differs from the one built", hint=f"see {log_path}")
    if objs.prefix != PREFIX:
        raise HurdxenError(f"{where}: image prefix is {objs.prefix!r}, expected {PREFIX!r}")
    checks.append("memdisk read back identical")
    return tuple(checks)


def output_files(name: str) -> dict[str, str]:
    """The files of one image's directory, by output name."""
    stem = f"pv-grub-{name}"
    return {"image": stem, "image.gz": f"{stem}.gz", "config": f"{stem}.grub.cfg", "memdisk": f"{stem}.memdisk.tar"}
