"""The packed launcher (hydra/launcher=packed): a sweep's jobs of one shape trained together in one process.

    python run.py -m dropout=none,naive,zaremba,variational seed=1,2,3 model=medium hydra/launcher=packed

An ablation is many small jobs that differ only in where dropout goes and in the seed; on one GPU each
leaves most of the device idle. Here:
- every job's folder is prepared as Hydra's basic launcher prepares it (.hydra/, its log file) and its
  record is read as run.py reads it: a completed or diverged job is skipped, a record made with other
  settings is set aside (on_stale=rerun) or stops the sweep (stop), an interrupted job resumes;
- the jobs left are grouped: equal settings but for the dropout node and the seed, the same epoch to
  resume from, at most `max_members` a group (in sweep order). A job whose placement cannot be packed
  (untied gates) runs alone, through run.py as the basic launcher runs it;
- each group trains as one packed model (experiment/packed_run.py): one after another in this process,
  `groups_at_once` at once in worker processes, or one SLURM job each (hydra/launcher=packed_slurm;
  experiment/packed_executors.py). Every member's job folder ends as its solo job's would
  (training/packed_job.py). A rerun after a kill resumes each member from its checkpoint; members already
  finished are skipped, so a group can shrink. Each member's folder is locked while its group trains, as
  run.py locks a job, by the process that trains it (this one, a worker, a SLURM job): a member another
  process is running is left to it, also by a rerun of the sweep while the first one's SLURM jobs go on.
The sweep's pre-check and stale-settings guard (experiment/guard.py) run before this, for every job.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from zr_ablate.experiment.build import thread_budget
from zr_ablate.experiment.job_folder import job_lock, lock_holder, open_job
from zr_ablate.experiment.optuna_sweeper import objective
from zr_ablate.records import (
    FINAL_STATUSES,
    SKIPPED,
    job_name,
    read_result,
)

log = logging.getLogger(__name__)
PER_MEMBER = ("dropout", "seed", "study")  # what members of one group may differ in (a study is named by dropout)


@dataclass
class Prepared:
    """One job of the sweep, its folder made and its record read."""

    cfg: DictConfig  # the job's config (no hydra node)
    job_dir: Path
    name: str  # its folder's name
    previous: dict  # its record so far ({} when it starts afresh)
    log_file: Path


def prepare(cfg: DictConfig) -> Prepared | str:
    """Hydra's task for one job of a packed sweep (run inside hydra.core.utils.run_job, which made the
    folder): its record and .hydra/ files as run.py takes them. Returns the final status of a job to skip."""
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    previous = open_job(job_dir, cfg, OmegaConf.to_container(cfg, resolve=True))
    if previous.get("status") in FINAL_STATUSES:
        return previous["status"]
    log_file = job_dir / f"{hydra_cfg.job.name}.log"
    return Prepared(cfg, job_dir, job_name(hydra_cfg.job.override_dirname), previous, log_file)


def group_key(job: Prepared) -> str:
    """Jobs with equal keys can be packed: every setting but PER_MEMBER, and the epoch they resume from."""
    from zr_ablate.training.job import checkpoint_epochs, last_checkpoint

    settings = {k: v for k, v in OmegaConf.to_container(job.cfg, resolve=True).items() if k not in PER_MEMBER}
    checkpoint = last_checkpoint(str(job.job_dir))
    try:
        epochs = checkpoint_epochs(checkpoint) if checkpoint else 0
    except RuntimeError as e:
        sys.exit(f"zr_ablate: error: {e}")
    return json.dumps([settings, epochs], sort_keys=True, default=str)


def groups(jobs: list[Prepared], max_members: int) -> list[list[Prepared]]:
    """The packable jobs in groups of equal keys, in sweep order, at most max_members each."""
    by_key: dict[str, list[Prepared]] = {}
    for job in jobs:
        by_key.setdefault(group_key(job), []).append(job)
    return [same[i : i + max_members] for same in by_key.values() for i in range(0, len(same), max_members)]


def why_alone(job: Prepared, here: bool = True) -> str | None:
    """Why a job cannot be packed (its placement, or a Trainer setting the packed loop does not follow), or
    None. here: the groups train on this machine, so its device is checked too (on SLURM, the node checks)."""
    from zr_ablate.experiment.build import dropout_spec, packed_device, packed_schedule
    from zr_ablate.model.packed import unpackable

    try:
        packed_schedule(job.cfg)
        if here:
            packed_device(job.cfg)
    except ValueError as e:
        return str(e)
    return unpackable(dropout_spec(job.cfg))


class PackedLauncher(Launcher):
    def __init__(self, max_members: int = 12, groups_at_once: int = 1, slurm: dict | None = None):
        for key, value in (("max_members", max_members), ("groups_at_once", groups_at_once)):
            if not isinstance(value, int) or value < 1:
                sys.exit(f"zr_ablate: error: hydra.launcher.{key}={value!r}; it must be an integer >= 1")
        self.max_members, self.groups_at_once = max_members, groups_at_once
        self.slurm = None if slurm is None else dict(OmegaConf.to_container(slurm, resolve=True))
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _job(self, task, overrides: Sequence[str], idx: int) -> JobReturn:
        """One job through Hydra's run_job (its folder, .hydra/, logging, callbacks) with `task`."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def threads(self, cfg: DictConfig, at_once: int) -> int | None:
        """A group's torch threads: `threads`, else SLURM's cores for it, else the cores / groups at once."""
        cpus = self.slurm.get("cpus_per_task") if self.slurm else None
        return thread_budget(cfg.threads, cpus, 1 if self.slurm else at_once)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from zr_ablate.experiment.packed_executors import run_groups
        from zr_ablate.experiment.packed_run import GroupTask, left_to_another

        setup_globals()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        returns = [self._job(prepare, overrides, initial_job_idx + i) for i, overrides in enumerate(job_overrides)]
        for ret in returns:
            if ret.status.name == "FAILED":  # prepare raised: an error of this command, not of a job
                raise ret.return_value
        todo = [(i, ret.return_value) for i, ret in enumerate(returns) if isinstance(ret.return_value, Prepared)]
        alone = {i: why for i, job in todo if (why := why_alone(job, here=self.slurm is None))}
        if alone and self.slurm is not None:  # run.py would train them here, on the submitting host
            i, why = next(iter(alone.items()))
            sys.exit(
                f"zr_ablate: error: hydra/launcher=packed_slurm cannot pack {returns[i].return_value.name} ({why}); "
                f"run such jobs with hydra/launcher=slurm"
            )
        for i, why in alone.items():
            log.info("runs alone: %s (%s)", returns[i].return_value.name, why)
            returns[i] = self._job(self.task_function, job_overrides[i], initial_job_idx + i)
        index = {id(job): i for i, job in todo}
        packable = groups([job for i, job in todo if i not in alone], self.max_members)
        at_once = min(self.groups_at_once, len(packable))

        def settle(task, statuses) -> None:
            for job, status in zip(task.jobs, statuses):
                returns[index[id(job)]].return_value = status

        def free(group: list[Prepared], holder) -> list[Prepared]:
            """The group's jobs nobody else holds (holder: take or look at a job's lock); the others skipped."""
            taken = [job for job in group if holder(job.job_dir) is None]
            for job in group:
                if job not in taken:
                    left_to_another(job)
                    returns[index[id(job)]].return_value = SKIPPED
            return taken

        if self.slurm is None and at_once <= 1:  # here, one group after another, each locked while it trains
            for group in packable:
                with ExitStack() as locks:
                    if jobs := free(group, lambda folder: locks.enter_context(job_lock(folder))):
                        task = GroupTask(jobs, self.threads(jobs[0].cfg, 1))
                        settle(task, task())
        else:  # in worker processes or SLURM jobs, which take the locks themselves; here only a look
            tasks = [
                GroupTask(jobs, self.threads(jobs[0].cfg, at_once), own_process=True)
                for group in packable
                if (jobs := free(group, lock_holder))
            ]
            folder = Path(str(self.config.hydra.sweep.dir))
            for task, statuses in zip(tasks, run_groups(tasks, at_once, self.slurm, folder)):
                settle(task, statuses)
        if self.config.hydra.sweeper.get("direction") is not None:  # an optimising sweeper reads a number
            for ret in returns:
                if isinstance(ret.return_value, str):
                    ret.return_value = objective(read_result(ret.hydra_cfg.hydra.runtime.output_dir) or {})
        return returns
