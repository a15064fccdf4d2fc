"""A small, bounded client of the OCI distribution API (the part a stage cache needs).

Not oras-py (which `publish.py` uses for releases): its requests have no timeout, it retries a dead registry with
back-off for minutes, and its pull names files after the registry's annotations. Here every request has a timeout,
every body a size bound and a deadline (a registry that stalls, trickles or sends more than it announced is cut off
at once), a blob is hashed as it streams, and nothing is named after what the registry says.

Credentials come from the Docker config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: `auths`, or a
`credsStore`/`credHelpers` helper), as `docker login` and the CI login actions write them; Basic and Bearer-token
(GHCR, Docker Hub, distribution's token server) challenges are answered.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import requests
import urllib3

from hurdxen.cache.config import CacheConfig
from hurdxen.core.errors import HurdxenError, printable

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHUNK = 1 << 20
_HINT = "the entry is refused and the stage built here; check the registry (`hurdxen cache verify`)"


class RegistryError(HurdxenError):
    """A registry that did not answer as the protocol says (unreachable, stalled, lying, refusing)."""


def _err(what: str) -> RegistryError:
    return RegistryError(what, hint=_HINT)


def docker_credentials(registry: str) -> tuple[str, str] | None:
    """(user, secret) for `registry` from the Docker config, or None."""
    conf_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        conf = json.loads((conf_dir / "config.json").read_text()[: 1 << 20])
    except (OSError, ValueError):
        return None
    if not isinstance(conf, dict):
        return None
    helper = (conf.get("credHelpers") or {}).get(registry) or conf.get("credsStore")
    for key, entry in (conf.get("auths") or {}).items():
        host = re.sub(r"^https?://", "", str(key)).split("/", 1)[0]
        if host != registry or not isinstance(entry, dict):
            continue
        if entry.get("username") and entry.get("password"):
            return str(entry["username"]), str(entry["password"])
        if entry.get("auth"):
            with contextlib.suppress(ValueError):
                user, _, secret = base64.b64decode(str(entry["auth"])).decode().partition(":")
                return user, secret
    if isinstance(helper, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", helper):
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            out = subprocess.run(
                [f"docker-credential-{helper}", "get"], input=registry, capture_output=True, text=True, timeout=20
            )
            if out.returncode == 0:
                d = json.loads(out.stdout)
                return str(d["Username"]), str(d["Secret"])
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Registry:
    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "hurdxen-stage-cache"
        self._auth: str | None = None  # the Authorization header that worked
        self._creds = docker_credentials(config.registry)

    # ------------------------------------------------------------------ requests

    def _url(self, path: str) -> str:
        return f"{self.config.base}/v2/{self.config.repository}/{path}"

    def _login(self, resp: requests.Response) -> bool:
        """Answer a 401's challenge; True when there is something new to try."""
        scheme, params = _challenge(resp.headers.get("WWW-Authenticate", ""))
        basic = base64.b64encode(f"{self._creds[0]}:{self._creds[1]}".encode()).decode() if self._creds else None
        if scheme == "basic" and basic:
            new = f"Basic {basic}"
        elif scheme == "bearer" and params.get("realm", "").startswith(("https://", "http://")):
            q = {k: params[k] for k in ("service", "scope") if k in params}
            try:
                r = self.session.get(
                    params["realm"],
                    params=q,
                    headers={"Authorization": f"Basic {basic}"} if basic else {},
                    timeout=self.limits.timeout,
                )
                token = (
                    r.json().get("token") or r.json().get("access_token") if r.ok and len(r.content) < 1 << 20 else None
                )
            except (requests.RequestException, ValueError, AttributeError):
                token = None
            if not token:
                return False
            new = f"Bearer {token}"
        else:
            return False
        if new == self._auth:
            return False
        self._auth = new
        return True

    def request(self, method: str, url: str, *, ok: tuple[int, ...] = (200,), **kw: Any) -> requests.Response:
        """One request with timeouts, answered challenges; a status outside `ok` is an error (404 included)."""
        headers = dict(kw.pop("headers", {}))
        for _ in range(3):
            if self._auth:
                headers["Authorization"] = self._auth
            try:
                resp = self.session.request(
                    method, url, headers=headers, timeout=(self.limits.timeout, self.limits.timeout), **kw
                )
            except requests.RequestException as e:
                raise _err(f"stage cache {self.config.registry}: {method} failed ({type(e).__name__})") from None
            if resp.status_code == 401 and self._login(resp):
                resp.close()
                data: Any = kw.get("data")
                if hasattr(data, "seek"):
                    data.seek(0)
                continue
            break
        if resp.status_code not in ok:
            resp.close()
            raise _err(
                f"stage cache {self.config.registry}: {method} {printable(url, 160)} answered {resp.status_code}"
            )
        return resp

    # ------------------------------------------------------------------ reading

    def _read(self, resp: requests.Response, size: int | None, limit: int, out: IO[bytes] | None) -> tuple[bytes, str]:
        """The body, at most `limit` bytes (exactly `size` when given), by a deadline; returns (bytes kept, sha256)."""
        announced = resp.headers.get("Content-Length")
        if size is not None and announced is not None and announced.isdigit() and int(announced) != size:
            raise _err(f"stage cache: the registry announces {announced} bytes where the entry says {size}")
        want = size if size is not None else limit
        deadline = time.monotonic() + self.limits.deadline(want)
        h = hashlib.sha256()
        kept = bytearray()
        got = 0
        try:
            while True:
                chunk = resp.raw.read1(CHUNK, decode_content=False)  # one recv at most: a trickle meets the deadline
                if not chunk:
                    break
                got += len(chunk)
                if got > want:
                    raise _err(f"stage cache: the registry sends more than the {want} bytes expected")
                h.update(chunk)
                if out is None:
                    kept += chunk
                else:
                    out.write(chunk)
                if time.monotonic() > deadline:
                    raise _err(f"stage cache: too slow ({got} of {want} bytes in {self.limits.deadline(want):.0f} s)")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise _err(f"stage cache: the transfer broke off after {got} bytes ({type(e).__name__})") from None
        finally:
            resp.close()
        if size is not None and got != size:
            raise _err(f"stage cache: the transfer ended after {got} of {size} bytes")
        return bytes(kept), h.hexdigest()

    def tags(self) -> set[str]:
        """Every tag of the repository (an empty set when the repository does not exist yet)."""
        out: set[str] = set()
        url: str | None = self._url("tags/list?n=1000")
        for _ in range(200):
            if url is None:
                break
            resp = self.request("GET", url, ok=(200, 404), stream=True)
            if resp.status_code == 404:
                resp.close()
                return out
            link = resp.headers.get("Link", "")
            body, _ = self._read(resp, None, self.limits.max_meta, None)
            try:
                out.update(str(t) for t in (json.loads(body).get("tags") or []))
            except (ValueError, AttributeError):
                raise _err(f"stage cache {self.config.registry}: a tag list that is not JSON") from None
            m = re.match(r"<([^>]+)>", link)
            url = (self.config.base + m.group(1) if m.group(1).startswith("/") else m.group(1)) if m else None
        return out

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """An OCI manifest (bytes, digest) by tag or digest, bounded."""
        resp = self.request("GET", self._url(f"manifests/{reference}"), headers={"Accept": MEDIA_MANIFEST}, stream=True)
        body, digest = self._read(resp, None, self.limits.max_meta, None)
        if reference.startswith("sha256:") and reference != f"sha256:{digest}":
            raise _err(f"stage cache: manifest {reference} has other bytes ({digest})")
        return body, f"sha256:{digest}"

    def blob_bytes(self, digest: str, size: int) -> bytes:
        if size > self.limits.max_meta:
            raise _err(f"stage cache: a {size}-byte metadata blob (at most {self.limits.max_meta})")
        body, got = self._read(self.request("GET", self._url(f"blobs/{digest}"), stream=True), size, size, None)
        if f"sha256:{got}" != digest:
            raise _err(f"stage cache: blob {digest} has other bytes (sha256 {got})")
        return body

    def blob_to(self, digest: str, size: int, out: IO[bytes]) -> None:
        """Stream a blob into `out`, checking its size and sha256."""
        resp = self.request("GET", self._url(f"blobs/{digest}"), stream=True)
        _, got = self._read(resp, size, size, out)
        if f"sha256:{got}" != digest:
            raise _err(f"stage cache: blob {digest} has other bytes (sha256 {got})")

    # ------------------------------------------------------------------ writing

    def has_blob(self, digest: str) -> bool:
        return self.request("HEAD", self._url(f"blobs/{digest}"), ok=(200, 404)).status_code == 200

    def has_manifest(self, tag: str) -> bool:
        r = self.request("HEAD", self._url(f"manifests/{tag}"), ok=(200, 404), headers={"Accept": MEDIA_MANIFEST})
        return r.status_code == 200

    def push_blob(self, digest: str, size: int, data: bytes | Path) -> None:
        """Upload one blob (monolithic: POST for a session, PUT with the digest); skipped when it is there."""
        if self.has_blob(digest):
            return
        start = self.request("POST", self._url("blobs/uploads/"), ok=(202,))
        loc = start.headers.get("Location", "")
        start.close()
        if not loc:
            raise _err(f"stage cache {self.config.registry}: no upload location")
        url = self.config.base + loc if loc.startswith("/") else loc
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        with open(data, "rb") if isinstance(data, Path) else io.BytesIO(data) as body:
            self.request(
                "PUT",
                url,
                ok=(201,),
                data=body,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            ).close()

    def put_manifest(self, tag: str, body: bytes) -> str:
        r = self.request(
            "PUT", self._url(f"manifests/{tag}"), ok=(201,), data=body, headers={"Content-Type": MEDIA_MANIFEST}
        )
        r.close()
        return f"sha256:{hashlib.sha256(body).hexdigest()}"

    def delete_manifest(self, digest: str) -> None:
        self.request("DELETE", self._url(f"manifests/{digest}"), ok=(202, 200)).close()
