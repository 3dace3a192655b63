"""The SLURM launcher against a real single-node SLURM (.ci/slurm up: Debian's slurm-wlm 22.05 with
accounting), and its resource check on its own.

The cluster tests skip, saying why, only where the packages cannot be installed (no root, no Debian
registry); in CI they run."""

import json
import os
import shutil
import subprocess
import time

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.helpers import cmd, run
from zr_ablate.experiment.slurm import Node, gpus_of, request_of, resource_problem

# What a 2-core CI node can run; the tests' jobs write no W&B run.
SMALL_JOBS = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.gpus_per_node=0",
    "logger.mode=disabled",
]
# 20 epochs of several seconds (60k tokens: 20k trained 20 epochs in 53 s on a 2-core AMD EPYC, before the
# signal): long enough to outlast a 2-minute limit's warning signal (sent 60 s before the limit, Slurm's
# periodic check may move it by up to a minute), deterministic so that a resumed run can be compared bit for bit.
LONG = ["data.train_tokens=60000", "trainer.deterministic=true", "dropout=variational"]
TIMING = ["tokens_per_s", "train_s", "elapsed_s"]


@pytest.fixture(scope="module")
def slurm() -> dict:
    """The environment that reaches the test cluster (SLURM_CONF); the daemons stop after the module."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("a real SLURM needs root and Debian's packages (.ci/slurm up installs and starts it)")
    up = subprocess.run(["bash", ".ci/slurm", "up"], cwd=REPO, capture_output=True, text=True, timeout=900)
    if up.returncode != 0 and shutil.which("slurmctld") is None:
        pytest.skip(f"Debian's slurm-wlm packages cannot be installed here: {up.stderr.strip()[-300:]}")
    assert up.returncode == 0, up.stderr[-3000:]
    env = dict(os.environ, SLURM_CONF=up.stdout.strip().splitlines()[-1].removeprefix("SLURM_CONF="))
    if queue(env):  # jobs an interrupted earlier test run left on this private cluster would share its CPUs
        subprocess.run(["scancel", *queue(env)], env=env, check=True)
    yield env
    subprocess.run(["bash", ".ci/slurm", "down"], cwd=REPO, timeout=120)


def queue(env) -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env).stdout.split()


def requeued(env) -> set[str]:
    """Jobs that Slurm has requeued at least once (sacct lists each earlier run as REQUEUED)."""
    rows = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State"], capture_output=True, text=True, env=env
    )
    return {job for job, state in (r.split("|") for r in rows.stdout.split()) if state == "REQUEUED"}


def job_folder(sweep, setting: str):
    [folder] = [p for p in sweep.iterdir() if setting in p.name]
    return folder


@pytest.mark.slow
def test_a_sweep_on_slurm_completes_and_a_timed_out_job_resumes_to_the_uninterrupted_result(tmp_path, ptb_dir, slurm):
    """Two jobs with a 2-minute limit, one short, one long: the long one is signalled before its limit,
    requeued by submitit, resumes from last.ckpt in the same folder and ends exactly as a run never cut."""
    # The warning signal comes 30 s before the limit by the request, but Slurm's 30-s periodic check sends
    # it up to a minute earlier (seen here: 30-53 s into a 2-minute job with a 60-s delay): 30-90 s in.
    limits = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30"]
    sweep = subprocess.Popen(
        cmd(tmp_path / "slurm", ptb_dir, *SMALL_JOBS, *limits, *LONG, "trainer.max_epochs=20,1", multirun=True),
        cwd=REPO,
        env=slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Meanwhile, on the other core, the long job uninterrupted.
    whole = subprocess.Popen(
        cmd(tmp_path / "whole", ptb_dir, *LONG, "trainer.max_epochs=20", "logger.mode=disabled"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Slurm 22.05 signals a requeued job again about 30 s into each restart (seen here: nine 30-s runs in
    # a row), which would spend submitit's requeues on start-ups; once a job has hit its limit and been
    # requeued, it gets the time to finish.
    extended, deadline = set(), time.time() + 900
    while sweep.poll() is None:
        assert time.time() < deadline, "the sweep did not end"
        for job in (requeued(slurm) & set(queue(slurm))) - extended:  # sacct also lists earlier sweeps' jobs
            subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], env=slurm, check=True)
            extended.add(job)
        time.sleep(0.5)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-3000:]
    assert any(job.endswith("_0") for job in extended)  # the long job (the sweep's first) hit its limit
    out, err = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, err[-3000:]
    assert "2 completed, 0 diverged, 0 failed, 0 skipped" in out

    jobs = tmp_path / "slurm" / "adhoc"
    assert len(list(jobs.glob("*/result.json"))) == 2
    cut, ref = job_folder(jobs, "max_epochs=20"), job_folder(tmp_path / "whole" / "adhoc", "max_epochs=20")
    a, b = (json.loads((f / "result.json").read_text()) for f in (ref, cut))
    assert b["status"] == "completed" and b["resumed_from_epoch"] is not None  # it was requeued
    for key in ("best_val_ppl", "final_val_ppl", "final_train_ppl", "test_ppl", "epochs"):
        assert a[key] == b[key], key
    pd.testing.assert_frame_equal(
        pd.read_csv(ref / "epochs.csv").drop(columns=TIMING),
        pd.read_csv(cut / "epochs.csv").drop(columns=TIMING),
        check_exact=True,
    )
    assert queue(slurm) == []


@pytest.mark.slow
def test_a_cancelled_job_is_failed_in_the_summary_and_the_report(tmp_path, ptb_dir, slurm):
    from zr_ablate.analysis.runs import load_sweep

    sweep = subprocess.Popen(
        cmd(tmp_path, ptb_dir, *SMALL_JOBS, *LONG, "trainer.max_epochs=20", multirun=True),
        cwd=REPO,
        env=slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    record, deadline = tmp_path / "adhoc", time.time() + 300
    while not list(record.glob("*/checkpoints/last.ckpt")):  # training, one epoch done
        assert sweep.poll() is None and time.time() < deadline, sweep.stderr.read()[-3000:]
        time.sleep(0.5)
    [job_id] = queue(slurm)
    subprocess.run(["scancel", job_id], env=slurm, check=True)
    out, err = sweep.communicate(timeout=300)

    assert sweep.returncode != 0
    assert "0 completed, 0 diverged, 1 failed, 0 skipped" in out
    [result] = record.glob("*/result.json")
    failed = json.loads(result.read_text())
    assert failed["status"] == "failed" and "CANCELLED" in failed["error"], failed.get("error")
    runs, _ = load_sweep(record)
    assert runs["status"].tolist() == ["failed"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher, key", [("slurm", "hydra.launcher."), ("packed_slurm", "hydra.launcher.slurm.")])
def test_a_request_no_node_can_meet_stops_before_anything_is_submitted(tmp_path, ptb_dir, slurm, launcher, key):
    """The launchers' defaults (8 CPUs, 32 GB, 1 GPU a job or group) on the 2-core CI node: one line, no job."""
    proc = run(tmp_path, ptb_dir, f"hydra/launcher={launcher}", "logger.mode=disabled", multirun=True, env=slurm)
    assert proc.returncode != 0
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("zr_ablate: error:")]
    assert "can run a job asking for 8 CPUs, 32 GB and 1 GPUs" in line and "Traceback" not in proc.stderr
    assert f"{key}cpus_per_task=" in line and f"{key}gpus_per_node=0" in line
    assert not (tmp_path / "adhoc" / ".submitit").exists() and queue(slurm) == []


