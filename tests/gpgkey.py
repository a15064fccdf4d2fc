"""A throwaway OpenPGP signing key in its own GNUPGHOME (real gpg, ed25519, no passphrase), for the tests that sign
and verify: release bundles and the stage cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Key:
    home: Path  # its GNUPGHOME
    fingerprint: str
    public: Path  # the armoured public key, as a user would download it


def make_key(name: str) -> Key:
    home = Path(tempfile.mkdtemp(prefix="hx-gpg-", dir="/tmp"))  # short: gpg-agent's socket must fit sun_path
    os.chmod(home, 0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    subprocess.run(
        [*gpg, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", "sign", "never"],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], check=True, capture_output=True, text=True)
    fpr = next(line.split(":")[9] for line in out.stdout.splitlines() if line.startswith("fpr:"))
    public = home / "public.asc"
    public.write_bytes(subprocess.run([*gpg, "--armor", "--export", fpr], check=True, capture_output=True).stdout)
    return Key(home, fpr, public)


def drop_key(k: Key) -> None:
    """Its agent stopped, its home removed."""
    subprocess.run(["gpgconf", "--homedir", str(k.home), "--kill", "all"], check=False, capture_output=True)
    shutil.rmtree(k.home, ignore_errors=True)
