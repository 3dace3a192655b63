"""W&B for real, offline: what each job's run recorded is read back from its .wandb file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import read_run
from zr_ablate.experiment.wandb_run import resolve_mode

pytestmark = pytest.mark.slow  # whole sweeps in subprocesses, read back from W&B


def sweep(out: Path, ptb_dir, *args):
    cmd = [
        sys.executable,
        "run.py",
        "-m",
        f"out_root={out}",
        "sweep=track",
        "model=tiny",
        "logger.mode=offline",
        f"data.dir={ptb_dir}",
        "trainer.enable_progress_bar=false",
        "threads=1",
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def check_runs(out: Path, placements):
    ids = set()
    for p in placements:
        job = out / "track" / f"dropout={p},model=tiny"
        run = read_run(job)
        result = json.loads((job / "result.json").read_text())
        assert run["name"] == f"dropout={p},model=tiny" and run["group"] == "track"
        assert run["job_type"] == "train" and run["tags"] == [p, "tiny", "ptb"]
        assert run["config"]["dropout"]["name"] == p and run["config"]["model"]["hidden"] == 16
        assert run["exit_code"] == 0
        assert run["summary"]["test_ppl"] == pytest.approx(result["test_ppl"])
        assert run["summary"]["best_val_ppl"] == pytest.approx(result["best_val_ppl"])
        assert run["summary"]["n_params"] == result["n_params"] and run["summary"]["test_protocol"] == "paper"
        logged = {k for item in run["history"] for k in item}
        assert {"train_ppl", "val_ppl", "lr", "grad_norm", "tokens_per_s", "train_loss"} <= logged
        ids.add(run["run_id"])
    assert len(ids) == len(placements)  # one run per job, never merged


def test_basic_launcher_gives_one_run_per_job(tmp_path, ptb_dir):
    proc = sweep(tmp_path, ptb_dir, "dropout=none,zaremba")
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_runs(tmp_path, ["none", "zaremba"])


def test_joblib_launcher_with_reused_workers_gives_one_run_per_job(tmp_path, ptb_dir):
    # 3 jobs on 2 workers: one worker process runs two jobs in a row.
    proc = sweep(
        tmp_path, ptb_dir, "dropout=none,zaremba,variational", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_runs(tmp_path, ["none", "zaremba", "variational"])


def test_a_crashing_job_ends_its_run_with_a_nonzero_exit_code(tmp_path, ptb_dir):
    # Lightning refuses gradient_clip_val under our manual optimisation: a crash after the W&B run started.
    proc = sweep(tmp_path, ptb_dir, "dropout=zaremba", "+trainer.gradient_clip_val=null,1.0")
    assert proc.returncode != 0
    jobs = tmp_path / "track"
    crashed_job = jobs / "+trainer.gradient_clip_val=1.0,dropout=zaremba,model=tiny"
    crashed, fine = read_run(crashed_job), read_run(jobs / "+trainer.gradient_clip_val=null,dropout=zaremba,model=tiny")
    assert crashed["exit_code"] == 1 and fine["exit_code"] == 0
    assert crashed["run_id"] != fine["run_id"]
    failed = json.loads((crashed_job / "result.json").read_text())
    assert failed["status"] == "failed" and "gradient_clip_val" in failed["error"]


def test_mode_resolution_never_prompts(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode("auto")[0] == "offline" and "wandb login" in resolve_mode("auto")[1]
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / "netrc").chmod(0o600)
    assert resolve_mode("auto")[0] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto")[0] == "disabled"
    assert resolve_mode("offline")[0] == "offline"
    with pytest.raises(ValueError, match="logger.mode must be one of"):
        resolve_mode("cloud")


def test_online_without_a_network_falls_back_to_offline_once_per_sweep_and_quietly(tmp_path, ptb_dir):
    """A key but no reachable W&B: the first job says how long it may wait, then logs offline; the sweep's
    other jobs go offline at once rather than wait again; no W&B banner either way (logger.quiet)."""
    env = dict(os.environ, WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    env.pop("WANDB_MODE", None)
    cmd = [
        sys.executable,
        "run.py",
        "-m",
        f"out_root={tmp_path}",
        "model=tiny",
        "dropout=none,zaremba",
        "trainer.max_epochs=1",
        "logger.mode=online",
        "logger.init_timeout=5",
        f"data.dir={ptb_dir}",
        "trainer.enable_progress_bar=false",
        "threads=1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console.count("W&B: starting the run online (waiting up to 5 s for W&B") == 1
    assert "W&B: offline (an earlier job of this sweep found W&B unreachable" in console
    assert len(list(tmp_path.glob("adhoc/*/wandb/offline-run-*/run-*.wandb"))) == 2
    assert "wandb:" not in console  # W&B's own banner and run summary
