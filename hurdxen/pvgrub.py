"""pv-grub2 images: GRUB's Xen PV ports (i386-xen, x86_64-xen) used as a guest's `kernel=` to boot GNU Mach.

Three flavours, each an embedded `boot/grub/grub.cfg` in the image's memdisk:

- `disk`: find the guest's own `/boot/grub/grub.cfg` on its Xen disks and `configfile` it;
- `hurd`: boot gnumach and the Hurd's two boot modules (ext2fs.static, ld.so) from the guest disk;
- `standalone`: gnumach and the boot modules are in the memdisk themselves.

grub-mkstandalone (GRUB 2.06) writes its memdisk tar with file mtimes and in directory-read order, so the image is
not reproducible; here the memdisk is a ustar written in Python (sorted names, owner 0, fixed modes, mtime =
SOURCE_DATE_EPOCH) and `grub-mkimage` embeds it together with only the modules the configuration needs. Everything
that runs GRUB's tools runs as one executor step (the builder image, no network).

Checks before anything is written: the recipe's kernel variants against the platform (GRUB's loader refuses
the others at boot with `error: incompatible architecture: N.`), every command of the configuration against the
embedded modules, `grub-script-check`, a standalone kernel with `grub-file`, and the image itself: ELF class and
machine, Xen notes, `grub-file --is-…-xen-…-domu`, the module count and the embedded memdisk read back.
"""

from __future__ import annotations

import hashlib
import io
import re
import shlex
import shutil
import struct
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hurdxen import elfnotes, fsutil, xenverify
from hurdxen.errors import HurdxenError
from hurdxen.executors import Executor, Mount, Step
from hurdxen.monitor import Monitor
from hurdxen.sources import DebPin

SCHEMA = "pvgrub2"
PREFIX = "(memdisk)/boot/grub"
CONFIG_IN_MEMDISK = "boot/grub/grub.cfg"
# A gzipped kernel (gnumach's stage writes `gzip -9n` output) is kept as .gz and read through gzio; a raw ELF is
# embedded as is, not compressed here, so the image never depends on the host's zlib.
STANDALONE_KERNEL_GZ = "boot/gnumach.gz"
STANDALONE_KERNEL_RAW = "boot/gnumach"
GZIP_MAGIC = b"\x1f\x8b"

# GRUB's include/grub/xen_file.h: what its Xen loader calls a kernel's architecture.
XEN_ARCH_I386 = 1  # 32-bit, no PAE
XEN_ARCH_I386_PAE = 2
XEN_ARCH_I386_PAE_BIMODE = 3
XEN_ARCH_X86_64 = 4

# Xen's public/elfnote.h
XEN_ELFNOTE_VIRT_BASE = 3
XEN_ELFNOTE_XEN_VERSION = 5
XEN_ELFNOTE_GUEST_OS = 6
XEN_ELFNOTE_LOADER = 8
XEN_ELFNOTE_PAE_MODE = 9

# GRUB's include/grub/kernel.h: objects after the kernel in the `mods` section.
OBJ_TYPE_ELF = 0
OBJ_TYPE_MEMDISK = 1
OBJ_TYPE_CONFIG = 2
OBJ_TYPE_PREFIX = 3
GRUB_MODULE_MAGIC = 0x676D696D  # "mimg"


@dataclass(frozen=True)
class Platform:
    name: str
    bits: int
    machine: str  # pyelftools' e_machine name
    accepts: tuple[int, ...]  # GRUB Xen loader architectures it boots
    grub_file_check: str  # grub-file option that checks a kernel (and the image itself) for this platform
    describe: str


PLATFORMS: Mapping[str, Platform] = {
    "i386-xen": Platform(
        "i386-xen",
        32,
        "EM_386",
        (XEN_ARCH_I386_PAE, XEN_ARCH_I386_PAE_BIMODE),
        "--is-i386-xen-pae-domu",
        "32-bit PAE PV kernels",
    ),
    "x86_64-xen": Platform(
        "x86_64-xen", 64, "EM_X86_64", (XEN_ARCH_X86_64,), "--is-x86_64-xen-domu", "64-bit PV kernels"
    ),
}


@dataclass(frozen=True)
class Variant:
    name: str
    bits: int
    xen_arch: int
    describe: str


