"""Debian archive indexes: verify a suite's signed InRelease, then find a package's pinned version in it.

Pure functions (bytes in, data out); downloading and caching live in `hurdxen.sources.fetch` and `hurdxen.sources.deb`.
The chain of trust is apt's: keyring → InRelease (clearsigned) → SHA256 of the Packages index → SHA256 of the .deb.
"""

from __future__ import annotations

import bz2
import email.utils
import hashlib
import lzma
import re
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from debian import deb822

from hurdxen.core.errors import HurdxenError

_BEGIN = b"-----BEGIN PGP SIGNED MESSAGE-----"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

_SIG_BEGIN = b"-----BEGIN PGP SIGNATURE-----"
_SIG_END = b"-----END PGP SIGNATURE-----"
_BAD_STATUS = frozenset({"BADSIG", "EXPKEYSIG", "REVKEYSIG", "ERRSIG", "NO_PUBKEY", "NODATA", "EXPSIG"})


@dataclass(frozen=True)
class IndexEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Release:
    suite: str
    codename: str
    date: str
    architectures: tuple[str, ...]
    components: tuple[str, ...]
    sha256: Mapping[str, IndexEntry]
    valid_until: datetime | None = None  # absent in some archives: then the index never expires (as in apt)
    issued: datetime | None = None  # the Date field


@dataclass(frozen=True)
class Signed:
    """A verified InRelease: its signed text and who signed it."""

    text: str
    signer: str  # fingerprint of the primary key whose (sub)key made the good signature


@dataclass(frozen=True)
class PackageEntry:
    package: str
    version: str
    architecture: str  # the entry's own: the requested one, or "all"
    filename: str  # relative to the archive root, e.g. pool/main/h/hurd/hurd_…_hurd-i386.deb
    sha256: str
    size: int
    depends: str = ""  # the entry's Depends field, for the update command's consistency checks


class PackageMissing(HurdxenError):
    """The signed index does not list the pinned version (it may be in a snapshot)."""


def _check_clearsigned_shape(data: bytes, where: str) -> None:
    # As apt does: exactly one signed message and nothing outside it, so no unsigned text can ride along.
    body = data.strip()
    if not body.startswith(_BEGIN):
        raise HurdxenError(
            f"{where} is not clearsigned (does not start with {_BEGIN.decode()})",
            hint="the mirror served an unsigned or damaged InRelease",
        )
    if body.count(_BEGIN) != 1 or body.count(_SIG_BEGIN) != 1 or not body.endswith(_SIG_END):
        raise HurdxenError(
            f"{where} holds more than one signed message or text outside it",
            hint="refused as apt does: unsigned text could ride along; check the mirror",
        )


def verify_inrelease(inrelease: bytes, keyring: Path, where: str = "InRelease") -> str:
    """The signed Release text of `inrelease`, if a key of `keyring` made a good signature; else raise."""
    return verify_inrelease_signed(inrelease, keyring, where).text


def verify_inrelease_signed(inrelease: bytes, keyring: Path, where: str = "InRelease") -> Signed:
    """`verify_inrelease`, also naming the key that signed (the lock records it)."""
    if not keyring.is_file():
        raise HurdxenError(
            f"{where}: keyring {keyring} does not exist",
            hint="install debian-archive-keyring, or set the recipe's `keyring` to the archive's binary keyring",
        )
    _check_clearsigned_shape(inrelease, where)
    # A private empty homedir: gpgv must neither read nor create the user's ~/.gnupg.
    with tempfile.TemporaryDirectory(prefix="hurdxen-gpgv-") as home:
        try:
            p = subprocess.run(
                [
                    "gpgv",
                    "--homedir",
                    home,
                    "--status-fd",
                    "2",
                    "--keyring",
                    str(keyring.resolve()),
                    "--output",
                    "-",
                    "-",
                ],
                input=inrelease,
                capture_output=True,
                check=False,
            )
        except FileNotFoundError:
            raise HurdxenError("gpgv not found", hint="install gpgv") from None
    status = p.stderr.decode(errors="replace")
    tokens = {line.split()[1] for line in status.splitlines() if line.startswith("[GNUPG:] ") and len(line.split()) > 1}
    # gpgv exits 0 and reports VALIDSIG even for an expired or revoked key: like apt, require GOODSIG and no
    # bad news.
    good = {"GOODSIG", "VALIDSIG"} <= tokens and not tokens & _BAD_STATUS
    if p.returncode != 0 or not good:
        reason = _signature_problem(status)
        raise HurdxenError(
            f"{where}: signature check failed: {reason}",
            hint=f"the index is not signed by a valid key in {keyring}, or was altered; check the archive URL "
            "and the recipe's keyring",
        )
    try:
        text = p.stdout.decode()
    except UnicodeDecodeError:
        raise HurdxenError(f"{where}: signed text is not UTF-8", hint="not a Debian Release file?") from None
    # VALIDSIG <sig fpr> <date> <ts> <expire> <ver> <rsv> <pk algo> <hash algo> <class> <primary fpr>
    signer = ""
    for line in status.splitlines():
        words = line.split()
        if line.startswith("[GNUPG:] VALIDSIG") and len(words) > 2:
            signer = words[-1] if len(words) >= 12 else words[2]
    return Signed(text, signer)


