"""xenverify against Debian's real GNU Mach Xen kernels and against fakemach builds of every note mode."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from debian_kernels import KERNELS, fetch_kernel
from hypothesis import given
from hypothesis import strategies as st

from hurdxen.core.errors import HurdxenError
from hurdxen.xen.checks import DOM0_MISMATCH, DOMU_NOT_PAE, GRUB_NOT_PAE, PATCH, KernelExpectation
from hurdxen.xen.elf import XenNoteType
from hurdxen.xen.load import PaeMode, parse_guest_info
from hurdxen.xen.verify import (
    KernelReport,
    cli,
    inspect_kernel,
    inspect_kernel_bytes,
    render_report,
    verify_kernel,
)

REPO = Path(__file__).resolve().parents[1]
FAKEMACH = Path(__file__).resolve().parent / "fixtures" / "fakemach"


def codes(report: KernelReport, severity: str) -> set[str]:
    return {f.code for f in report.findings if f.severity == severity}


def note_values(report: KernelReport) -> dict[str, object]:
    return {n.name: n.value for n in report.notes if n.name}


# ---------------------------------------------------------------------------------------------
# Debian's kernels


@pytest.fixture(scope="module")
def debian_i386() -> Path:
    return fetch_kernel("i386-486")


@pytest.fixture(scope="module")
def debian_amd64_486() -> Path:
    return fetch_kernel("amd64-486")


@pytest.fixture(scope="module")
def debian_amd64() -> Path:
    return fetch_kernel("amd64")


def test_debian_i386_kernel_passes_lenient_with_owner_warning(debian_i386: Path) -> None:
    expect = KernelExpectation(bits=32, pae=True, strict=False)
    report = inspect_kernel(debian_i386, expect)
    assert report.gzipped and report.elf_bits == 32 and report.machine == "EM_386"
    # Measured: every note is owned by "name", so Xen reads the __xen_guest string.
    assert {n.owner for n in report.notes} == {"name"}
    assert note_values(report)["PAE_MODE"] == "yes[extended-cr3]"
    assert note_values(report)["VIRT_BASE"] == 0xC0000000
    assert note_values(report)["HYPERCALL_PAGE"] == 0xC0002000
    p = report.params
    assert p.source == "__xen_guest"
    assert (p.pae, p.virt_base, p.elf_paddr_offset, p.virt_entry) == (
        PaeMode.EXTCR3,
        0xC0000000,
        0xC0000000,
        0xC0000000,
    )
    assert p.virt_hypercall == 0xC0002000  # HYPERCALL_PAGE=0x2 is a page number above VIRT_BASE
    assert p.guest_type == "xen-3.0-x86_32p"
    assert p.guest_ver == ""  # gnumach writes GUEST_VERSION=, Xen only knows GUEST_VER=
    assert report.errors == ()
    assert codes(report, "warning") == {"note-owner", "owner-fixed-not-pae"}
    owner = next(f for f in report.findings if f.code == "note-owner")
    assert "'name'" in owner.message and owner.hint is not None and PATCH in owner.hint
    latent = next(f for f in report.findings if f.code == "owner-fixed-not-pae")
    assert "yes[extended-cr3]" in latent.message and DOM0_MISMATCH in latent.on_xen and GRUB_NOT_PAE in latent.on_xen
    assert report.params_owner_fixed is not None and report.params_owner_fixed.pae is PaeMode.NO
    warnings = verify_kernel(debian_i386, expect)
    assert {w.code for w in warnings} == {"note-owner", "owner-fixed-not-pae"}


def test_debian_i386_kernel_fails_strict(debian_i386: Path) -> None:
    with pytest.raises(HurdxenError) as exc:
        verify_kernel(debian_i386, KernelExpectation(bits=32, pae=True, strict=True))
    rendered = exc.value.render()
    assert rendered.startswith("error: kernel ") and "owned by 'name'" in rendered
    assert "+1 more" in rendered and "\n" not in rendered
    assert exc.value.hint is not None and PATCH in exc.value.hint


def test_debian_486_from_amd64_index_is_x86_64(debian_amd64_486: Path) -> None:
    report = inspect_kernel(debian_amd64_486, KernelExpectation(bits=32, pae=True))
    assert (report.elf_bits, report.machine) == (64, "EM_X86_64")
    assert codes(report, "error") == {"bits"}
    bits = report.errors[0]
    assert "64-bit x86-64" in bits.message and "'486'" in bits.message
    # As a 64-bit kernel it is consistent: linked at 0x40000000 and VIRT_BASE says so.
    as64 = inspect_kernel(debian_amd64_486, KernelExpectation(bits=64))
    assert as64.errors == ()
    assert as64.params.virt_base == as64.params.virt_kstart == 0x40000000


def test_debian_amd64_kernel_virt_base_mismatch(debian_amd64: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = inspect_kernel(debian_amd64, KernelExpectation(bits=64, strict=False))
    p = report.params
    assert p.source == "__xen_guest" and p.virt_base == 0x40000000
    assert p.virt_kstart == 0xFFFFFFFF80000000 and p.libelf_error is None  # libelf itself accepts it
    assert codes(report, "error") == {"padding"}
    padding = report.errors[0]
    assert "0x40000000" in padding.message and "segment padding too large" in padding.on_xen
    assert "Domain 0 allocation is too small" in padding.on_xen
    fixed = report.params_owner_fixed
    assert fixed is not None and fixed.virt_base == 0xFFFFFFFF80000000 and fixed.libelf_error is None
    assert "notes-vs-xen-guest" in codes(report, "info")
    assert cli([str(debian_amd64), "--bits", "64"]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "[padding]" in out


def test_debian_pins_are_the_index_entries() -> None:
    # The helper pins what the Packages indexes listed when this was written.
    assert {k.sha256 for k in KERNELS.values()} == {
        "0d31a0bae1a8c99254150fc7b7bb061671e2ad5ab636d041ca01cda20a09ddc0",
        "078fbcb8e2b13f40a4226ec02fc0e544fc84d6d6a99174b5fe183d0f8d01739a",
        "4dbb73555a559b94c7fe1368db1c53329c41ad40c726584f7f64aadc591471e5",
        "6d485985651d4f141fad1617a12d3765b2a4b5f787a66e56a7a7016587494baf",  # sid i386, for the boot tests
    }


# ---------------------------------------------------------------------------------------------
# fakemach


@dataclass(frozen=True)
class FakeBuild:
    src: Path
    build: Path
    configure_out: str

    @property
    def kernel(self) -> Path:
        return self.build / "gnumach"

    @property
    def stripped(self) -> Path:
        return self.build / "gnumach.stripped"


def _compiler_ok(bits: int) -> bool:
    probe = subprocess.run(
        ["gcc", f"-m{bits}", "-x", "c", "-c", "-o", os.devnull, "-"], input=b"int x;", capture_output=True
    )
    return probe.returncode == 0


def copy_fakemach(dest: Path) -> Path:
    shutil.copytree(FAKEMACH, dest)
    return dest


def build_fakemach(
    src: Path, build: Path, bits: int, pae: bool, notes: str, prefix_map: bool = True, mig: str = ""
) -> FakeBuild:
    if shutil.which("gcc") is None or not _compiler_ok(bits):
        pytest.skip(f"no gcc able to build {bits}-bit objects (install gcc-multilib)")
    build.mkdir(parents=True)
    cflags = "-g -O2"
    if prefix_map:
        cflags += f" -ffile-prefix-map={src}=/usr/src/gnumach -ffile-prefix-map={build}=/usr/src/gnumach/build"
    args = [
        str(src / "configure"),
        "--enable-platform=xen",
        "--enable-pae" if pae else "--disable-pae",
        f"--host={'i686-gnu' if bits == 32 else 'x86_64-gnu'}",
        "--prefix=",
        "--enable-kdb",  # unknown to the fake: ignored like gnumach's other switches
        f"--with-fake-notes={notes}",
        f"MIG={mig}",
        f"CFLAGS={cflags}",
        f"CCASFLAGS={cflags}",
    ]
    conf = subprocess.run(args, cwd=build, capture_output=True, text=True, check=True)
    subprocess.run(["make", "gnumach"], cwd=build, capture_output=True, text=True, check=True)
    return FakeBuild(src, build, conf.stdout)


@pytest.fixture(scope="module")
def fake_kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, bool, str], Path]:
    """One build per (bits, pae, notes) combination the tests judge."""
    root = tmp_path_factory.mktemp("fakemach")
    out: dict[tuple[int, bool, str], Path] = {}
    for bits, pae in ((32, True), (32, False), (64, True)):
        for notes in ("good", "name-owner", "bad-pae"):
            name = f"{bits}-{'pae' if pae else 'nopae'}-{notes}"
            src = copy_fakemach(root / f"src-{name}")
            out[(bits, pae, notes)] = build_fakemach(src, root / f"build-{name}", bits, pae, notes).stripped
    return out


def test_fake_32_pae_good_is_clean_even_strict(fake_kernels: dict[tuple[int, bool, str], Path]) -> None:
    report = inspect_kernel(fake_kernels[(32, True, "good")], KernelExpectation(bits=32, pae=True, strict=True))
    assert report.findings == ()
    assert report.verdict == "OK"
    assert {n.owner for n in report.notes} == {"Xen"} and all(n.used_by_xen for n in report.notes)
    p = report.params
    assert p.source == "notes" and p.pae is PaeMode.EXTCR3 and p.pae_text == "yes"
    assert (p.virt_base, p.virt_kstart, p.virt_entry, p.virt_hypercall) == (
        0xC0000000,
        0xC0000000,
        0xC0000000,
        0xC0002000,
    )
    assert verify_kernel(fake_kernels[(32, True, "good")], KernelExpectation(bits=32, pae=True, strict=True)) == ()


def test_fake_32_name_owner_is_like_debian(fake_kernels: dict[tuple[int, bool, str], Path]) -> None:
    kernel = fake_kernels[(32, True, "name-owner")]
    lenient = inspect_kernel(kernel, KernelExpectation(bits=32, pae=True, strict=False))
    assert lenient.params.source == "__xen_guest" and lenient.params.pae is PaeMode.EXTCR3
    assert lenient.errors == () and codes(lenient, "warning") == {"note-owner", "owner-fixed-not-pae"}
    strict = inspect_kernel(kernel, KernelExpectation(bits=32, pae=True, strict=True))
    assert codes(strict, "error") == {"note-owner", "owner-fixed-not-pae"} and strict.warnings == ()


def test_fake_32_bad_pae_note_is_read_as_no_pae(fake_kernels: dict[tuple[int, bool, str], Path]) -> None:
    # Owner fixed but PAE_MODE still "yes[extended-cr3]": Xen really uses the note, so even a prebuilt kernel fails.
    report = inspect_kernel(fake_kernels[(32, True, "bad-pae")], KernelExpectation(bits=32, pae=True, strict=False))
    assert report.params.source == "notes" and report.params.pae is PaeMode.NO
    assert report.params.guest_type == "xen-3.0-x86_32"
    assert codes(report, "error") == {"not-pae"}
    f = report.errors[0]
    assert "'yes[extended-cr3]'" in f.message
    assert DOMU_NOT_PAE in f.on_xen and DOM0_MISMATCH in f.on_xen and GRUB_NOT_PAE in f.on_xen
    assert f.hint is not None and PATCH in f.hint
    # The ignored __xen_guest string still says PAE: worth telling, not an error.
    assert "notes-vs-xen-guest" in codes(report, "info")


def test_fake_32_nopae(fake_kernels: dict[tuple[int, bool, str], Path]) -> None:
    kernel = fake_kernels[(32, False, "good")]
    wanted_pae = inspect_kernel(kernel, KernelExpectation(bits=32, pae=True))
    assert codes(wanted_pae, "error") == {"not-pae"}
    err = wanted_pae.errors[0]
    assert err.hint is not None and "xen-pae" in err.hint and DOMU_NOT_PAE in err.on_xen
    wanted_nopae = inspect_kernel(kernel, KernelExpectation(bits=32, pae=False))
    assert wanted_nopae.errors == () and codes(wanted_nopae, "warning") == {"not-pae"}
    # A PAE kernel where the non-PAE variant was expected is mislabelled.
    mislabelled = inspect_kernel(fake_kernels[(32, True, "good")], KernelExpectation(bits=32, pae=False))
    assert codes(mislabelled, "error") == {"pae-unexpected"}
    # The non-PAE note modes: name-owner covered by __xen_guest PAE=no, bad-pae only touches the PAE note.
    assert inspect_kernel(fake_kernels[(32, False, "bad-pae")], KernelExpectation(bits=32, pae=False)).errors == ()
    legacy = inspect_kernel(fake_kernels[(32, False, "name-owner")], KernelExpectation(bits=32, pae=False))
    assert legacy.params.source == "__xen_guest" and legacy.errors == ()


def test_fake_64_modes(fake_kernels: dict[tuple[int, bool, str], Path]) -> None:
    expect = KernelExpectation(bits=64, strict=True)
    for notes in ("good", "bad-pae"):  # 64-bit kernels carry no PAE_MODE note
        report = inspect_kernel(fake_kernels[(64, True, notes)], expect)
        assert report.errors == () and report.warnings == (), notes
        assert report.params.virt_base == report.params.virt_kstart == 0xFFFFFFFF80000000
        assert report.params.guest_type == "xen-3.0-x86_64"
    unpatched = inspect_kernel(fake_kernels[(64, True, "name-owner")], KernelExpectation(bits=64))
    assert codes(unpatched, "error") == {"padding"}  # what the trixie xen-amd64 kernel shows
    assert codes(unpatched, "warning") == {"note-owner"}
    with pytest.raises(HurdxenError, match="VIRT_BASE 0x40000000"):
        verify_kernel(fake_kernels[(64, True, "name-owner")], KernelExpectation(bits=64))


def test_fake_64_flagged_as_wrong_bits(fake_kernels: dict[tuple[int, bool, str], Path]) -> None:
    report = inspect_kernel(fake_kernels[(64, True, "good")], KernelExpectation(bits=32, pae=True))
    assert codes(report, "error") == {"bits"}


def test_gzip_kernel_gives_the_same_verdict(fake_kernels: dict[tuple[int, bool, str], Path]) -> None:
    raw = fake_kernels[(32, True, "bad-pae")].read_bytes()
    expect = KernelExpectation(bits=32, pae=True)
    plain = inspect_kernel_bytes(raw, expect)
    gz = inspect_kernel_bytes(gzip.compress(raw, mtime=0), expect)
    assert gz.gzipped and not plain.gzipped
    assert gz.findings == plain.findings and gz.params == plain.params and gz.sha256 != plain.sha256


def test_render_and_json(fake_kernels: dict[tuple[int, bool, str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    kernel = fake_kernels[(32, True, "name-owner")]
    report = inspect_kernel(kernel, KernelExpectation(bits=32, pae=True))
    text = render_report(report)
    assert "PAE_MODE" in text and '"yes[extended-cr3]"' in text and "Xen reads   __xen_guest" in text
    assert "verdict     OK with warnings" in text
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["effective"]["virt_base"] == "0xc0000000" and data["source"] == "__xen_guest"
    assert {f["code"] for f in data["findings"]} >= {"note-owner"}
    assert cli([str(kernel), "--bits", "32", "--pae", "yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "OK with warnings"
    assert cli([str(kernel), "--bits", "32", "--pae", "yes", "--strict"]) == 1
    assert "REFUSED" in capsys.readouterr().out


def test_not_a_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(HurdxenError, match="not an ELF file"):
        inspect_kernel(junk, KernelExpectation())
    bad_gz = tmp_path / "k.gz"
    bad_gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(HurdxenError, match="corrupt gzip"):
        inspect_kernel(bad_gz, KernelExpectation())
    assert cli([str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read kernel")


def test_fakemach_build_is_reproducible_with_prefix_maps(tmp_path: Path) -> None:
    a = build_fakemach(copy_fakemach(tmp_path / "a" / "src"), tmp_path / "a" / "build", 32, True, "good")
    b = build_fakemach(copy_fakemach(tmp_path / "b" / "src"), tmp_path / "b" / "build", 32, True, "good")
    assert a.kernel.read_bytes() == b.kernel.read_bytes()
    assert a.stripped.read_bytes() == b.stripped.read_bytes()
    # Control: without the maps the source path leaks in, so the comparison above means something.
    c = build_fakemach(copy_fakemach(tmp_path / "c" / "src"), tmp_path / "c" / "build", 32, True, "good", False)
    d = build_fakemach(copy_fakemach(tmp_path / "d" / "src"), tmp_path / "d" / "build", 32, True, "good", False)
    assert c.kernel.read_bytes() != d.kernel.read_bytes()
    assert str(tmp_path / "c" / "src").encode() in c.kernel.read_bytes()


def test_fakemach_first_configure_rewrites_makefile_in(tmp_path: Path) -> None:
    src = copy_fakemach(tmp_path / "src")
    pristine = (src / "Makefile.in").read_bytes()
    build_fakemach(src, tmp_path / "b1", 32, True, "good")
    once = (src / "Makefile.in").read_bytes()
    assert once != pristine and once.endswith(pristine)
    build_fakemach(src, tmp_path / "b2", 32, True, "good")
    assert (src / "Makefile.in").read_bytes() == once  # only the first configure writes


def test_fakemach_needs_a_writable_source(tmp_path: Path) -> None:
    src = copy_fakemach(tmp_path / "src")
    if os.geteuid() == 0:
        # root ignores permissions: block the rewrite with a directory where configure writes its temp file.
        (src / "Makefile.in.tmp").mkdir()
    else:
        src.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(subprocess.CalledProcessError) as exc:
            build_fakemach(src, tmp_path / "build", 32, True, "good")
        assert "writable copy" in str(exc.value.stderr)
    finally:
        src.chmod(0o755)


def test_fakemach_runs_mig_and_rejects_other_platforms(tmp_path: Path) -> None:
    log = tmp_path / "mig.log"
    mig = tmp_path / "fake-mig"
    mig.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >> {log}\n")
    mig.chmod(0o755)
    build = build_fakemach(copy_fakemach(tmp_path / "src"), tmp_path / "build", 64, True, "good", mig=str(mig))
    assert f"MIG={mig}" in build.configure_out
    assert log.read_text().split() == ["-n", "-server", "/dev/null", "-user", "/dev/null", f"{build.src}/tiny.defs"]
    # MIG left empty: the step is skipped and the kernel still builds.
    quiet = build_fakemach(copy_fakemach(tmp_path / "src2"), tmp_path / "build2", 64, True, "good", mig="")
    assert quiet.stripped.is_file() and "MIG=(none)" in quiet.configure_out
    (tmp_path / "b3").mkdir()
    refused = subprocess.run(
        [str(build.src / "configure"), "--enable-platform=at", "--host=i686-gnu"],
        cwd=tmp_path / "b3",
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "--enable-platform=xen" in refused.stderr


@pytest.mark.skipif(shutil.which("x86_64-gnu-mig") is None, reason="mig-x86-64-gnu not installed")
def test_fakemach_with_real_mig(tmp_path: Path) -> None:
    build = build_fakemach(copy_fakemach(tmp_path / "src"), tmp_path / "build", 64, True, "good", mig="x86_64-gnu-mig")
    assert (build.build / "mig-stamp").is_file()


# ---------------------------------------------------------------------------------------------
# the __xen_guest tokenizer


def test_guest_info_tokenizer_matches_libelf_limits() -> None:
    assert parse_guest_info(b"GUEST_OS=linux,PAE=yes[extended-cr3],LOADER=generic") == [
        ("GUEST_OS", "linux"),
        ("PAE", "yes[extended-cr3]"),
        ("LOADER", "generic"),
    ]
    # libelf keeps 127 value bytes; the rest is read as the next name.
    long_value = parse_guest_info(b"X=" + b"v" * 130 + b",Y=1")
    assert long_value[0] == ("X", "v" * 127) and long_value[1] == ("vvv", "") and long_value[2] == ("Y", "1")
    assert parse_guest_info(b"FLAG,K=V") == [("FLAG", ""), ("K", "V")]


@given(
    st.lists(
        st.tuples(
            st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=30),
            st.text(alphabet="0123456789abcdefx[]-|!", max_size=126),
        ),
        max_size=8,
    )
)
def test_guest_info_round_trip(pairs: list[tuple[str, str]]) -> None:
    text = ",".join(f"{k}={v}" for k, v in pairs).encode()
    assert parse_guest_info(text) == pairs


def test_xen_guest_pae_and_hypercall_semantics(fake_kernels: dict[tuple[int, bool, str], Path]) -> None:
    # __xen_guest "PAE=yes[extended-cr3]" is extended-cr3; the same text in the PAE_MODE note is "no".
    legacy = inspect_kernel(fake_kernels[(32, True, "name-owner")], KernelExpectation())
    notes = inspect_kernel(fake_kernels[(32, True, "bad-pae")], KernelExpectation())
    assert legacy.params.pae is PaeMode.EXTCR3 and notes.params.pae is PaeMode.NO
    assert legacy.params.virt_hypercall == notes.params.virt_hypercall == 0xC0002000
    assert {int(n.type) for n in notes.notes} <= {int(t) for t in XenNoteType}
