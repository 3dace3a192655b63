"""SIGTERM and SIGINT stop a job, and the sweep it belongs to, with a record and an exit code that say so.

A scheduler, `timeout` or a container stop sends SIGTERM; Ctrl-C sends SIGINT. Left to Python and Lightning,
SIGTERM ends training with Lightning's SIGTERMException (a SystemExit with no code: the process exits 0, as
if all went well) and SIGINT with Lightning's `sys.exit(1)` after it catches KeyboardInterrupt. Instead, both
raise `Interrupted` where the process is, as KeyboardInterrupt would: the job records how it ended
(training.job.run_job), the sweep stops launching jobs and sums up, and the process exits 128 + the signal's
number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process the signal ended.

A signal that something else already handles is left to it: submitit's job (SLURM) handles SIGTERM itself,
requeueing a job that reached its time limit.
"""

from __future__ import annotations

import signal
import threading

# The handler each signal has when nobody has claimed it: only then is it taken.
DEFAULTS = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}


class Interrupted(BaseException):
    """A SIGTERM or SIGINT ended the job. A BaseException, as KeyboardInterrupt: `except Exception` in a
    sweep's job does not swallow it, so the sweep stops."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {self.name}")


def _raise(signum, frame):
    raise Interrupted(signum)


def raise_on_signals() -> None:
    """Make SIGTERM and SIGINT raise Interrupted in this process, each unless something else handles it.
    Only the main thread may set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, default in DEFAULTS.items():
        if signal.getsignal(signum) in (default, _raise):
            signal.signal(signum, _raise)


def as_interrupted(e: BaseException) -> Interrupted | None:
    """The Interrupted that `e` stands for: itself, or Lightning's SIGTERMException (raised at the next batch
    when SIGTERM came while our handler was not installed); None for anything else."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if isinstance(e, Interrupted):
        return e
    return Interrupted(signal.SIGTERM) if isinstance(e, SIGTERMException) else None
