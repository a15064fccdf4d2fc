"""Progress reporting for stages (the osbuild idea: stages report through a monitor, not print).

Quiet by default: a step's output goes to its log only (artifacts/logs/), and the doit reporter prints one line as
a task starts and one as it ends. `HURDXEN_VERBOSE=1` streams every step's output, each line prefixed with the
step's name (parallel steps stay readable). `HURDXEN_MONITOR=jsonl` writes one JSON object per event instead, for
CI (osbuild's JSONSeqMonitor is the model)."""

from __future__ import annotations

import json
import os
import sys
import time
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


class LineSplitter:
    """Whole lines per step from the chunks a stream delivers (a chunk may end mid-line)."""

    def __init__(self) -> None:
        self.partial: dict[str, str] = {}

    def feed(self, step: str, chunk: bytes) -> list[str]:
        text = self.partial.pop(step, "") + chunk.decode(errors="replace")
        *lines, rest = text.split("\n")
        if rest:
            self.partial[step] = rest
        return lines

    def flush(self, step: str) -> list[str]:
        rest = self.partial.pop(step, "")
        return [rest] if rest else []


class ConsoleMonitor:
    """Notes always; with `verbose`, each step's begin, end and output lines, prefixed with the step's name."""

    def __init__(self, verbose: bool | None = None) -> None:
        self.verbose = verbose_requested() if verbose is None else verbose
        self.lines = LineSplitter()

    def _write(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def output(self, step: str, chunk: bytes) -> None:
        if self.verbose:
            self._write("".join(f"{step} │ {line}\n" for line in self.lines.feed(step, chunk)))

    def begin(self, what: str) -> None:
        if self.verbose:
            self._write(f"‣ {what}\n")

    def end(self, what: str, seconds: float) -> None:
        if self.verbose:
            rest = "".join(f"{what} │ {line}\n" for line in self.lines.flush(what))
            self._write(rest + f"✓ {what} ({seconds:.1f} s)\n")

    def note(self, text: str) -> None:
        self._write(text + "\n")


class JsonlMonitor:
    """One JSON object per line on stderr: {"time", "event": begin|end|output|note, …}; output comes line by line."""

    def __init__(self) -> None:
        self.lines = LineSplitter()

    def _event(self, event: str, **fields: object) -> None:
        sys.stderr.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields}) + "\n")
        sys.stderr.flush()

    def output(self, step: str, chunk: bytes) -> None:
        for line in self.lines.feed(step, chunk):
            self._event("output", step=step, line=line)

    def begin(self, what: str) -> None:
        self._event("begin", step=what)

    def end(self, what: str, seconds: float) -> None:
        for line in self.lines.flush(what):
            self._event("output", step=what, line=line)
        self._event("end", step=what, seconds=round(seconds, 3))

    def note(self, text: str) -> None:
        self._event("note", text=text)


def verbose_requested() -> bool:
    return os.environ.get("HURDXEN_VERBOSE") == "1"


def jsonl_requested() -> bool:
    return os.environ.get("HURDXEN_MONITOR") == "jsonl"


def default_monitor() -> Monitor:
    return JsonlMonitor() if jsonl_requested() else ConsoleMonitor()