def keyring_fingerprints(keyring: Path) -> tuple[str, ...]:
    """The primary key fingerprints in a binary or armoured keyring (recorded in the lock)."""
    with tempfile.TemporaryDirectory(prefix="hurdxen-gpg-") as home:
        try:
            p = subprocess.run(
                ["gpg", "--homedir", home, "--batch", "--with-colons", "--show-keys", str(keyring)],
                capture_output=True,
                check=False,
            )
        except FileNotFoundError:
            raise HurdxenError("gpg not found", hint="install gpg") from None
    out: list[str] = []
    want = False
    for line in p.stdout.decode(errors="replace").splitlines():
        f = line.split(":")
        if f[0] == "pub":
            want = True
        elif f[0] == "fpr" and want and len(f) > 9:
            out.append(f[9])
            want = False
        elif f[0] == "sub":
            want = False
    return tuple(sorted(out))


def _signature_problem(status: str) -> str:
    for token, text in (
        ("BADSIG", "bad signature (the signed text was altered)"),
        ("NO_PUBKEY", "signed by a key that is not in the keyring"),
        ("EXPKEYSIG", "signed by an expired key"),
        ("REVKEYSIG", "signed by a revoked key"),
        ("EXPSIG", "the signature has expired"),
        ("ERRSIG", "the signature could not be checked"),
        ("NODATA", "no signature found"),
    ):
        for line in status.splitlines():
            if line.startswith(f"[GNUPG:] {token}"):
                return f"{text} [{line.removeprefix('[GNUPG:] ').strip()}]"
    return "no valid signature"


def parse_release(release_text: str, where: str = "Release") -> Release:
    rel = deb822.Release(release_text)
    entries: dict[str, IndexEntry] = {}
    for item in rel.get("SHA256", []):
        try:
            entries[item["name"]] = IndexEntry(item["sha256"].lower(), int(item["size"]))
        except (KeyError, ValueError):
            raise HurdxenError(f"{where}: malformed SHA256 line {item!r}", hint="not a Debian Release file?") from None
    if not entries:
        raise HurdxenError(f"{where} has no SHA256 list", hint="archives with only MD5Sum/SHA1 are refused")
    return Release(
        suite=rel.get("Suite", ""),
        codename=rel.get("Codename", ""),
        date=rel.get("Date", ""),
        architectures=tuple(rel.get("Architectures", "").split()),
        components=tuple(rel.get("Components", "").split()),
        sha256=entries,
        valid_until=_date(rel.get("Valid-Until"), "Valid-Until", where),
        issued=_date(rel.get("Date"), "Date", where),
    )


def _date(text: str | None, field: str, where: str) -> datetime | None:
    if not text:
        return None
    try:
        d = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise HurdxenError(f"{where}: {field} {text!r} is not a date", hint="not a Debian Release file?") from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def check_fresh(release: Release, at: datetime, where: str = "Release", *, snapshot: bool = False) -> None:
    """Refuse an index that had expired at `at` (apt's Valid-Until check), or that claims to be from after `at`.

    Live resolution judges at the current time; a snapshot's index is judged at the snapshot's own time, so a
    years-old snapshot is accepted while a frozen or replayed live mirror is not."""
    when = at.strftime("%Y-%m-%d %H:%M UTC")
    if release.valid_until is not None and release.valid_until < at:
        until = release.valid_until.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise HurdxenError(
            f"{where}: the index expired at {until} (Valid-Until), judged at {when}",
            hint="the snapshot timestamp is past the index's validity; pick the snapshot that served it"
            if snapshot
            else "the mirror is stale or replays an old index (refused as apt does); use an up-to-date mirror",
        )
    if snapshot and release.issued is not None and release.issued > at:
        raise HurdxenError(
            f"{where}: the index is dated {release.issued:%Y-%m-%d %H:%M} UTC, after the snapshot time {when}",
            hint="the snapshot server served an index newer than the snapshot it claims; check the snapshot URL",
        )


