"""Train one LSTM language model per Hydra job.

    python run.py dropout=zaremba model=medium seed=1
    python run.py -m dropout=none,naive,zaremba,variational model=demo
    python run.py -m grid=table1                      # a named sweep from zr_ablate/conf/grid/
    python run.py -m hparams_search=naive model=demo  # tune naive's rate with Optuna (conf/hparams_search/)

It builds the data module, the model and the Lightning module through zr_ablate.experiment.build (the one
module that maps config to objects) and hands them to zr_ablate.training.job.run_job. A rerun of the same command skips
completed jobs and resumes interrupted ones from their last checkpoint (same job folder, same W&B run).
A job returns its status to Hydra, or, under an optimising sweeper (one whose config names a `direction`:
the Optuna sweeper of hparams_search=...), the number the sweeper minimises: its best validation perplexity.

A job holds its folder's lock while it runs (job_folder.job_lock): a second sweep writing the same folder skips
a job the first is running, saying which process has it. SIGTERM or SIGINT stops the job and the sweep: the
job records how it ended, the sweep sums up, and the exit code is 143 or 130 (training.interrupt).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from zr_ablate.console import silence
from zr_ablate.experiment.build import CONFIG_ERRORS, apply_precision, build, error_line
from zr_ablate.experiment.build import thread_budget as build_thread_budget
from zr_ablate.experiment.guard import SweepGuard
from zr_ablate.experiment.job_folder import job_lock, open_job
from zr_ablate.experiment.optuna_sweeper import objective
from zr_ablate.experiment.wandb_run import OFFLINE_MARKER, end_run, finish_run, start_run
from zr_ablate.records import (
    FAILED,
    FINAL_STATUSES,
    HYDRA,
    LOCK,
    SKIPPED,
)
from zr_ablate.training.interrupt import as_interrupted, raise_on_signals
from zr_ablate.training.job import run_job

silence()  # before Lightning or W&B say anything
log = logging.getLogger("run")
# Job folders are named from the overrides (not timestamps) so a rerun finds them; no overrides -> "default".


def thread_budget(cfg: DictConfig, hydra_cfg) -> int | None:
    """This job's torch threads: `threads`, or its share of the cores under the launcher (build.thread_budget)."""
    launcher = hydra_cfg.launcher
    n_jobs = launcher.get("n_jobs")  # joblib's jobs at once (<= 0: one per core)
    at_once = n_jobs if hydra_cfg.mode == RunMode.MULTIRUN and n_jobs is not None else 1
    return build_thread_budget(cfg.threads, launcher.get("cpus_per_task"), at_once)  # submitit: SLURM's cores


@hydra.main(version_base="1.3", config_path="pkg://zr_ablate.conf", config_name="config")
def main(cfg: DictConfig) -> str | float:
    silence()  # again: joblib's workers run this function without importing this file
    raise_on_signals()  # and in joblib's workers too
    hydra_cfg = HydraConfig.get()
    job_dir = hydra_cfg.runtime.output_dir
    optimising = hydra_cfg.sweeper.get("direction") is not None  # the sweeper reads what the job returns
    with job_lock(job_dir) as holder:
        if holder is None:
            return run(cfg, hydra_cfg, job_dir, optimising)
    line = f"{job_dir} is being run by {holder} (it holds {Path(job_dir) / LOCK})"
    if hydra_cfg.mode != RunMode.MULTIRUN:
        sys.exit(f"zr_ablate: error: {line}; rerun when it has ended to use its result")
    log.warning("skip: %s; this sweep leaves it to that process", line)
    launched = Path(job_dir) / HYDRA / "overrides.yaml"
    if launched.is_file():
        os.utime(launched)  # one of this command's jobs, for the summary; its files are the other process's
    return math.nan if optimising else SKIPPED


