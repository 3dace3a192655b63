"""The SLURM launcher (hydra/launcher=slurm): Hydra's submitit launcher, made to fail fast and lose no job.

Hydra's own launcher submits whatever it is given and then waits on each job in turn. On a cluster that
cannot satisfy the request (the defaults ask for a GPU, 32 GB and 8 CPUs a job) sbatch either refuses
with a traceback or the jobs pend forever; and the first job SLURM ends without a result (cancelled, out of
requeues, a node failure) raises out of the launcher, so the sweep stops there with no summary while the
other jobs run on unreported. Here:
- before anything is submitted, the request per job is compared with the nodes of the partition that are
  up (sinfo); if none could ever run it, one line names the settings to change;
- a job SLURM ended without a result is recorded as failed in its result.json, with SLURM's state, and
  the sweep goes on waiting for the others, then sums up as usual (guard.SweepGuard).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from unittest import mock

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher

from zr_ablate.experiment.job_folder import job_record
from zr_ablate.records import FAILED, RESULT, RecordError, read_result, write_json_atomic

log = logging.getLogger(__name__)
# sinfo's compact node states (%t) in which a node will not take new jobs.
UNUSABLE = ("down", "drain", "drng", "fail", "inval", "maint", "futr")


@dataclass(frozen=True)
class Node:
    cpus: int
    mem_gb: float
    gpus: int


def gpus_of(gres: str) -> int:
    """GPUs in sinfo's %G, e.g. 'gpu:2', 'gpu:a100:4(S:0-1)', '(null)'."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def partition_nodes(partition: str | None) -> tuple[str, list[Node]]:
    """The partition's name (the default one when None) and its nodes that take jobs, from sinfo."""
    if shutil.which("sinfo") is None:
        sys.exit(
            "zr_ablate: error: hydra/launcher=slurm needs SLURM's commands (sinfo, sbatch) on PATH; run on the "
            "cluster's login node, or use hydra/launcher=local_submitit on one machine"
        )
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%t"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        sys.exit(f"zr_ablate: error: sinfo failed ({out.stderr.strip().splitlines()[-1:]}); is SLURM reachable?")
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 4]
    if partition is None:
        partition = next((p.rstrip("*") for p, *_ in rows if p.endswith("*")), None)
    nodes = [
        Node(int(cpus), int(mem) / 1024, gpus_of(gres))
        for p, cpus, mem, gres, state in rows
        if p.rstrip("*") == partition and not state.rstrip("*~#!%$@^-").startswith(UNUSABLE)
    ]
    return partition, nodes


def request_of(params: dict) -> Node:
    """What one job asks of a node: CPUs for all its tasks, memory, GPUs (hydra.launcher's settings)."""
    tasks = params.get("tasks_per_node") or 1
    gpus = params.get("gpus_per_node") or (params.get("gpus_per_task") or 0) * tasks
    if not gpus and params.get("gres"):
        gpus = gpus_of(params["gres"])
    return Node((params.get("cpus_per_task") or 1) * tasks, params.get("mem_gb") or 0, gpus)


def resource_problem(
    partition: str | None, request: Node, nodes: list[Node], key: str = "hydra.launcher."
) -> str | None:
    """The one line that stops a sweep no node could run, naming the settings to change (under `key`); None if
    one can."""
    where = f"SLURM partition {partition!r}" if partition else "SLURM (no default partition)"
    if not nodes:
        return f"no node of {where} takes jobs (all down, drained or absent); pass {key}partition=<another>"
    if any(n.cpus >= request.cpus and n.mem_gb >= request.mem_gb and n.gpus >= request.gpus for n in nodes):
        return None
    most = Node(max(n.cpus for n in nodes), max(n.mem_gb for n in nodes), max(n.gpus for n in nodes))
    fixes = []
    if request.cpus > most.cpus:
        fixes.append(f"{key}cpus_per_task={most.cpus}")
    if request.mem_gb > most.mem_gb:
        fixes.append(f"{key}mem_gb={int(most.mem_gb)}")
    if request.gpus > most.gpus:
        fixes.append(f"{key}gpus_per_node={most.gpus}")
    fixes = fixes or ["a smaller request (no single node has all of it)"]
    return (
        f"no node of {where} can run a job asking for {request.cpus} CPUs, {request.mem_gb:g} GB and "
        f"{request.gpus} GPUs (the most a node has: {most.cpus} CPUs, {int(most.mem_gb)} GB, {most.gpus} GPUs); "
        f"pass {' '.join(fixes)}, or another {key}partition"
    )


def reason(error: Exception) -> str:
    """The line of a submitit error that says why: the job's own exception or one-line error if its trace
    holds one (submitit's message starts with boilerplate), else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if re.match(r"^([\w.]+(Error|Exception|Exit|Interrupt)\b|zr_ablate: error)", line)]
    return (said or lines or [type(error).__name__])[-1 if said else 0]


class SlurmLauncher(HydraSlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        partition, nodes = partition_nodes(self.params.get("partition"))
        problem = resource_problem(partition, request_of(self.params), nodes)
        if problem:
            sys.exit(f"zr_ablate: error: {problem}")
        import submitit
        from submitit.core.utils import FailedJobError, UncompletedJobError

        results = submitit.Job.results

        def settled(job):  # Job.results, but a job SLURM ended without a result becomes a failed record
            try:
                return results(job)
            except (UncompletedJobError, FailedJobError) as e:
                return [self._failed(job, e)]

        # Hydra's launch waits with [j.results()[0] for j in jobs]; the patch lasts only for this call.
        with mock.patch.object(submitit.Job, "results", settled):
            return super().launch(job_overrides, initial_job_idx)

    def _failed(self, job, error: Exception) -> JobReturn:
        """Record the job as failed (its folder made if it never started) and return what run.py returns
        for a failed job in a sweep, so that Hydra waits for the rest."""
        overrides = list(job.submission().args[0])
        folder, settings = job_record(self.hydra_context.config_loader.load_sweep_config(self.config, overrides))
        folder.mkdir(parents=True, exist_ok=True)
        try:
            record = read_result(folder) or {"config": settings}
        except RecordError:  # a record it cannot use: the launcher's own replaces it
            record = {"config": settings}
        record.update(status=FAILED, error=f"SLURM job {job.job_id} ended {job.state}: {reason(error)}")
        write_json_atomic(folder / RESULT, record)
        log.error("job failed: %s (%s)", folder, record["error"])
        ret = JobReturn(overrides=overrides, working_dir=str(folder), status=JobStatus.COMPLETED)
        ret.return_value = FAILED
        return ret
