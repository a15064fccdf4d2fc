"""How a doit run reports: a failed task's one `error: … (hint: …)` line (no traceback for a user error), and at the
end a summary of every task with actions: built, reused (up to date), failed or not run, its time, where its outputs
are, and why it failed or did not run. Replaces doit's `UnmetDependency - taskid:…` lines."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from doit.exceptions import UnmetDependency
from doit.reporter import ConsoleReporter

from hurdxen.cache.hook import cached_from
from hurdxen.core.monitor import jsonl_requested, verbose_requested


@dataclass
class Outcome:
    task: str
    status: str = "running"  # built, pulled (from the stage cache), reused, failed, not run
    seconds: float | None = None
    where: str = ""  # the directory holding its targets
    why: str = ""  # the error line, or the tasks it waited for


def named(msg: str, task: str) -> str:
    return msg if task in msg else f"{task}: {msg}"


def error_line(fail: Any, task: str) -> str:
    """The failure as one short line for the summary: its `error: …` line without the hint (the failure's own line
    above the summary carries the hint, and a step failure the tail of its log); for anything else, the last line
    doit has for it. The summary's row already names the task."""
    msg = str(getattr(fail, "message", "") or fail.get_msg()).strip()
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if msg.startswith("error: "):
        line = lines[0]
        at = line.rfind(" (hint: ")
        return line[:at] if at >= 0 else line
    return lines[-1] if lines else fail.get_name()


def targets_dir(task: Any) -> str:
    targets = [str(t) for t in getattr(task, "targets", []) or []]
    if not targets:
        return ""
    return os.path.commonpath([os.path.dirname(t) for t in targets])


def reachable(tasks: dict[str, Any], selected: list[str]) -> set[str]:
    """The tasks a run may execute: the selected ones and everything they depend on."""
    seen: set[str] = set()
    todo = list(selected)
    while todo:
        name = todo.pop()
        task = tasks.get(name)
        if task is None or name in seen:
            continue
        seen.add(name)
        todo.extend(task.task_dep)
        todo.extend(getattr(task, "setup_tasks", []))
    return {n for n in seen if tasks[n].actions}


class StatusLine:
    """On a terminal, a live line under the task lines: what runs and for how long, how many are done and left."""

    def __init__(self, reporter: Reporter) -> None:
        from rich.console import Console
        from rich.live import Live

        self.reporter = reporter
        self.console = Console(file=reporter.outstream, highlight=False)
        self.live = Live(self, console=self.console, transient=True, refresh_per_second=4)
        self.live.start()

    def __rich__(self) -> Any:
        from rich.text import Text

        r = self.reporter
        now = time.monotonic()
        running = [f"{n} {now - t:.0f} s" for n, t in r.started.items() if r.outcomes[n].status == "running"]
        done = sum(o.status != "running" for o in r.outcomes.values())
        left = max(r.total - done - len(running), 0) if r.total else 0
        return Text.assemble(("… ", "bold"), f"{', '.join(running) or 'waiting'} · {done} done, {left} left")

    def write(self, text: str) -> None:
        self.console.print(text, end="", markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        self.live.stop()


class Reporter(ConsoleReporter):  # type: ignore[misc]
    def __init__(self, outstream: Any, options: Any) -> None:
        super().__init__(outstream, options)
        self.outcomes: dict[str, Outcome] = {}
        self.started: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.total = 0
        self.status: StatusLine | None = None

    def initialize(self, tasks: dict[str, Any], selected_tasks: list[str]) -> None:
        super().initialize(tasks, selected_tasks)
        self.total = len(reachable(tasks, list(selected_tasks or [])))
        interactive = getattr(self.outstream, "isatty", lambda: False)() and not os.environ.get("CI")
        if interactive and not verbose_requested() and not jsonl_requested():
            self.status = StatusLine(self)

    def write(self, text: str) -> None:
        if self.status is not None:
            self.status.write(text)
        else:
            super().write(text)

    def _outcome(self, task: Any) -> Outcome:
        return self.outcomes.setdefault(task.name, Outcome(task.name, where=targets_dir(task)))

    def execute_task(self, task: Any) -> None:
        super().execute_task(task)
        if task.actions:
            self._outcome(task)
            self.started[task.name] = time.monotonic()

    def add_success(self, task: Any) -> None:
        if task.actions:
            o = self._outcome(task)
            ref = cached_from(getattr(task, "targets", None) or ())
            o.status, o.why = ("pulled", f"cached from {ref}") if ref else ("built", o.why)
            o.seconds = time.monotonic() - self.started.get(task.name, time.monotonic())
            self.write(f"✓  {task.name} ({o.seconds:.1f} s{', ' + o.why if o.why else ''})\n")

    def skip_uptodate(self, task: Any) -> None:
        super().skip_uptodate(task)
        if task.actions and not task.name.startswith("_"):
            self._outcome(task).status = "reused"

    def add_failure(self, task: Any, fail: Any) -> None:
        o = self._outcome(task)
        if isinstance(fail, UnmetDependency):
            o.status, o.why = "not run", f"needs {fail.get_msg().strip()}"
            return
        o.status, o.why = "failed", error_line(fail, task.name)
        if task.name in self.started:
            o.seconds = time.monotonic() - self.started[task.name]
        msg = str(getattr(fail, "message", ""))
        if msg.startswith("error: "):
            self.failures.append({"task": task, "exception": fail})
            self.write(named(msg, task.name) + "\n")  # a user error as the stage wrote it, no traceback
        else:
            super().add_failure(task, fail)

    def complete_run(self) -> None:
        # doit's own complete_run repeats failed tasks' output; the error lines are already out, and in the summary.
        if self.status is not None:
            self.status.stop()
            self.status = None
        if self.runtime_errors:
            self.write("Execution aborted.\n" + "\n".join(self.runtime_errors) + "\n")
        self.write(self.summary())

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for o in self.outcomes.values():
            counts[o.status] = counts.get(o.status, 0) + 1
        order = ("built", "pulled", "reused", "failed", "not run")
        head = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "nothing to do"
        lines = [f"summary: {head} ({time.monotonic() - self.t0:.1f} s)"]
        width = max((len(o.task) for o in self.outcomes.values()), default=0)
        for s in order:
            for o in self.outcomes.values():
                if o.status != s:
                    continue
                secs = f"{o.seconds:6.1f} s" if o.seconds is not None else " " * 8
                detail = o.why or o.where
                lines.append(f"  {s:8} {o.task:{width}} {secs}  {detail}".rstrip())
        return "\n".join(lines) + "\n"
