"""Sweep-level Hydra plumbing: check every job before any trains, and sum up how the sweep ended.

`SweepGuard` is a Hydra callback (zr_ablate/conf/config.yaml, hydra.callbacks):
- on_multirun_start: composes each job's config from the sweep's overrides and runs `check` on it, so an
  impossible combination (a value of the wrong type, a bad probability, an unroll longer than the data) is
  one line before any job trains, naming the job; and stops, with on_stale=stop, if a job's folder holds
  a record made with other settings (records.changed_settings);
- on_multirun_end: one summary line, completed / diverged / failed / skipped, then the command that makes
  the sweep's report, and a non-zero exit if any job failed. The table of jobs printed before them is the
  report's callback (zr_ablate.analysis.report.summary): this floor does not read results. Jobs of this
  command are those whose .hydra/ files Hydra wrote after the sweep started, or whose record the launcher
  wrote then (a SLURM job cancelled before it started: zr_ablate/experiment/slurm.py).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback

from zr_ablate.experiment.optuna_sweeper import bounds
from zr_ablate.records import (
    COMPLETED,
    DIVERGED,
    FAILED,
    FINAL_STATUSES,
    RESULT,
    RUNNING,
    SKIPPED,
    RecordError,
    changed_settings,
    is_job_folder,
    job_name,
    read_result,
    stale_line,
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


def job_record(job) -> tuple[Path, dict]:
    """A job's config as composed for a sweep (with its hydra node) -> its folder and the settings its
    result.json records (everything but hydra, resolved)."""
    from omegaconf import OmegaConf

    folder = Path(job.hydra.sweep.dir) / job_name(job.hydra.job.override_dirname)
    settings = OmegaConf.masked_copy(job, [k for k in job if k != "hydra"])
    return folder, OmegaConf.to_container(settings, resolve=True)


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
        return bounds(config.hydra.sweeper.params, config.hydra.overrides.task)
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class SweepGuard(Callback):
    def __init__(self, check: str):
        self.check = check  # dotted path of a function(job_config) that raises ValueError
        self.started = time.time()

    def on_run_start(self, config, **kwargs) -> None:
        """A single job: the output folder must be writable before Hydra makes the job's folder in it."""
        writable_or_exit(Path(config.out_root) / config.sweep)

    def on_multirun_start(self, config, **kwargs) -> None:
        from hydra import compose
        from hydra.utils import get_method

        writable_or_exit(Path(config.hydra.sweep.dir))
        self.started = time.time()
        from zr_ablate.experiment.build import (
            error_line,  # the guard's check is build.check: torch is loaded for it anyway
        )

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
        sweep = Path(config.hydra.sweep.dir)
        counts, failed = Counter(), []
        for job in sorted(filter(is_job_folder, sweep.iterdir())):
            path, launched = job / RESULT, job / ".hydra" / "overrides.yaml"
            # A job of this command: Hydra wrote its .hydra/ now, or (SLURM ended it before it started) the
            # launcher recorded it now; else a job of an earlier command in the same sweep folder.
            if max((p.stat().st_mtime for p in (launched, path) if p.exists()), default=0) < self.started:
                continue
            try:
                status = (read_result(job) or {}).get("status", FAILED)
            except RecordError:
                status = FAILED  # its record is unreadable: count it, name it, let the report say why
            if status == RUNNING:
                status = FAILED  # its process died without recording how
            elif status in FINAL_STATUSES and path.stat().st_mtime < self.started:
                status = SKIPPED  # finished by an earlier command; this one left it alone
            counts[status] += 1
            if status == FAILED:
                failed.append(job.name)
        line = ", ".join(f"{counts[s]} {s}" for s in (COMPLETED, DIVERGED, FAILED, SKIPPED))
        print(f"sweep {config.sweep} ({sweep}): {line}" + (f"; failed: {'; '.join(failed)}" if failed else ""))
        print(f"its report: python -m zr_ablate.report {sweep}")
        if failed:
            sys.exit(1)
