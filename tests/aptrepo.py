"""A real, signed, served Debian-style apt archive for tests.

    key = GpgKey.generate(tmp)                      # throwaway key, no passphrase
    repo = AptRepo(tmp / "repo", key)
    repo.add_deb("hurd", "1:0.9+1", "hurd-i386", {"hurd/ext2fs.static": b"..."})
    repo.publish(suite="test", component="main", arch="hurd-i386")   # or arch=("i386", "amd64"): one index each
    base = repo.serve()                             # http://127.0.0.1:PORT/ (or serve repo.archive elsewhere)
    repo.path_of(deb)                               # where the published .deb lies in the archive
    repo.keyring_path                               # binary keyring for `gpgv --keyring`

Everything is made with the real tools (dpkg-deb, gpg) and served by a real ThreadingHTTPServer.
Corruption helpers break one link of the chain of trust at a time.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import lzma
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

FileSpec = bytes | tuple[bytes, int] | str  # contents; (contents, mode); or a symlink target given as str


def _run(cmd: list[str], input: bytes | None = None, env: Mapping[str, str] | None = None) -> bytes:
    """Run a tool; on failure raise with its stderr (a test fixture should say why it broke)."""
    p = subprocess.run(cmd, input=input, env=env, capture_output=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return p.stdout


@dataclass
class GpgKey:
    """A throwaway signing key in its own GNUPGHOME (short path: gpg-agent's socket must fit in 108 bytes)."""

    home: Path
    fingerprint: str
    keyring_path: Path
    faked_time: str | None = None  # gpg runs as if it were then: how an already expired key is made

    @classmethod
    def generate(
        cls, keyring_dir: Path, uid: str = "hurdxen test archive <test@invalid>", *, expired: bool = False
    ) -> GpgKey:
        """A fresh key; `expired=True` makes one that was created in 2020 and expired a day later."""
        home = Path(tempfile.mkdtemp(prefix="hx-gpg-", dir="/tmp"))
        os.chmod(home, 0o700)
        faked = "20200101T000000!" if expired else None
        gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        if faked:
            gpg.append(f"--faked-system-time={faked}")
        _run([*gpg, "--quick-gen-key", uid, "ed25519", "sign", "1d" if expired else "never"])
        out = _run([*gpg, "--with-colons", "--list-secret-keys"]).decode()
        fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        keyring_dir.mkdir(parents=True, exist_ok=True)
        keyring = keyring_dir / f"keyring-{fpr[-8:]}.gpg"
        keyring.write_bytes(_run([*gpg, "--export", fpr]))  # binary, as gpgv --keyring wants
        return cls(home, fpr, keyring, faked)

    def _gpg(self) -> list[str]:
        cmd = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--pinentry-mode", "loopback"]
        return [*cmd, f"--faked-system-time={self.faked_time}"] if self.faked_time else cmd

    def clearsign(self, data: bytes) -> bytes:
        cmd = [*self._gpg(), "--local-user", self.fingerprint, "--digest-algo", "SHA512", "--clearsign"]
        return _run(cmd, input=data)

    def detach_sign(self, data: bytes) -> bytes:
        cmd = [*self._gpg(), "--local-user", self.fingerprint, "--digest-algo", "SHA512", "--armor", "--detach-sign"]
        return _run(cmd, input=data)

    def close(self) -> None:
        # Stop the gpg-agent this home started, then drop the home.
        kill = ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"]
        subprocess.run(kill, capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    arch: str
    path: Path  # the built .deb, outside the archive tree
    pool: str = "pool"  # debian-ports: one pool per architecture (pool-hurd-i386)

    @property
    def pool_path(self) -> str:
        source_dir = self.name[:4] if self.name.startswith("lib") else self.name[0]
        version = self.version.split(":", 1)[-1]  # epochs are not part of file names
        return f"{self.pool}/main/{source_dir}/{self.name}/{self.name}_{version}_{self.arch}.deb"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class AptRepo:
    def __init__(self, root: Path, key: GpgKey | None = None, *, ports: bool = False) -> None:
        self.root = root
        self.ports = ports  # debian-ports layout: pool-<arch>/ instead of pool/
        self.date = 1700000000  # Release's Date
        self.valid_until: int | None = None  # Release's Valid-Until (absent: never expires)
        self.archive = root / "archive"  # what is served
        self.build_dir = root / "build"
        self.archive.mkdir(parents=True, exist_ok=True)
        self.build_dir.mkdir(parents=True, exist_ok=True)
        self._own_key = key is None
        self.key = key or GpgKey.generate(root / "keys")
        self.debs: list[Deb] = []
        self.suite = ""
        self.component = ""
        self.archs: tuple[str, ...] = ()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._extra_keys: list[GpgKey] = []
        self._keyring: Path | None = None

    @property
    def keyring_path(self) -> Path:
        """The binary keyring a client should trust (the repo key, plus any key a helper added)."""
        return self._keyring or self.key.keyring_path

    # -- building ---------------------------------------------------------------------------------------------

    def add_deb(
        self,
        name: str,
        version: str,
        arch: str,
        files: Mapping[str, FileSpec],
        *,
        depends: str | None = None,
        description: str = "hurdxen test package",
    ) -> Deb:
        """Build a .deb with `dpkg-deb --build` holding `files` (paths relative to /)."""
        tree = self.build_dir / f"{name}_{version.replace(':', '%')}_{arch}"
        if tree.exists():
            shutil.rmtree(tree)
        (tree / "DEBIAN").mkdir(parents=True)
        control = [
            f"Package: {name}",
            f"Version: {version}",
            f"Architecture: {arch}",
            "Maintainer: hurdxen tests <test@invalid>",
            "Section: misc",
            "Priority: optional",
        ]
        if depends:
            control.append(f"Depends: {depends}")
        control.append(f"Description: {description}")
        (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
        for rel, spec in files.items():
            dest = tree / rel.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(spec, str):
                dest.symlink_to(spec)
                continue
            data, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
            dest.write_bytes(data)
            dest.chmod(mode)
        out = self.build_dir / f"{tree.name}.deb"
        # Fixed mtimes and root ownership make the .deb reproducible.
        env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
        _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)], env=env)
        deb = Deb(name, version, arch, out, f"pool-{arch}" if self.ports else "pool")
        self.debs.append(deb)
        return deb

    def publish(self, suite: str = "test", component: str = "main", arch: str | tuple[str, ...] = "hurd-i386") -> None:
        """Lay out pool/ and dists/, write Packages(.xz) and Release, and sign (InRelease and Release.gpg).

        `arch` may name several architectures: each gets its own index, listing its debs and the `all` ones."""
        self.suite, self.component = suite, component
        self.archs = (arch,) if isinstance(arch, str) else arch
        paragraphs: dict[Deb, str] = {}
        for deb in self.debs:
            dest = self.path_of(deb)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(deb.path, dest)
            data = dest.read_bytes()
            control = _run(["dpkg-deb", "--field", str(dest)]).decode().rstrip("\n")
            paragraphs[deb] = (
                control
                + f"\nFilename: {deb.pool_path}\nSize: {len(data)}\nMD5sum: {hashlib.md5(data).hexdigest()}"
                + f"\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
            )
        for a in self.archs:
            packages = "\n".join(p for deb, p in paragraphs.items() if deb.arch in (a, "all")).encode()
            bin_dir = self.dists / component / f"binary-{a}"
            bin_dir.mkdir(parents=True, exist_ok=True)
            (bin_dir / "Packages").write_bytes(packages)
            (bin_dir / "Packages.xz").write_bytes(lzma.compress(packages, preset=6))
        self.write_release()

    @property
    def arch(self) -> str:
        """The (first) published architecture: the one index_path and tamper_packages speak of."""
        return self.archs[0]

    def path_of(self, deb: Deb) -> Path:
        """The published .deb in the archive (what a client downloads)."""
        return self.archive / deb.pool_path

    @property
    def dists(self) -> Path:
        return self.archive / "dists" / self.suite

    def index_path(self, compressed: bool = True) -> str:
        """The Packages index path relative to dists/<suite>/, as listed in Release."""
        return f"{self.component}/binary-{self.arch}/Packages" + (".xz" if compressed else "")

    def write_release(self, key: GpgKey | None = None) -> None:
        """(Re)write Release from the index files on disk and sign it with `key` (default: the repo's key)."""
        files = sorted(p for p in self.dists.rglob("*") if p.is_file() and p.parent != self.dists)
        lines = [
            "Origin: hurdxen-test",
            "Label: hurdxen-test",
            f"Suite: {self.suite}",
            f"Codename: {self.suite}",
            f"Date: {email.utils.formatdate(self.date, usegmt=True)}",
            *([f"Valid-Until: {email.utils.formatdate(self.valid_until, usegmt=True)}"] if self.valid_until else []),
            f"Architectures: {' '.join(self.archs)}",
            f"Components: {self.component}",
            "Description: hurdxen test archive",
        ]
        for field, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
            lines.append(f"{field}:")
            for p in files:
                data = p.read_bytes()
                lines.append(f" {algo(data).hexdigest()} {len(data):>8} {p.relative_to(self.dists).as_posix()}")
        release = ("\n".join(lines) + "\n").encode()
        (self.dists / "Release").write_bytes(release)
        self.sign(key)

    def sign(self, key: GpgKey | None = None) -> None:
        key = key or self.key
        release = (self.dists / "Release").read_bytes()
        (self.dists / "InRelease").write_bytes(key.clearsign(release))
        (self.dists / "Release.gpg").write_bytes(key.detach_sign(release))

    def drop(self, name: str, version: str) -> None:
        """Remove a package version from the archive, as debian-ports does when a newer one comes (publish again)."""
        for deb in [d for d in self.debs if d.name == name and d.version == version]:
            self.debs.remove(deb)
            self.path_of(deb).unlink(missing_ok=True)

    def snapshot(self, root: Path, archive: str, stamp: str) -> Path:
        """Copy the archive as it is now into a snapshot-shaped tree: root/archive/<archive>/<stamp>/."""
        dest = root / "archive" / archive / stamp
        shutil.copytree(self.archive, dest)
        return dest

    # -- breaking ---------------------------------------------------------------------------------------------

    def resign_with_other_key(self) -> GpgKey:
        """Sign Release with a fresh key that is not in `keyring_path`: gpgv must refuse it."""
        other = GpgKey.generate(self.root / "keys")
        self._extra_keys.append(other)
        self.sign(other)
        return other

    def resign_with_expired_key(self) -> GpgKey:
        """Sign Release with an expired key that *is* in `keyring_path` (gpgv alone exits 0 for it)."""
        old = GpgKey.generate(self.root / "keys", expired=True)
        self._extra_keys.append(old)
        combined = self.root / "keys" / "keyring-with-expired.gpg"
        combined.write_bytes(self.key.keyring_path.read_bytes() + old.keyring_path.read_bytes())
        self._keyring = combined
        self.sign(old)
        return old

    def tamper_inrelease(self) -> None:
        """Change the signed text of InRelease after signing: a bad signature."""
        p = self.dists / "InRelease"
        p.write_bytes(p.read_bytes().replace(b"Label: hurdxen-test", b"Label: hurdxen-evil", 1))

    def strip_signature(self) -> None:
        """Replace InRelease by the plain, unsigned Release text."""
        (self.dists / "InRelease").write_bytes((self.dists / "Release").read_bytes())

    def tamper_deb(self, name: str, arch: str | None = None) -> Path:
        """Change bytes of a published .deb (same size), so its sha256 no longer matches Packages.

        Without `arch`, the first deb added under that name."""
        deb = next(d for d in self.debs if d.name == name and arch in (None, d.arch))
        p = self.path_of(deb)
        data = bytearray(p.read_bytes())
        data[-1] ^= 0xFF
        p.write_bytes(bytes(data))
        return p

    def tamper_packages(self) -> None:
        """Change the Packages index after Release was signed, so its sha256 no longer matches Release."""
        for name in ("Packages", "Packages.xz"):
            p = self.dists / self.index_path(compressed=False).replace("Packages", name)
            text = lzma.decompress(p.read_bytes()) if name.endswith(".xz") else p.read_bytes()
            text += b"\nPackage: intruder\nVersion: 1\nArchitecture: all\nFilename: pool/x.deb\nSize: 1\nSHA256: 00\n"
            p.write_bytes(lzma.compress(text) if name.endswith(".xz") else text)

    # -- serving ----------------------------------------------------------------------------------------------

    def serve(self) -> str:
        """Serve the archive on 127.0.0.1 (a free port) from a background thread; return the base URL."""
        if self._server is None:
            handler = partial(_QuietHandler, directory=str(self.archive))
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            self._thread = threading.Thread(target=self._server.serve_forever, name="aptrepo-http", daemon=True)
            self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for k in self._extra_keys:
            k.close()
        self._extra_keys.clear()
        if self._own_key:
            self.key.close()

    def __enter__(self) -> AptRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- pytest fixtures (re-exported by tests/conftest.py) ---------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - usable without pytest
    pass
else:

    @pytest.fixture(scope="session")
    def apt_signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKey]:
        """One throwaway key for the whole session (key generation is the slow part)."""
        key = GpgKey.generate(tmp_path_factory.mktemp("apt-keys"))
        yield key
        key.close()

    @pytest.fixture
    def apt_repo(tmp_path: Path, apt_signing_key: GpgKey) -> Iterator[AptRepo]:
        """An empty archive signed with the session key; add debs, publish, serve. Closed after the test."""
        with AptRepo(tmp_path / "aptrepo", apt_signing_key) as repo:
            yield repo
