"""pv-grub2's configuration: what an image is (platform, flavour, the kernels it boots, the Hurd's boot modules) and
the grub.cfg embedded in its memdisk, one per flavour:

- `disk`: find the guest's own `/boot/grub/grub.cfg` on its Xen disks and `configfile` it;
- `hurd`: boot gnumach and the Hurd's boot modules (ext2fs.static, ld.so) from the guest disk;
- `standalone`: gnumach and the boot modules are in the memdisk themselves.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.core.quoting import grub_text, grub_word
from hurdxen.stages.pvgrub2.elf import XEN_ARCH_I386, XEN_ARCH_I386_PAE, XEN_ARCH_I386_PAE_BIMODE, XEN_ARCH_X86_64

PREFIX = "(memdisk)/boot/grub"
CONFIG_IN_MEMDISK = "boot/grub/grub.cfg"
# A gzipped kernel (gnumach's stage writes `gzip -9n` output) is kept as .gz and read through gzio; a raw ELF is
# embedded as is, not compressed here, so the image never depends on the host's zlib.
STANDALONE_KERNEL_GZ = "boot/gnumach.gz"
STANDALONE_KERNEL_RAW = "boot/gnumach"


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


@dataclass(frozen=True)
class KernelFacts:
    """What pv-grub2 needs of a kernel, from the gnumach stage's spec (a compiled variant or a prebuilt kernel)."""

    name: str
    bits: int
    pae: bool | None  # None: 64-bit, or a 32-bit kernel whose recipe does not say (i686 defaults to PAE)

    @property
    def xen_arch(self) -> int:
        """The architecture GRUB's Xen loader would see."""
        if self.bits == 64:
            return XEN_ARCH_X86_64
        return XEN_ARCH_I386 if self.pae is False else XEN_ARCH_I386_PAE

    @property
    def describe(self) -> str:
        if self.bits == 64:
            return "a 64-bit kernel"
        return "a 32-bit non-PAE kernel" if self.pae is False else "a 32-bit PAE kernel"


@dataclass(frozen=True)
class BootModule:
    path: str  # on the guest disk (hurd) or in the memdisk (standalone)
    args: tuple[str, ...]  # the module's command line, as words


@dataclass(frozen=True)
class PvGrubImageSpec:
    name: str
    platform: str
    flavour: str
    kernels: tuple[KernelFacts, ...]
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
            "use a 32-bit PAE kernel with i386-xen"
        )
    elif arch == XEN_ARCH_X86_64:
        hint = "use platform x86_64-xen for 64-bit kernels (i386-xen is for 32-bit PAE kernels)"
    else:
        hint = "use platform i386-xen for 32-bit PAE kernels (x86_64-xen is for 64-bit kernels)"
    return msg, hint


def check_kernel_variants(spec: PvGrubImageSpec, where: str | None = None) -> None:
    """Refuse an image tied to a kernel its platform's GRUB cannot boot."""
    where = where or f"pvgrub:{spec.name}"
    platform = PLATFORMS[spec.platform]
    for k in spec.kernels:
        if k.xen_arch not in platform.accepts:
            msg, hint = incompatible_message(spec.platform, k.xen_arch, f"kernel variant {k.name} ({k.describe})")
            raise HurdxenError(f"{where}: {msg}", hint=hint)
    if spec.flavour == "standalone" and len(spec.kernels) != 1:
        names = ", ".join(k.name for k in spec.kernels)
        raise HurdxenError(
            f"{where}: a standalone image carries exactly one kernel, the recipe lists {names}",
            hint="make one standalone image per kernel variant",
        )
    if spec.flavour in ("hurd", "standalone") and not spec.boot_modules:
        raise HurdxenError(
            f"{where}: no boot modules", hint="the hurd-modules stage makes them for the kernel: list it there"
        )


def _words(words: Iterable[str]) -> str:
    return " ".join(grub_word(w) for w in words)


def _kernel_line(spec: PvGrubImageSpec, kernel: str) -> str:
    return _words(["multiboot", kernel, *spec.kernel_args, f"root={spec.root}"])


def _module_lines(spec: PvGrubImageSpec, prefix: str) -> list[str]:
    return [_words(["module", prefix + m.path, *m.args]) for m in spec.boot_modules]


def _search_line(spec: PvGrubImageSpec, target: str) -> str:
    hints = [grub_word(f"--hint={d},") for d in spec.search_disks]
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
            f"set pvgrub_cfg={grub_word(spec.config_path)}",
            "# GRUB >= 2.14 turns `xen_grub_env_*` words of the domain's extra= into variables; 2.06 ignores them.",
            'if [ -n "${xen_grub_env_cfg}" ]; then set pvgrub_cfg="${xen_grub_env_cfg}"; fi',
            _search_line(spec, '"${pvgrub_cfg}"'),
            'if [ "${root}" = memdisk ]; then',
            f'  echo "pv-grub2: no ${{pvgrub_cfg}} on {grub_text(" ".join(spec.search_disks))}"',
            "else",
            '  echo "pv-grub2: using (${root})${pvgrub_cfg}"',
            '  configfile "${pvgrub_cfg}"',
            "fi",
        ]
    elif spec.flavour == "hurd":
        body = [
            _search_line(spec, grub_word(spec.kernel_path)),
            'if [ "${root}" = memdisk ]; then',
            f'  echo "pv-grub2: no {grub_text(spec.kernel_path)} on {grub_text(" ".join(spec.search_disks))}"',
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


def disk_menu(kernel: str, kernel_args: Sequence[str], modules: Sequence[tuple[str, Sequence[str]]], title: str) -> str:
    """The grub.cfg a Hurd disk carries for the disk flavour: its kernel and boot modules, read from the disk that
    holds the menu (GRUB's `root` is already that disk when the disk flavour hands over)."""
    return "\n".join(
        [
            f"# {grub_text(title)} (generated by hurdxen; do not edit)",
            "set pager=0",
            "insmod gzio",
            _words(["multiboot", kernel, *kernel_args]),
            *(_words(["module", path, *args]) for path, args in modules),
            "boot",
            "",
        ]
    )


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
