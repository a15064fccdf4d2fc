"""Signing SHA256SUMS with gpg: one lookup of the secret key (checked before anything is written), one signer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.release.spec import SIGNATURE


def _gpg(gnupghome: str | None) -> Any:
    import gnupg

    try:
        return gnupg.GPG(gnupghome=gnupghome or os.environ.get("GNUPGHOME") or None)
    except (OSError, ValueError) as e:
        raise HurdxenError(f"sign: cannot run gpg: {e}", hint="apt-get install gnupg") from e


def fingerprint(key: str, gnupghome: str | None) -> str:
    """The full fingerprint of the one secret key `key` names."""
    keys = _gpg(gnupghome).list_keys(secret=True, keys=[key])
    if not keys:
        raise HurdxenError(
            f"sign: no secret key {key!r} in {gnupghome or os.environ.get('GNUPGHOME') or '~/.gnupg'}",
            hint="check release.signing.key / HURDXEN_SIGNING_KEY and release.signing.gnupghome (gpg -K lists keys)",
        )
    if len(keys) != 1:
        raise HurdxenError(f"sign: {key!r} matches {len(keys)} secret keys", hint="give the full fingerprint")
    return str(keys[0]["fingerprint"])


def sign_sums(sums: Path, key: str, gnupghome: str | None) -> tuple[Path, str]:
    """Detached ASCII-armoured signature of SHA256SUMS; returns (signature, signer fingerprint)."""
    fpr = fingerprint(key, gnupghome)
    passphrase = os.environ.get("HURDXEN_SIGNING_PASSPHRASE")  # never recorded anywhere
    sig_path = sums.with_name(SIGNATURE)
    with open(sums, "rb") as f:
        result = _gpg(gnupghome).sign_file(
            f, keyid=key, detach=True, binary=False, passphrase=passphrase, extra_args=["--digest-algo", "SHA256"]
        )
    if not result or not result.data:
        status = getattr(result, "status", None) or getattr(result, "stderr", "")[-200:]
        raise HurdxenError(
            f"sign: gpg could not sign with {key!r}: {status}",
            hint="is the key protected? set HURDXEN_SIGNING_PASSPHRASE or use gpg-agent",
        )
    fsutil.write_atomic(sig_path, result.data)
    return sig_path, str(result.fingerprint or fpr)
