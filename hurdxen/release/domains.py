"""Xen domain configs for the release bundle (xl format; xm reads it too).

One config per kernel variant that boots directly (`kernel` = gnumach, `ramdisk` = hurd-modules) and one per
pv-grub2 image (`kernel` = the image, no ramdisk). Values come from `recipes/domains.toml` (top-level defaults,
`[kernel.<variant>]` / `[pvgrub2.<image>]` overrides), so `doit bundle domains.memory=768` works. Every generated
file is parsed back with a small xl-syntax parser and must yield exactly the values that were meant.
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from hurdxen.core.errors import HurdxenError
from hurdxen.core.quoting import XlValue, xl_value

# The Hurd wiki: no more than about 580 MB for a 32-bit GNU Mach Xen guest (its direct map ends there).
MAX_32BIT_MEMORY_MB = 580
XEN_OUI = "00:16:3e"  # Xen's own MAC prefix; the rest is derived from the domain name

DOMU_NOT_PAE = "xc_dom_compat_check: guest type xen-3.0-x86_32 not supported by xen kernel, sorry: Invalid kernel"

Vif = Literal["none", "bridge", "mac"]
Boot = Literal["direct", "pvgrub2"]


@dataclass(frozen=True)
class DomainSettings:
    """What a config is made from; the recipe's top level, then a `[kernel.X]`/`[pvgrub2.X]` table over it."""

    name_prefix: str = "hurd"
    install_dir: str = "/srv/xen"  # the bundle is unpacked here on dom0: <install_dir>/<release>/…
    memory: int = 512
    vcpus: int = 1
    disk: tuple[str, ...] = ("phy:sda4,hda,w",)
    root: str = "device:hd0"
    kernel_args: tuple[str, ...] = ()
    vif: Vif = "none"
    bridge: str = "br0"
    on_crash: str = "preserve"
    extra: str | None = None  # pv-grub2 only: the whole extra= (GRUB >= 2.14 reads xen_grub_env_* words)
    enabled: bool = True


_KEYS = {f for f in DomainSettings.__dataclass_fields__}


def _apply(base: DomainSettings, table: Mapping[str, Any]) -> DomainSettings:
    changes: dict[str, Any] = {}
    for k, v in table.items():
        if k not in _KEYS:
            continue  # sub-tables (kernel, pvgrub2) and the like; the schema already rejected unknown keys
        changes[k] = tuple(v) if isinstance(v, list) else v
    return replace(base, **changes)


def settings_for(recipe: Mapping[str, Any], kind: Boot, name: str) -> DomainSettings:
    """The settings for kernel variant / pv-grub2 image `name`: defaults, recipe top level, then its own table."""
    s = _apply(DomainSettings(), recipe)
    table = recipe.get("kernel" if kind == "direct" else "pvgrub2", {}).get(name, {})
    return _apply(s, table)


@dataclass(frozen=True)
class KernelInput:
    variant: str
    path: str  # in the bundle, e.g. kernels/gnumach-xen-pae.gz
    bits: int
    pae: bool | None


@dataclass(frozen=True)
class ModulesInput:
    variant: str
    path: str  # in the bundle, e.g. hurd-modules/hurd-modules-<variant>
    bits: int | None
    libc_version: str | None
    origin: str = ""  # where its modules came from, one line (release.inputs.modules_origin)


@dataclass(frozen=True)
class PvGrubInput:
    name: str
    path: str  # in the bundle, e.g. pvgrub2/pv-grub-i386-xen-hurd.gz
    platform: str  # i386-xen or x86_64-xen
    flavour: str  # disk, hurd or standalone


@dataclass(frozen=True)
class DiskInput:
    """A root disk of the bundle (rootdisk stage), as its manifest describes it."""

    variant: str
    path: str  # in the bundle, gzipped: rootdisk/<disk>.img.gz
    kernel: str  # the gnumach variant on it (and in its GRUB menu)
    hurd_modules: str  # the hurd-modules variant its GRUB menu's boot modules come from
    root: str  # GNU Mach's root= (device:hd0, part:1:device:hd0)
    partitioned: bool
    grub_config: str  # the GRUB menu on the disk, e.g. /boot/grub/grub.cfg
    trees: tuple[tuple[str, str, str], ...]  # (task, identity, tree sha256) of the trees it was made from
    sha256: str  # of the raw image, once unpacked

    @property
    def image(self) -> str:
        """The raw image's path in the bundle once gunzipped (Xen reads raw images only)."""
        return self.path.removesuffix(".gz")