VARIANTS: Mapping[str, Variant] = {
    "xen-pae": Variant("xen-pae", 32, XEN_ARCH_I386_PAE, "a 32-bit PAE kernel"),
    "xen-nopae": Variant("xen-nopae", 32, XEN_ARCH_I386, "a 32-bit non-PAE kernel"),
    "xen-amd64": Variant("xen-amd64", 64, XEN_ARCH_X86_64, "a 64-bit kernel"),
}

FLAVOURS = ("disk", "hurd", "standalone")

# Modules each flavour's configuration needs (dependencies are added from moddep.lst):
# memdisk+tar read the memdisk, normal runs grub.cfg, echo/test for messages and `[`, linux provides the Xen PV
# loader's `multiboot` and `module` (and `linux`), gzio for gzipped kernels, search/ext2/part_* to find files on
# the guest disk, configfile for the disk flavour's hand-over.
BASE_MODULES = ("memdisk", "tar", "normal", "echo", "test", "linux", "gzio")
FLAVOUR_MODULES: Mapping[str, tuple[str, ...]] = {
    "disk": ("search", "configfile", "part_msdos", "part_gpt", "ext2"),
    "hurd": ("search", "part_msdos", "part_gpt", "ext2"),
    "standalone": (),
}
# Commands in GRUB's kernel itself (kern/corecmd.c; commands/boot.c is in the kernel on Xen), and grub-script
# keywords: the rest must come from an embedded module (command.lst says which).
BUILTIN_COMMANDS = frozenset({"set", "unset", "ls", "insmod", "boot"})
SCRIPT_KEYWORDS = frozenset({"if", "then", "elif", "else", "fi", "for", "in", "do", "done", "while", "until", "!"})


# ---------------------------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class BootModule:
    path: str  # on the guest disk (hurd flavour) or in the memdisk (standalone)
    args: tuple[str, ...]  # the module's command line, as words


@dataclass(frozen=True)
class PvGrubImageSpec:
    name: str
    platform: str
    flavour: str
    kernels: tuple[str, ...]
    root: str
    kernel_path: str
    kernel_args: tuple[str, ...]
    boot_modules: tuple[BootModule, ...]
    modules: tuple[str, ...]  # extra modules from the recipe
    module_limit: int
    search_disks: tuple[str, ...]
    config_path: str
    extra_config: str = ""
    description: str = ""

    @property
    def identity(self) -> str:
        return fsutil.identity("pvgrub2-image", asdict(self))


@dataclass(frozen=True)
class PvGrubRecipe:
    image: str  # builder image name
    grub: DebPin
    images: tuple[PvGrubImageSpec, ...]

    def get(self, name: str) -> PvGrubImageSpec:
        for i in self.images:
            if i.name == name:
                return i
        raise HurdxenError(
            f"pvgrub2: no image named {name!r}", hint=f"recipes/pvgrub2.toml has {', '.join(self.names)}"
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.images)


def validate_recipe(data: Mapping[str, Any], shown: str = "recipes/pvgrub2.toml") -> None:
    """The same schema check every recipe gets (recipes.load has done it already for loaded recipes)."""
    from hurdxen import recipes

    recipes.validate(data, SCHEMA, shown)


def spec_from_recipe(data: Mapping[str, Any], shown: str = "recipes/pvgrub2.toml") -> PvGrubRecipe:
    """Validate recipes/pvgrub2.toml's content and resolve each image against `defaults`."""
    validate_recipe(data, shown)
    d = data["defaults"]
    for opt in ("locales", "fonts", "themes"):
        if d.get(opt):
            raise HurdxenError(
                f"{shown}: defaults.{opt} = true is not supported",
                hint=f"pv-grub2 runs on Xen's plain-text PV console: {opt} only add megabytes; set it to false",
            )
    pin = DebPin.from_recipe(data["grub"], "pvgrub2.grub")
    images = []
    seen: set[str] = set()
    for n, img in enumerate(data["images"]):
        where = f"{shown}: images[{n}] ({img['name']})"
        if img["name"] in seen:
            raise HurdxenError(f"{where}: the name is used twice", hint="give each image its own name")
        seen.add(img["name"])

        def pick(key: str, default: Any, img: Mapping[str, Any] = img) -> Any:
            return img.get(key, d.get(key, default))

        spec = PvGrubImageSpec(
            name=img["name"],
            platform=img["platform"],
            flavour=img["flavour"],
            kernels=tuple(img["kernels"]),
            root=pick("root", None),
            kernel_path=pick("kernel_path", "/boot/gnumach.gz"),
            kernel_args=tuple(pick("kernel_args", ["console=hyp0"])),
            boot_modules=tuple(BootModule(m["path"], tuple(m["args"])) for m in pick("boot_modules", [])),
            modules=tuple(dict.fromkeys([*d.get("modules", []), *img.get("modules", [])])),
            module_limit=int(pick("module_limit", 40)),
            search_disks=tuple(pick("search_disks", ["xen/xvda"])),
            config_path=pick("config_path", "/boot/grub/grub.cfg"),
            extra_config=img.get("extra_config", ""),
            description=img.get("description", ""),
        )
        check_kernel_variants(spec, where)
        images.append(spec)
    return PvGrubRecipe(str(data.get("image", "builder")), pin, tuple(images))


