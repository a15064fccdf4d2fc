"""One build at a time per artifacts directory: a second `doit build` waits, and says why."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import IO

# doit commands that only read state; they run beside a build without the lock.
READ_ONLY_COMMANDS = {"list", "info", "help", "forget", "ignore", "dumpdb", "tabcompletion", "strace", "reset-dep"}

_held: IO[str] | None = None


def doit_command(argv: list[str]) -> str:
    for word in argv[1:]:
        if not word.startswith("-") and "=" not in word:
            return word
    return "run"


def running_doit(argv: list[str]) -> bool:
    """True in a `doit …` process (the `doit` script or `python -m doit`), not when tasks.py is merely imported."""
    if not argv:
        return False
    prog = Path(argv[0])
    return prog.name == "doit" or (prog.name == "__main__.py" and prog.parent.name == "doit")


def hold(artifacts: Path, announce: bool = True) -> bool:
    """Take the build lock for this process's lifetime; wait (saying so) while another build holds it."""
    global _held
    if _held is not None:
        return False
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / ".lock"
    f = open(path, "a+")  # noqa: SIM115 - held open until the process exits
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        if announce:
            sys.stderr.write(f"waiting: another build (pid {holder}) holds {path}; this one starts when it finishes\n")
            sys.stderr.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _held = f
    return True