@dataclass(frozen=True)
class DomainConfig:
    name: str
    boot: Boot
    path: str  # in the bundle, e.g. domains/hurd-xen-pae.cfg
    text: str
    values: Mapping[str, XlValue]
    warnings: tuple[str, ...]


def stable_mac(domain: str) -> str:
    """A MAC in Xen's OUI derived from the domain name: the same name gets the same address on every build."""
    d = hashlib.sha256(domain.encode()).digest()
    # Keep the first byte below 0x80 like xl's own random addresses do, so they never look like multicast ranges.
    return f"{XEN_OUI}:{d[0] & 0x7F:02x}:{d[1]:02x}:{d[2]:02x}"


def _vif(s: DomainSettings, domain: str) -> list[XlValue] | None:
    if s.vif == "none":
        return None
    if s.vif == "bridge":
        return [f"bridge={s.bridge}"]
    return [f"mac={stable_mac(domain)},bridge={s.bridge}"]


# ------------------------------------------------------------------ rendering


def _render(header: list[str], entries: list[tuple[str, XlValue, list[str]]]) -> str:
    lines = [f"# {h}" if h else "#" for h in header]
    for key, value, comments in entries:
        lines.append("")
        lines += [f"# {c}" for c in comments]
        lines.append(f"{key} = {xl_value(value)}")
    return "\n".join(lines) + "\n"


def _memory_comments(s: DomainSettings, bits: int, where: str) -> tuple[list[str], list[str]]:
    comments = ["MB of guest memory."]
    warnings: list[str] = []
    if bits == 32:
        comments.append(
            f"32-bit GNU Mach: keep this at or below about {MAX_32BIT_MEMORY_MB} MB (the Hurd wiki's advice)."
        )
        if s.memory > MAX_32BIT_MEMORY_MB:
            w = f"{where}: memory = {s.memory} MB is above ~{MAX_32BIT_MEMORY_MB} MB, too much for a 32-bit GNU Mach"
            warnings.append(w)
            comments.append(f"WARNING: {s.memory} MB is above that; the guest may fail early in the kernel.")
    return comments, warnings


DISK_COMMENTS = [
    "Xen disks are usually not partitioned: the whole disk holds the Hurd's root filesystem, root=device:hd0.",
    "On a partitioned disk gnumach needs the partition spelled out (it reads no partition table itself):",
    "root=part:2:device:hd0 for the 2nd partition. Names: hda -> hd0, hda1 -> hd0s1, xvda -> xvd0.",
    "A file image instead of a device: 'file:/srv/xen/hurd.img,hda,w'.",
]