def fetch_grub_tree(recipe: PvGrubRecipe, cache: Any) -> Path:
    """The extracted grub-xen-bin package (verified against the suite's signed index), from `cache`
    (a hurdxen.sources.Cache); pass it as `grub_tree`."""
    from hurdxen import sources

    return sources.extract_deb(sources.fetch_deb(recipe.grub, cache), cache)


def load_recipe(path: Path) -> PvGrubRecipe:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise HurdxenError(f"{path}: not valid TOML: {e}", hint="fix the syntax at the line named") from e
    return spec_from_recipe(data, str(path))


def incompatible_message(platform: str, arch: int, what: str) -> tuple[str, str]:
    """The refusal for a kernel GRUB's Xen loader would not boot, and its hint."""
    p = PLATFORMS[platform]
    msg = (
        f"{what} cannot be booted by an {platform} pv-grub2: GRUB's {platform} Xen loader accepts only "
        f"{p.describe} and would stop at boot with `error: incompatible architecture: {arch}.`"
    )
    if arch == XEN_ARCH_I386:
        hint = (
            "no pv-grub2 boots a non-PAE 32-bit kernel (Xen runs 32-bit PV guests with PAE only): "
            "use the xen-pae kernel with i386-xen"
        )
    elif arch == XEN_ARCH_X86_64:
        hint = "use platform x86_64-xen for xen-amd64 kernels (i386-xen is for xen-pae)"
    else:
        hint = "use platform i386-xen for xen-pae kernels (x86_64-xen is for xen-amd64)"
    return msg, hint


def check_kernel_variants(spec: PvGrubImageSpec, where: str | None = None) -> None:
    """Refuse an image tied to a kernel variant its platform's GRUB cannot boot."""
    where = where or f"pvgrub:{spec.name}"
    platform = PLATFORMS[spec.platform]
    for v in spec.kernels:
        variant = VARIANTS[v]
        if variant.xen_arch not in platform.accepts:
            what = f"kernel variant {v} ({variant.describe})"
            msg, hint = incompatible_message(spec.platform, variant.xen_arch, what)
            raise HurdxenError(f"{where}: {msg}", hint=hint)
    if spec.flavour == "standalone" and len(spec.kernels) != 1:
        raise HurdxenError(
            f"{where}: a standalone image carries exactly one kernel, the recipe lists {', '.join(spec.kernels)}",
            hint="make one standalone image per kernel variant",
        )
    if spec.flavour in ("hurd", "standalone") and not spec.boot_modules:
        raise HurdxenError(f"{where}: no boot_modules", hint="the Hurd needs ext2fs.static and ld.so (see defaults)")


# ---------------------------------------------------------------------------------------------------- config

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./()-]+$")


