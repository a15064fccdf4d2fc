"""Signatures of cache entries: OpenPGP, detached, over the entry's statement (the same tools and keys as the
release bundle's SHA256SUMS.asc). Verified in a throwaway GNUPGHOME holding only the configured keyring, so the
user's own keys never count."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hurdxen.cache.config import CacheConfig
from hurdxen.core.errors import HurdxenError


def sign(data: bytes, key: str) -> bytes:
    """A detached ASCII-armoured signature of `data` by the secret key `key` (GNUPGHOME, gpg-agent)."""
    import gnupg

    gpg = gnupg.GPG(gnupghome=os.environ.get("GNUPGHOME") or None)
    result = gpg.sign(
        data,
        keyid=key,
        detach=True,
        binary=False,
        passphrase=os.environ.get("HURDXEN_SIGNING_PASSPHRASE"),
        extra_args=["--digest-algo", "SHA256"],
    )
    if not result or not result.data:
        raise HurdxenError(
            f"stage cache: gpg could not sign with {key!r} ({getattr(result, 'status', None)})",
            hint="check stage_cache_signing_key (gpg -K lists secret keys) and GNUPGHOME",
        )
    return bytes(result.data)


def verify(data: bytes, signature: bytes, config: CacheConfig, what: str) -> str:
    """The signer's fingerprint when `signature` is a good signature of `data` by a trusted key; else an error."""
    import gnupg

    assert config.keyring is not None
    with tempfile.TemporaryDirectory(prefix="hurdxen-gpg-") as home:
        os.chmod(home, 0o700)
        gpg = gnupg.GPG(gnupghome=home)
        if not gpg.import_keys(config.keyring.read_bytes()[: 16 << 20]).fingerprints:
            raise HurdxenError(
                f"stage cache: keyring {config.keyring} holds no OpenPGP key", hint="gpg --export --armor KEY > it"
            )
        sig = Path(home) / "entry.sig"
        sig.write_bytes(signature)
        v = gpg.verify_data(str(sig), data)
    if not v.valid:
        status = str(v.status or "no signature found")
        why = (
            f"signed by key {v.key_id}, which is not in {config.keyring.name}"
            if "no public key" in status
            else "BAD signature (changed after signing)"
            if status == "signature bad"
            else f"not a valid signature ({status})"
        )
        raise HurdxenError(f"stage cache: {what}: {why}", hint="the entry is refused and the stage built here")
    fpr = str(v.fingerprint or "").upper()
    primary = str(getattr(v, "pubkey_fingerprint", "") or fpr).upper()  # a subkey signs; its primary key names it
    if config.signers and not {fpr, primary} & set(config.signers):
        raise HurdxenError(
            f"stage cache: {what}: good signature by {fpr}, not one of stage_cache_signers",
            hint="add the key to stage_cache_signers if you trust it",
        )
    return fpr
