"""hurd-modules: format round trips, hostile files, module checks, check --against, and the stage end to end."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aptrepo import AptRepo
from elfstandins import ElfFactory, elves
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hurdxen.core.errors import HurdxenError
from hurdxen.core.fsutil import sha256_bytes
from hurdxen.sources import debindex
from hurdxen.stages.hurd_modules.ramdisk import (
    EXEC_CMDLINE,
    EXT2FS_CMDLINE,
    VARIANTS,
    Module,
    PinnedFile,
    RamdiskResult,
    build_hurd_modules,
    build_ramdisk,
    check_module,
    default_spec,
    parse_ramdisk,
)
from hurdxen.stages.hurd_modules.tools import check_against, cli, dump

__all__ = ["elves"]  # the fixture, imported for pytest

REC = struct.Struct("<IIII")


def two_modules(elves: ElfFactory, bits: int = 32, version: str = "2.41-6") -> list[Module]:
    return [
        Module("ext2fs.static", EXT2FS_CMDLINE, elves.static(bits)),
        Module(VARIANTS[bits].ldso, EXEC_CMDLINE, elves.ldso(bits, version)),
    ]


# -- format ---------------------------------------------------------------------------------------------------------


def test_layout_matches_gnumach_bootstrap() -> None:
    mods = [Module("a", "ext2fs x", b"\x7fELF" + b"a" * 10), Module("b", "exec y", b"B" * 5000)]
    img = build_ramdisk(mods)
    # Two records + terminator, then the command lines back to back, then page-aligned modules.
    assert REC.unpack_from(img, 0) == (4096, 4096 + 14, 48, 0)
    assert REC.unpack_from(img, 16) == (8192, 8192 + 5000, 48 + 9, 0)
    assert REC.unpack_from(img, 32) == (0, 0, 0, 0)
    assert img[48:64] == b"ext2fs x\x00exec y\x00"
    assert img[4096:4110] == mods[0].data
    assert len(img) == 8192 + 5000  # no trailing padding
    assert img == build_ramdisk(mods)


def test_round_trip_defaults(elves: ElfFactory) -> None:
    mods = two_modules(elves)
    rd = parse_ramdisk(build_ramdisk(mods))
    assert [(m.cmdline, m.data) for m in rd.modules] == [(m.cmdline, m.data) for m in mods]
    assert [m.name for m in rd.modules] == ["ext2fs", "exec"]  # named as GNU Mach's boot log names them
    assert rd.warnings == ()
    # Raw lines: GRUB-style quoting must not leak in, GNU Mach expands ${…} and $(…) itself.
    assert "'" not in rd.modules[0].cmdline and "${kernel-command-line}" in rd.modules[0].cmdline


modules_st = st.lists(
    st.tuples(
        st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=300),
        st.binary(min_size=1, max_size=9000),
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=150, deadline=None)
@given(modules_st)
def test_round_trip_property(specs: list[tuple[str, bytes]]) -> None:
    mods = [Module(f"m{i}", c, d) for i, (c, d) in enumerate(specs)]
    img = build_ramdisk(mods)
    assert img == build_ramdisk(mods)
    rd = parse_ramdisk(img)
    assert [(m.cmdline, m.data) for m in rd.modules] == specs
    assert rd.warnings == ()
    assert all(r.mod_start % 4096 == 0 for r in rd.records)
    assert rd.size == len(img) == rd.records[-1].mod_end


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules_st, st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6))
def test_damaged_table_gives_clear_error_or_parses(
    specs: list[tuple[str, bytes]], edits: list[tuple[int, int]]
) -> None:
    img = bytearray(build_ramdisk([Module(f"m{i}", c, d) for i, (c, d) in enumerate(specs)]))
    for pos, value in edits:
        if pos < len(img):
            img[pos] = value
    try:
        rd = parse_ramdisk(bytes(img))
    except HurdxenError as e:
        assert e.render().startswith("error: ramdisk")
    else:
        for r in rd.records:
            assert 0 < r.mod_start < r.mod_end <= len(img)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_give_hurdxen_errors(data: bytes) -> None:
    with contextlib.suppress(HurdxenError):
        parse_ramdisk(data)


def _table(*records: tuple[int, int, int, int], terminator: bool = True) -> bytes:
    out = b"".join(REC.pack(*r) for r in records)
    return out + (REC.pack(0, 0, 0, 0) if terminator else b"")


def _page(data: bytes, at: int) -> bytes:
    return data.ljust(at, b"\x00")


HOSTILE: dict[str, tuple[bytes, str]] = {
    "empty-file": (
        b"",
        "no terminator: file ends after 0 records at offset 0",
    ),
    "truncated-table": (
        REC.pack(4096, 4100, 32, 0)[:10],
        "truncated record table: record 0 at offset 0",
    ),
    "truncated-second-record": (
        REC.pack(4096, 4100, 32, 0) + b"\x01\x02\x03",
        "truncated record table: record 1 at offset 16 needs 16 bytes, only 3 left",
    ),
    "no-modules": (
        _table(),
        "record table is empty",
    ),
    "missing-terminator": (
        _table((48, 52, 56, 0), (52, 56, 56, 0), terminator=False) + b"A" * 16 + b"\x7fELFMMMMc\x00",
        "record table has no terminator: record 3 at offset 48 runs into data at offset 48",
    ),
    "module-past-end": (
        _page(_table((4096, 9000, 32, 0)) + b"c\x00", 4096) + b"X" * 10,
        "record 0 (offset 0): module end 9000 is past the end of the file (4106 bytes)",
    ),
    "cmdline-past-end": (
        _page(_table((4096, 4100, 99999, 0)), 4096) + b"XXXX",
        "record 0 (offset 0): command line offset 99999 is past the end",
    ),
    "end-before-start": (
        _page(_table((4096, 4000, 32, 0)) + b"c\x00", 4096) + b"X" * 4,
        "module end 4000 is before its start 4096",
    ),
    "module-in-table": (
        _table((8, 40, 32, 0)) + b"c\x00" + b"x" * 40,
        "record 0 (offset 0): module starts at 8, inside the record table",
    ),
    "cmdline-in-table": (
        _page(_table((4096, 4100, 4, 0)), 4096) + b"XXXX",
        "command line offset 4 is inside the record table",
    ),
    "cmdline-unterminated": (
        _page(_table((4096, 4100, 4099, 0)), 4096) + b"XXXX",
        "record 0 (offset 0): command line at offset 4099 is not NUL-terminated",
    ),
    "overlap": (
        _page(_table((4096, 8192, 48, 0), (6000, 7000, 50, 0)) + b"a\x00b\x00", 4096) + b"M" * 4096,
        "modules overlap: record 0 [4096, 8192) and record 1 [6000, 7000)",
    ),
    "cmdline-in-module": (
        _page(_table((4096, 4200, 4100, 0)), 4096) + b"abcd\x00" + b"M" * 99,
        "record 0: command line [4100, 4101) overlaps the module of record 0",
    ),
    "empty-module": (
        _page(_table((4096, 4096, 32, 0)) + b"c\x00", 4096) + b"X",
        "module at offset 4096 is empty",
    ),
    "bad-utf8": (
        _page(_table((4096, 4100, 32, 0)) + b"\xff\xfe\x00", 4096) + b"XXXX",
        "command line at offset 32 is not UTF-8",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_give_clear_errors(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, expected = HOSTILE[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(HurdxenError) as ei:
        dump(path)
    assert expected in ei.value.message
    assert str(path) in ei.value.message  # says which file
    assert ei.value.hint
    # Through the CLI: one line on stderr, exit 1, no traceback.
    assert cli(["dump", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "(hint: " in err


def test_unaligned_module_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GNU Mach cannot use a module that starts mid-page: `ramdisk dump` exited 0 on one; now it is refused."""
    data = _table((40, 44, 32, 0)) + b"ab\x00\x00\x00\x00\x00\x00" + b"\x7fELF"
    path = tmp_path / "unaligned"
    path.write_bytes(data)
    with pytest.raises(HurdxenError, match="record 0 \\(offset 0\\): module at offset 40 is not aligned to 4096"):
        parse_ramdisk(data)
    assert cli(["dump", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "(hint: " in err and "Traceback" not in err


def test_reserved_field_is_a_warning(tmp_path: Path) -> None:
    data = _table((4096, 4100, 32, 7)) + b"ab\x00" + b"\x00" * (4096 - 35) + b"\x7fELF"
    path = tmp_path / "reserved"
    path.write_bytes(data)
    rd = parse_ramdisk(data)
    assert rd.modules[0].data == b"\x7fELF"
    assert rd.warnings == ("record 0: reserved field is 0x7, not 0",)
    assert "warning: record 0: reserved field is 0x7, not 0" in dump(path)


def test_dump_lists_everything(tmp_path: Path, elves: ElfFactory, capsys: pytest.CaptureFixture[str]) -> None:
    mods = two_modules(elves)
    path = tmp_path / "hurd-modules"
    img = build_ramdisk(mods)
    path.write_bytes(img)
    assert cli(["dump", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {sha256_bytes(img)}" in out
    assert f"sha256 {sha256_bytes(mods[1].data)}" in out
    assert f"({len(mods[0].data)} bytes)" in out
    assert EXT2FS_CMDLINE in out and EXEC_CMDLINE in out
    assert "ELF32 EM_386 ET_EXEC, no interpreter" in out
    assert "ld.so glibc version: 2.41-6" in out
    assert "warning" not in out


# -- module checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64])
def test_good_modules_pass(elves: ElfFactory, bits: int) -> None:
    v = VARIANTS[bits]
    assert check_module("ext2fs.static", "static", elves.static(bits), v, "2.41-6").interp is None
    assert check_module(v.ldso, "ld.so", elves.ldso(bits), v, "2.41-6").ldso_version == "2.41-6"


def test_ldso_version_mismatch_names_both(elves: ElfFactory) -> None:
    with pytest.raises(HurdxenError) as ei:
        check_module("ld.so.1", "ld.so", elves.ldso(32, "2.41-5"), VARIANTS[32], "2.41-6")
    assert "glibc 2.41-5" in ei.value.message and "2.41-6" in ei.value.message


def test_ext2fs_must_be_static(elves: ElfFactory) -> None:
    with pytest.raises(HurdxenError, match="dynamically linked"):
        check_module("ext2fs.static", "static", elves.dynamic(32), VARIANTS[32], "2.41-6")


@pytest.mark.parametrize(("module_bits", "variant_bits"), [(64, 32), (32, 64)])
def test_wrong_class_refused(elves: ElfFactory, module_bits: int, variant_bits: int) -> None:
    with pytest.raises(HurdxenError, match=f"is ELF{module_bits} .* needs ELF{variant_bits}"):
        check_module("ext2fs.static", "static", elves.static(module_bits), VARIANTS[variant_bits], "2.41-6")


def test_not_elf_and_no_banner(elves: ElfFactory) -> None:
    with pytest.raises(HurdxenError, match="not an ELF file"):
        check_module("x", "elf", b"#!/bin/sh\n", VARIANTS[32], "2.41-6")
    with pytest.raises(HurdxenError, match="damaged ELF"):
        check_module("x", "elf", b"\x7fELF\x01\x01\x01" + b"\xff" * 9, VARIANTS[32], "2.41-6")
    with pytest.raises(HurdxenError, match="not a dynamic loader"):
        check_module("ld.so.1", "ld.so", elves.static(32), VARIANTS[32], "2.41-6")
    no_banner = elves.ldso(32).replace(b"ld.so (Debian GLIBC ", b"xx.xx [Ubuntu GLIBC ")
    no_banner_line = "no 'ld.so (<pkgversion>) stable release version <version>.' banner"
    with pytest.raises(HurdxenError, match=re.escape(no_banner_line)):
        check_module("ld.so.1", "ld.so", no_banner, VARIANTS[32], "2.41-6")


# -- the stage ---------------------------------------------------------------------------------------------------


def _tree(root: Path, elves: ElfFactory, bits: int = 32, version: str = "2.41-6") -> tuple[Path, Path]:
    """Extracted-package-like trees: hurd (hurd/ext2fs.static) and libc0.3 (lib/ld.so.1 -> i386-gnu/ld.so.1)."""
    hurd, libc = root / "hurd", root / "libc0.3"
    (hurd / "hurd").mkdir(parents=True)
    (hurd / "hurd" / "ext2fs.static").write_bytes(elves.static(bits))
    ldso = VARIANTS[bits].ldso
    (libc / "lib" / "i386-gnu").mkdir(parents=True)
    (libc / "lib" / "i386-gnu" / ldso).write_bytes(elves.ldso(bits, version))
    (libc / "lib" / ldso).symlink_to(f"/lib/i386-gnu/{ldso}")  # absolute: must resolve inside the tree
    return hurd, libc


@pytest.mark.parametrize("bits", [32, 64])
def test_ramdisk_is_reproducible_with_its_facts(tmp_path: Path, elves: ElfFactory, bits: int) -> None:
    trees = _tree(tmp_path / "in", elves, bits)
    spec = default_spec(bits, "2.41-6")  # type: ignore[arg-type]
    a = build_hurd_modules(spec, trees, tmp_path / "a")
    b = build_hurd_modules(spec, trees, tmp_path / "b")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.facts == b.facts
    # the stage writes the one manifest: this writes the ramdisk only
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["hurd-modules"]
    man: Any = a.facts
    assert man["libc_version"] == "2.41-6" and man["bits"] == bits
    assert man["ramdisk"] == {"file": "hurd-modules", "sha256": a.sha256, "size": a.size}
    assert [m["name"] for m in man["modules"]] == ["ext2fs.static", VARIANTS[bits].ldso]
    assert man["modules"][1]["sha256"] == sha256_bytes(elves.ldso(bits))
    assert man["modules"][0]["cmdline"] == EXT2FS_CMDLINE
    assert man["modules"][0]["path"] == "hurd/ext2fs.static"
    assert str(tmp_path) not in json.dumps(a.facts)
    rd = parse_ramdisk(a.path.read_bytes())
    assert [m.data for m in rd.modules] == [elves.static(bits), elves.ldso(bits)]


def test_stage_refuses_wrong_libc_and_writes_nothing(tmp_path: Path, elves: ElfFactory) -> None:
    trees = _tree(tmp_path / "in", elves, version="2.40-1")
    out = tmp_path / "out"
    with pytest.raises(HurdxenError, match=re.escape("glibc 2.40-1, but the pinned libc0.3 version is 2.41-6")):
        build_hurd_modules(default_spec(32, "2.41-6"), trees, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "in"]  # no temp leftovers either


def test_stage_missing_module(tmp_path: Path, elves: ElfFactory) -> None:
    hurd, _ = _tree(tmp_path / "in", elves)
    with pytest.raises(HurdxenError, match=re.escape("lib/ld.so.1 is in none of the package trees")):
        build_hurd_modules(default_spec(32, "2.41-6"), [hurd], tmp_path / "out")


def test_stage_pinned_local_files(tmp_path: Path, elves: ElfFactory) -> None:
    ext2fs, ldso = tmp_path / "ext2fs.static", tmp_path / "ld.so.1"
    ext2fs.write_bytes(elves.static(32))
    ldso.write_bytes(elves.ldso(32))
    pins = {
        "ext2fs.static": PinnedFile(ext2fs, sha256_bytes(elves.static(32))),
        "ld.so.1": PinnedFile(ldso, sha256_bytes(elves.ldso(32))),
    }
    res = build_hurd_modules(default_spec(32, "2.41-6"), pins, tmp_path / "out")
    assert res.modules[1].source == str(ldso)
    bad = dict(pins, **{"ld.so.1": PinnedFile(ldso, "0" * 64)})
    with pytest.raises(HurdxenError, match=r"has sha256 [0-9a-f]{64}, pinned 0{64}"):
        build_hurd_modules(default_spec(32, "2.41-6"), bad, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# -- check --against --------------------------------------------------------------------------------------------


@pytest.fixture
def ramdisk_file(tmp_path: Path, elves: ElfFactory) -> Path:
    path = tmp_path / "hurd-modules"
    path.write_bytes(build_ramdisk(two_modules(elves)))
    return path


def _mke2fs(tree: Path, image: Path) -> Path:
    if shutil.which("mke2fs") is None or shutil.which("debugfs") is None:
        pytest.skip("e2fsprogs not installed")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-d", str(tree), str(image), "8M"], check=True)
    return image


def _hurd_root(root: Path, ldso: bytes, link: str | None = "i386-gnu/ld.so.1") -> Path:
    (root / "lib" / "i386-gnu").mkdir(parents=True)
    (root / "lib" / "i386-gnu" / "ld.so.1").write_bytes(ldso)
    if link:
        (root / "lib" / "ld.so.1").symlink_to(link)
    else:
        shutil.move(root / "lib" / "i386-gnu" / "ld.so.1", root / "lib" / "ld.so.1")
    return root


# The last link is longer than 60 bytes: a "slow" ext2 symlink, whose target debugfs reads from a data block.
LINKS = [None, "i386-gnu/ld.so.1", "/lib/i386-gnu/ld.so.1", "/lib/" + "i386-gnu/../" * 6 + "i386-gnu/ld.so.1"]


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("kind", ["dir", "image"])
def test_check_against_matching(
    tmp_path: Path,
    elves: ElfFactory,
    ramdisk_file: Path,
    link: str | None,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = _hurd_root(tmp_path / "root", elves.ldso(32), link)
    target = root if kind == "dir" else _mke2fs(root, tmp_path / "disk.img")
    assert check_against(ramdisk_file, target).startswith("ok: ramdisk ld.so (record 1, glibc 2.41-6) matches")
    assert cli(["check", str(ramdisk_file), "--against", str(target)]) == 0
    assert "ok:" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["dir", "image"])
def test_check_against_mismatch(tmp_path: Path, elves: ElfFactory, ramdisk_file: Path, kind: str) -> None:
    root = _hurd_root(tmp_path / "root", elves.ldso(32, "2.42-1"))
    target = root if kind == "dir" else _mke2fs(root, tmp_path / "disk.img")
    with pytest.raises(HurdxenError) as ei:
        check_against(ramdisk_file, target)
    assert "ramdisk ld.so is glibc 2.41-6 but /lib/ld.so.1" in ei.value.message
    assert "is glibc 2.42-1" in ei.value.message


@pytest.mark.parametrize("kind", ["dir", "image"])
def test_check_against_missing_or_dangling(tmp_path: Path, elves: ElfFactory, ramdisk_file: Path, kind: str) -> None:
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "ld.so.1").symlink_to("i386-gnu/ld.so.1")  # dangling
    target = root if kind == "dir" else _mke2fs(root, tmp_path / "disk.img")
    with pytest.raises(HurdxenError, match="i386-gnu"):
        check_against(ramdisk_file, target)


def test_check_against_symlink_loop(tmp_path: Path, ramdisk_file: Path) -> None:
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "ld.so.1").symlink_to("ld.so.1")
    for target in (root, _mke2fs(root, tmp_path / "disk.img")):
        with pytest.raises(HurdxenError, match="too many levels of symbolic links"):
            check_against(ramdisk_file, target)


def test_check_against_nonexistent(tmp_path: Path, ramdisk_file: Path) -> None:
    with pytest.raises(HurdxenError, match="does not exist"):
        check_against(ramdisk_file, tmp_path / "nope")


# -- end to end: signed apt archive → verified debs → ramdisk ---------------------------------------------------------


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        data: bytes = r.read()
    return data


def _download_and_build(
    repo: AptRepo, base: str, pins: dict[str, str], work: Path, out: Path, libc: str
) -> RamdiskResult:
    """What the pipeline does: verify InRelease → Packages → .debs, extract, build."""
    release = debindex.verify_inrelease(_fetch(f"{base}dists/test/InRelease"), repo.keyring_path)
    index = repo.index_path()
    packages = debindex.verify_index(release, index, _fetch(f"{base}dists/test/{index}"))
    trees = []
    for name, version in pins.items():
        ref = debindex.find_package(packages, name, version, "hurd-i386")
        deb = _fetch(base + ref.filename)
        debindex.verify_deb(deb, ref)
        (work / f"{name}.deb").write_bytes(deb)
        tree = work / name
        subprocess.run(["dpkg-deb", "-x", str(work / f"{name}.deb"), str(tree)], check=True)
        trees.append(tree)
    return build_hurd_modules(default_spec(32, libc), trees, out)


@pytest.fixture
def hurd_repo(apt_repo: AptRepo, elves: ElfFactory) -> AptRepo:
    apt_repo.add_deb("hurd", "1:0.9.git20250801-1", "hurd-i386", {"hurd/ext2fs.static": (elves.static(32), 0o755)})
    apt_repo.add_deb(
        "libc0.3",
        "2.41-6",
        "hurd-i386",
        {"lib/i386-gnu/ld.so.1": (elves.ldso(32, "2.41-6"), 0o755), "lib/ld.so.1": "i386-gnu/ld.so.1"},
    )
    apt_repo.publish(suite="test", component="main", arch="hurd-i386")
    return apt_repo


PINS = {"hurd": "1:0.9.git20250801-1", "libc0.3": "2.41-6"}


def test_e2e_signed_repo_to_ramdisk(tmp_path: Path, hurd_repo: AptRepo, elves: ElfFactory) -> None:
    out = tmp_path / "out"
    res = _download_and_build(hurd_repo, hurd_repo.serve(), PINS, tmp_path, out, "2.41-6")
    rd = parse_ramdisk((out / "hurd-modules").read_bytes())
    assert [m.data for m in rd.modules] == [elves.static(32), elves.ldso(32)]
    assert res.facts["libc_version"] == "2.41-6"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("other-key", "signed by a key that is not in the keyring"),
        ("tampered-inrelease", "bad signature"),
        ("unsigned", "is not clearsigned"),
        ("tampered-packages", "Release says"),
        ("tampered-deb", "index says"),
        ("wrong-libc-pin", "glibc 2.41-6, but the pinned libc0.3 version is 2.41-7"),
    ],
)
def test_e2e_refusals_write_nothing(tmp_path: Path, hurd_repo: AptRepo, breakage: str, message: str) -> None:
    base = hurd_repo.serve()
    libc = "2.41-6"
    match breakage:
        case "other-key":
            hurd_repo.resign_with_other_key()
        case "tampered-inrelease":
            hurd_repo.tamper_inrelease()
        case "unsigned":
            hurd_repo.strip_signature()
        case "tampered-packages":
            hurd_repo.tamper_packages()
        case "tampered-deb":
            hurd_repo.tamper_deb("libc0.3")
        case "wrong-libc-pin":
            libc = "2.41-7"
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    with pytest.raises(HurdxenError) as ei:
        _download_and_build(hurd_repo, base, PINS, work, out, libc)
    assert message in ei.value.message
    assert not out.exists()
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_check_against_not_an_image(tmp_path: Path, ramdisk_file: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x00" * 65536)
    if shutil.which("debugfs") is None:
        pytest.skip("e2fsprogs not installed")
    with pytest.raises(HurdxenError) as ei:
        check_against(ramdisk_file, junk)
    assert str(junk) in ei.value.message and ei.value.hint and "ext2" in ei.value.hint


def test_check_against_ramdisk_without_ldso(tmp_path: Path, elves: ElfFactory) -> None:
    path = tmp_path / "only-ext2fs"
    path.write_bytes(build_ramdisk([Module("ext2fs.static", EXT2FS_CMDLINE, elves.static(32))]))
    with pytest.raises(HurdxenError, match=re.escape("holds no ld.so")):
        check_against(path, tmp_path)


def test_stage_path_through_a_file(tmp_path: Path, elves: ElfFactory) -> None:
    hurd, _ = _tree(tmp_path / "in", elves)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "lib").write_bytes(b"not a directory")
    with pytest.raises(HurdxenError, match=re.escape("lib/ld.so.1 is in none of the package trees")):
        build_hurd_modules(default_spec(32, "2.41-6"), [hurd, odd], tmp_path / "out")


@pytest.mark.parametrize(
    ("banner", "version"),
    [
        (b"ld.so (Debian GLIBC 2.41-6) stable release version 2.41.", "2.41-6"),
        (b"ld.so (hurdxen glibc 2.43) stable release version 2.43.", "2.43"),  # the toolchain's --with-pkgversion
        (b"ld.so (GNU libc) stable release version 2.43.", "2.43"),  # a plain from-source glibc
        (b"no banner here", None),
    ],
)
def test_ldso_banner_debian_and_from_source(banner: bytes, version: str | None) -> None:
    from hurdxen.stages.hurd_modules.elf import ldso_version

    assert ldso_version(b"\x00junk\x00" + banner + b"\x00") == version
