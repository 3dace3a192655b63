"""Sweep-level Hydra plumbing: check every job before any trains, and sum up how the sweep ended.

`SweepGuard` is a Hydra callback (zr_ablate/conf/config.yaml, hydra.callbacks):
- on_run_start / on_multirun_start: the sweep's name and each job folder's name must be one folder inside
  out_root (no `/`, `..`), and the output folder writable, before Hydra makes any folder; then, for a sweep,
  it composes each job's config from the sweep's overrides and runs `check` on it, so an impossible
  combination (an unknown key, a value of the wrong type, a bad probability, an unroll longer than the data)
  is one line before any job trains, naming the job; and stops, with on_stale=stop, if a job's folder holds
  a record made with other settings (records.changed_settings);
- on_multirun_end: one summary line over the sweep's jobs, completed / diverged / failed / skipped, then the
  command that makes the sweep's report, and a non-zero exit if any job failed. The table of jobs printed
  before them is the report's callback (zr_ablate.analysis.report.summary): this floor does not read
  results. Jobs of this command are those whose .hydra/overrides.yaml run.py wrote after the sweep started,
  or whose record the launcher wrote then (a SLURM job cancelled before it started: slurm.py). A job counts
  as skipped when it was final before the sweep started, or when another process holds its lock
  (job_folder.job_lock) and runs it still. `summarise` also sums up a sweep a signal stopped (run.py's cli).
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback

from zr_ablate.experiment.job_folder import job_lock, job_record, lock_holder
from zr_ablate.experiment.optuna_space import bounds
from zr_ablate.records import (
    COMPLETED,
    DIVERGED,
    FAILED,
    FINAL_STATUSES,
    HYDRA,
    LOCK,
    RESULT,
    RUNNING,
    SKIPPED,
    RecordError,
    changed_settings,
    folder_name_problem,
    is_job_folder,
    job_name,
    read_result,
    stale_line,
    write_json_atomic,
)

log = logging.getLogger(__name__)


def writable_or_exit(folder: Path) -> None:
    """One line naming the fix when the output folder cannot be made or written (out_root a file, /proc/x)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        test_file = folder / ".zr_ablate-write-test"
        test_file.touch()
        test_file.unlink()
    except OSError as e:
        sys.exit(
            f"zr_ablate: error: cannot write job folders in {folder} ({e.strerror}); pass out_root=<a writable folder>"
        )


def names_or_exit(config, job: bool) -> None:
    """One line when the sweep's name (or, for a single run, its job's name) is not one folder's name: a `/`
    or `..` would write outside out_root/<sweep>/."""
    problem = folder_name_problem(str(config.sweep))
    if problem:
        sys.exit(f"zr_ablate: error: sweep={config.sweep}: {problem}")
    if job:
        try:
            job_name(config.hydra.job.override_dirname)
        except ValueError as e:
            sys.exit(f"zr_ablate: error: {e}")


def stale_settings(job) -> str | None:
    """With on_stale=stop, the line that stops the sweep if the job's folder holds a record made with other
    settings; run.py takes the same decision again for a single job."""
    folder, settings = job_record(job)
    previous = read_result(folder) or {}
    changed = changed_settings(previous.get("config") or {}, settings)
    return stale_line(folder, changed) if changed and job.on_stale == "stop" else None


