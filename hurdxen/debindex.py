"""Debian archive indexes: verify a suite's signed InRelease, then find a package's pinned version in it.

Pure functions (bytes in, data out); downloading and caching live in `sources`.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from debian import deb822

from hurdxen.errors import HurdxenError

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class PackageEntry:
    package: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int


def verify_inrelease(inrelease: bytes, keyring: Path, where: str = "InRelease") -> str:
    """Check the clearsigned InRelease with gpgv against `keyring`; return the signed text only."""
    if not keyring.is_file():
        raise HurdxenError(
            f"{where}: keyring {keyring} does not exist",
            hint="install debian-archive-keyring (scripts/setup.sh does) or set the recipe's `keyring`",
        )
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        proc = subprocess.run(
            ["gpgv", "--keyring", str(keyring), "--output", out.name, "-"],
            input=inrelease,
            capture_output=True,
        )
        if proc.returncode != 0:
            reason = proc.stderr.decode(errors="replace").strip().splitlines()
            last = reason[-1] if reason else f"gpgv exit {proc.returncode}"
            raise HurdxenError(
                f"{where}: signature check failed ({last})",
                hint=f"the index is not signed by a key in {keyring}; check the archive URL and the recipe's keyring",
            )
        return Path(out.name).read_text(errors="replace")


def release_checksum(release_text: str, path: str, where: str = "Release") -> tuple[str, int]:
    """sha256 and size the signed Release lists for an index file such as `main/binary-amd64/Packages.xz`."""
    release = deb822.Release(release_text)
    for entry in release.get("SHA256", []):
        if entry["name"] == path:
            return str(entry["sha256"]), int(entry["size"])
    raise HurdxenError(f"{where}: the signed Release lists no {path}", hint="check the suite, component and arch")


def decompress(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".bz2"):
        return bz2.decompress(data)
    return data


def find_package(packages_text: str, name: str, version: str, arch: str, where: str = "Packages") -> PackageEntry:
    seen: list[str] = []
    for para in deb822.Packages.iter_paragraphs(packages_text, use_apt_pkg=False):
        if para.get("Package") != name:
            continue
        seen.append(str(para.get("Version")))
        if para.get("Version") == version and para.get("Architecture") in (arch, "all"):
            return PackageEntry(
                package=name,
                version=version,
                architecture=str(para["Architecture"]),
                filename=str(para["Filename"]),
                sha256=str(para["SHA256"]),
                size=int(para["Size"]),
            )
    if seen:
        raise HurdxenError(
            f"{where}: {name} {version} is not in the index (it has {', '.join(sorted(set(seen)))})",
            hint="update the pinned version, or point the archive at a snapshot that still carries it",
        )
    raise HurdxenError(f"{where}: no package {name} for {arch}", hint="check the package name, suite and arch")
