"""Running a budgeted run's jobs: each in its own process group (so that a Ctrl-C or a scheduler's
signal reaches this command, which then stops the jobs in order), up to `at_once` at a time. A free slot
takes the job the plan's rule picks with the time left (plan.pick: the same rule as the plan's, on the
real clock, so a run faster than estimated starts more). At `deadline - grace`, or when
`stop` is set, running jobs are asked to stop (SIGTERM: Lightning ends the current batch, the job records
itself and ends); one still running two thirds of the way through the grace is killed with its children.
The last third is for the records, the archive and the summary."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zr_ablate.bench.plan import COMPLETE, Sharing, Work, pick

POLL_S = 0.2  # how often running jobs are looked at
ENDED, STOPPED, NOT_STARTED = "ended", "stopped", "not started"  # how a task left the run


@dataclass
class Task:
    work: Work
    argv: list[str]
    console: Path  # its output, appended
    pointers: list[Path] = field(default_factory=list)  # consoles told where its output goes (a packed group's)


@dataclass
class Ended:
    how: str  # ENDED (by itself), STOPPED or NOT_STARTED
    code: int | None = None
    seconds: float = 0.0


class Log:
    """Prints and appends to a file, each line stamped with seconds since `started`."""

    def __init__(self, path: Path, started: float):
        self.path, self.started = path, started

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.started:6.0f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def launch(task: Task, cwd: Path) -> subprocess.Popen:
    header = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(task.argv)}\n"
    for pointer in task.pointers:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        with open(pointer, "a") as out:
            out.write(header + f"(packed with others in one process: its output is in {task.console})\n")
    task.console.parent.mkdir(parents=True, exist_ok=True)
    with open(task.console, "a") as out:
        out.write(header)
        out.flush()
        return subprocess.Popen(
            task.argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,  # its own group: not hit by a Ctrl-C meant for this command; killed as a whole
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def halt(running: dict, wait_s: float, log: Callable[[str], None]) -> None:
    """SIGTERM to each job's process, then SIGKILL to the process group of any still running after wait_s."""
    for _, proc, _ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    until = time.monotonic() + wait_s
    for name, (_, proc, _) in running.items():
        try:
            proc.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop in {wait_s:.0f} s: killed")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def run(
    tasks: list[Task],
    at_once: int,
    sharing: Sharing,
    deadline: float,
    grace: float,
    log: Callable[[str], None],
    on_end: Callable[[Task, Ended], None] = lambda task, ended: None,
    stop: threading.Event | None = None,
    margin: float = 1.1,
    partial: bool = True,
    cwd: Path = Path("."),
) -> dict[str, Ended]:
    """Run `tasks` (in order of preference) until all that may start have ended, the deadline (time.monotonic
    seconds) comes, or `stop` is set. Returns how each task left the run; `on_end` hears of each at once."""
    stop = stop or threading.Event()
    waiting, running, out = list(tasks), {}, {}
    stop_at = deadline - grace
    try:
        while True:
            now = time.monotonic()
            for name, (task, proc, t0) in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    out[name] = Ended(ENDED, proc.returncode, now - t0)
                    on_end(task, out[name])
            if stop.is_set() or now >= stop_at:
                break
            while len(running) < at_once:
                rate = sharing.factor(len(running) + 1)
                picked = pick([t.work for t in waiting], stop_at - now, rate, margin, partial)
                if picked is None:
                    break
                task = next(t for t in waiting if t.work is picked[0])
                waiting.remove(task)
                log(
                    f"start {task.work.name}: "
                    + (
                        f"expected to complete in ~{task.work.seconds / rate:.0f} s"
                        if picked[1] == COMPLETE
                        else "not expected to complete; its epochs before the deadline carry over to the next run"
                    )
                )
                running[task.work.name] = (task, launch(task, cwd), now)
            if not running:
                break
            stop.wait(POLL_S)
    except BaseException:  # whatever broke here, no job is left running without this command
        halt(running, wait_s=grace * 2 / 3, log=log)
        raise
    if running:
        why = "told to stop" if stop.is_set() else f"{grace:.0f} s before the deadline"
        log(f"{why}: stopping {', '.join(running)}")
        halt(running, wait_s=grace * 2 / 3, log=log)
        for name, (task, proc, t0) in running.items():
            out[name] = Ended(STOPPED, proc.returncode, time.monotonic() - t0)
            on_end(task, out[name])
    for task in waiting:
        out[task.work.name] = Ended(NOT_STARTED)
        on_end(task, out[task.work.name])
    return out
