"""`hurdxen verify-release` on hostile bundles (a download from anywhere): exit 1, the report, then one `error:` line;
nothing outside the work area touched, nothing printed raw from the bundle."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hostile.craft import Member, tar_bytes
from tests.hostile.harness import CONTROL, Canaries, one_line, run_cli

SUMS, MANIFEST, PROV = "SHA256SUMS", "manifest.json", "provenance.intoto.json"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def write_bundle(d: Path, files: dict[str, bytes] | None = None, manifest: object = None, prov: object = None) -> Path:
    """A minimal bundle the verifier accepts: files, manifest.json, provenance, SHA256SUMS, all consistent."""
    files = files if files is not None else {"kernels/gnumach.gz": b"kernel", "README.md": b"hi\n"}
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    m = manifest if manifest is not None else {"release": d.name, "files": {n: _sha(b) for n, b in files.items()}}
    mb = json.dumps(m).encode() if not isinstance(m, bytes) else m
    (d / MANIFEST).write_bytes(mb)
    subjects = {**{n: _sha(b) for n, b in files.items()}, MANIFEST: _sha(mb)}
    p = prov if prov is not None else {"subject": [{"name": n, "digest": {"sha256": h}} for n, h in subjects.items()]}
    pb = json.dumps(p).encode() if not isinstance(p, bytes) else p
    (d / PROV).write_bytes(pb)
    sums = {**subjects, PROV: _sha(pb)}
    (d / SUMS).write_text("".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))
    return d


def tarball_of(d: Path, out: Path, extra: list[Member] | None = None) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(d, arcname=d.name)
        for m in extra or []:
            info = tarfile.TarInfo(m.name)
            info.type, info.linkname = m.type, m.linkname
            info.size = len(m.data) if m.type == tarfile.REGTYPE else 0
            tar.addfile(info, __import__("io").BytesIO(m.data) if m.type == tarfile.REGTYPE else None)
    return out


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run_cli(["verify-release", "--no-kernel-check", *args], capsys)


def assert_refused(capsys: pytest.CaptureFixture[str], target: Path, words: str, *args: str) -> str:
    code, out, err = verify(capsys, str(target), *args)
    assert code == 1, out + err
    line = one_line(err)
    assert words in line, line
    assert not CONTROL.search(out), out
    return line


def test_good_bundle_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control: the crafted bundle is right, so each hostile variant below fails for its one change."""
    d = write_bundle(tmp_path / "hurdxen-1.0")
    code, out, err = verify(capsys, str(d))
    assert code == 0 and out.startswith(f"{d}: OK"), out + err
    code, out, err = verify(capsys, str(tarball_of(d, tmp_path / "hurdxen-1.0.tar.gz")))
    assert code == 0, out + err


# (id, how to spoil a good bundle directory, words of the error line)
Spoil = Callable[[Path, Canaries], None]
DIR_CASES: list[tuple[str, Spoil, str]] = [
    ("fifo-not-listed", lambda d, c: os.mkfifo(d / "fifo"), "fifo: a special file"),
    ("chardev-not-listed", lambda d, c: os.mknod(d / "null", 0o600 | 0o020000, os.makedev(1, 3)), "null: a special"),
    ("symlink-to-host", lambda d, c: os.symlink(c.file, d / "passwd"), "passwd: a symlink"),
    ("symlinked-dir", lambda d, c: os.symlink(c.dir, d / "etc"), "etc: a symlink"),
    ("extra-file", lambda d, c: (d / "evil.sh").write_text("rm -rf /"), "evil.sh: not listed"),
    ("extra-file-in-subdir", lambda d, c: (d / "kernels" / "x").write_text("x"), "kernels/x: not listed"),
    ("edited-file", lambda d, c: (d / "README.md").write_text("changed"), "README.md: sha256 mismatch"),
    ("missing-file", lambda d, c: (d / "README.md").unlink(), "README.md: listed in SHA256SUMS but missing"),
    ("sums-dotdot", lambda d, c: (d / SUMS).write_text(f"{'0' * 64}  ../../etc/passwd\n"), "SHA256SUMS: malformed"),
    ("sums-absolute", lambda d, c: (d / SUMS).write_text(f"{'0' * 64}  {c.file}\n"), "SHA256SUMS: malformed"),
    ("sums-not-utf8", lambda d, c: (d / SUMS).write_bytes(b"\xff\xfe" * 40 + b"\n"), "SHA256SUMS: malformed"),
    ("sums-huge", lambda d, c: (d / SUMS).write_bytes(b"x" * (17 << 20)), "larger than 16 MiB"),
    ("sums-is-fifo", lambda d, c: ((d / SUMS).unlink(), os.mkfifo(d / SUMS)), "SHA256SUMS is missing"),
    ("manifest-is-list", lambda d, c: _rewrite(d, manifest=[]), "manifest.json: (top level)"),
    ("manifest-is-string", lambda d, c: _rewrite(d, manifest="x"), "manifest.json: (top level)"),
    ("manifest-not-json", lambda d, c: _rewrite(d, manifest=b"{nope"), "manifest.json: not JSON"),
    ("manifest-deep", lambda d, c: _rewrite(d, manifest=b"[" * 100000 + b"]" * 100000), "manifest.json: not JSON"),
    ("manifest-files-list", lambda d, c: _rewrite(d, manifest={"release": "r", "files": []}), "manifest.json: files"),
    ("manifest-bad-hash", lambda d, c: _rewrite(d, manifest={"release": "r", "files": {"a": "X"}}), "files/a"),
    ("manifest-kernel-string", lambda d, c: _rewrite(d, kernels={"kernels/gnumach.gz": "x"}), "kernels/kernels"),
    ("manifest-release-newline", lambda d, c: _rewrite(d, release="a\nb: OK"), "manifest.json: release"),
    ("provenance-is-list", lambda d, c: _rewrite(d, prov=[]), "provenance.intoto.json: (top level)"),
    ("provenance-subject-str", lambda d, c: _rewrite(d, prov={"subject": ["x"]}), "provenance.intoto.json: subject/0"),
    ("provenance-no-digest", lambda d, c: _rewrite(d, prov={"subject": [{"name": "x"}]}), "provenance.intoto.json"),
]


