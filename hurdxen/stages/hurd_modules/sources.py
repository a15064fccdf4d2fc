"""Where a hurd-modules variant's modules come from, and what its manifest says about that: `build` (the from-source
Hurd's root stage, read by output name through its manifest), `debian` (pinned packages), `disk` (a user's installed
Hurd, read without mounting by the diskread step), `standin` (gcc-built stand-in modules from the C sources in
hurdxen/data/standins/, compiled in the builder image: they prove kernel paths, they are not the Hurd) or `files`
(pinned local files, which an overlay adds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.core.quoting import shell_word
from hurdxen.pipeline import manifest
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.executors import Mount, Step
from hurdxen.sources.deb import extract_deb, fetch_deb, manifest_record
from hurdxen.sources.fetch import DebPin
from hurdxen.stages.hurd_modules import diskread, ramdisk
from hurdxen.stages.hurd_modules.elf import ldso_version, libc_version
from hurdxen.stages.toolchain.chain import UpstreamFile, published

EXT2_MAGIC = 0xEF53
SUPERBLOCK = 1024  # the ext2 superblock's offset in the filesystem; its magic sits 56 bytes in
SECTOR = 512
# The step: diskread.py's own text, run by the image's python3 (its text is in the stage's identity).
DISK_SCRIPT = "python3 - <<'HURDXEN_DISKREAD'\n" + Path(diskread.__file__).read_text() + "HURDXEN_DISKREAD\n"


# The stand-in modules' C sources: package data, read by the stage and by the tests (one copy).
STANDIN_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "standins"
STANDIN_REL = "hurdxen/data/standins"  # how manifests and messages name that directory (no host paths)
# The step: one gcc per module, its words from the recipe ($COMMANDS: a line of shell-quoted words per module, the
# output's file name first), in the source directory (mounted read-only), so no path but the file's name is compiled in.
STANDIN_SCRIPT = r"""
gcc --version | sed -n 1p
printf '%s\n' "$COMMANDS" | while IFS= read -r line; do
  [ -n "$line" ] || continue
  eval "set -- $line"
  out=$1
  shift
  echo "gcc $*"
  (cd "$SRC" && gcc "$@" -o "$OUT/$out")
done
"""


@dataclass(frozen=True)
class StandinModule:
    module: str  # the ramdisk module it stands in for (ext2fs.static, ld.so.1, …)
    source: str  # its C source's file name in STANDIN_DIR
    sha256: str  # of that source (the stage's identity covers the bytes)
    flags: tuple[str, ...]  # gcc's words before the source (the recipe's)

    @property
    def described(self) -> str:
        return f"gcc-built stand-in from {STANDIN_REL}/{self.source}, not the Hurd"


@dataclass(frozen=True)
class StandinSource:
    modules: tuple[StandinModule, ...]
    image: str  # the builder image gcc runs in


@dataclass(frozen=True)
class DiskSource:
    path: str
    sha256: str
    partition: int | None  # 1-4: an MBR primary partition of a whole disk; None: the image is the filesystem
    libc_paths: tuple[str, ...]  # where the image's libc.so may be, absolute in the image (its banner: the version)
    max_bytes: int  # the largest file read out of the image
    image: str  # the builder image debugfs runs in
    where: str  # the recipe key, for messages


def build_inputs(upstream: tuple[UpstreamFile, ...], ctx: Context, task: str) -> tuple[ramdisk.Inputs, dict[str, Any]]:
    """The producer's named outputs (its published build of its current identity) and their provenance."""
    files: dict[str, ramdisk.PinnedFile] = {}
    described: dict[str, Any] = {}
    for u in upstream:
        m = published(ctx, u.producer, task)
        files[u.env] = ramdisk.PinnedFile(m.output(u.output), m.outputs[u.output].sha256)
        entry = described.setdefault(u.producer.task, {"identity": m.identity, "outputs": {}, "sources": {}})
        entry["outputs"][u.output] = m.outputs[u.output].sha256
        entry["sources"] = _pinned_sources(ctx, m)
    return files, {"build": described}


def _pinned_sources(ctx: Context, m: manifest.Manifest) -> dict[str, Any]:
    """The git commits the producer's own upstream stages were built from (the Hurd's, for hurd:root)."""
    out: dict[str, Any] = {}
    for task in sorted(m.inputs.get("upstream", {})):
        try:
            up = manifest.read_task(ctx.artifacts, task)
        except HurdxenError:
            continue  # a layer published elsewhere (the stage cache): its identity is recorded by the producer
        for name, v in up.inputs.items():
            if isinstance(v, dict) and "commit" in v:
                out[f"{task}.{name}"] = {"git": v.get("git"), "commit": v["commit"]}
    return out


