"""A real OCI registry on 127.0.0.1 (Debian's docker-registry, filesystem storage, deletes enabled) and a
misbehaving HTTP proxy of our own in front of the registry (stalls, trickles, dies mid-blob, announces a wrong size)
for the stage-cache tests; their signing keys come from tests/gpgkey.py."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRegistry:
    host: str  # 127.0.0.1:PORT
    data: Path  # its storage root

    def blob_file(self, digest: str) -> Path:
        """Where distribution keeps a blob's bytes: overwriting it makes the registry serve other bytes."""
        hexd = digest.removeprefix("sha256:")
        return self.data / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line (distribution accepts only bcrypt), from the C library's crypt(3)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n"


@contextlib.contextmanager
def run_registry(workdir: Path, htpasswd: str | None = None) -> Iterator[LocalRegistry]:
    """The registry; with `htpasswd` (lines of htpasswd_line), it answers 401 with a Basic challenge."""
    exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(exe).is_file():
        import pytest

        pytest.skip("apt-get install docker-registry")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    auth = ""
    if htpasswd is not None:
        (workdir / "htpasswd").write_text(htpasswd)
        auth = f"auth:\n  htpasswd: {{realm: test, path: {workdir / 'htpasswd'}}}\n"
    cfg = workdir / "registry.yml"
    cfg.write_text(
        textwrap.dedent(f"""\
        version: 0.1
        log: {{level: error}}
        storage:
          filesystem: {{rootdirectory: {workdir / "data"}}}
          delete: {{enabled: true}}
        http:
          addr: 127.0.0.1:{port}
        """)
        + auth
    )
    # Its log to a file: a pipe nobody reads fills up after a few dozen error lines (404s are logged) and the
    # registry then blocks on write, which looks like a stalled registry.
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 (closed below, after the process)
    proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield LocalRegistry(f"127.0.0.1:{port}", workdir / "data")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@dataclass
class Proxy:
    """Forwards to the registry; GETs of the blobs in `targets` misbehave as `mode` says:
    stall (headers, half the body, then silence), trickle (a byte every 50 ms), die (half the body, then the
    connection is closed), lie (a Content-Length larger than the blob), more (no Content-Length, extra bytes)."""

    upstream: str
    mode: str = "pass"
    targets: set[str] = field(default_factory=set)
    host: str = ""
    hits: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.hits.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                digest = self.path.rsplit("/", 1)[-1]
                bad = self.command == "GET" and "/blobs/" in self.path and digest in proxy.targets
                mode = proxy.mode if bad else "pass"
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v.replace(proxy.upstream, proxy.host))
                if mode == "lie":
                    self.send_header("Content-Length", str(len(data) + 4096))
                elif mode == "more":
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if mode in ("pass", "lie"):
                    self.wfile.write(data)
                elif mode == "more":
                    self.wfile.write(data + b"x" * 65536)
                    self.close_connection = True
                elif mode == "die":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                elif mode == "stall":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    time.sleep(60)
                elif mode == "trickle":
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(0.05)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
