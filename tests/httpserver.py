"""A real HTTP server on 127.0.0.1 in a thread, with routes that misbehave on purpose.

    with TestServer() as srv:
        srv.add("/f", b"bytes")                    # 200
        srv.add("/t", b"abc", truncate_to=1)       # Content-Length 3, sends 1 byte, closes
        srv.add("/s", b"x" * 9, rate=100)          # trickled at 100 B/s (stall=: silence after the headers)
        srv.redirect("/r", "/f")                   # 302
        srv.serve_dir("/debian", some_path)        # files below a directory
        srv.url + "/f"
Anything else is a 404. `srv.hits` lists the paths asked for; `srv.stop()` makes the port refuse connections.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    truncate_to: int | None = None  # send only this many bytes of `body` (Content-Length says all), then close
    rate: float | None = None  # bytes per second: trickle the body
    stall: float = 0.0  # seconds of silence after the headers
    length: bool = True  # send a Content-Length


class TestServer:
    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.dirs: dict[str, Path] = {}
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.hits.append(path)
                route = server.lookup(path)
                if route is None:
                    self.send_error(404, "File not found")
                    return
                self.send_response(route.status)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                if route.length:
                    self.send_header("Content-Length", str(len(route.body)))
                if route.truncate_to is not None or not route.length:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.flush()
                body = route.body if route.truncate_to is None else route.body[: route.truncate_to]
                try:
                    time.sleep(route.stall)
                    if route.rate is None:
                        self.wfile.write(body)
                    else:
                        piece = max(1, int(route.rate / 10))
                        for i in range(0, len(body), piece):
                            self.wfile.write(body[i : i + piece])
                            self.wfile.flush()
                            time.sleep(piece / route.rate)
                    self.wfile.flush()
                except OSError:
                    return  # the client gave up
                if route.truncate_to is not None or not route.length:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread: threading.Thread | None = None

    def lookup(self, path: str) -> Route | None:
        if path in self.routes:
            return self.routes[path]
        for prefix, d in self.dirs.items():
            if path.startswith(prefix + "/"):
                f = (d / path[len(prefix) + 1 :]).resolve()
                if f.is_file() and f.is_relative_to(d.resolve()):
                    return Route(f.read_bytes())
        return None

    def add(self, path: str, body: bytes, status: int = 200, truncate_to: int | None = None, **kw: Any) -> str:
        """`kw`: Route's rate (trickle), stall (silence after the headers), length (False: no Content-Length)."""
        self.routes[path] = Route(body, status, truncate_to=truncate_to, **kw)
        return self.url + path

    def redirect(self, path: str, to: str, status: int = 302) -> str:
        self.routes[path] = Route(b"", status, {"Location": self.url + to})
        return self.url + path

    def serve_dir(self, prefix: str, directory: Path) -> str:
        self.dirs[prefix.rstrip("/")] = directory
        return self.url + prefix.rstrip("/")

    def start(self) -> TestServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join(timeout=10)
            self.thread = None
        self.httpd.server_close()

    def __enter__(self) -> TestServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