# Debian's largest index (sid main amd64 Packages) is about 70 MB uncompressed: a signed index that claims more is
# refused as it is read, not after memory is gone (its hash is vouched for by the signature, its content is not).
INDEX_MAX_BYTES = 512 * 1024 * 1024


def decompress(path: str, data: bytes, limit: int = INDEX_MAX_BYTES) -> bytes:
    """`data` of an index file, uncompressed according to its name (.xz, .gz, .bz2, or none), at most `limit` bytes."""
    makers: dict[str, Callable[[], Any]] = {
        ".xz": lzma.LZMADecompressor,
        ".bz2": bz2.BZ2Decompressor,
        ".gz": lambda: zlib.decompressobj(31),
    }
    make = next((m for suffix, m in makers.items() if path.endswith(suffix)), None)
    if make is None:
        return data
    out = bytearray()
    rest = data
    try:
        while rest:  # one stream after another, as `xz -d` and `gzip -d` read concatenated ones
            d = make()
            out += d.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise HurdxenError(
                    f"{path}: uncompresses to more than {limit >> 20} MiB",
                    hint="no Debian index is that large: the mirror serves a crafted file; use another mirror",
                )
            if not d.eof:
                raise HurdxenError(f"{path}: cannot decompress (truncated)")
            rest = d.unused_data
    except (lzma.LZMAError, OSError, EOFError, ValueError, zlib.error) as e:
        raise HurdxenError(f"{path}: cannot decompress ({e})") from None
    return bytes(out)


def release_checksum(release_text: str, path: str, where: str = "Release") -> tuple[str, int]:
    """sha256 and size the signed Release lists for an index file such as `main/binary-amd64/Packages.xz`."""
    release = parse_release(release_text, where)
    entry = release.sha256.get(path)
    if entry is None:
        raise HurdxenError(
            f"{where}: the signed Release (suite {release.suite or release.codename or '?'}) lists no {path}",
            hint="check the suite, component and arch",
        )
    return entry.sha256, entry.size


def verify_index(release_text: str, index_path: str, data: bytes, where: str = "Release") -> str:
    """The text of index `index_path` (relative to dists/<suite>/, e.g. `main/binary-hurd-i386/Packages.xz`),
    after checking `data` against the Release's SHA256 list. Compressed indices are decompressed."""
    sha256, size = release_checksum(release_text, index_path, where)
    got = hashlib.sha256(data).hexdigest()
    if len(data) != size or got != sha256:
        raise HurdxenError(
            f"{index_path}: sha256 {got} ({len(data)} bytes), Release says {sha256} ({size} bytes)",
            hint="the index does not match its signed Release (mirror out of sync or tampered); fetch again",
        )
    try:
        return decompress(index_path, data).decode()
    except UnicodeDecodeError:
        raise HurdxenError(f"{index_path} is not UTF-8", hint="not a Debian Packages index?") from None


def _entry(para: Mapping[str, str], name: str, version: str, arch: str, where: str) -> PackageEntry:
    try:
        return PackageEntry(
            name,
            version,
            para["Architecture"],
            para["Filename"],
            para["SHA256"].lower(),
            int(para["Size"]),
            para.get("Depends", ""),
        )
    except (KeyError, ValueError):
        raise HurdxenError(
            f"{where}: {name} {version} ({arch}): index entry lacks Filename, SHA256 or Size",
            hint="archives without SHA256 per package are refused",
        ) from None


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_PACKAGE_FIELD = re.compile(r"^Package:[ \t]*(\S+)", re.M)
_PARSED: dict[str, PackagesIndex] = {}  # by the compressed index's sha256: a signed index is parsed once
MAX_PARSED = 8


