"""Progress reporting for stages (the osbuild idea: stages report through a monitor, not print)."""

from __future__ import annotations

import os
import sys
from typing import Protocol


class Monitor(Protocol):
    def output(self, step: str, chunk: bytes) -> None: ...

    def begin(self, what: str) -> None: ...

    def end(self, what: str, seconds: float) -> None: ...

    def note(self, text: str) -> None:
        """A line for the user: a warning, or where a result went."""
        ...


class NullMonitor:
    def output(self, step: str, chunk: bytes) -> None:
        pass

    def begin(self, what: str) -> None:
        pass

    def end(self, what: str, seconds: float) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class ConsoleMonitor:
    """Streams step output to stderr; HURDXEN_QUIET=1 keeps only begin/end lines (logs still get everything)."""

    def __init__(self, quiet: bool | None = None) -> None:
        self.quiet = os.environ.get("HURDXEN_QUIET") == "1" if quiet is None else quiet

    def output(self, step: str, chunk: bytes) -> None:
        if not self.quiet:
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()

    def begin(self, what: str) -> None:
        sys.stderr.write(f"‣ {what}\n")

    def end(self, what: str, seconds: float) -> None:
        sys.stderr.write(f"✓ {what} ({seconds:.1f} s)\n")

    def note(self, text: str) -> None:
        sys.stderr.write(text + "\n")


def default_monitor() -> Monitor:
    return ConsoleMonitor()
