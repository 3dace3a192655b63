"""Where a packed sweep's groups train when not in the sweep's own process (GroupTask(own_process=True)):
hydra/launcher=packed's groups_at_once, or hydra/launcher=packed_slurm.

    statuses = run_groups(tasks, at_once=2, slurm=None, folder=sweep_dir)   # [[member status, ...] per group]

- at_once groups at a time on this machine, each in its own joblib worker process (a machine with many
  cores; on one GPU the groups share it);
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

from zr_ablate.experiment.packed_run import GroupTask, record_failed
from zr_ablate.experiment.slurm import partition_nodes, reason, request_of, resource_problem

log = logging.getLogger(__name__)


def run_groups(tasks: list[GroupTask], at_once: int, slurm: dict | None = None, folder: Path | None = None):
    """Every group's member statuses, in order."""
    if not tasks:
        return []
    if slurm is not None:
        return on_slurm(tasks, slurm, folder)
    from joblib import Parallel, delayed

    log.info("packed: %d groups, %d at once, each in its own process", len(tasks), at_once)
    return Parallel(n_jobs=at_once, backend="loky")(delayed(task)() for task in tasks)


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
            error = f"SLURM job {job.job_id} ended {job.state}: {reason(e)}"
            statuses.append(record_failed(task.jobs, error, check_locks=True))
    return statuses