def grub_quote(word: str) -> str:
    """Quote one word for GRUB's script parser so it reaches the command unchanged (no `$` expansion)."""
    if _SAFE_WORD.match(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _words(words: Iterable[str]) -> str:
    return " ".join(grub_quote(w) for w in words)


def _kernel_line(spec: PvGrubImageSpec, kernel: str) -> str:
    return _words(["multiboot", kernel, *spec.kernel_args, f"root={spec.root}"])


def _module_lines(spec: PvGrubImageSpec, prefix: str) -> list[str]:
    return [_words(["module", prefix + m.path, *m.args]) for m in spec.boot_modules]


def _search_line(spec: PvGrubImageSpec, target: str) -> str:
    hints = [f"--hint={d}," for d in spec.search_disks]
    # Hints first: the memdisk holds a /boot/grub/grub.cfg too and would be found by a full scan.
    return "search --no-floppy --file --set=root " + " ".join(hints) + " " + target


def render_config(spec: PvGrubImageSpec, standalone_kernel: str = STANDALONE_KERNEL_GZ) -> str:
    """The grub.cfg embedded in the image's memdisk (`standalone_kernel`: the kernel's name in the memdisk)."""
    head = [
        f"# pv-grub2 {spec.name}: {spec.platform}, flavour {spec.flavour} (generated by hurdxen; do not edit)",
        "set pager=0",
    ]
    if spec.extra_config.strip():
        head += ["# recipe: extra_config", spec.extra_config.rstrip("\n")]
    body: list[str]
    if spec.flavour == "disk":
        body = [
            f"set pvgrub_cfg={grub_quote(spec.config_path)}",
            "# GRUB >= 2.14 turns `xen_grub_env_*` words of the domain's extra= into variables; 2.06 ignores them.",
            'if [ -n "${xen_grub_env_cfg}" ]; then set pvgrub_cfg="${xen_grub_env_cfg}"; fi',
            _search_line(spec, '"${pvgrub_cfg}"'),
            'if [ "${root}" = memdisk ]; then',
            f'  echo "pv-grub2: no ${{pvgrub_cfg}} on {" ".join(spec.search_disks)}"',
            "else",
            '  echo "pv-grub2: using (${root})${pvgrub_cfg}"',
            '  configfile "${pvgrub_cfg}"',
            "fi",
        ]
    elif spec.flavour == "hurd":
        body = [
            _search_line(spec, grub_quote(spec.kernel_path)),
            'if [ "${root}" = memdisk ]; then',
            f'  echo "pv-grub2: no {spec.kernel_path} on {" ".join(spec.search_disks)}"',
            "else",
            '  echo "pv-grub2: booting GNU Mach from (${root})"',
            "  insmod gzio",
            "  " + _kernel_line(spec, spec.kernel_path),
            *("  " + line for line in _module_lines(spec, "")),
            "  boot",
            "fi",
        ]
    else:
        body = [
            "insmod gzio",
            _kernel_line(spec, "(memdisk)/" + standalone_kernel),
            *_module_lines(spec, "(memdisk)"),
            "boot",
        ]
    return "\n".join([*head, *body, 'echo "pv-grub2: boot failed"', ""])


def config_commands(text: str) -> list[str]:
    """Command names a GRUB script uses (first word of each simple command; good enough for checking)."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            lex = shlex.shlex(line, posix=True, punctuation_chars=";")
            lex.whitespace_split = True
            tokens = list(lex)
        except ValueError:
            continue  # grub-script-check reports it
        expect_cmd = True
        for t in tokens:
            if t == ";":
                expect_cmd = True
                continue
            if not expect_cmd:
                continue
            if t in SCRIPT_KEYWORDS:
                continue
            if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", t):
                expect_cmd = False  # an assignment
                continue
            out.append(t)
            expect_cmd = False
    return out


# ---------------------------------------------------------------------------------------------------- GRUB tree


def grub_platform_dir(grub_tree: Path, platform: str) -> Path:
    """Accept the extracted package root, its usr/lib/grub, or the platform directory itself."""
    for cand in (grub_tree / "usr/lib/grub" / platform, grub_tree / platform, grub_tree):
        if (cand / "kernel.img").is_file() and (cand / "moddep.lst").is_file():
            if cand == grub_tree and cand.name != platform:
                continue
            return cand
    raise HurdxenError(
        f"{grub_tree} holds no GRUB {platform} modules (kernel.img, moddep.lst)",
        hint="pass the extracted grub-xen-bin package (…/usr/lib/grub/<platform> inside it)",
    )


def read_moddep(platform_dir: Path) -> dict[str, tuple[str, ...]]:
    deps: dict[str, tuple[str, ...]] = {}
    for line in (platform_dir / "moddep.lst").read_text().splitlines():
        if ":" in line:
            name, rest = line.split(":", 1)
            deps[name.strip()] = tuple(rest.split())
    return deps


def read_command_list(platform_dir: Path) -> dict[str, str]:
    cmds: dict[str, str] = {}
    for line in (platform_dir / "command.lst").read_text().splitlines():
        if ":" in line:
            name, mod = line.split(":", 1)
            cmds[name.strip().lstrip("*")] = mod.strip()
    return cmds


def module_closure(names: Iterable[str], platform_dir: Path, where: str = "pvgrub") -> tuple[str, ...]:
    deps = read_moddep(platform_dir)
    out: set[str] = set()
    todo = list(names)
    while todo:
        m = todo.pop()
        if m in out:
            continue
        if m not in deps and not (platform_dir / f"{m}.mod").is_file():
            raise HurdxenError(
                f"{where}: GRUB module {m!r} does not exist for {platform_dir.name}",
                hint=f"the modules are the *.mod files of {platform_dir}",
            )
        out.add(m)
        todo.extend(deps.get(m, ()))
    return tuple(sorted(out))


def image_modules(spec: PvGrubImageSpec) -> tuple[str, ...]:
    """What the flavour needs plus the recipe's extras, before dependencies."""
    return tuple(dict.fromkeys([*BASE_MODULES, *FLAVOUR_MODULES[spec.flavour], *spec.modules]))


def check_commands(config: str, embedded: Iterable[str], platform_dir: Path, where: str) -> None:
    """Every command of the configuration must be built in or provided by an embedded module."""
    providers = read_command_list(platform_dir)
    have = set(embedded)
    for cmd in config_commands(config):
        if cmd in BUILTIN_COMMANDS or cmd.startswith("$"):
            continue
        mod = providers.get(cmd)
        if mod is None:
            raise HurdxenError(
                f"{where}: the configuration uses `{cmd}`, which no GRUB {platform_dir.name} module provides",
                hint="check extra_config for typos",
            )
        if mod not in have:
            raise HurdxenError(
                f"{where}: the configuration uses `{cmd}`, provided by module {mod!r}, which the image does not embed",
                hint=f"add {mod!r} to the image's `modules` in recipes/pvgrub2.toml",
            )


# ---------------------------------------------------------------------------------------------------- memdisk


@dataclass(frozen=True)
class MemdiskEntry:
    path: str
    mode: int
    size: int
    sha256: str | None  # None for directories


def build_memdisk(files: Mapping[str, bytes], source_date_epoch: int) -> tuple[bytes, tuple[MemdiskEntry, ...]]:
    """A reproducible ustar: parent directories included, names sorted, owner root (0/0), modes 0755/0644,
    every mtime SOURCE_DATE_EPOCH, no pax or GNU headers."""
    dirs: set[str] = set()
    for name in files:
        if name.startswith("/") or ".." in name.split("/") or not name:
            raise HurdxenError(f"memdisk: bad path {name!r}", hint="memdisk paths are relative, without ..")
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    entries = sorted([(d, None) for d in dirs] + [(n, b) for n, b in files.items()], key=lambda e: e[0])
    buf = io.BytesIO()
    listing = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = source_date_epoch
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                listing.append(MemdiskEntry(name + "/", 0o755, 0, None))
            else:
                info.type = tarfile.REGTYPE
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                listing.append(MemdiskEntry(name, 0o644, len(data), hashlib.sha256(data).hexdigest()))
        end = tar.offset
    # End-of-archive is two zero blocks; tarfile's padding to a 10 KiB record would only add bytes to the image.
    return buf.getvalue()[: end + 2 * tarfile.BLOCKSIZE], tuple(listing)


def memdisk_listing(tar_bytes: bytes) -> tuple[MemdiskEntry, ...]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for m in tar.getmembers():
            if m.isdir():
                out.append(MemdiskEntry(m.name.rstrip("/") + "/", m.mode, 0, None))
            else:
                f = tar.extractfile(m)
                data = f.read() if f else b""
                out.append(MemdiskEntry(m.name, m.mode, m.size, hashlib.sha256(data).hexdigest()))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------- ELF facts


@dataclass(frozen=True)
class ElfFacts:
    bits: int
    machine: str
    xen_notes: Mapping[int, bytes]  # owner "Xen" notes, type -> descriptor
    xen_guest: str | None  # the legacy __xen_guest string
    gzipped: bool

    @property
    def xen_arch(self) -> int | None:
        """The architecture GRUB's Xen loader (grub_xen_get_info) would see."""
        if self.bits == 64:
            return XEN_ARCH_X86_64 if self.machine == "EM_X86_64" else None
        pae = self.xen_notes.get(XEN_ELFNOTE_PAE_MODE)
        if pae is not None:
            mode = pae.rstrip(b"\0").decode(errors="replace")
            return {"yes": XEN_ARCH_I386_PAE, "bimodal": XEN_ARCH_I386_PAE_BIMODE}.get(mode, XEN_ARCH_I386)
        if self.xen_guest is not None:
            for item in self.xen_guest.split(","):
                if item.startswith("PAE=yes"):
                    return XEN_ARCH_I386_PAE
                if item.startswith("PAE=bimodal"):
                    return XEN_ARCH_I386_PAE_BIMODE
            return XEN_ARCH_I386
        return None


def _elf(f: Any) -> Any:
    """pyelftools' ELFFile (untyped), as Any."""
    from elftools.elf.elffile import ELFFile

    return ELFFile(f)  # type: ignore[no-untyped-call]


def _parse_notes(data: bytes, little: bool = True) -> list[tuple[str, int, bytes]]:
    """ELF notes with 4-byte alignment (Xen's, in both classes); stops at the first malformed entry."""
    out = []
    for n in elfnotes.parse_notes(data, little):
        if n.namesz > 64 or len(n.name) < n.namesz:
            break
        # grub-mkimage 2.06's i386-xen image ends inside its last note (PAE_MODE declares 12 bytes, the file holds
        # "yes\0"): keep a truncated last descriptor rather than dropping it.
        out.append((n.owner, n.type, n.desc))
    return out


def elf_facts(path: Path) -> ElfFacts:
    from elftools.common.exceptions import ELFError

    raw = path.read_bytes()
    gz = raw[:2] == GZIP_MAGIC
    if gz:
        raw = xenverify._gunzip(raw, str(path))[0]
    try:
        elf = _elf(io.BytesIO(raw))
        notes: dict[int, bytes] = {}
        blobs = [s.data() for s in elf.iter_sections() if s.name in (".xen", ".note.Xen") or s["sh_type"] == "SHT_NOTE"]
        blobs += [seg.data() for seg in elf.iter_segments() if seg["p_type"] == "PT_NOTE"]
        for blob in blobs:
            for owner, ntype, desc in _parse_notes(blob, elf.little_endian):
                if owner == "Xen":
                    notes.setdefault(ntype, desc)
        guest = elf.get_section_by_name("__xen_guest")
        guest_s = guest.data().rstrip(b"\0").decode(errors="replace") if guest is not None else None
        return ElfFacts(elf.elfclass, str(elf["e_machine"]), notes, guest_s, gz)
    except ELFError as e:
        raise HurdxenError(f"{path}: not an ELF file ({e})", hint="a Xen PV kernel is an ELF executable") from e


@dataclass(frozen=True)
class ImageObjects:
    modules: tuple[str, ...]  # names of the embedded ELF modules, in image order
    memdisk: bytes | None
    prefix: str | None
    config: bytes | None


def read_image_objects(path: Path) -> ImageObjects:
    """Walk the objects grub-mkimage appended to the kernel (its `mods` section): modules, memdisk, prefix."""
    with open(path, "rb") as f:
        elf = _elf(f)
        sec = elf.get_section_by_name("mods")
        if sec is None:
            raise HurdxenError(f"{path}: no `mods` section", hint="not an image made by grub-mkimage for Xen")
        data = sec.data()
        bits = elf.elfclass
    if bits == 64:
        magic, _pad, offset, size = struct.unpack_from("<IIQQ", data, 0)
    else:
        magic, offset, size = struct.unpack_from("<III", data, 0)
    if magic != GRUB_MODULE_MAGIC:
        raise HurdxenError(f"{path}: GRUB module area has no `mimg` magic", hint="not a grub-mkimage image")
    mods, memdisk, prefix, config = [], None, None, None
    off = offset
    while off + 8 <= size:
        otype, osize = struct.unpack_from("<II", data, off)
        if osize < 8:
            break
        payload = data[off + 8 : off + osize]
        if otype == OBJ_TYPE_ELF:
            mods.append(_module_name(payload))
        elif otype == OBJ_TYPE_MEMDISK:
            memdisk = payload
        elif otype == OBJ_TYPE_PREFIX:
            prefix = payload.split(b"\0", 1)[0].decode()
        elif otype == OBJ_TYPE_CONFIG:
            config = payload
        off += osize
    return ImageObjects(tuple(mods), memdisk, prefix, config)


def _module_name(payload: bytes) -> str:
    sec = _elf(io.BytesIO(payload)).get_section_by_name(".modname")
    return sec.data().split(b"\0", 1)[0].decode() if sec is not None else "?"


# ---------------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class PvGrubResult:
    name: str
    platform: str
    flavour: str
    image: Path  # the raw ELF image (Xen's `kernel=`)
    image_gz: Path  # the same, gzip -9n (Xen's loader also takes gzipped PV kernels)
    config_path: Path
    memdisk_path: Path
    manifest: Path
    sha256: str
    sha256_gz: str
    size: int
    size_gz: int
    config: str
    memdisk: tuple[MemdiskEntry, ...]
    modules: tuple[str, ...]  # embedded, dependencies included
    seconds: float
    checks: tuple[str, ...] = field(default=())


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


def variant_bits(variant: str) -> Literal[32, 64]:
    return 64 if VARIANTS[variant].bits == 64 else 32


def _pae(variant: str) -> bool | None:
    return {"xen-pae": True, "xen-nopae": False}.get(variant)


def _standalone_files(
    spec: PvGrubImageSpec,
    kernel_inputs: Mapping[str, Path],
    module_inputs: Mapping[str, Path],
    where: str,
    notes: list[str],
) -> tuple[dict[str, bytes], str]:
    """The memdisk's files for a standalone image (config aside) and the kernel's name among them."""
    variant = spec.kernels[0]
    kpath = kernel_inputs.get(variant)
    if kpath is None:
        raise HurdxenError(
            f"{where}: no kernel given for variant {variant}",
            hint=f"the gnumach stage for {variant} provides it (kernel_inputs[{variant!r}])",
        )
    facts = elf_facts(kpath)
    platform = PLATFORMS[spec.platform]
    arch = facts.xen_arch
    if facts.bits != platform.bits or (arch is not None and arch not in platform.accepts):
        shown_arch = arch if arch is not None else (XEN_ARCH_X86_64 if facts.bits == 64 else XEN_ARCH_I386)
        msg, _ = incompatible_message(
            spec.platform, shown_arch, f"kernel {kpath.name} (given for {variant}) is a {facts.bits}-bit ELF and"
        )
        raise HurdxenError(
            f"{where}: {msg}",
            hint=f"the file given for {variant} must be {VARIANTS[variant].describe} (kernel_inputs[{variant!r}])",
        )
    # Then Xen's own view of the kernel (notes, __xen_guest, address window): errors refuse, warnings are recorded.
    report = xenverify.inspect_kernel(kpath, xenverify.KernelExpectation(bits=variant_bits(variant), pae=_pae(variant)))
    try:
        warnings = xenverify.check_report(report)
    except HurdxenError as e:
        raise HurdxenError(f"{where}: {e.message}", hint=e.hint) from e
    notes.append(f"xenverify {report.verdict}" + (f" ({', '.join(w.code for w in warnings)})" if warnings else ""))
    kname = STANDALONE_KERNEL_GZ if facts.gzipped else STANDALONE_KERNEL_RAW
    files = {kname: kpath.read_bytes()}
    for m in spec.boot_modules:
        src = module_inputs.get(m.path)
        if src is None:
            raise HurdxenError(
                f"{where}: no file given for boot module {m.path}",
                hint="the hurd-modules stage provides ext2fs.static and ld.so (module_inputs[path])",
            )
        name = m.path.lstrip("/")
        if name in files or name == CONFIG_IN_MEMDISK:
            raise HurdxenError(f"{where}: boot module {m.path} clashes with /{name} in the memdisk")
        files[name] = src.read_bytes()
    return files, kname


def _read_rc(work: Path, name: str) -> int | None:
    p = work / f"check-{name}.rc"
    return int(p.read_text().strip()) if p.exists() else None


def build_pvgrub_image(
    image_spec: PvGrubImageSpec,
    grub_tree: Path,
    kernel_inputs: Mapping[str, Path],
    out_dir: Path,
    executor: Executor,
    image_tag: str,
    log_dir: Path,
    source_date_epoch: int,
    module_inputs: Mapping[str, Path] | None = None,
    monitor: Monitor | None = None,
) -> PvGrubResult:
    """Build one pv-grub2 image into its own `out_dir` (pv-grub-<name>, .gz, .grub.cfg, .memdisk.tar, manifest.json).

    `grub_tree` is the extracted grub-xen-bin package (or its usr/lib/grub/<platform>); `kernel_inputs` maps a
    kernel variant to its file (standalone only); `module_inputs` maps a boot module's path (/hurd/ext2fs.static)
    to its file (standalone only). Nothing in `out_dir` changes unless every check passes.
    """
    start = time.monotonic()
    spec = image_spec
    where = f"pvgrub:{spec.name}"
    check_kernel_variants(spec, where)
    platform = PLATFORMS[spec.platform]
    pdir = grub_platform_dir(Path(grub_tree), spec.platform)

    files: dict[str, bytes] = {}
    kernel_notes: list[str] = []
    kname = STANDALONE_KERNEL_GZ
    if spec.flavour == "standalone":
        files, kname = _standalone_files(spec, kernel_inputs, module_inputs or {}, where, kernel_notes)
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

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{fsutil.TMP_PREFIX}pvgrub-{spec.name}.", dir=out_dir.parent))
    try:
        work.chmod(0o755)
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
        log_path = log_dir / f"pvgrub-{spec.name}.log"
        executor.run(step, log_path, monitor)
        checks = (*kernel_notes, *_check_outputs(spec, work, config, memdisk, modules, platform, where, log_path))

        image_bytes = (work / "image.bin").read_bytes()
        gz_bytes = (work / "image.bin.gz").read_bytes()
        # One directory per image, published as a whole: the bundle takes `pv-grub-<name>.gz` and manifest.json.
        stem = f"pv-grub-{spec.name}"
        names = {
            "image": stem,
            "image_gz": f"{stem}.gz",
            "config": f"{stem}.grub.cfg",
            "memdisk": f"{stem}.memdisk.tar",
            "manifest": "manifest.json",
        }
        paths = {k: out_dir / v for k, v in names.items()}
        result = PvGrubResult(
            name=spec.name,
            platform=spec.platform,
            flavour=spec.flavour,
            image=paths["image"],
            image_gz=paths["image_gz"],
            config_path=paths["config"],
            memdisk_path=paths["memdisk"],
            manifest=paths["manifest"],
            sha256=fsutil.sha256_bytes(image_bytes),
            sha256_gz=fsutil.sha256_bytes(gz_bytes),
            size=len(image_bytes),
            size_gz=len(gz_bytes),
            config=config,
            memdisk=listing,
            modules=modules,
            seconds=time.monotonic() - start,
            checks=checks,
        )
        with fsutil.atomic_dir(out_dir) as tmp:
            fsutil.write_atomic(tmp / names["image"], image_bytes)
            fsutil.write_atomic(tmp / names["image_gz"], gz_bytes)
            fsutil.write_atomic(tmp / names["config"], config)
            fsutil.write_atomic(tmp / names["memdisk"], memdisk)
            data = _manifest(result, spec, image_tag, source_date_epoch)
            data["outputs"] = {n: fsutil.sha256_file(tmp / n) for k, n in names.items() if k != "manifest"}
            fsutil.write_json_atomic(tmp / names["manifest"], data)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


def _manifest(result: PvGrubResult, spec: PvGrubImageSpec, image_tag: str, sde: int) -> dict[str, Any]:
    return {
        "stage": "pvgrub2",
        "variant": result.name,
        "identity": spec.identity,
        "name": result.name,
        "platform": result.platform,
        "flavour": result.flavour,
        "kernels": list(spec.kernels),
        "image": {"file": result.image.name, "sha256": result.sha256, "size": result.size},
        "image_gz": {"file": result.image_gz.name, "sha256": result.sha256_gz, "size": result.size_gz},
        "modules": list(result.modules),
        "memdisk": [asdict(e) for e in result.memdisk],
        "prefix": PREFIX,
        "checks": list(result.checks),
        "builder_image": image_tag,
        "source_date_epoch": sde,
        "spec_identity": spec.identity,
    }


def build_all(
    recipe: PvGrubRecipe,
    grub_tree: Path,
    kernel_inputs: Mapping[str, Path],
    out_dir: Path,
    executor: Executor,
    image_tag: str,
    log_dir: Path,
    source_date_epoch: int,
    module_inputs: Mapping[str, Path] | None = None,
    names: Iterable[str] | None = None,
) -> list[PvGrubResult]:
    """Every image of the recipe (or those named), each into `out_dir/<name>/`."""
    wanted = list(names) if names is not None else list(recipe.names)
    results = []
    for n in wanted:
        results.append(
            build_pvgrub_image(
                recipe.get(n),
                grub_tree,
                kernel_inputs,
                out_dir / n,
                executor,
                image_tag,
                log_dir,
                source_date_epoch,
                module_inputs=module_inputs,
            )
        )
    return results
