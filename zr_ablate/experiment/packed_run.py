"""One group of a packed sweep (experiment/packed_launcher.py): its jobs built as one packed model and trained.

    statuses = GroupTask(jobs, threads)()   # here, in a joblib worker or on a SLURM node (packed_executors.py)

What run.py does for one job, done once for the group where it is shared and per member where it is not:
threads, float32 precision and trainer.deterministic (shared: the members' settings are equal), the data
module (shared), the packed model (build.packed_model: each member from its own seed), a W&B run per member
(its own, resumed by the id its record holds), training and test (training/packed_job.run_packed), then
each member's run summary and final line. An error in the group is recorded in every unfinished member's
result.json; the sweep goes on with the next group. While the group trains, its log lines (each member's
prefixed with its name) go to every member's log file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf

from zr_ablate.console import silence
from zr_ablate.experiment import build
from zr_ablate.experiment.job_folder import job_lock, lock_holder
from zr_ablate.experiment.wandb_run import OFFLINE_MARKER, end_run, start_run
from zr_ablate.records import FAILED, FINAL_STATUSES, RESULT, SKIPPED, RecordError, read_result, write_json_atomic
from zr_ablate.training.packed_job import MemberJob, run_packed

log = logging.getLogger(__name__)
JOB_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log lines, elsewhere too


def _member(job, extra: dict) -> MemberJob:
    """The job's (a packed_launcher.Prepared) record and its own W&B run (continued when its record names one)."""
    cfg, config = job.cfg, OmegaConf.to_container(job.cfg, resolve=True)
    logger = start_run(
        cfg.logger.mode,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.sweep,
        name=job.name,
        tags=[cfg.dropout.name, cfg.model.name, "ptb", "packed"],
        config=config,
        job_dir=str(job.job_dir),
        init_timeout=cfg.logger.init_timeout,
        run_id=job.previous.get("wandb_run_id"),
        quiet=cfg.logger.quiet,
        alongside=True,
        offline_marker=job.job_dir.parent / OFFLINE_MARKER,  # the sweep folder's, as run.py's jobs use it
    )
    run = logger.experiment if logger else None
    return MemberJob(job.name, job.job_dir, config, extra | {"wandb_run_id": run.id if run else None}, run)


def ended(record: dict) -> bool:
    return record.get("status") in FINAL_STATUSES


def record_failed(jobs: list, error: str, check_locks: bool = False) -> list[str]:
    """Record the jobs that have not ended as failed with `error` (with check_locks, leaving those another
    process holds: it writes their records); returns each one's status."""
    statuses = []
    for job in jobs:
        try:
            record = read_result(job.job_dir) or {}
        except RecordError:  # a record it cannot use: this one replaces it
            record = {}
        record.setdefault("config", OmegaConf.to_container(job.cfg, resolve=True))
        if not ended(record) and not (check_locks and lock_holder(job.job_dir)):
            record.update(status=FAILED, error=error)
            write_json_atomic(Path(job.job_dir) / RESULT, record)
            log.error("job failed: %s (%s)", job.job_dir, error)
        statuses.append(record.get("status", SKIPPED))
    return statuses


def left_to_another(job) -> None:
    log.warning("skip: %s is being run by another process; this sweep leaves it", job.job_dir)


@contextmanager
def member_logs(jobs: list):
    """While a group trains, the log lines go to every member's log file instead of any other log file (in the
    sweep's process, that of the job prepared last)."""
    root = logging.getLogger()
    stashed = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    added = [logging.FileHandler(job.log_file) for job in jobs]
    for handler in added:
        handler.setFormatter(stashed[0].formatter if stashed else logging.Formatter(JOB_LOG_FORMAT))
    for handler in stashed:
        root.removeHandler(handler)
    for handler in added:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            root.removeHandler(handler)
            handler.close()
        for handler in stashed:
            root.addHandler(handler)


