"""Stage: the Hurd's root disk images (`rootdisk:<disk>`), made from an installed root, for the boot check and the
bundle. One container step per disk (the generic tree stage of `hurdxen.stages.toolchain.chain`): the root's tree
plus the recipe's files, translator nodes, kernel and GRUB menu → `mke2fs -o hurd -d`, the passive translators as
`gnu.translator` attributes (debugfs), every inode owned by root, `e2fsck -fn`, optionally an MBR around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.recipes import Recipes
from hurdxen.stages.pvgrub2.config import disk_menu
from hurdxen.stages.rootdisk import check
from hurdxen.stages.toolchain import chain
from hurdxen.stages.toolchain.chain import Layer, TreeResult, TreeSpec, UpstreamFile

STAGE = "rootdisk"
IMAGE = "image"  # the raw disk (what a Xen block device is given)
IMAGE_GZ = "image.gz"  # the same, gzip -9n (what the bundle carries)
GRUB_MENU = "grub.cfg"
OUTPUT_FILES = ((IMAGE, "disk.img"), (IMAGE_GZ, "disk.img.gz"), (GRUB_MENU, "grub.cfg"))
FIRST_SECTOR = 2048  # partition 1 starts 1 MiB in, as fdisk puts it

# $SYSROOT holds the installed root (the layer); the disk's tree is made in $DEST (the stage's `tree` output is
# then exactly what went into the filesystem). Values come from the recipe through the environment: FILES and
# TRANSLATORS are lines of plain words (the schema allows no blanks or shell characters in them), file texts are
# ROOTDISK_FILE_<n>.
SCRIPT = r"""
R="$DEST"
cp -a "$SYSROOT/." "$R/"
mkdir -p "$R$(dirname "$KERNEL_PATH")" "$R$(dirname "$GRUB_CONFIG")"
cp "$KERNEL" "$R$KERNEL_PATH"
printf '%s' "$GRUB_MENU" > "$R$GRUB_CONFIG"
cp "$R$GRUB_CONFIG" "$OUT/grub.cfg"
n=0
printf '%s\n' "$FILES" | while read -r path mode; do
  [ -n "$path" ] || continue
  mkdir -p "$R$(dirname "$path")"
  eval "printf '%s' \"\$ROOTDISK_FILE_$n\"" > "$R$path"
  chmod "$mode" "$R$path"
  n=$((n + 1))
done
printf '%s\n' "$TRANSLATORS" | while read -r node _; do
  [ -n "$node" ] || continue
  mkdir -p "$R$(dirname "$node")"
  [ -e "$R$node" ] || : > "$R$node"
done
find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
export E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH"
fs=/work/fs.img
mke2fs -q -F -o hurd -t ext2 -b "$BLOCK_SIZE" -I "$INODE_SIZE" -L "$LABEL" -U "$UUID" -E "hash_seed=$HASH_SEED" \
  -d "$R" "$fs" "${SIZE_MIB}M"
# mke2fs -d keeps the build user's uid and each file's ctime (the moment of the copy): every inode becomes root's,
# with ctime SOURCE_DATE_EPOCH (set last, after the attributes), and each translator gets its attribute.
cmds=/work/debugfs.cmds
: > "$cmds"
{ echo /; (cd "$R" && find . -mindepth 1 | LC_ALL=C sort | sed 's/^\.//'); } > /work/paths
while read -r p; do printf 'sif "%s" uid 0\nsif "%s" gid 0\n' "$p" "$p" >> "$cmds"; done < /work/paths
i=0
printf '%s\n' "$TRANSLATORS" | while read -r node args; do
  [ -n "$node" ] || continue
  # the attribute's value is the translator's argz: each word NUL-terminated
  printf '%s\0' $args > "/work/translator-$i"
  printf 'ea_set -f /work/translator-%s "%s" gnu.translator\n' "$i" "$node" >> "$cmds"
  i=$((i + 1))
done
while read -r p; do printf 'sif "%s" ctime @%s\n' "$p" "$SOURCE_DATE_EPOCH" >> "$cmds"; done < /work/paths
debugfs -w -f "$cmds" "$fs" > /work/debugfs.log 2>&1
if grep -v '^debugfs' /work/debugfs.log | grep -q .; then cat /work/debugfs.log; exit 1; fi
e2fsck -fn "$fs"
if [ -n "$PARTITION" ]; then
  # An MBR by hand (no fdisk in the image): one bootable-less Linux partition from sector FIRST_SECTOR.
  sectors=$(( $(stat -c %s "$fs") / 512 ))
  le32() {  # a 32-bit little-endian number as 4 bytes
    for s in 0 8 16 24; do printf "\\$(printf %03o $(( ($1 >> s) & 255 )))"; done
  }
  disk=/work/disk.img
  head -c 446 /dev/zero > "$disk"
  { printf '\000\376\377\377\203\376\377\377'; le32 "$FIRST_SECTOR"; le32 "$sectors"; } >> "$disk"
  head -c 48 /dev/zero >> "$disk"
  printf '\125\252' >> "$disk"
  head -c $(( (FIRST_SECTOR - 1) * 512 )) /dev/zero >> "$disk"
  cat "$fs" >> "$disk"
  rm "$fs"
