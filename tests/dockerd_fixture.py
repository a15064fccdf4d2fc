"""A second, private Docker engine for tests that must break one (kill it mid-step) without touching the shared
engine: own data root, exec root, pidfile and socket, no bridge, no iptables. Everything it starts is found by its
private directory and ended by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

TINY_BINARIES = ("/bin/bash", "/bin/sleep", "/bin/cat", "/bin/touch", "/bin/ls", "/bin/id")


class PrivateDockerd:
    def __init__(self) -> None:
        # Short paths: unix sockets live in here.
        self.dir = Path(tempfile.mkdtemp(prefix="hxd."))
        self.sock = self.dir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> PrivateDockerd:
        log = open(self.dir / "dockerd.log", "wb")  # noqa: SIM115 - closed with the daemon
        self.proc = subprocess.Popen(
            [
                "dockerd",
                "--data-root", str(self.dir / "root"),
                "--exec-root", str(self.dir / "exec"),
                "--pidfile", str(self.dir / "dockerd.pid"),
                "-H", self.host,
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(self.dir / 'dockerd.log').read_text()[-2000:]}")
            r = subprocess.run(["docker", "-H", self.host, "version"], capture_output=True)
            if r.returncode == 0:
                return self
            time.sleep(0.3)
        raise RuntimeError("the private dockerd did not answer")

    def import_tiny_image(self, tag: str = "hurdxen-test/tiny:1") -> str:
        """An image holding bash and a few tools, copied from the host with their libraries."""
        rootfs = self.dir / "rootfs"
        files: set[str] = set()
        for b in TINY_BINARIES:
            files.add(b)
            out = subprocess.run(["ldd", b], capture_output=True, text=True).stdout
            for line in out.splitlines():
                parts = line.split()
                path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
                if path.startswith("/"):
                    files.add(path)
        for f in files:
            dest = rootfs / f.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(f), dest)
        for d in ("tmp", "proc", "sys", "dev", "etc"):
            (rootfs / d).mkdir(exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", self.host, "import", "-", tag], stdin=tar.stdout, check=True,
                       capture_output=True)  # fmt: skip
        tar.wait()
        return tag

    def _own_pids(self) -> list[int]:
        """Processes started for this engine: their command lines name its private directory."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.dir) in cmd and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
        return pids

    def kill(self) -> None:
        """SIGKILL the daemon only (its containerd and shims stay until `close`)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._own_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(str(self.dir))), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
