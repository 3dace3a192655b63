"""Where a packed sweep's groups train: hydra/launcher=packed's n_jobs, or hydra/launcher=packed_slurm.

    statuses = run_groups(tasks, n_jobs=1, slurm=None, folder=sweep_dir)   # [[member status, ...] per group]

- n_jobs 1, no slurm: one group after another in the sweep's own process (one GPU: the group already fills
  it, and a second would only take turns with it);
- n_jobs > 1: that many groups at once on this machine, each in its own joblib worker process (many cores,
  or several GPUs each given to a worker by CUDA_VISIBLE_DEVICES in its environment);
- slurm: one SLURM job per group through submitit, with the settings of hydra/launcher=slurm (Hydra's
  submitit_slurm node). The request is checked against the partition's nodes before anything is submitted
  (experiment/slurm.py). A group that reaches its time limit or is preempted is requeued (GroupTask.checkpoint)
  and its members resume from their last checkpoints; a group SLURM ends without a result has each unfinished
  member recorded failed, with SLURM's state, and the sweep waits for the other groups.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from zr_ablate.experiment.packed_run import GroupTask
from zr_ablate.experiment.slurm import partition_nodes, reason, request_of, resource_problem
from zr_ablate.records import FAILED, FINAL_STATUSES, RESULT, RecordError, read_result, write_json_atomic

log = logging.getLogger(__name__)


def run_groups(tasks: list[GroupTask], n_jobs: int = 1, slurm: dict | None = None, folder: Path | None = None):
    """Every group's member statuses, in order. Tasks for workers or SLURM are made with own_process=True."""
    if slurm is not None:
        return on_slurm(tasks, slurm, folder)
    if n_jobs == 1:
        return [task() for task in tasks]
    from joblib import Parallel, delayed

    log.info("packed: %d groups, %d at once, each in its own process", len(tasks), min(n_jobs, len(tasks)))
    return Parallel(n_jobs=n_jobs, backend="loky")(delayed(task)() for task in tasks)


def executor_parameters(slurm: dict) -> tuple[dict, dict]:
    """hydra/launcher=slurm's settings -> (submitit.AutoExecutor's arguments, its update_parameters), as Hydra's
    submitit launcher maps them: the generic queue keys as they are, SLURM's own with the prefix slurm_."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    init = {"folder": slurm["submitit_folder"], "slurm_max_num_timeout": slurm.get("max_num_timeout", 0)}
    params = {
        k if k in generic else f"slurm_{k}": v
        for k, v in slurm.items()
        if k not in ("_target_", "submitit_folder", "max_num_timeout")
    }
    return init, params


def on_slurm(tasks: list[GroupTask], slurm: dict, folder: Path) -> list[list[str]]:
    partition, nodes = partition_nodes(slurm.get("partition"))
    problem = resource_problem(partition, request_of(slurm), nodes, key="hydra.launcher.slurm.")
    if problem:
        sys.exit(f"zr_ablate: error: {problem}")
    import submitit
    from submitit.core.utils import FailedJobError, UncompletedJobError

    init, params = executor_parameters({**slurm, "submitit_folder": str(folder / ".submitit" / "%j")})
    executor = submitit.AutoExecutor(cluster="slurm", **init)
    executor.update_parameters(**params)
    jobs = [executor.submit(task) for task in tasks]
    for task, job in zip(tasks, jobs):
        log.info("SLURM job %s: %s", job.job_id, "; ".join(member.name for member in task.jobs))
    statuses = []
    for task, job in zip(tasks, jobs):
        try:
            statuses.append(job.result())
        except (UncompletedJobError, FailedJobError) as e:
            statuses.append(failed(task, f"SLURM job {job.job_id} ended {job.state}: {reason(e)}"))
    return statuses


def failed(task: GroupTask, error: str) -> list[str]:
    """Record the group's unfinished members failed (their records kept otherwise); returns their statuses."""
    statuses = []
    for member in task.jobs:
        try:
            record = read_result(member.job_dir) or {}
        except RecordError:  # a record it cannot use: this one replaces it
            record = {}
        record.setdefault("config", OmegaConf.to_container(member.cfg, resolve=True))
        if record.get("status") not in FINAL_STATUSES:
            record.update(status=FAILED, error=error)
            write_json_atomic(Path(member.job_dir) / RESULT, record)
            log.error("job failed: %s (%s)", member.job_dir, error)
        statuses.append(record["status"])
    return statuses