def debian_inputs(debs: tuple[DebPin, ...], ctx: Context) -> tuple[ramdisk.Inputs, dict[str, Any]]:
    trees, info = [], []
    for pin in debs:
        deb = fetch_deb(pin, ctx.cache)
        trees.append(extract_deb(deb, ctx.cache))
        info.append(manifest_record(pin, deb, ctx.cache))
    return trees, {"debian": info}


def files_inputs(files: tuple[tuple[str, str, str], ...]) -> tuple[ramdisk.Inputs, dict[str, Any]]:
    pinned = {m: ramdisk.PinnedFile(Path(p), sha) for m, p, sha in files}
    return pinned, {"files": [{"name": m, "sha256": s} for m, _, s in files]}


def fs_offset(d: DiskSource) -> tuple[Path, int]:
    """The image (its sha256 checked) and the byte offset of its ext2 filesystem, or one line why not."""
    path = Path(d.path)
    if not path.is_file():
        raise HurdxenError(f"{d.where}.path: {path} is not a file", hint="give the path of a disk or partition image")
    got = fsutil.sha256_file(path)
    if got != d.sha256:
        raise HurdxenError(
            f"{d.where}: {path} has sha256 {got}, pinned {d.sha256}", hint="the image changed: check it, update the pin"
        )
    size = path.stat().st_size
    offset = 0
    with open(path, "rb") as f:
        if d.partition is not None:
            mbr = f.read(SECTOR)
            if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
                raise HurdxenError(
                    f"{d.where}.partition: {path} has no MBR partition table",
                    hint="drop `partition` for a partition image",
                )
            entry = mbr[446 + 16 * (d.partition - 1) : 446 + 16 * d.partition]
            start = int.from_bytes(entry[8:12], "little") * SECTOR
            if entry[4] == 0 or not 0 < start < size:
                raise HurdxenError(
                    f"{d.where}.partition: {path} has no partition {d.partition}", hint="see `fdisk -l` for its number"
                )
            offset = start
        f.seek(offset + SUPERBLOCK + 56)
        magic = f.read(2)
    if len(magic) < 2 or int.from_bytes(magic, "little") != EXT2_MAGIC:
        what = f"partition {d.partition} of {path}" if d.partition is not None else str(path)
        raise HurdxenError(
            f"{d.where}: {what} is not an ext2 filesystem (no ext2 magic in its superblock)",
            hint="the Hurd's root is ext2: give that partition (`partition = N` for a whole disk)",
        )
    return path, offset


def read_disk(d: DiskSource, want: dict[str, str], ctx: Context, task: str, work: Path) -> dict[str, Any]:
    """Run the diskread step on the image: `want` maps names to absolute paths in it; the files land in `work`."""
    path, offset = fs_offset(d)
    step = Step(
        name=task,
        script=DISK_SCRIPT,
        image=ctx.image_tag(d.image),
        mounts=(Mount(path, "DISK", "/in/disk.img"), Mount(work, "OUT", "/out", writable=True)),
        env=(
            ("OFFSET", str(offset)),
            ("WANT", "\n".join(f"{n} {p}" for n, p in want.items())),
            ("MAX_BYTES", str(d.max_bytes)),
        ),
    )
    ran = ctx.executor().run(step, ctx.log(task), ctx.monitor())
    try:
        result: dict[str, Any] = json.loads((work / "result.json").read_text())
    except (OSError, ValueError) as e:
        raise HurdxenError(f"{task}: the disk step left no result ({e})", hint=f"see {ctx.log(task)}") from None
    if result.get("error"):
        raise HurdxenError(f"{d.where}: {path}: {result['error']}", hint="give the image of an installed Hurd")
    result["step"] = manifest.step_record(ran)
    return result


