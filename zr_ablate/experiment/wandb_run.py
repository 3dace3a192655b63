"""Weights & Biases: one run per Hydra job, named from its overrides and grouped by sweep.

- The mode never prompts: `auto` goes online when an API key is configured (WANDB_API_KEY or a netrc
  entry written by `wandb login`) and offline otherwise; WANDB_MODE, when set, wins over `auto`.
- Every run is finished, with the job's exit code, before the next job starts: by `end_run` after a
  job, and by the Hydra callback `FinishWandbRun` when a job raised. Without this the basic launcher
  (one process) and joblib's reused workers would fold several jobs into one W&B run.
- The run folder is `<job_dir>/wandb/`. result.json stays the source of truth; W&B is the dashboard.
- Packed members (hydra/launcher=packed) train in one process, each with its own run: `start_run(...,
  alongside=True)` opens one more run beside those already open (W&B's reinit="create_new"), and
  `end_run(result, run)` ends that one.
- Online, without a network: the job waits logger.init_timeout, then logs offline (`wandb sync` later). The
  first job of a sweep that finds W&B unreachable leaves OFFLINE_MARKER in the sweep folder, so the
  sweep's other jobs (in this process or another) go offline at once rather than each wait again.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback

from zr_ablate.records import COMPLETED, SUMMARY_FIELDS
from zr_ablate.schema import LOGGER_MODES

log = logging.getLogger(__name__)
OFFLINE_MARKER = ".wandb-offline"  # in a sweep folder: W&B was unreachable (removed when a sweep starts)


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> tuple[str, str]:
    """-> (online | offline | disabled, one line saying why)."""
    if mode not in LOGGER_MODES:
        raise ValueError(f"logger.mode must be one of {LOGGER_MODES}, got {mode!r}")
    if mode != "auto":
        return mode, f"W&B: {mode} (logger.mode={mode})"
    env = os.environ.get("WANDB_MODE")
    if env:
        resolved = {"dryrun": "offline", "offline": "offline", "disabled": "disabled"}.get(env, "online")
        return resolved, f"W&B: {resolved} (WANDB_MODE={env})"
    if logged_in():
        return "online", "W&B: online (logged in)"
    return "offline", (
        "W&B: offline (not logged in; `wandb login` to go online, `wandb sync <job>/wandb/"
        "offline-run-*` to upload these runs)"
    )


def start_run(
    mode: str,
    project: str,
    entity: str | None,
    group: str,
    name: str,
    tags: list[str],
    config: dict,
    job_dir: str,
    init_timeout: float = 30.0,
    run_id: str | None = None,
    quiet: bool = True,
    alongside: bool = False,
    offline_marker: Path | None = None,
):
    """Start this job's W&B run and wrap it for Lightning; None when disabled.

    `run_id` given (a resumed job): continue that run rather than start a second one. alongside: one of
    several runs open at once in this process (packed members); the runs already open stay open.
    `offline_marker` (a sweep's OFFLINE_MARKER): written when W&B is unreachable; where it exists, the run
    starts offline at once.
    """
    mode, why = resolve_mode(mode)
    if mode == "online" and offline_marker is not None and offline_marker.is_file():
        mode, why = "offline", f"W&B: offline (an earlier job of this sweep found W&B unreachable: {offline_marker})"
    log.info(why)
    if mode == "disabled":
        return None
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    if not alongside:
        finish_run(exit_code=1)  # a run still open here belongs to an earlier job of this process that died
    wandb.setup(wandb.Settings(silent=quiet))  # W&B's global settings: its login line comes before the run's
    kwargs = dict(
        project=project,
        entity=entity,
        group=group,
        name=name,
        job_type="train",
        tags=tags,
        config=config,
        dir=job_dir,
        id=run_id,
        resume="allow" if run_id else None,
        reinit="create_new" if alongside else None,
    )
    if mode == "online":
        log.info("W&B: starting the run online (waiting up to %.0f s for W&B; logger.init_timeout)", init_timeout)
    try:
        run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=init_timeout, silent=quiet), **kwargs)
    except Exception as e:  # no network, server down: keep the job, keep the record
        if mode != "online":
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("W&B: online start failed (%s); logging offline instead, `wandb sync` later", reason)
        if offline_marker is not None:
            offline_marker.write_text(reason + "\n")
        run = wandb.init(mode="offline", settings=wandb.Settings(silent=quiet), **kwargs)
    return WandbLogger(experiment=run)


def end_run(result: dict, run=None) -> None:
    """Copy the job's result into the run summary and finish it (non-zero exit unless completed). run: the
    job's run when several are open (packed members); else W&B's current one."""
    import wandb

    run = run or wandb.run
    if run is None:
        return
    run.summary.update({k: result[k] for k in SUMMARY_FIELDS if result.get(k) is not None})
    run.finish(exit_code=0 if result["status"] == COMPLETED else 1)


def finish_run(exit_code: int) -> None:
    import sys

    wandb = sys.modules.get("wandb")  # never import wandb just to learn that no run is open
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


class FinishWandbRun(Callback):
    """Hydra callback: a job that raised still ends its W&B run, with exit code 1."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        finish_run(exit_code=0 if job_return.status == JobStatus.COMPLETED else 1)