@dataclass(frozen=True)
class PackagesIndex:
    """A Packages index split into its paragraphs by package name (one fast scan); a paragraph is parsed
    (python-debian) only when its package is asked for. A 75 MB index parsed whole once per pin took 77.5 s."""

    by_name: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, text: str) -> PackagesIndex:
        found: dict[str, list[str]] = {}
        for para in _PARAGRAPH_BREAK.split(text):
            m = _PACKAGE_FIELD.search(para)
            if m:
                found.setdefault(m.group(1), []).append(para)
        return cls({k: tuple(v) for k, v in found.items()})

    def paragraphs(self, name: str) -> Iterator[deb822.Packages]:
        for para in self.by_name.get(name, ()):
            yield deb822.Packages(para.splitlines(keepends=True))


def load_index(rel: str, data: bytes, sha256: str) -> PackagesIndex:
    """The index file `rel` (its bytes hash to `sha256`, as its signed Release says), decompressed and split once
    per process."""
    if sha256 not in _PARSED:
        if len(_PARSED) >= MAX_PARSED:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[sha256] = PackagesIndex.of(decompress(rel, data).decode(errors="replace"))
    return _PARSED[sha256]


def _index(packages: str | PackagesIndex) -> PackagesIndex:
    return packages if isinstance(packages, PackagesIndex) else PackagesIndex.of(packages)


def newest_package(packages: str | PackagesIndex, name: str, arch: str, where: str = "Packages") -> PackageEntry:
    """The entry of the highest version of `name` for `arch` (or `all`) in a Packages index."""
    from debian.debian_support import Version

    best: tuple[Version, dict[str, str]] | None = None
    for para in _index(packages).paragraphs(name):
        if para.get("Package") != name or para.get("Architecture") not in (arch, "all"):
            continue
        try:
            v = Version(para.get("Version", ""))
        except ValueError:
            continue
        if best is None or v > best[0]:
            best = (v, dict(para))
    if best is None:
        raise PackageMissing(
            f"{where}: package {name} for {arch} is not in the index",
            hint="check the package name, suite and architecture",
        )
    return _entry(best[1], name, str(best[0]), arch, where)


def find_package(
    packages: str | PackagesIndex, name: str, version: str, arch: str, where: str = "Packages"
) -> PackageEntry:
    """The index entry (filename, sha256, size) of `name` `version` for `arch` (or `all`) in a Packages index."""
    matches: set[PackageEntry] = set()
    versions: set[str] = set()
    for para in _index(packages).paragraphs(name):
        if para.get("Package") != name or para.get("Architecture") not in (arch, "all"):
            continue
        versions.add(para.get("Version", "?"))
        if para.get("Version") != version:
            continue
        matches.add(_entry(para, name, version, arch, where))
    if not matches:
        have = ", ".join(sorted(versions)) or "none"
        raise PackageMissing(
            f"{where}: package {name} {version} for {arch} is not in the index (versions there: {have})",
            hint="update the pinned version, or point the archive at a snapshot that still carries it",
        )
    if len(matches) > 1:
        raise HurdxenError(
            f"{where}: package {name} {version} for {arch} has {len(matches)} different entries in the index",
            hint="the index is inconsistent; use another mirror or snapshot",
        )
    return matches.pop()


def verify_deb(data: bytes, ref: PackageEntry, where: str | None = None) -> None:
    """Refuse a downloaded package whose size or sha256 differs from its index entry."""
    got = hashlib.sha256(data).hexdigest()
    if len(data) != ref.size or got != ref.sha256:
        raise HurdxenError(
            f"{where or ref.filename}: sha256 {got} ({len(data)} bytes), index says {ref.sha256} ({ref.size} bytes)",
            hint="the download is damaged or the mirror was tampered with; delete it and fetch again",
        )


__all__ = [
    "DEBIAN_KEYRING",
    "IndexEntry",
    "PackageEntry",
    "PackageMissing",
    "PackagesIndex",
    "Release",
    "Signed",
    "check_fresh",
    "decompress",
    "find_package",
    "keyring_fingerprints",
    "load_index",
    "newest_package",
    "parse_release",
    "release_checksum",
    "verify_deb",
    "verify_index",
    "verify_inrelease",
    "verify_inrelease_signed",
]
