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
"""

from __future__ import annotations

import logging
import math
import os
import sys

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from zr_ablate.console import silence
from zr_ablate.experiment.build import CONFIG_ERRORS, apply_precision, build, error_line
from zr_ablate.experiment.optuna_sweeper import objective
from zr_ablate.experiment.wandb_run import end_run, finish_run, start_run
from zr_ablate.records import (
    FAILED,
    FINAL_STATUSES,
    RecordError,
    changed_settings,
    read_result,
    set_aside,
    stale_line,
)
from zr_ablate.training.job import run_job

silence()  # before Lightning or W&B say anything
log = logging.getLogger("run")
# Job folders are named from the overrides (not timestamps) so a rerun finds them; no overrides -> "default".


def thread_budget(cfg: DictConfig, hydra_cfg) -> int | None:
    """threads, or cores / concurrent jobs under a parallel launcher: two 2-thread jobs on 2 cores ran
    more than 5x slower than one (oversubscription), so each job gets its share."""
    if cfg.threads:
        return int(cfg.threads)
    launcher = hydra_cfg.launcher
    if launcher.get("cpus_per_task"):  # submitit: the cores SLURM (or the local queue) gives this job
        return int(launcher.cpus_per_task)
    n_jobs = launcher.get("n_jobs")  # joblib: n_jobs <= 0 means one job per core
    if hydra_cfg.mode == RunMode.MULTIRUN and n_jobs is not None and n_jobs != 1:
        cores = os.cpu_count() or 1
        return max(1, cores // (n_jobs if n_jobs > 0 else cores))
    return None


@hydra.main(version_base="1.3", config_path="pkg://zr_ablate.conf", config_name="config")
def main(cfg: DictConfig) -> str | float:
    silence()  # again: joblib's workers run this function without importing this file
    hydra_cfg = HydraConfig.get()
    job_dir = hydra_cfg.runtime.output_dir
    optimising = hydra_cfg.sweeper.get("direction") is not None  # the sweeper reads what the job returns
    try:
        previous = read_result(job_dir) or {}
        config = OmegaConf.to_container(cfg, resolve=True)  # a resolver's error (no tuned study) is one line
    except (RecordError, *CONFIG_ERRORS) as e:
        sys.exit(f"zr_ablate: error: {error_line(e)}")
    changed = changed_settings(previous.get("config") or {}, config)
    if changed and cfg.on_stale == "rerun":
        log.info(
            "rerun: %s ran with other settings (%s); its records are now in %s",
            job_dir,
            "; ".join(changed),
            set_aside(job_dir),
        )
        previous = {}
    elif changed and cfg.on_stale == "stop":
        sys.exit(f"zr_ablate: error: {stale_line(job_dir, changed)}")
    if previous.get("status") in FINAL_STATUSES:
        log.info("skip: %s is already %s (delete its result.json to run it again)", job_dir, previous["status"])
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
    except Exception:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise  # FinishWandbRun ends the W&B run with exit code 1
        # In a sweep one failed job must not stop the others: result.json says "failed", the
        # sweep's summary counts it and the sweep exits non-zero at the end.
        log.exception("job failed: %s", job_dir)
        finish_run(exit_code=1)
        return math.nan if optimising else FAILED
    end_run(result)
    print(
        f"{result['status']}: best val ppl {result['best_val_ppl']}, test ppl {result.get('test_ppl')} "
        f"({result['test_protocol']} protocol) -> {result['job_dir']}"
    )
    return objective(result) if optimising else result["status"]


if __name__ == "__main__":
    main()
