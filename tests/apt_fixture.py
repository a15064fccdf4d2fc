"""A tiny signed Debian repository for tests: real .debs (dpkg-deb), a Packages index, a Release clearsigned into
InRelease with a throwaway GPG key, and that key exported as a keyring for `gpgv --keyring`.

    key = GpgKey.create(tmp_path / "gnupg")            # throwaway key in its own GNUPGHOME
    repo = build_repo(tmp_path / "repo", key, [Deb("hello", "1.0-1", "amd64", {"usr/share/hello/x": b"x"})])
    repo.root          # serve this directory (dists/, pool/)
    repo.keyring       # public keyring with the signing key
    key.close()        # stops its gpg-agent (build_repo's caller owns the key)
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class GpgKey:
    home: Path
    fingerprint: str
    keyring: Path  # the public key, exported (binary), usable with gpgv --keyring

    @classmethod
    def create(cls, keyring_dir: Path, name: str = "Test Archive") -> GpgKey:
        # gpg-agent's socket path must stay short: keep GNUPGHOME in /tmp, not in pytest's deep tmp_path.
        home = Path(tempfile.mkdtemp(prefix="hxgpg."))
        os.chmod(home, 0o700)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
        subprocess.run(
            [*gpg, "--quick-gen-key", f"{name} <test@example.invalid>", "ed25519", "sign", "never"],
            check=True,
            capture_output=True,
        )
        out = subprocess.run([*gpg, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True)
        fpr = next(line.split(":")[9] for line in out.stdout.splitlines() if line.startswith("fpr:"))
        keyring_dir.mkdir(parents=True, exist_ok=True)
        keyring = keyring_dir / f"{name.lower().replace(' ', '-')}.gpg"
        exported = subprocess.run([*gpg, "--export", fpr], check=True, capture_output=True).stdout
        keyring.write_bytes(exported)
        return cls(home, fpr, keyring)

    def gpg(self, *args: str) -> None:
        subprocess.run(
            [
                "gpg",
                "--homedir",
                str(self.home),
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                *args,
            ],
            check=True,
            capture_output=True,
        )

    def clearsign(self, src: Path, dest: Path) -> None:
        self.gpg(
            "--yes",
            "--local-user",
            self.fingerprint,
            "--digest-algo",
            "SHA256",
            "--clearsign",
            "-o",
            str(dest),
            str(src),
        )

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class Deb:
    package: str
    version: str
    arch: str
    files: dict[str, bytes] = field(default_factory=dict)  # path inside the package -> content

    @property
    def filename(self) -> str:
        """Its place in the archive, as the Packages index names it."""
        noepoch = self.version.split(":", 1)[-1]
        return f"pool/main/{self.package[0]}/{self.package}/{self.package}_{noepoch}_{self.arch}.deb"


@dataclass
class AptRepo:
    root: Path  # serve this: root/dists/<suite>/InRelease, root/pool/…
    suite: str
    keyring: Path
    debs: list[Deb]

    def path_of(self, deb: Deb) -> Path:
        return self.root / deb.filename


def make_deb(deb: Deb, dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN" / "control").write_text(
            f"Package: {deb.package}\nVersion: {deb.version}\nArchitecture: {deb.arch}\n"
            "Maintainer: Test <test@example.invalid>\nDescription: test package\n"
        )
        for rel, content in deb.files.items():
            p = tree / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(dest)],
            check=True,
            capture_output=True,
        )
    return dest


def build_repo(root: Path, key: GpgKey, debs: list[Deb], suite: str = "testing", component: str = "main") -> AptRepo:
    archs = sorted({d.arch for d in debs})
    index: dict[str, list[str]] = {a: [] for a in archs}
    for deb in debs:
        path = make_deb(deb, root / deb.filename)
        data = path.read_bytes()
        index[deb.arch].append(
            f"Package: {deb.package}\nVersion: {deb.version}\nArchitecture: {deb.arch}\n"
            f"Maintainer: Test <test@example.invalid>\nFilename: {deb.filename}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\nDescription: test package\n"
        )
    dist = root / "dists" / suite
    sums: list[str] = []
    for arch, paras in index.items():
        plain = "\n".join(paras).encode()
        rel = f"{component}/binary-{arch}/Packages"
        for name, blob in ((rel, plain), (rel + ".xz", lzma.compress(plain))):
            (dist / name).parent.mkdir(parents=True, exist_ok=True)
            (dist / name).write_bytes(blob)
            sums.append(f" {hashlib.sha256(blob).hexdigest()} {len(blob)} {name}")
    release = dist / "Release"
    release.write_text(
        f"Origin: Test\nSuite: {suite}\nCodename: {suite}\nDate: Thu, 01 Jan 2026 00:00:00 UTC\n"
        f"Architectures: {' '.join(archs)}\nComponents: {component}\nSHA256:\n" + "\n".join(sums) + "\n"
    )
    key.clearsign(release, dist / "InRelease")
    return AptRepo(root, suite, key.keyring, debs)