def run(cfg: DictConfig, hydra_cfg, job_dir: str, optimising: bool) -> str | float:
    """One job, its folder locked: skip it if final, else train it (resuming) and record how it ended. Returns
    its status, or under an optimising sweeper its objective."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)  # a resolver's error (no tuned study) is one line
    except CONFIG_ERRORS as e:
        sys.exit(f"zr_ablate: error: {error_line(e)}")
    previous = open_job(job_dir, cfg, config)
    if previous.get("status") in FINAL_STATUSES:
        return objective(previous) if optimising else previous["status"]
    threads = thread_budget(cfg, hydra_cfg)
    if threads:
        torch.set_num_threads(threads)
    precision = apply_precision(cfg.tf32)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        module, datamodule = build(cfg)
    except CONFIG_ERRORS as e:
        sys.exit(f"zr_ablate: error: {error_line(e)}")
    wandb_logger = start_run(
        cfg.logger.mode,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.sweep,
        name=hydra_cfg.job.override_dirname or "default",
        tags=[cfg.dropout.name, cfg.model.name, "ptb"],
        config=config,
        job_dir=job_dir,
        init_timeout=cfg.logger.init_timeout,
        run_id=previous.get("wandb_run_id"),
        quiet=cfg.logger.quiet,
        offline_marker=Path(hydra_cfg.sweep.dir) / OFFLINE_MARKER if hydra_cfg.mode == RunMode.MULTIRUN else None,
    )
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs["log_every_n_steps"] = cfg.logger.log_every_n_steps
    # A progress bar only on a terminal (Lightning's rich one); in a log file its carriage-return updates are
    # hundreds of lines, and the one line per epoch says enough.
    trainer_kwargs["enable_progress_bar"] = trainer_kwargs.get("enable_progress_bar", True) and sys.stdout.isatty()
    extra = {
        "wandb_run_id": wandb_logger.experiment.id if wandb_logger else None,
        "threads": threads,
        "precision": precision,
    }
    try:
        result = run_job(
            module,
            datamodule,
            job_dir,
            trainer_kwargs,
            config=config,
            test_protocol=cfg.data.test_protocol,
            extra=extra,
            loggers=[wandb_logger] if wandb_logger else None,
        )
    except Exception as e:
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        if not multirun and not isinstance(e, OSError):
            raise  # FinishWandbRun ends the W&B run with exit code 1
        finish_run(exit_code=1)
        if isinstance(e, OSError):  # a full disk, a folder gone: one line (its record says failed)
            line = f"job {job_dir} failed ({e}); free space or fix the folder, then rerun to resume"
            if not multirun:
                sys.exit(f"zr_ablate: error: {line}")
            log.error(line)
        else:
            # In a sweep one failed job must not stop the others: result.json says "failed", the
            # sweep's summary counts it and the sweep exits non-zero at the end.
            log.exception("job failed: %s", job_dir)
        return math.nan if optimising else FAILED
    except BaseException:  # Interrupted: the sweep stops here, and cli() sums it up
        finish_run(exit_code=1)
        raise
    end_run(result)
    print(
        f"{result['status']}: best val ppl {result['best_val_ppl']}, test ppl {result.get('test_ppl')} "
        f"({result['test_protocol']} protocol) -> {result['job_dir']}"
    )
    return objective(result) if optimising else result["status"]


def cli() -> int:
    """run.py's command line: Hydra's errors as one line, SIGTERM and SIGINT as the sweep's end (a summary
    and exit code 128 + the signal's number)."""
    raise_on_signals()
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for Hydra's whole trace
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises its errors, rather than print them on many lines
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        if full_error:
            raise
        sys.exit(f"zr_ablate: error: {error_line(e)}")
    except BaseException as e:
        interrupted = as_interrupted(e)
        if interrupted is None:
            raise
        if SweepGuard.current is not None:
            SweepGuard.current.summarise(SweepGuard.current.config, interrupted=interrupted.name)
        else:
            print(f"zr_ablate: {interrupted}; rerun the same command to resume", file=sys.stderr)
        return interrupted.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(cli())