@pytest.mark.slow
def test_packed_groups_on_slurm_end_as_they_do_in_the_sweeps_process(tmp_path, ptb_dir, slurm):
    """hydra/launcher=packed_slurm: each group is one SLURM job; its members end with the numbers, records and
    log lines the same group gets in the sweep's own process."""
    sweep = ["dropout=none,variational", "threads=1", "trainer.deterministic=true", "trainer.max_epochs=1"]
    small = [x.replace("hydra.launcher.", "hydra.launcher.slurm.") for x in SMALL_JOBS[1:]]
    inline = run(tmp_path / "inline", ptb_dir, *sweep, "hydra/launcher=packed", "logger.mode=disabled", multirun=True)
    assert inline.returncode == 0, inline.stderr[-3000:]
    packed = run(tmp_path / "slurm", ptb_dir, *sweep, "hydra/launcher=packed_slurm", *small, multirun=True, env=slurm)
    assert packed.returncode == 0, packed.stderr[-3000:]
    assert "2 completed, 0 diverged, 0 failed, 0 skipped" in packed.stdout
    submitted = [p for p in (tmp_path / "slurm" / "adhoc" / ".submitit").iterdir() if p.is_dir()]
    assert len(submitted) == 1  # one SLURM job for the group
    for folder in (tmp_path / "inline" / "adhoc").glob("dropout=*"):
        a, b = (
            json.loads((root / "adhoc" / folder.name / "result.json").read_text())
            for root in (tmp_path / "inline", tmp_path / "slurm")
        )
        assert b["status"] == "completed" and b["packed_with"] == a["packed_with"] and len(b["packed_with"]) == 1
        for key in ("best_val_ppl", "final_train_ppl", "test_ppl"):
            assert a[key] == b[key], key
        assert f"[{folder.name}] epoch 1: lr" in (tmp_path / "slurm" / "adhoc" / folder.name / "run.log").read_text()
    assert queue(slurm) == []