def direct_config(
    release: str,
    kernel: KernelInput,
    modules: ModulesInput,
    s: DomainSettings,
    name: str | None = None,
    notes: tuple[str, ...] = (),
) -> DomainConfig:
    """Boot gnumach directly: kernel + hurd-modules as the ramdisk, root= on the kernel command line."""
    domain = name or f"{s.name_prefix}-{kernel.variant}"
    where = f"domains/{domain}.cfg"
    base = f"{s.install_dir.rstrip('/')}/{release}"
    mem_c, warnings = _memory_comments(s, kernel.bits, where)
    arch = "64-bit" if kernel.bits == 64 else ("32-bit PAE" if kernel.pae else "32-bit non-PAE")
    kernel_c = [f"GNU Mach {kernel.variant} ({arch}); Xen unpacks the .gz itself."]
    if kernel.bits == 32 and kernel.pae is False:
        kernel_c += [
            "Non-PAE kernels need a non-PAE hypervisor, which current Xen no longer has. On a PAE Xen, xl says:",
            f"  {DOMU_NOT_PAE}",
            "Use a PAE kernel there (GNU Mach built with --enable-pae).",
        ]
    elif kernel.bits == 32:
        kernel_c += [
            "32-bit PV guests need a hypervisor built with CONFIG_PV32=y (Debian's is not: 'Found 32-bit PV kernel,",
            "but CONFIG_PV32 missing'). On an old non-PAE hypervisor use a non-PAE kernel.",
        ]
    else:
        kernel_c += [
            "64-bit GNU Mach on Xen is experimental: with recipes/patches/gnumach it starts the Hurd's boot tasks in",
            "user mode, but their first system call fails (64-bit system calls under Xen are not done yet).",
        ]
    extra = " ".join([f"root={s.root}", *s.kernel_args])
    entries: list[tuple[str, XlValue, list[str]]] = [
        ("name", domain, []),
        ("type", "pv", []),
        ("kernel", f"{base}/{kernel.path}", kernel_c),
        (
            "ramdisk",
            f"{base}/{modules.path}",
            [
                "The Hurd's boot modules (ext2fs.static + exec via ld.so) in one file; without it gnumach stops with",
                "'bootstrap_create: No bootstrap code loaded with the kernel!'."
                + (f" libc0.3 {modules.libc_version}." if modules.libc_version else ""),
            ],
        ),
        ("extra", extra, ["The kernel command line.", *DISK_COMMENTS[:3]]),
        ("memory", s.memory, mem_c),
        ("vcpus", s.vcpus, ["GNU Mach on Xen runs one CPU."]),
        ("disk", list(s.disk), DISK_COMMENTS[3:]),
    ]
    vif = _vif(s, domain)
    if vif is not None:
        entries.append(("vif", vif, ["The MAC is derived from the domain name, so it stays the same across builds."]))
    entries.append(("on_crash", s.on_crash, ["Keep a crashed domain for `xl dmesg` / `xl console`."]))
    header = [
        f"{domain}: GNU/Hurd on Xen, direct boot ({release}; generated by hurdxen, do not edit here).",
        f"Unpack the release in {s.install_dir} on dom0, then: xl create {base}/domains/{domain}.cfg -c",
        *notes,
    ]
    return _finish(domain, "direct", where, header, entries, warnings)


PVGRUB_EXTRA = {
    "disk": "GRUB >= 2.14 turns xen_grub_env_* words into variables: extra = 'xen_grub_env_cfg=/boot/grub/x.cfg' "
    "picks another config on the guest disk; GRUB 2.06/2.12 ignore extra=.",
    "hurd": "The image boots /boot/gnumach.gz and the Hurd's modules from the guest disk; root= was set when the "
    "image was built (recipes/pvgrub2.toml). GRUB 2.06/2.12 ignore extra=.",
    "standalone": "Kernel, modules and root= are inside the image; extra= is not used.",
}


def pvgrub_config(
    release: str, image: PvGrubInput, s: DomainSettings, name: str | None = None, notes: tuple[str, ...] = ()
) -> DomainConfig:
    """Boot through a pv-grub2 image: it is the domain's kernel, GRUB loads gnumach and the modules itself."""
    domain = name or f"{s.name_prefix}-pvgrub-{image.name}"
    where = f"domains/{domain}.cfg"
    base = f"{s.install_dir.rstrip('/')}/{release}"
    bits = 64 if image.platform.startswith("x86_64") else 32
    mem_c, warnings = _memory_comments(s, bits, where)
    kernel_c = [
        f"pv-grub2 ({image.platform}, flavour {image.flavour}): GRUB is the PV kernel; no ramdisk= here.",
        "GRUB's output is on the PV console (xl console); GNU Mach's only on Xen's serial log as (dN) lines.",
    ]
    if bits == 64:
        kernel_c.append("The 64-bit image refuses 32-bit kernels: 'error: incompatible architecture: 2.'")
    else:
        kernel_c.append("A kernel with a wrong PAE note is refused: 'error: incompatible architecture: 1.'")
    entries: list[tuple[str, XlValue, list[str]]] = [
        ("name", domain, []),
        ("type", "pv", []),
        ("kernel", f"{base}/{image.path}", kernel_c),
    ]
    if s.extra:
        entries.append(("extra", s.extra, [PVGRUB_EXTRA.get(image.flavour, "")]))
    else:
        entries[-1][2].extend(["extra= is not set.", *textwrap.wrap(PVGRUB_EXTRA.get(image.flavour, ""), 110)])
    entries += [
        ("memory", s.memory, mem_c),
        ("vcpus", s.vcpus, []),
        (
            "disk",
            list(s.disk),
            ["GRUB names Xen disks (xen/xvda,msdos1) or (xen/hda); see the direct configs for root=."],
        ),
    ]
    vif = _vif(s, domain)
    if vif is not None:
        entries.append(("vif", vif, ["The MAC is derived from the domain name, so it stays the same across builds."]))
    entries.append(("on_crash", s.on_crash, []))
    header = [
        f"{domain}: GNU/Hurd on Xen through pv-grub2 ({release}; generated by hurdxen, do not edit here).",
        f"Unpack the release in {s.install_dir} on dom0, then: xl create {base}/domains/{domain}.cfg -c",
        *notes,
    ]
    return _finish(domain, "pvgrub2", where, header, entries, warnings)


