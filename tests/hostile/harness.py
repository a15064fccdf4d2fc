"""What every hostile case asserts: the exit code, exactly one `error: … (hint: …)` line and no traceback, and that
nothing outside the work area changed (canary files: mode, owner, mtime, content)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from hurdxen import cli
from hurdxen.core.errors import HurdxenError

ERROR_LINE = re.compile(r"error: \S.* \(hint: [^\n]+\)")
ERROR_LINE_NO_HINT = re.compile(r"error: \S[^\n]*")  # schema messages whose key has no x-hint
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


@dataclass
class Canaries:
    """Files outside the work area a hostile input aims at (links to them, names of them)."""

    root: Path

    @property
    def file(self) -> Path:
        return self.root / "passwd"

    @property
    def dir(self) -> Path:
        return self.root / "etc"

    def snapshot(self) -> dict[str, tuple[int, int, int, int, str]]:
        out = {}
        for p in sorted([self.root, *self.root.rglob("*")]):
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            out[str(p)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, digest)
        return out


@pytest.fixture
def canary(tmp_path_factory: pytest.TempPathFactory) -> object:
    root = tmp_path_factory.mktemp("outside-the-work-area")
    c = Canaries(root)
    c.dir.mkdir()
    c.file.write_text("root:x:0:0::/root:/bin/sh\n")
    os.chmod(c.file, 0o600)
    (c.dir / "shadow").write_text("secret\n")
    os.utime(c.file, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = c.snapshot()
    yield c
    assert c.snapshot() == before, "a hostile input changed a file outside the work area"


def one_line(text: str, hint: bool = True) -> str:
    """The single error line of `text` (stderr of a failed command); fails on a traceback or several lines."""
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}: {text[:2000]!r}"
    assert (ERROR_LINE if hint else ERROR_LINE_NO_HINT).fullmatch(lines[0]), lines[0]
    assert not CONTROL.search(lines[0]), lines[0]
    return lines[0]


def refused(exc: pytest.ExceptionInfo[HurdxenError], hint: bool = True) -> str:
    """The rendered line of an in-process refusal (the CLI and doit print exactly this)."""
    return one_line(exc.value.render(), hint)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err