def _rewrite(d: Path, manifest: object = None, prov: object = None, **fields: object) -> None:
    """Write the bundle again with a hostile manifest or provenance (consistently listed in SHA256SUMS)."""
    files = {
        str(p.relative_to(d)): p.read_bytes()
        for p in d.rglob("*")
        if p.is_file() and p.name not in (SUMS, MANIFEST, PROV)
    }
    for p in sorted(d.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    d.rmdir()
    if fields:
        manifest = {"release": d.name, "files": {n: _sha(b) for n, b in files.items()}, **fields}
    write_bundle(d, files, manifest, prov)


@pytest.mark.parametrize(("case", "spoil", "words"), DIR_CASES, ids=[c[0] for c in DIR_CASES])
def test_hostile_bundle_directory(
    case: str, spoil: Spoil, words: str, tmp_path: Path, canary: Canaries, capsys: pytest.CaptureFixture[str]
) -> None:
    d = write_bundle(tmp_path / "hurdxen-1.0")
    spoil(d, canary)
    assert_refused(capsys, d, words)


def test_escape_sequences_in_names_are_not_printed_raw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file named `x\\n  ok: fake` (and an ESC) would forge a report line: printed escaped."""
    d = write_bundle(tmp_path / "hurdxen-1.0")
    (d / "x\n  ok: fake: all good\x1b[2K").write_text("x")
    code, out, err = verify(capsys, str(d))
    assert code == 1 and not any(ln.startswith("  ok: fake") for ln in out.splitlines())
    assert "\x1b" not in out + err
    assert "\\n  ok: fake" in out
    one_line(err)


def test_bidi_override_in_a_name_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """U+202E reverses what a terminal shows ("evil\u202etxt.sh" reads as "evilhs.txt"): printed as an escape."""
    d = write_bundle(tmp_path / "hurdxen-1.0")
    (d / "evil\u202etxt.sh").write_text("x")
    code, out, err = verify(capsys, str(d))
    assert code == 1 and "\u202e" not in out + err and "\\u202e" in out
    one_line(err)


def test_missing_keyring_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_bundle(tmp_path / "hurdxen-1.0")
    (d / "SHA256SUMS.asc").write_text("-----BEGIN PGP SIGNATURE-----\n")
    assert_refused(capsys, d, "does not exist", "--keyring", str(tmp_path / "no-such-key.asc"))


def test_signature_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_bundle(tmp_path / "hurdxen-1.0")
    key = tmp_path / "key.asc"
    key.write_text("not a key")
    (tmp_path / "sigdir").mkdir()
    assert_refused(capsys, d, "", "--keyring", str(key), "--signature", str(tmp_path / "sigdir"))


def test_target_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(capsys, tmp_path / "nope", "does not exist")


# ------------------------------------------------------------------------------------------------ tarballs


TAR_CASES: list[tuple[str, Callable[[Canaries], list[Member]], str]] = [
    ("dot-member-only", lambda c: [Member(".", type=tarfile.DIRTYPE)], "top-level"),
    ("hardlink-to-host", lambda c: [Member("hurdxen-1.0/x", type=tarfile.LNKTYPE, linkname=str(c.file))], "hardlink"),
    ("symlink-member", lambda c: [Member("hurdxen-1.0/l", type=tarfile.SYMTYPE, linkname="README.md")], "only files"),
    ("fifo-member", lambda c: [Member("hurdxen-1.0/f", type=tarfile.FIFOTYPE)], "FIFO"),
    ("second-top-dir", lambda c: [Member("other/x", b"x")], "top-level"),
    ("traversal-member", lambda c: [Member("hurdxen-1.0/../../x", b"x")], "`..`"),
]


@pytest.mark.parametrize(("case", "extra", "words"), TAR_CASES, ids=[c[0] for c in TAR_CASES])
def test_hostile_bundle_tarball(
    case: str,
    extra: Callable[[Canaries], list[Member]],
    words: str,
    tmp_path: Path,
    canary: Canaries,
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = write_bundle(tmp_path / "src" / "hurdxen-1.0")
    if case == "dot-member-only":
        t = tmp_path / "hurdxen-1.0.tar.gz"
        t.write_bytes(tar_bytes(extra(canary), "w:gz"))
    else:
        t = tarball_of(d, tmp_path / "hurdxen-1.0.tar.gz", extra(canary))
    assert_refused(capsys, t, words)


def test_gzip_bomb_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """1.5 GiB of zeros in a bundle of a few MB: refused at the member header, not written out to the disk limit."""
    info = tarfile.TarInfo("hurdxen-1.0/zeros")
    info.size = 3 << 29
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    t = tmp_path / "hurdxen-1.0.tar.gz"
    t.write_bytes(z.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + z.compress(bytes(4 << 20)) + z.flush())
    assert_refused(capsys, t, "unpacked size")


def test_outer_sums_differ_from_inner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_bundle(tmp_path / "src" / "hurdxen-1.0")
    t = tarball_of(d, tmp_path / "hurdxen-1.0.tar.gz")
    (tmp_path / SUMS).write_text(f"{'0' * 64}  README.md\n")
    assert_refused(capsys, t, "differs from the SHA256SUMS inside")
