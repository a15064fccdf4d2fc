"""debindex against a real signed archive (tests/aptrepo.py): signatures, index checksums, package lookup."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from aptrepo import AptRepo

from hurdxen.core.errors import HurdxenError
from hurdxen.sources.debindex import (
    PackageEntry,
    find_package,
    parse_release,
    release_checksum,
    verify_deb,
    verify_index,
    verify_inrelease,
)


@pytest.fixture
def repo(apt_repo: AptRepo) -> AptRepo:
    apt_repo.add_deb("hurd", "1:0.9.git20250801-1", "hurd-i386", {"hurd/ext2fs.static": b"E"})
    apt_repo.add_deb("libc0.3", "2.41-6", "hurd-i386", {"lib/ld.so.1": b"L"})
    apt_repo.add_deb("hurd-doc", "1:0.9.git20250801-1", "all", {"usr/share/doc/hurd-doc/x": b"D"})
    apt_repo.publish(suite="test", component="main", arch="hurd-i386")
    return apt_repo


def _inrelease(repo: AptRepo) -> bytes:
    return (repo.dists / "InRelease").read_bytes()


def test_good_signature_gives_release_text(repo: AptRepo) -> None:
    text = verify_inrelease(_inrelease(repo), repo.keyring_path)
    assert text.encode() == (repo.dists / "Release").read_bytes()
    rel = parse_release(text)
    assert rel.suite == "test" and rel.architectures == ("hurd-i386",) and rel.components == ("main",)
    assert set(rel.sha256) == {"main/binary-hurd-i386/Packages", "main/binary-hurd-i386/Packages.xz"}


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("other-key", "signed by a key that is not in the keyring"),
        ("expired-key", "signed by an expired key"),
        ("tampered", "bad signature (the signed text was altered)"),
        ("unsigned", "is not clearsigned"),
        ("appended", "more than one signed message or text outside it"),
    ],
)
def test_bad_signatures_refused(repo: AptRepo, breakage: str, message: str) -> None:
    match breakage:
        case "other-key":
            repo.resign_with_other_key()
        case "expired-key":
            repo.resign_with_expired_key()
        case "tampered":
            repo.tamper_inrelease()
        case "unsigned":
            repo.strip_signature()
    data = _inrelease(repo)
    if breakage == "appended":
        data += b"\nSHA256:\n 00 1 main/binary-hurd-i386/Packages\n"
    with pytest.raises(HurdxenError) as ei:
        verify_inrelease(data, repo.keyring_path)
    assert message in ei.value.message
    assert ei.value.hint


def test_missing_keyring(repo: AptRepo, tmp_path: Path) -> None:
    with pytest.raises(HurdxenError, match="does not exist"):
        verify_inrelease(_inrelease(repo), tmp_path / "nope.gpg")


@pytest.mark.parametrize("compressed", [True, False])
def test_index_checked_against_release(repo: AptRepo, compressed: bool) -> None:
    release = verify_inrelease(_inrelease(repo), repo.keyring_path)
    path = repo.index_path(compressed)
    text = verify_index(release, path, (repo.dists / path).read_bytes())
    assert "Package: libc0.3" in text
    repo.tamper_packages()
    with pytest.raises(HurdxenError, match=re.escape(f"{path}: sha256 ")):
        verify_index(release, path, (repo.dists / path).read_bytes())
    with pytest.raises(HurdxenError, match=re.escape("lists no main/binary-hurd-amd64/Packages.xz")):
        verify_index(release, "main/binary-hurd-amd64/Packages.xz", b"")
    data = (repo.dists / path).read_bytes()
    assert release_checksum(release, path) != (hashlib.sha256(data).hexdigest(), len(data))  # tampered


def test_release_without_sha256_refused() -> None:
    with pytest.raises(HurdxenError, match="has no SHA256 list"):
        parse_release("Suite: x\nMD5Sum:\n 00 1 main/binary-i386/Packages\n")


def test_find_package(repo: AptRepo) -> None:
    packages = (repo.dists / repo.index_path(False)).read_text()
    ref = find_package(packages, "libc0.3", "2.41-6", "hurd-i386")
    deb = (repo.archive / ref.filename).read_bytes()
    assert ref == PackageEntry(
        "libc0.3",
        "2.41-6",
        "hurd-i386",
        "pool/main/libc/libc0.3/libc0.3_2.41-6_hurd-i386.deb",
        hashlib.sha256(deb).hexdigest(),
        len(deb),
    )
    verify_deb(deb, ref)
    doc = find_package(packages, "hurd-doc", "1:0.9.git20250801-1", "hurd-i386")
    assert doc.architecture == "all" and doc.filename.endswith("_all.deb")
    with pytest.raises(
        HurdxenError, match=re.escape("libc0.3 2.41-7 for hurd-i386 is not in the index (versions there: 2.41-6)")
    ):
        find_package(packages, "libc0.3", "2.41-7", "hurd-i386")
    with pytest.raises(HurdxenError, match=re.escape("versions there: none")):
        find_package(packages, "libc0.3", "2.41-6", "hurd-amd64")


def test_find_package_ambiguous_or_incomplete() -> None:
    entry = "Package: a\nVersion: 1\nArchitecture: hurd-i386\nFilename: pool/a.deb\nSize: 3\nSHA256: {}\n"
    two = entry.format("aa" * 32) + "\n" + entry.format("bb" * 32)
    with pytest.raises(HurdxenError, match="has 2 different entries"):
        find_package(two, "a", "1", "hurd-i386")
    assert find_package(entry.format("AA" * 32) + "\n" + entry.format("aa" * 32), "a", "1", "hurd-i386").size == 3
    with pytest.raises(HurdxenError, match="lacks Filename, SHA256 or Size"):
        find_package("Package: a\nVersion: 1\nArchitecture: hurd-i386\nFilename: x\nSize: 1\n", "a", "1", "hurd-i386")


def test_tampered_deb_refused(repo: AptRepo) -> None:
    packages = (repo.dists / repo.index_path(False)).read_text()
    ref = find_package(packages, "hurd", "1:0.9.git20250801-1", "hurd-i386")
    path = repo.tamper_deb("hurd")
    with pytest.raises(HurdxenError, match=re.escape(f"index says {ref.sha256} ({ref.size} bytes)")):
        verify_deb(path.read_bytes(), ref)