# ---- the resource check, without a cluster ----------------------------------------------------------------


def test_gpus_are_counted_from_sinfo_gres():
    assert gpus_of("(null)") == 0
    assert gpus_of("gpu:2") == 2
    assert gpus_of("gpu:a100:4(S:0-1)") == 4
    assert gpus_of("gpu:a100:2,gpu:v100:1,shard:8") == 3


def test_a_request_is_what_one_job_takes_of_a_node():
    assert request_of({"cpus_per_task": 4, "tasks_per_node": 2, "mem_gb": 16, "gpus_per_node": 2}) == Node(8, 16, 2)
    assert request_of({"cpus_per_task": None, "gres": "gpu:1"}) == Node(1, 0, 1)


def test_the_resource_check_names_only_the_settings_to_lower():
    nodes = [Node(2, 23.5, 0), Node(64, 500, 0)]
    assert resource_problem("ci", Node(8, 32, 0), nodes) is None  # the big node can
    line = resource_problem("ci", Node(8, 32, 1), nodes)
    assert "1 GPUs" in line and "hydra.launcher.gpus_per_node=0" in line and "cpus_per_task" not in line
    # Each need is met by some node, but no node meets all of them.
    split = resource_problem("ci", Node(32, 400, 1), [Node(64, 8, 0), Node(2, 500, 4)])
    assert split and "a smaller request" in split
    assert "takes jobs" in resource_problem("gpu", Node(1, 1, 0), [])


def test_a_job_recorded_only_by_the_launcher_counts_in_the_summary(tmp_path, capsys):
    """A SLURM job cancelled while pending has no .hydra/, only the failed record the launcher wrote: the
    sweep summary still counts it (and exits non-zero); an older folder of an earlier command does not."""
    from omegaconf import OmegaConf

    from zr_ablate.experiment.guard import SweepGuard
    from zr_ablate.records import write_json_atomic

    old = tmp_path / "dropout=none"
    old.mkdir()
    write_json_atomic(old / "result.json", {"status": "failed"})
    os.utime(old / "result.json", (0, 0))
    guard = SweepGuard("zr_ablate.experiment.build.check")
    pending = tmp_path / "dropout=zaremba"
    pending.mkdir()
    write_json_atomic(pending / "result.json", {"status": "failed", "error": "SLURM job 7_1 ended CANCELLED"})
    with pytest.raises(SystemExit) as e:
        guard.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "sweep": "s"}))
    assert e.value.code == 1
    assert "0 completed, 0 diverged, 1 failed, 0 skipped; failed: dropout=zaremba" in capsys.readouterr().out