def disk_inputs(
    d: DiskSource, modules: tuple[ramdisk.ModuleSpec, ...], libc_pin: str | None, ctx: Context, task: str, work: Path
) -> tuple[ramdisk.Inputs, str, dict[str, Any]]:
    """The modules from the image, the image's libc version (libc.so's banner), and their provenance."""
    # File names of our own in `work` (module names are the recipe's): m<i> for modules, libc<i> for libc candidates
    want = {f"m{i}": "/" + m.path.lstrip("/") for i, m in enumerate(modules)}
    want.update({f"libc{i}": "/" + p.lstrip("/") for i, p in enumerate(d.libc_paths)})
    read = read_disk(d, want, ctx, task, work)
    found = read["files"]
    lacking = [want[n] for n in want if n.startswith("m") and n not in found]
    if lacking:
        raise HurdxenError(
            f"{d.where}: {d.path} lacks {', '.join(lacking)}",
            hint="is this the root filesystem of an installed Hurd? (`partition = N` for a whole disk)",
        )
    libc = next((n for n in want if n.startswith("libc") and n in found), None)
    if libc is None:
        raise HurdxenError(
            f"{d.where}: {d.path} has no libc.so (looked at {', '.join(d.libc_paths)})",
            hint="the ramdisk is matched to the disk's libc: is libc0.3 installed on it?",
        )
    where = f"{d.path}:{found[libc]['resolved']}"
    version = libc_version((work / libc).read_bytes(), where)
    if version is None:
        raise HurdxenError(
            f"{d.where}: {where} has no 'GNU C Library (...) stable release version' banner",
            hint="is it really glibc's libc.so?",
        )
    for i, m in enumerate(modules):
        ldso = ldso_version((work / f"m{i}").read_bytes(), f"{d.path}:{found[f'm{i}']['resolved']}")
        if m.role == "ld.so" and ldso != version:
            raise HurdxenError(
                f"{d.where}: {d.path}:{found[f'm{i}']['resolved']} is from glibc {ldso or '(no banner)'}, but its "
                f"libc.so is {version}: a mismatched libc",
                hint="the disk's ld.so and libc.so must come from one libc0.3: repair the installed system",
            )
    if libc_pin is not None and libc_pin != version:
        raise HurdxenError(
            f"{d.where}: {d.path} has libc {version}, but the variant pins libc_version {libc_pin}",
            hint="drop libc_version (the disk's own is used) or give the disk that has it",
        )
    pinned = {
        m.name: ramdisk.PinnedFile(work / f"m{i}", fsutil.sha256_file(work / f"m{i}")) for i, m in enumerate(modules)
    }
    described = {
        "disk": {
            "sha256": d.sha256,
            "partition": d.partition,
            "libc": {"path": found[libc]["resolved"], "version": version},
            "modules": {m.name: found[f"m{i}"]["resolved"] for i, m in enumerate(modules)},
            "step": read["step"],
        }
    }
    return pinned, version, described


def standin_inputs(src: StandinSource, ctx: Context, task: str, work: Path) -> tuple[ramdisk.Inputs, dict[str, Any]]:
    """Compile each stand-in module from its source (sha256 checked) in the builder image; the files and their
    provenance (each module's source, its sha256, the gcc words and the step)."""
    for m in src.modules:
        got = fsutil.sha256_file(STANDIN_DIR / m.source)
        if got != m.sha256:
            raise HurdxenError(
                f"{task}: {STANDIN_REL}/{m.source} changed while the plan was made (sha256 {got})", hint="run again"
            )
    outs = work / "standins"
    outs.mkdir()
    commands = "\n".join(
        " ".join(shell_word(w) for w in (f"m{i}", *m.flags, m.source)) for i, m in enumerate(src.modules)
    )
    step = Step(
        name=task,
        script=STANDIN_SCRIPT,
        image=ctx.image_tag(src.image),
        mounts=(Mount(STANDIN_DIR, "SRC", "/in/standins"), Mount(outs, "OUT", "/out", writable=True)),
        env=(("COMMANDS", commands),),
    )
    ran = ctx.executor().run(step, ctx.log(task), ctx.monitor())
    pinned: dict[str, ramdisk.PinnedFile] = {}
    for i, m in enumerate(src.modules):
        out = outs / f"m{i}"
        if not out.is_file():
            raise HurdxenError(f"{task}: gcc left no {m.module} from {m.source}", hint=f"see {ctx.log(task)}")
        pinned[m.module] = ramdisk.PinnedFile(out, fsutil.sha256_file(out))
    described = {
        "standin": {
            "what": "gcc-built stand-in boot modules: they prove kernel paths, they are not the Hurd",
            "modules": {
                m.module: {"described": m.described, "source": f"{STANDIN_REL}/{m.source}", "sha256": m.sha256,
                           "flags": list(m.flags)}
                for m in src.modules
            },
            "step": manifest.step_record(ran),
        }
    }  # fmt: skip
    return pinned, described
