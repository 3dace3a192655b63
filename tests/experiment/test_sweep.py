"""Sweeps that survive: resume after SIGKILL, skip finished jobs, isolate failures, named grids, launchers."""

import itertools
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import REPO
from tests.helpers import WANDB_CLI, cmd, run
from zr_ablate.experiment.job_folder import job_lock
from zr_ablate.records import LOCK
from zr_ablate.schema import CONF_DIR

pytestmark = pytest.mark.slow  # whole sweeps in subprocesses

# A tiny model on 20k training tokens: 1,000 windows an epoch, a few seconds, long enough to kill mid-epoch.
RESUMABLE = [
    "data.train_tokens=20000",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "dropout=variational",
    "logger.mode=offline",
    "sweep=resume",
]
TIMING = ["tokens_per_s", "train_s", "elapsed_s"]


def test_sigkilled_job_resumes_to_the_same_result_as_an_uninterrupted_run(tmp_path, ptb_dir):
    whole = run(tmp_path / "whole", ptb_dir, *RESUMABLE)
    assert whole.returncode == 0, whole.stderr[-3000:]

    proc = subprocess.Popen(
        cmd(tmp_path / "cut", ptb_dir, *RESUMABLE),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    job = tmp_path / "cut" / "resume" / next(p.name for p in (tmp_path / "whole" / "resume").iterdir())
    deadline = time.time() + 300
    while not (job / "checkpoints" / "last.ckpt").exists():  # the end of epoch 1
        assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 2
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its W&B service, with no chance to clean up
    proc.wait()
    killed = json.loads((job / "result.json").read_text())
    assert killed["status"] == "running" and len(pd.read_csv(job / "epochs.csv")) < 3

    again = run(tmp_path / "cut", ptb_dir, *RESUMABLE)
    assert again.returncode == 0, again.stderr[-3000:]
    a = json.loads((tmp_path / "whole" / "resume" / job.name / "result.json").read_text())
    b = json.loads((job / "result.json").read_text())
    assert b["status"] == "completed" and b["resumed_from_epoch"] in (1, 2)
    for key in ("best_val_ppl", "final_val_ppl", "final_train_ppl", "test_ppl", "epochs"):
        assert a[key] == b[key], key  # bit-identical, not approximately equal
    curve_a = pd.read_csv(tmp_path / "whole" / "resume" / job.name / "epochs.csv").drop(columns=TIMING)
    curve_b = pd.read_csv(job / "epochs.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(curve_a, curve_b, check_exact=True)
    # The resumed process continued the same W&B run.
    logs = sorted(job.glob("wandb/offline-run-*/run-*.wandb"))
    # (The killed process's log may end before its run record was flushed; its file name carries the id.)
    assert len(logs) == 2 and {log.stem.removeprefix("run-") for log in logs} == {b["wandb_run_id"]}
    assert run_id(logs[-1]) == b["wandb_run_id"]


# Long enough to signal mid-epoch (1,000 windows an epoch), no W&B run.
INTERRUPTIBLE = ["data.train_tokens=20000", "logger.mode=disabled", "sweep=sig"]


def default_signal(signum: int):
    """For Popen's preexec_fn: the child starts with `signum`'s default action, as from a terminal. A test run
    started in the background (`cmd &`, nohup) ignores SIGINT, and so, rightly, would the job it starts."""
    return lambda: signal.signal(signum, signal.SIG_DFL)


def signal_after_first_checkpoint(out: Path, ptb_dir, signum: int, *args, multirun=False, epochs: int = 2):
    """Start run.py, send `signum` once a job has finished its first epoch, and return (process, stdout, stderr).
    epochs: of the job; more leave the signal more time to arrive before the job ends, on a busy machine."""
    proc = subprocess.Popen(
        cmd(out, ptb_dir, *INTERRUPTIBLE, f"trainer.max_epochs={epochs}", *args, multirun=multirun),
        preexec_fn=default_signal(signum),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not list(out.glob("sig/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signum)
    return proc, *proc.communicate(timeout=300)


def test_sigterm_ends_a_sweep_non_zero_with_a_summary_and_the_rerun_resumes(tmp_path, ptb_dir):
    """What a scheduler, `timeout` or a container stop sends: exit 143 (not 0), a summary line, the job's
    record says it was interrupted, the next job never starts, and the same command resumes."""
    placements = "dropout=none,variational"
    proc, out, err = signal_after_first_checkpoint(tmp_path, ptb_dir, signal.SIGTERM, placements, multirun=True)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert "sweep sig (" in out and "interrupted by SIGTERM" in out and "0 completed, 0 diverged, 1 failed" in out
    [record] = [json.loads(p.read_text()) for p in tmp_path.glob("sig/*/result.json")]
    assert record["status"] == "failed" and record["error"].startswith("interrupted by SIGTERM; rerun")

    again = run(tmp_path, ptb_dir, *INTERRUPTIBLE, "trainer.max_epochs=2", placements, multirun=True)
    assert again.returncode == 0 and "2 completed, 0 diverged, 0 failed" in again.stdout, again.stderr[-3000:]
    resumed = json.loads(
        (
            tmp_path / "sig" / "data.train_tokens=20000,dropout=none,model=tiny,trainer.max_epochs=2" / "result.json"
        ).read_text()
    )
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 1


def test_sigint_ends_a_single_run_with_130_and_its_record_says_interrupted(tmp_path, ptb_dir):
    """Ctrl-C: exit 130, one line saying so, and a record saying "interrupted by SIGINT" (Lightning's own
    handling would record "SystemExit: 1")."""
    proc, out, err = signal_after_first_checkpoint(tmp_path, ptb_dir, signal.SIGINT, "dropout=none", epochs=10)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "zr_ablate: interrupted by SIGINT; rerun the same command to resume"
    [record] = [json.loads(p.read_text()) for p in tmp_path.glob("sig/*/result.json")]
    assert record["status"] == "failed" and record["error"].startswith("interrupted by SIGINT; rerun")


def test_an_interrupted_sweep_records_the_jobs_its_workers_left_running(tmp_path, capsys):
    """joblib's workers die with the sweep (SIGKILL), leaving records at running: the summary records those
    that ran on this machine as interrupted, and leaves one whose lock names another machine to it."""
    from omegaconf import OmegaConf

    from zr_ablate.experiment.guard import SweepGuard

    config = {"model": {"name": "tiny"}, "dropout": {"name": "none"}, "seed": 1}
    for name, host in (("here", socket.gethostname()), ("there", "another-node")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text("[]\n")
        (tmp_path / name / "result.json").write_text(json.dumps({"status": "running", "config": config}))
        (tmp_path / name / LOCK).write_text(f"pid 1 on host {host}\n")  # its process gone
    guard = SweepGuard("zr_ablate.experiment.build.check")
    guard.started = 0
    guard.summarise(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "sweep": "s"}), "SIGTERM")
    assert "interrupted by SIGTERM (the jobs it had not started are left for a rerun): 0 completed" in (
        capsys.readouterr().out
    )
    here, there = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("here", "there"))
    assert here["status"] == "failed" and here["error"].startswith("interrupted by SIGTERM (the sweep was)")
    assert there["status"] == "running"


def test_two_sweeps_into_one_folder_train_each_job_once(tmp_path, ptb_dir):
    """Started together: the second reaches a job the first is running and skips it (its lock), or finds it
    completed; no job is trained twice, no epoch recorded twice."""
    args = ["dropout=none,variational", "data.train_tokens=20000", "trainer.max_epochs=1", "logger.mode=disabled"]
    sweeps = [
        subprocess.Popen(
            cmd(tmp_path, ptb_dir, *args, multirun=True),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    console = "".join(out + err for out, err in (s.communicate(timeout=600) for s in sweeps))
    assert [s.returncode for s in sweeps] == [0, 0], console[-3000:]
    assert console.count("completed: best val ppl") == 2  # one training per job, across both sweeps
    jobs = [p for p in (tmp_path / "adhoc").iterdir() if p.is_dir()]
    assert len(jobs) == 2
    for job in jobs:
        assert pd.read_csv(job / "epochs.csv")["epoch"].tolist() == [1]
        assert json.loads((job / "result.json").read_text())["status"] == "completed"


def test_a_job_another_process_holds_is_skipped_or_refused_and_taken_over_once_free(tmp_path, ptb_dir):
    """While this test holds a job's lock, as a sweep running it would: a sweep skips that job with one line
    naming the holder (and trains the other), a single run of it is one line; once the holder is gone,
    leaving its lock file behind, the job runs."""
    job = tmp_path / "adhoc" / "dropout=none,model=tiny,trainer.max_epochs=1"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- dropout=none\n")
    config = {"model": {"name": "tiny"}, "dropout": {"name": "none"}, "seed": 1}
    (job / "result.json").write_text(json.dumps({"status": "running", "config": config}))
    args = ["trainer.max_epochs=1", "logger.mode=disabled"]
    holder = f"pid {os.getpid()} on host {socket.gethostname()}"
    with job_lock(job):
        sweep = run(tmp_path, ptb_dir, "dropout=none,zaremba", *args, multirun=True)
        single = run(tmp_path, ptb_dir, "dropout=none", *args)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert f"skip: {job} is being run by {holder}" in sweep.stdout + sweep.stderr
    assert f"1 completed, 0 diverged, 0 failed, 1 skipped; running in another process: {job.name} ({holder})" in (
        sweep.stdout
    )
    assert json.loads((job / "result.json").read_text())["status"] == "running"  # left to its holder
    assert single.returncode != 0 and "Traceback" not in single.stderr
    [line] = single.stderr.strip().splitlines()
    assert line.startswith(f"zr_ablate: error: {job} is being run by {holder}")

    (job / LOCK).write_text("pid 1 on host a-node-that-died\n")  # its process gone, its lock file left
    again = run(tmp_path, ptb_dir, "dropout=none,zaremba", *args, multirun=True)
    assert again.returncode == 0 and "1 completed, 0 diverged, 0 failed, 1 skipped" in again.stdout
    assert json.loads((job / "result.json").read_text())["status"] == "completed"


def run_id(log: Path) -> str:
    out = subprocess.run(
        [WANDB_CLI, "leet", "inspect", "--summary", "--json", str(log)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)["run_id"]


def test_rerun_skips_completed_jobs_and_says_so(tmp_path, ptb_dir):
    first = run(tmp_path, ptb_dir, "dropout=none,zaremba", "logger.mode=disabled", multirun=True)
    assert first.returncode == 0 and "2 completed, 0 diverged, 0 failed, 0 skipped" in first.stdout
    results = sorted(tmp_path.glob("adhoc/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    again = run(tmp_path, ptb_dir, "dropout=none,zaremba", "logger.mode=disabled", multirun=True)
    assert again.returncode == 0 and "0 completed, 0 diverged, 0 failed, 2 skipped" in again.stdout
    assert [p.stat().st_mtime_ns for p in results] == stamps


def test_failed_and_diverged_jobs_do_not_stop_the_sweep(tmp_path, ptb_dir):
    # lr 1e6 sends the loss to inf or NaN (it used to end "completed" with inf perplexities); Lightning refuses
    # gradient_clip_val under our manual optimisation once the job runs: a failure no pre-check sees.
    proc = run(
        tmp_path,
        ptb_dir,
        "dropout=zaremba",
        "optim.lr=1.0,1e6",
        "+trainer.gradient_clip_val=null,1.0",
        "logger.mode=disabled",
        multirun=True,
    )
    assert proc.returncode != 0
    assert "1 completed, 1 diverged, 2 failed, 0 skipped" in proc.stdout
    results = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("adhoc/*/result.json")}
    assert {name: r["status"] for name, r in results.items()} == {
        "+trainer.gradient_clip_val=null,dropout=zaremba,model=tiny,optim.lr=1.0": "completed",
        "+trainer.gradient_clip_val=null,dropout=zaremba,model=tiny,optim.lr=1000000.0": "diverged",
        "+trainer.gradient_clip_val=1.0,dropout=zaremba,model=tiny,optim.lr=1.0": "failed",
        "+trainer.gradient_clip_val=1.0,dropout=zaremba,model=tiny,optim.lr=1000000.0": "failed",
    }
    diverged = results["+trainer.gradient_clip_val=null,dropout=zaremba,model=tiny,optim.lr=1000000.0"]
    assert "nats/token" in diverged["error"] and diverged.get("test_ppl") is None


def test_submitit_local_launcher_runs_real_processes(tmp_path, ptb_dir):
    proc = run(
        tmp_path,
        ptb_dir,
        "dropout=none,variational",
        "hydra/launcher=local_submitit",
        "logger.mode=disabled",
        multirun=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 completed" in proc.stdout
    results = [json.loads(p.read_text()) for p in tmp_path.glob("adhoc/*/result.json")]
    assert [r["status"] for r in results] == ["completed", "completed"] and {r["threads"] for r in results} == {1}
    assert list(tmp_path.glob("adhoc/.submitit/*"))  # really went through submitit


def test_a_record_made_with_other_settings_is_never_silently_reused(tmp_path, ptb_dir):
    """The profile changed since a job completed (here: its recorded hidden size edited): a rerun stops with
    one line naming the setting, keeps the record with on_stale=keep, and with on_stale=rerun sets the old
    records aside and trains again."""
    args = ["dropout=zaremba,none", "logger.mode=disabled", "trainer.max_epochs=1"]
    assert run(tmp_path, ptb_dir, *args, multirun=True).returncode == 0
    job = tmp_path / "adhoc" / "dropout=zaremba,model=tiny,trainer.max_epochs=1"
    record = json.loads((job / "result.json").read_text())
    record["config"]["model"]["hidden"] = 32  # as if the tiny profile had said 32 then
    (job / "result.json").write_text(json.dumps(record))
    saved = job / ".hydra" / "config.yaml"
    saved.write_text(saved.read_text().replace("hidden: 16", "hidden: 32"))  # Hydra's copy said so too
    before, before_saved = (job / "result.json").read_text(), saved.read_text()

    stopped = run(tmp_path, ptb_dir, *args, multirun=True)
    [line] = [x for x in stopped.stderr.splitlines() if x.startswith("zr_ablate: error:")]
    assert stopped.returncode != 0 and "was run with other settings (model.hidden: 32 -> 16)" in line
    assert "on_stale=rerun" in line and (job / "result.json").read_text() == before  # nothing ran
    single = run(tmp_path, ptb_dir, "dropout=zaremba", "logger.mode=disabled", "trainer.max_epochs=1")
    assert single.returncode != 0 and "model.hidden: 32 -> 16" in single.stderr  # a single job checks too

    kept = run(tmp_path, ptb_dir, *args, "on_stale=keep", multirun=True)
    assert kept.returncode == 0 and "0 completed, 0 diverged, 0 failed, 2 skipped" in kept.stdout
    assert (job / "result.json").read_text() == before
    assert saved.read_text() == before_saved  # refused, stopped or kept: the config beside it is still its own

    rerun = run(tmp_path, ptb_dir, *args, "on_stale=rerun", multirun=True)
    assert rerun.returncode == 0 and "1 completed" in rerun.stdout and "1 skipped" in rerun.stdout
    [stale] = job.glob("stale-*")
    assert (stale / "result.json").read_text() == before and (stale / "checkpoints" / "last.ckpt").is_file()
    assert (stale / ".hydra" / "config.yaml").read_text() == before_saved and "hidden: 16" in saved.read_text()
    assert json.loads((job / "result.json").read_text())["config"]["model"]["hidden"] == 16


@pytest.mark.parametrize(
    "args,message",
    [
        (["grid=nope"], "there is no grid=nope"),
        (["dropout=zaremba", "dropout.pp=0.3"], "unknown setting dropout.pp (did you mean dropout.p?)"),
        (["dropout=none,zaremba", "dropout.p=0.3,1.5"], "zaremba,dropout.p=1.5"),
        (["dropout=zaremba", "data.bptt=5,900", "data.train_tokens=2000"], "unroll 900 is longer"),
        # typed config: a value of the wrong type or an unknown connection fails when the job is composed
        (
            ["seed=2,abc"],
            "seed=abc: Error merging override seed=abc (Value 'abc' of type 'str' could not be converted to Integer)",
        ),
        (["dropout.recurent.p=0.2,0.3"], "unknown setting dropout.recurent (did you mean dropout.recurrent?)"),
        (["dropout=none,zaremba", "+model.hiden=32"], "+model.hiden=32: unknown setting model.hiden (did you mean"),
        (["data.bptt=5,0"], "data.bptt=0: data.bptt=0 is out of range: it must be an integer >= 1"),
    ],
)
def test_bad_sweeps_stop_before_any_job_trains(tmp_path, ptb_dir, args, message):
    proc = run(tmp_path, ptb_dir, *args, multirun=True)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("result.json"))


GRIDS = sorted((CONF_DIR / "grid").glob("*.yaml"))


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
def test_named_grids_compose_and_match_their_wandb_sweeps(grid):
    """Every job of a grid composes and passes the pre-check, and its W&B sweep config is current (written by
    zr_ablate.experiment.wandb_sweeps) and runs exactly the same jobs."""
    from zr_ablate.experiment.build import check
    from zr_ablate.experiment.guard import job_overrides
    from zr_ablate.experiment.wandb_sweeps import wandb_sweep

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"grid={grid.stem}"], return_hydra_config=True)
        jobs = job_overrides(cfg)
        for overrides in jobs:
            job = compose("config", overrides=[f"grid={grid.stem}", *overrides])
            check(job)
            assert job.sweep == grid.stem
    text = wandb_sweep(grid)
    assert (CONF_DIR / "wandb" / grid.name).read_text() == text, "run python -m zr_ablate.experiment.wandb_sweeps"
    params = {k: v.get("values", [v.get("value")]) for k, v in yaml.safe_load(text)["parameters"].items()}
    del params["sweep"]
    wandb_jobs = {frozenset(f"{k}={v}" for k, v in zip(params, combo)) for combo in itertools.product(*params.values())}
    hydra_jobs = {frozenset(o for o in job if not o.startswith("grid=")) for job in jobs}  # the grid itself
    assert wandb_jobs == hydra_jobs and len(jobs) > 1


def test_table1_pairs_each_size_with_the_papers_placement():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        pairs = {
            (c.model.name, c.dropout.name, c.model.dropout_p)
            for c in (compose("config", overrides=[f"paper={s}"]) for s in ("small", "medium", "large"))
        }
    assert pairs == {("small", "none", 0.0), ("medium", "zaremba", 0.5), ("large", "zaremba", 0.65)}