def _disk_settings(release: str, disk: DiskInput, s: DomainSettings) -> tuple[DomainSettings, tuple[str, ...]]:
    """The settings with the bundle's root disk as hda, and the header lines that say how to unpack it."""
    base = f"{s.install_dir.rstrip('/')}/{release}"
    target = f"{base}/{disk.image}"
    layout = "an MBR, the filesystem as partition 1" if disk.partitioned else "the whole disk is the filesystem"
    notes = (
        f"The root disk {disk.variant} ({layout}): unpack it first, Xen reads raw images only:",
        f"  gunzip -k {base}/{disk.path}    # sha256 of {disk.image}: {disk.sha256}",
    )
    return replace(s, disk=(f"format=raw, vdev=hda, access=rw, target={target}",), root=disk.root), notes


def disk_domain(disk: DiskInput, s: DomainSettings) -> str:
    """The domain of a disk: its name, with the prefix in front unless it already starts so (hurd-i386)."""
    return disk.variant if disk.variant.startswith(f"{s.name_prefix}-") else f"{s.name_prefix}-{disk.variant}"


def disk_direct_config(
    release: str, disk: DiskInput, kernel: KernelInput, modules: ModulesInput, s: DomainSettings
) -> DomainConfig:
    """Boot the bundle's root disk directly: gnumach + hurd-modules, root= the disk's, the disk as hda."""
    ds, notes = _disk_settings(release, disk, s)
    return direct_config(release, kernel, modules, ds, disk_domain(disk, s), notes)


def disk_pvgrub_config(release: str, disk: DiskInput, image: PvGrubInput, s: DomainSettings) -> DomainConfig:
    """Boot the bundle's root disk through pv-grub2's disk flavour: GRUB finds the disk's own menu and boots it."""
    ds, notes = _disk_settings(release, disk, s)
    extra = f"xen_grub_env_cfg={disk.grub_config}" if disk.grub_config else None
    notes += (
        f"GRUB reads {disk.grub_config} from the disk: it boots the kernel and the hurd-modules {disk.hurd_modules} "
        f"boot modules on the disk, root={disk.root}.",
    )
    domain = f"{disk_domain(disk, s)}-pvgrub-{image.name}"
    return pvgrub_config(release, image, replace(ds, extra=extra), domain, notes)


def _finish(
    domain: str,
    boot: Boot,
    where: str,
    header: list[str],
    entries: list[tuple[str, XlValue, list[str]]],
    warnings: list[str],
) -> DomainConfig:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", domain):
        raise HurdxenError(f"{where}: domain name {domain!r} is not usable", hint="use letters, digits, -_. only")
    text = _render(header, [(k, v, [c for c in cs if c]) for k, v, cs in entries])
    values = {k: v for k, v, _ in entries}
    check_config(text, values, boot, where)
    return DomainConfig(domain, boot, where, text, values, tuple(warnings))


# ------------------------------------------------------------------ parsing back


_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r]+)|(?P<comment>\#[^\n]*)|(?P<nl>\n)|(?P<semi>;)|(?P<op>\+=|=)|(?P<lb>\[)|(?P<rb>\])|(?P<comma>,)
    |(?P<dq>"(?:[^"\\\n]|\\.)*")|(?P<sq>'[^'\n]*')|(?P<num>0x[0-9A-Fa-f]+|[0-9]+)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)""",
    re.VERBOSE,
)


