"""hydra/launcher=packed end to end: a packed sweep writes each job's folder as the solo sweep does, with the
same numbers (float32 rounding apart); a rerun skips finished members; a sweep killed mid-epoch resumes
every member to an uninterrupted packed run's numbers, in the same W&B runs."""

import json
import logging
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO
from tests.experiment.test_sweep import TIMING, run_id
from tests.helpers import cmd, read_run, run
from zr_ablate.bench import workload
from zr_ablate.experiment.job_folder import job_lock, lock_holder
from zr_ablate.experiment.packed_launcher import Prepared
from zr_ablate.experiment.packed_run import GroupTask
from zr_ablate.records import NEUTRAL_KEYS, RESULT, SENTENCES, flat, read_result, write_json_atomic

pytestmark = pytest.mark.slow  # whole sweeps in subprocesses
PACKED = "hydra/launcher=packed"
ONE_EPOCH = ["trainer.max_epochs=1", "logger.mode=offline"]


def settings(config: dict) -> dict:
    """A recorded config without the settings that cannot change the numbers (where the sweep was written)."""
    return {k: v for k, v in flat(config).items() if k not in NEUTRAL_KEYS}


def results(root) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("adhoc/*/result.json")}


def test_a_packed_sweep_gives_each_job_what_the_solo_sweep_gives(tmp_path, ptb_dir):
    sweep = ["dropout=none,variational,gal", "seed=1,2", *ONE_EPOCH]
    packed = run(tmp_path / "packed", ptb_dir, *sweep, PACKED, multirun=True)
    assert packed.returncode == 0, packed.stderr[-3000:]
    solo = run(tmp_path / "solo", ptb_dir, *sweep, multirun=True)
    assert solo.returncode == 0, solo.stderr[-3000:]
    got, expected = results(tmp_path / "packed"), results(tmp_path / "solo")
    assert got.keys() == expected.keys() and len(got) == 6
    for name, a in expected.items():
        b = got[name]
        assert b["status"] == a["status"] == "completed"
        for key in ("best_val_ppl", "final_train_ppl", "test_ppl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (name, key)
        assert b["n_params"] == a["n_params"] and settings(b["config"]) == settings(a["config"])
        job = tmp_path / "packed" / "adhoc" / name
        mine, twin = (pd.read_csv(tmp_path / root / "adhoc" / name / SENTENCES) for root in ("packed", "solo"))
        assert mine["tokens"].tolist() == twin["tokens"].tolist() and len(mine) > 10  # the same test sentences
        assert mine["nll"].to_numpy() == pytest.approx(twin["nll"].to_numpy(), rel=1e-4, abs=1e-4)
        assert (job / ".hydra" / "config.yaml").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        assert read_run(job)["run_id"] == b["wandb_run_id"]  # its own W&B run
        if "gal" in name:  # untied gates: run alone, as the basic launcher runs it
            assert "packed_with" not in b and f"runs alone: {name}" in packed.stdout
        else:  # the four others in one group
            assert sorted(b["packed_with"] + [name]) == sorted(n for n in got if "gal" not in n)
            assert f"[{name}] epoch 1: lr 1" in packed.stdout
    assert "6 completed, 0 diverged, 0 failed, 0 skipped" in packed.stdout


def test_a_rerun_skips_finished_members_and_packs_the_rest(tmp_path, ptb_dir):
    first = run(tmp_path, ptb_dir, "dropout=none,zaremba", *ONE_EPOCH, PACKED, multirun=True)
    assert first.returncode == 0 and "2 completed, 0 diverged, 0 failed, 0 skipped" in first.stdout
    again = run(tmp_path, ptb_dir, "dropout=none,zaremba,naive", *ONE_EPOCH, PACKED, multirun=True)
    assert again.returncode == 0 and "1 completed, 0 diverged, 0 failed, 2 skipped" in again.stdout
    naive = "dropout=naive,model=tiny,trainer.max_epochs=1"
    assert f"packed: 1 jobs in one model: {naive}\n" in again.stdout
    assert results(tmp_path)[naive]["packed_with"] == []


# Tiny models on 20k training tokens: 1,000 windows an epoch, a few seconds, long enough to kill mid-epoch.
RESUMABLE = ["dropout=none,variational", "data.train_tokens=20000", "trainer.max_epochs=3", "logger.mode=offline"]


def test_a_killed_packed_sweep_resumes_every_member_to_the_uninterrupted_numbers(tmp_path, ptb_dir):
    whole = run(tmp_path / "whole", ptb_dir, *RESUMABLE, PACKED, multirun=True)
    assert whole.returncode == 0, whole.stderr[-3000:]
    names = sorted(results(tmp_path / "whole"))
    proc = subprocess.Popen(
        cmd(tmp_path / "cut", ptb_dir, *RESUMABLE, PACKED, multirun=True),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs = [tmp_path / "cut" / "adhoc" / name for name in names]
    deadline = time.time() + 300
    while not all((job / "checkpoints" / "last.ckpt").exists() for job in jobs):  # the end of epoch 1
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 2
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its W&B services, with no chance to clean up
    proc.wait()
    killed = results(tmp_path / "cut")
    assert all(r["status"] == "running" for r in killed.values()) and len(killed) == 2

    again = run(tmp_path / "cut", ptb_dir, *RESUMABLE, PACKED, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    whole_results, cut_results = results(tmp_path / "whole"), results(tmp_path / "cut")
    for name, job in zip(names, jobs):
        a, b = whole_results[name], cut_results[name]
        assert b["status"] == "completed" and b["resumed_from_epoch"] in (1, 2)
        for key in ("best_val_ppl", "final_val_ppl", "final_train_ppl", "test_ppl", "epochs"):
            assert a[key] == b[key], (name, key)  # bit-identical, not approximately equal
        curve_a = pd.read_csv(tmp_path / "whole" / "adhoc" / name / "epochs.csv").drop(columns=TIMING)
        curve_b = pd.read_csv(job / "epochs.csv").drop(columns=TIMING)
        pd.testing.assert_frame_equal(curve_a, curve_b, check_exact=True)
        # The resumed member continued its own W&B run.
        assert b["wandb_run_id"] == killed[name]["wandb_run_id"]
        logs = sorted(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(logs) == 2 and {log.stem.removeprefix("run-") for log in logs} == {b["wandb_run_id"]}
        assert run_id(logs[-1]) == b["wandb_run_id"]


def test_a_member_another_process_is_training_is_left_to_it(tmp_path, ptb_dir):
    """The packed launcher takes each member's job lock as run.py does: a member whose folder another
    process holds is skipped (never trained twice), and the rest of the group trains."""
    locked = tmp_path / "adhoc" / "dropout=zaremba,model=tiny,trainer.max_epochs=1"
    locked.mkdir(parents=True)
    with job_lock(locked) as holder:
        assert holder is None
        proc = run(tmp_path, ptb_dir, "dropout=none,zaremba", *ONE_EPOCH, PACKED, multirun=True)
    assert "is being run by another process" in proc.stdout + proc.stderr
    done = results(tmp_path)
    assert list(done) == ["dropout=none,model=tiny,trainer.max_epochs=1"] and not (locked / "result.json").exists()
    assert done["dropout=none,model=tiny,trainer.max_epochs=1"]["status"] == "completed"


def test_groups_trained_at_once_in_worker_processes_end_as_one_after_another(tmp_path, ptb_dir):
    """hydra.launcher.groups_at_once=2: two groups (two learning rates), each in its own worker process, give every
    member the numbers and the log file it gets when the groups train one after another in the sweep's process."""
    sweep = ["dropout=none,zaremba", "optim.lr=1,0.5", "threads=1", "trainer.deterministic=true", *ONE_EPOCH]
    inline = run(tmp_path / "inline", ptb_dir, *sweep, PACKED, multirun=True)
    assert inline.returncode == 0, inline.stderr[-3000:]
    workers = run(tmp_path / "workers", ptb_dir, *sweep, PACKED, "hydra.launcher.groups_at_once=2", multirun=True)
    assert workers.returncode == 0, workers.stderr[-3000:]
    assert "4 completed, 0 diverged, 0 failed, 0 skipped" in workers.stdout
    assert "packed: 2 groups, 2 at once, each in its own process" in workers.stdout
    got, expected = results(tmp_path / "workers"), results(tmp_path / "inline")
    assert got.keys() == expected.keys() and len(got) == 4
    for name, a in expected.items():
        b = got[name]
        assert len(b["packed_with"]) == 1 and b["threads"] == 1
        for key in ("best_val_ppl", "final_train_ppl", "test_ppl"):
            assert a[key] == b[key], (name, key)  # the same process settings: bit-identical
        log = (tmp_path / "workers" / "adhoc" / name / "run.log").read_text()
        assert f"[{name}] epoch 1: lr" in log  # the worker wrote its members' lines into their own log files


def test_a_bad_number_of_groups_at_once_is_one_line(tmp_path, ptb_dir):
    proc = run(
        tmp_path, ptb_dir, "dropout=none,zaremba", *ONE_EPOCH, PACKED, "hydra.launcher.groups_at_once=0", multirun=True
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "zr_ablate: error: hydra.launcher.groups_at_once=0; it must be an integer >= 1" in proc.stderr
    assert not list(tmp_path.glob("adhoc/*/result.json"))


def test_a_worker_holds_its_members_locks_while_it_trains_them(tmp_path, ptb_dir):
    """With groups in worker processes the worker, not the sweep's process, holds each member's folder lock, so
    a second sweep started meanwhile (or a rerun while a first sweep's SLURM jobs still train) leaves them."""
    # Long enough (8 epochs of 1,000 windows) that the first sweep still trains while the second one starts.
    args = ["dropout=none,zaremba", "optim.lr=1,0.5", "data.train_tokens=20000", "trainer.max_epochs=8"]
    args.append("logger.mode=disabled")  # two groups (two learning rates), so they train in workers
    proc = subprocess.Popen(
        cmd(tmp_path, ptb_dir, *args, PACKED, "hydra.launcher.groups_at_once=2", multirun=True),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, holder = time.monotonic() + 300, None
    while holder is None:  # the group has finished its first epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        started = list(tmp_path.glob("adhoc/*dropout=none*optim.lr=1,*/epochs.csv"))
        holder = lock_holder(started[0].parent) if started else None
        time.sleep(0.1)
    assert holder.startswith("pid ") and int(holder.split()[1]) != proc.pid  # a worker's, not the sweep's
    second = run(tmp_path, ptb_dir, *args, PACKED, multirun=True)
    assert "is being run by another process" in second.stdout + second.stderr
    assert "0 completed, 0 diverged, 0 failed, 4 skipped" in second.stdout
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "4 completed, 0 diverged, 0 failed, 0 skipped" in out


def test_packed_slurm_refuses_a_job_it_cannot_pack_rather_than_train_it_on_the_submitting_host(tmp_path, ptb_dir):
    proc = run(tmp_path, ptb_dir, "dropout=none,gal", *ONE_EPOCH, "hydra/launcher=packed_slurm", multirun=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("zr_ablate: error:")]
    assert "cannot pack dropout=gal" in line and "run such jobs with hydra/launcher=slurm" in line
    assert not list(tmp_path.glob("adhoc/*/result.json"))  # nothing trained


def member(folder, ptb_dir, placement: str, *extra: str) -> Prepared:
    """A job of a packed sweep as the launcher prepares it (model=tiny, its folder made, no record yet)."""
    cfg = workload.settings("tiny", placement, "auto", (f"data.dir={ptb_dir}", "logger.mode=disabled", *extra))
    folder.mkdir(parents=True)
    return Prepared(cfg, folder, folder.name, {}, folder / "run.log")


def test_a_group_task_leaves_a_member_that_ended_since_the_sweep_read_it(tmp_path, ptb_dir):
    """A second sweep (or the requeued SLURM job's first run) finished a member after this sweep grouped it:
    the group neither trains it again nor rewrites its record."""
    done = member(tmp_path / "none", ptb_dir, "none")
    todo = member(tmp_path / "zaremba", ptb_dir, "zaremba", "trainer.max_epochs=1")
    config = OmegaConf.to_container(done.cfg, resolve=True)
    write_json_atomic(done.job_dir / RESULT, {"status": "diverged", "config": config, "error": "val loss nan"})
    kept = (done.job_dir / RESULT).stat().st_mtime_ns
    assert GroupTask([done, todo], threads=1)() == ["diverged", "completed"]
    assert (done.job_dir / RESULT).stat().st_mtime_ns == kept and not (done.job_dir / "epochs.csv").exists()
    assert read_result(todo.job_dir)["packed_with"] == []  # it trained alone


def test_an_error_in_a_worker_is_recorded_in_its_members_records(tmp_path, ptb_dir, monkeypatch):
    """In a worker or SLURM job (own_process) an error is each member's failed record and the task returns, so
    joblib does not stop the other groups; a one-line error keeps its line."""
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)  # the worker's console set-up, not pytest's
    jobs = [member(tmp_path / p, tmp_path / "no-ptb", p) for p in ("none", "zaremba")]
    statuses = GroupTask(jobs, threads=1, own_process=True)()
    assert statuses == ["failed", "failed"]
    for job in jobs:
        record = read_result(job.job_dir)
        assert record["status"] == "failed" and record["error"].startswith("SystemExit: zr_ablate: error:")
