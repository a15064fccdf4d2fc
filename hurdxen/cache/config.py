"""Where the shared stage cache is and whom it trusts: `[settings]` keys and their environment variables.

    [settings]
    stage_cache = "oci://ghcr.io/owner/hurdxen-cache"   # oci+http:// for a registry without TLS (127.0.0.1)
    stage_cache_keyring = "keys/cache.asc"              # public keys whose signatures are trusted on pull
    stage_cache_signers = ["<40 hex fingerprint>"]      # optional: only these keys of the keyring
    cache_push = true                                   # push what this machine built (CI on main)
    stage_cache_signing_key = "<fingerprint>"           # the secret key (in GNUPGHOME) that signs pushed entries

HURDXEN_STAGE_CACHE overrides `stage_cache` (`off` turns the cache off: `doit reproduce` rebuilds without it);
HURDXEN_CACHE_PUSH (1/0), HURDXEN_STAGE_CACHE_KEYRING, HURDXEN_STAGE_CACHE_SIGNERS (comma-separated) and
HURDXEN_STAGE_CACHE_SIGNING_KEY override theirs. `[settings] cache` stays the local source cache directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.core.errors import HurdxenError

ENV = "HURDXEN_STAGE_CACHE"
OFF = ("", "off", "none")
_URL = re.compile(r"^oci(\+http)?://([A-Za-z0-9.-]+(?::[0-9]{1,5})?)/([a-z0-9]+(?:[._/-][a-z0-9]+)*)$")


@dataclass(frozen=True)
class Limits:
    """Bounds on what a registry may make us do: a stall (no byte for `timeout` s), a trickle (slower than
    `min_rate` bytes/s after `timeout` s of grace), an entry larger than `max_entry`, metadata over `max_meta`."""

    timeout: float = 30.0
    min_rate: int = 256 << 10
    max_entry: int = 8 << 30
    max_meta: int = 4 << 20

    def deadline(self, size: int) -> float:
        """Seconds a transfer of `size` bytes may take in all."""
        return self.timeout + size / self.min_rate


@dataclass(frozen=True)
class CacheConfig:
    url: str  # as configured, for messages
    registry: str  # host[:port]
    repository: str
    plain_http: bool
    keyring: Path | None
    signers: tuple[str, ...]  # accepted fingerprints (upper case, no spaces); empty: any key of the keyring
    push: bool
    signing_key: str | None
    limits: Limits = Limits()

    @property
    def base(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.registry}"

    def ref(self, tag: str) -> str:
        return f"{self.registry}/{self.repository}:{tag}"


def _where(key: str) -> str:
    return f"hurdxen.local.toml: settings.{key}"


def from_settings(settings: Mapping[str, Any], root: Path) -> CacheConfig | None:
    """The stage cache the settings and environment describe, or None (then every stage builds as without it)."""
    url = os.environ.get(ENV)
    if url is None:
        url = settings.get("stage_cache")
    if url is None or str(url).strip().lower() in OFF:
        return None
    m = _URL.match(str(url))
    if not m:
        raise HurdxenError(
            f"{_where('stage_cache')} ({ENV}): {url!r} is not an OCI repository",
            hint="write oci://HOST[:PORT]/REPO (oci+http:// for a registry without TLS)",
        )
    keyring_s = os.environ.get("HURDXEN_STAGE_CACHE_KEYRING") or settings.get("stage_cache_keyring")
    if not keyring_s:
        raise HurdxenError(
            f"{_where('stage_cache')}: a stage cache needs stage_cache_keyring (only signed entries are pulled)",
            hint="set stage_cache_keyring to a file of the public keys you trust (gpg --export --armor KEY)",
        )
    keyring = Path(str(keyring_s))
    keyring = keyring if keyring.is_absolute() else root / keyring
    if not keyring.is_file():
        raise HurdxenError(f"{_where('stage_cache_keyring')}: {keyring} does not exist", hint="export the key there")
    env_signers = os.environ.get("HURDXEN_STAGE_CACHE_SIGNERS")
    raw_signers = env_signers.split(",") if env_signers else list(settings.get("stage_cache_signers", []))
    signers = tuple(s.replace(" ", "").upper() for s in raw_signers if s.strip())
    env_push = os.environ.get("HURDXEN_CACHE_PUSH")
    push = env_push == "1" if env_push is not None else bool(settings.get("cache_push", False))
    signing_key = os.environ.get("HURDXEN_STAGE_CACHE_SIGNING_KEY") or settings.get("stage_cache_signing_key")
    if push and not signing_key:
        raise HurdxenError(
            f"{_where('cache_push')}: pushing needs stage_cache_signing_key (entries are signed)",
            hint="set stage_cache_signing_key (or HURDXEN_STAGE_CACHE_SIGNING_KEY) to a secret key's fingerprint",
        )
    timeout = float(settings.get("stage_cache_timeout", 30))
    return CacheConfig(
        url=str(url),
        registry=m.group(2),
        repository=m.group(3),
        plain_http=bool(m.group(1)),
        keyring=keyring,
        signers=signers,
        push=push,
        signing_key=str(signing_key) if signing_key else None,
        limits=Limits(timeout=timeout, max_entry=int(settings.get("stage_cache_max_bytes", Limits.max_entry))),
    )