def _tokens(text: str, where: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise HurdxenError(f"{where}:{line}: xl syntax error near {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        if kind == "nl":
            out.append(("nl", "\n", line))
            line += 1
        elif kind not in ("ws", "comment"):
            out.append((kind, m.group(), line))
        pos = m.end()
    out.append(("nl", "\n", line))
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s)


def parse_xl(text: str, where: str = "<config>") -> dict[str, XlValue]:
    """xl's config syntax: `key = value` per line (or `;`), values are quoted strings, numbers or [lists]."""
    toks = _tokens(text, where)
    i = 0
    out: dict[str, XlValue] = {}

    def value(j: int) -> tuple[XlValue, int]:
        kind, tok, line = toks[j]
        if kind == "dq":
            return _unescape(tok[1:-1]), j + 1
        if kind == "sq":
            return tok[1:-1], j + 1
        if kind == "num":
            return int(tok, 0), j + 1
        if kind == "lb":
            items: list[XlValue] = []
            j += 1
            while True:
                while toks[j][0] == "nl":
                    j += 1
                if toks[j][0] == "rb":
                    return items, j + 1
                v, j = value(j)
                items.append(v)
                while toks[j][0] == "nl":
                    j += 1
                if toks[j][0] == "comma":
                    j += 1
                elif toks[j][0] != "rb":
                    raise HurdxenError(f"{where}:{toks[j][2]}: expected ',' or ']' in a list, got {toks[j][1]!r}")
        raise HurdxenError(f"{where}:{line}: expected a value, got {tok!r}")

    while i < len(toks):
        kind, tok, line = toks[i]
        if kind in ("nl", "semi"):
            i += 1
            continue
        if kind != "id":
            raise HurdxenError(f"{where}:{line}: expected a setting name, got {tok!r}")
        if toks[i + 1][0] != "op":
            raise HurdxenError(f"{where}:{line}: expected '=' after {tok}")
        op = toks[i + 1][1]
        v, i = value(i + 2)
        if toks[i][0] not in ("nl", "semi"):
            raise HurdxenError(f"{where}:{toks[i][2]}: unexpected {toks[i][1]!r} after the value of {tok}")
        if op == "+=":
            prev = out.get(tok, [])
            if not isinstance(prev, list) or not isinstance(v, list):
                raise HurdxenError(f"{where}:{line}: += needs lists ({tok})")
            v = prev + v
        out[tok] = v
    return out


def check_config(text: str, meant: Mapping[str, XlValue], boot: Boot, where: str) -> dict[str, XlValue]:
    """Parse a generated config back; it must hold exactly the values meant and make sense as a PV Hurd guest."""
    got = parse_xl(text, where)
    if got != dict(meant):
        diff = sorted(k for k in set(got) | set(meant) if got.get(k) != meant.get(k))
        raise HurdxenError(f"{where}: parsed back differently for {', '.join(diff)}", hint="report this bug")
    for key in ("name", "kernel", "memory", "disk"):
        if key not in got:
            raise HurdxenError(f"{where}: no {key} =", hint="report this bug")
    if not isinstance(got["memory"], int) or got["memory"] <= 0:
        raise HurdxenError(f"{where}: memory must be a positive number of MB", hint="set domains.memory")
    kernel = got["kernel"]
    if not isinstance(kernel, str) or not kernel.startswith("/"):
        raise HurdxenError(f"{where}: kernel must be an absolute path", hint="domains.install_dir must start with /")
    if boot == "direct" and "ramdisk" not in got:
        raise HurdxenError(f"{where}: a direct boot needs ramdisk = hurd-modules")
    if boot == "pvgrub2" and "ramdisk" in got:
        raise HurdxenError(f"{where}: a pv-grub2 domain takes no ramdisk")
    disks = got["disk"]
    if not isinstance(disks, list) or not disks or not all(isinstance(d, str) and d.count(",") >= 1 for d in disks):
        raise HurdxenError(
            f"{where}: disk must be a list like ['phy:sda4,hda,w']", hint='set domains.disk = ["phy:DEV,hda,w"]'
        )
    extra = got.get("extra", "")
    if boot == "direct" and (not isinstance(extra, str) or not re.search(r"\broot=(device:|part:\d+:device:)", extra)):
        raise HurdxenError(
            f"{where}: extra must carry root=device:hd0 or root=part:N:device:hd0, got {extra!r}",
            hint="set domains.root",
        )
    return got