def job_overrides(config) -> list[list[str]]:
    """The override list of every job the basic sweeper will launch (as BasicSweeper expands them); under the
    Optuna sweeper, whose trials are not drawn yet, two jobs at the ends of its search range."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if config.hydra.sweeper.get("n_trials") is not None:
        return bounds(config.hydra.sweeper.get("params") or {}, config.hydra.overrides.task)
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class SweepGuard(Callback):
    current: SweepGuard | None = None  # the guard of the sweep this process runs, for run.py's summary

    def __init__(self, check: str):
        self.check = check  # dotted path of a function(job_config) that raises ValueError
        self.started = time.time()

    def on_run_start(self, config, **kwargs) -> None:
        """A single job: its settings checked and the output folder writable before Hydra makes the job's
        folder in it."""
        from hydra.utils import get_method

        from zr_ablate.experiment.build import error_line

        names_or_exit(config, job=True)
        try:
            get_method(self.check)(config)
        except Exception as e:
            sys.exit(f"zr_ablate: error: {error_line(e)}")
        writable_or_exit(Path(config.out_root) / config.sweep)

    def on_multirun_start(self, config, **kwargs) -> None:
        from hydra import compose
        from hydra.utils import get_method

        names_or_exit(config, job=False)
        writable_or_exit(Path(config.hydra.sweep.dir))
        self.started, self.config, SweepGuard.current = time.time(), config, self
        from zr_ablate.experiment.build import (
            error_line,  # the guard's check is build.check: torch is loaded for it anyway
        )
        from zr_ablate.experiment.wandb_run import OFFLINE_MARKER

        (Path(config.hydra.sweep.dir) / OFFLINE_MARKER).unlink(missing_ok=True)  # an earlier sweep's
        check = get_method(self.check)
        jobs = job_overrides(config)
        for overrides in jobs:
            try:
                job = compose(config.hydra.job.config_name, overrides=overrides, return_hydra_config=True)
                check(job)
                stale = stale_settings(job)
            except Exception as e:
                sys.exit(f"zr_ablate: error: job {','.join(overrides)}: {error_line(e)}")
            if stale:
                sys.exit(f"zr_ablate: error: {stale}")
        log.info("checked the settings of %d jobs", len(jobs))

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.summarise(config):
            sys.exit(1)

    def summarise(self, config, interrupted: str | None = None) -> bool:
        """Print the sweep's summary line and its report's command; True if a job failed. `interrupted`: the
        signal that stopped the sweep; then a job it left running on this machine is recorded as interrupted."""
        sweep = Path(config.hydra.sweep.dir)
        counts, failed, elsewhere = Counter(), [], []
        for job in sorted(filter(is_job_folder, sweep.iterdir())):
            path, launched = job / RESULT, job / HYDRA / "overrides.yaml"
            # A job of this command: run.py wrote its overrides now, or (SLURM ended it before it started) the
            # launcher recorded it now; else a job of an earlier command in the same sweep folder.
            if max((p.stat().st_mtime for p in (launched, path) if p.exists()), default=0) < self.started:
                continue
            try:
                status = (read_result(job) or {}).get("status", FAILED)
            except RecordError:
                status = FAILED  # its record is unreadable: count it, name it, let the report say why
            holder = lock_holder(job) if status == RUNNING else None
            if holder:
                status = SKIPPED  # another process runs it (a second sweep into this folder)
                elsewhere.append(f"{job.name} ({holder})")
            elif status == RUNNING:
                status = FAILED  # its process died without recording how
                if interrupted:
                    record_interrupted(job, interrupted)
            elif status in FINAL_STATUSES and path.stat().st_mtime < self.started:
                status = SKIPPED  # finished by an earlier command; this one left it alone
            counts[status] += 1
            if status == FAILED:
                failed.append(job.name)
        line = ", ".join(f"{counts[s]} {s}" for s in (COMPLETED, DIVERGED, FAILED, SKIPPED))
        line += f"; failed: {'; '.join(failed)}" if failed else ""
        line += f"; running in another process: {'; '.join(elsewhere)}" if elsewhere else ""
        stop = (
            f"interrupted by {interrupted} (the jobs it had not started are left for a rerun): " if interrupted else ""
        )
        print(f"sweep {config.sweep} ({sweep}): {stop}{line}")
        print(f"its report: python -m zr_ablate.report {sweep}")
        return bool(failed)


def record_interrupted(job: Path, signal_name: str) -> None:
    """A job this sweep left `running` when a signal stopped it (its worker process was ended with the
    sweep, e.g. joblib's): record it as failed by that signal, so that its record says what happened. Only
    under its lock, taken at once, so never a job still running in another process."""
    lock = job / LOCK
    if f"on host {socket.gethostname()}" not in (lock.read_text() if lock.is_file() else ""):
        return  # run on another machine (SLURM): its lock may not be visible from here
    with job_lock(job) as holder:
        try:
            record = read_result(job) if holder is None else None
        except RecordError:
            return  # counted failed already; the report says why
        if record and record["status"] == RUNNING:
            error = f"interrupted by {signal_name} (the sweep was); rerun the same command to resume"
            write_json_atomic(job / RESULT, dict(record, status=FAILED, error=error))