@dataclasses.dataclass
class GroupTask:
    """One group as a picklable call, for the sweep's own process, a joblib worker or a SLURM job."""

    jobs: list  # packed_launcher.Prepared, in member order
    threads: int | None  # torch threads (build.thread_budget), None for torch's own
    own_process: bool = False  # a worker or a node: it sets up its console and takes its members' locks itself

    def __call__(self) -> list[str]:
        """Each member's status: SKIPPED for a member whose folder another process holds, the recorded status of
        one that ended meanwhile (a requeued SLURM job, a second sweep). A worker or node holds its members'
        locks while it trains them, so that a rerun of the sweep meanwhile leaves them; an error there is
        recorded in its members' records, and the other groups go on."""
        if self.own_process:
            silence()
            logging.basicConfig(level=logging.INFO, format=JOB_LOG_FORMAT, force=True)
        statuses = {job.name: SKIPPED for job in self.jobs}
        with ExitStack() as locks:
            held = self.jobs
            if self.own_process:  # in the sweep's process, the launcher holds them
                held = [job for job in self.jobs if locks.enter_context(job_lock(job.job_dir)) is None]
            for job in self.jobs:
                if job not in held:
                    left_to_another(job)
            try:
                # Records read anew, now that the folders are held: a member may have ended since the sweep read
                # it, and a requeued job's members name their W&B runs.
                held = [dataclasses.replace(job, previous=read_result(job.job_dir) or {}) for job in held]
                statuses.update((job.name, job.previous["status"]) for job in held if ended(job.previous))
                held = [job for job in held if not ended(job.previous)]
                if held:
                    with member_logs(held):
                        statuses.update(zip((job.name for job in held), run_group(held, self.threads)))
            except (Exception, SystemExit) as e:
                if not self.own_process or (isinstance(e, SystemExit) and not isinstance(e.code, str)):
                    raise  # in the sweep's process as run.py raises; submitit's own exits (a requeue) pass
                log.exception("packed jobs failed: %s", "; ".join(job.name for job in held))
                statuses.update(zip((job.name for job in held), record_failed(held, f"{type(e).__name__}: {e}")))
        return [statuses[job.name] for job in self.jobs]

    def checkpoint(self, *args, **kwargs):
        """submitit calls this at a time limit or preemption: requeue the group; its members resume from their
        last checkpoints."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def run_group(jobs: list, threads: int | None = None) -> list[str]:
    """Train and test the jobs (packed_launcher.Prepared: config, folder, name, record so far) packed with
    `threads` torch threads; returns each one's status."""
    cfg = jobs[0].cfg
    if threads:
        torch.set_num_threads(threads)
    if cfg.trainer.get("deterministic"):  # what Lightning's Trainer(deterministic=True) sets, for this process
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    precision = build.apply_precision(cfg.tf32)
    log.info("packed: %d jobs in one model: %s", len(jobs), "; ".join(job.name for job in jobs))
    try:
        data = build.datamodule(cfg)
        data.setup()
        schedule, device = build.packed_schedule(cfg), build.packed_device(cfg)
        model = build.packed_model([job.cfg for job in jobs], len(data.vocab))
    except build.CONFIG_ERRORS as e:
        sys.exit(f"zr_ablate: error: {build.error_line(e)}")
    members = [_member(job, {"threads": threads, "precision": precision}) for job in jobs]
    try:
        results = run_packed(model, data, members, schedule, device)
    except BaseException as e:
        for member in members:
            if member.run is not None:
                member.run.finish(exit_code=1)
        if not isinstance(e, Exception):  # SIGTERM or Ctrl-C: the sweep stops (run.py's cli sums it up)
            raise
        # In a sweep a failed group must not stop the others: its members' records say "failed", the sweep's
        # summary counts them and the sweep exits non-zero at the end.
        log.exception("packed jobs failed: %s", "; ".join(job.name for job in jobs))
        return [FAILED] * len(jobs)
    for member, result in zip(members, results):
        if member.run is not None:
            end_run(result, member.run)
        print(
            f"[{member.name}] {result['status']}: best val ppl {result['best_val_ppl']}, test ppl "
            f"{result.get('test_ppl')} ({result['test_protocol']} protocol) -> {result['job_dir']}"
        )
    return [result["status"] for result in results]