else
  disk="$fs"
fi
mv "$disk" "$OUT/disk.img"
gzip -9n -c "$OUT/disk.img" > "$OUT/disk.img.gz"
echo "rootdisk: $(stat -c %s "$OUT/disk.img") bytes, $(stat -c %s "$OUT/disk.img.gz") gzipped"
"""


def specs(recipes: Recipes, trees: Sequence[TreeSpec], kernels: Sequence[Any], modules_for: Any) -> list[TreeSpec]:
    """One spec per disk of recipes/rootdisk.toml (none without it). `modules_for(kernel)`: the hurd-modules spec
    made for a kernel (its boot modules go into the GRUB menu)."""
    if "rootdisk" not in recipes:
        return []
    r = recipes["rootdisk"]
    d = r["defaults"]
    by_task = {t.task: t for t in trees}
    out = []
    for name, disk in sorted(r["disks"].items()):
        tree = by_task.get(disk["tree"])
        if tree is None:
            raise HurdxenError(
                f"{recipes.where('rootdisk', f'disks.{name}.tree')}: no stage publishes a tree called {disk['tree']}",
                hint=f"one of: {', '.join(sorted(by_task)) or 'none (add recipes/hurd.toml)'}",
            )
        kernel = next((k for k in kernels if k.name == disk["kernel"]), None)
        if kernel is None:
            raise HurdxenError(
                f"{recipes.where('rootdisk', f'disks.{name}.kernel')}: no gnumach kernel {disk['kernel']}",
                hint=f"one of: {', '.join(k.name for k in kernels)}",
            )
        hm = modules_for(kernel.name)
        if hm is None:
            raise HurdxenError(
                f"{recipes.where('rootdisk', f'disks.{name}.kernel')}: no hurd-modules variant lists {kernel.name}",
                hint="the GRUB menu's boot modules come from the hurd-modules variant made for the disk's kernel",
            )
        menu = disk_menu(
            d["kernel_path"], (*d.get("kernel_args", ()), f"root={disk['hurd_root']}"),
            tuple((m.path, m.args) for m in hm.boot_modules()), f"the Hurd on {name}",
        )  # fmt: skip
        out.append(
            TreeSpec(
                stage_name=STAGE,
                name=name,
                description=f"the Hurd's root disk from {tree.task}, {kernel.name} on it, root={disk['hurd_root']}",
                script=SCRIPT,
                image=r.get("image", "builder"),
                layers=(Layer(tree),),
                upstream_files=(UpstreamFile("KERNEL", kernel, "kernel.gz"),),
                options=(
                    ("SIZE_MIB", str(disk.get("size_mib", d["size_mib"]))),
                    ("BLOCK_SIZE", str(d["block_size"])),
                    ("INODE_SIZE", str(d["inode_size"])),
                    ("LABEL", d["label"]),
                    ("UUID", d["uuid"]),
                    ("HASH_SEED", d["hash_seed"]),
                    ("KERNEL_PATH", d["kernel_path"]),
                    ("GRUB_CONFIG", d["grub_config"]),
                    ("GRUB_MENU", menu),
                    ("PARTITION", str(disk.get("partition", ""))),
                    ("FIRST_SECTOR", str(FIRST_SECTOR)),
                    ("TRANSLATORS", translator_lines(r.get("translators", {}))),
                    *file_options(r.get("files", {})),
                ),
                files=OUTPUT_FILES,
                facts=(("hurd_root", disk["hurd_root"]), ("kernel", kernel.task), ("hurd_modules", hm.task)),
            )
        )
    return out


def build(spec: TreeSpec, ctx: Context) -> TreeResult:
    """Entry point: the inputs checked on the host (check.before_step), then the generic tree step."""
    check.before_step(spec, ctx)
    return chain.build(spec, ctx)


def translator_lines(translators: Mapping[str, Sequence[str]]) -> str:
    return "\n".join(" ".join([node, *words]) for node, words in sorted(translators.items()))


def file_options(files: Mapping[str, Mapping[str, str]]) -> list[tuple[str, str]]:
    names = sorted(files)
    lines = "\n".join(f"{p} {files[p].get('mode', '0644')}" for p in names)
    return [("FILES", lines), *((f"ROOTDISK_FILE_{i}", files[p]["text"]) for i, p in enumerate(names))]
