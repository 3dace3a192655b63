"""Working on a lent GPU machine: a log stamped from the sprint's start, commands in their own process group
killed at a deadline, the machine described without touching CUDA, CUDA MPS started and stopped, and the
results packed into what the device tool brings back (at most 8 files of 16 MiB)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MPS_DIR = Path("/tmp/zr_ablate-mps")  # the MPS daemon's pipe and log folders, passed to every child in its env


class Log:
    """Prints and appends to OUT/sprint.log, each line stamped with seconds since the sprint started."""

    def __init__(self, path: Path, started: float):
        self.path, self.started = path, started

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.started:6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def run_logged(cmd: list[str], log: Log, timeout: float) -> int:
    """Run cmd in its own process group, its output into the log; kill the group at the timeout."""
    log("$ " + " ".join(cmd))
    with open(log.path, "a") as f:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            log(f"timeout after {timeout:.0f} s: stopping it (SIGTERM, then SIGKILL)")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return 124


def environment(dry: bool) -> dict:
    """Versions and the GPU, read without creating a CUDA context in this process (MPS starts later)."""
    import torch

    from zr_ablate.training.clock import cpu_model

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dry": dry,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        env["gpu"] = smi.stdout.strip()
    return env


def mps_control(*args: str, stdin: str | None = None) -> int:
    return subprocess.run(
        ["nvidia-cuda-mps-control", *args], input=stdin, text=True, capture_output=True, timeout=30
    ).returncode


def start_mps(log: Log) -> bool:
    """Start the MPS daemon and check that a CUDA process runs under it; otherwise leave things as they were."""
    if not shutil.which("nvidia-cuda-mps-control"):
        log("MPS: nvidia-cuda-mps-control not found; concurrent jobs take turns on the GPU")
        return False
    for sub in ("pipe", "log"):
        (MPS_DIR / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update(CUDA_MPS_PIPE_DIRECTORY=str(MPS_DIR / "pipe"), CUDA_MPS_LOG_DIRECTORY=str(MPS_DIR / "log"))
    check = [sys.executable, "-c", "import torch; print(float((torch.ones(2, device='cuda') * 2).sum()))"]
    try:
        started = mps_control("-d") == 0
        ran = started and subprocess.run(check, capture_output=True, text=True, timeout=60).stdout.strip() == "4.0"
    except (OSError, subprocess.TimeoutExpired) as e:
        started, ran = True, False
        log(f"MPS: {type(e).__name__}: {e}")
    if ran:
        log("MPS: on (daemon started, a CUDA process ran under it)")
        return True
    if started:
        stop_mps()
    for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        os.environ.pop(key, None)
    log("MPS: could not start or run a CUDA process under it; concurrent jobs take turns on the GPU")
    return False


def stop_mps() -> None:
    try:
        mps_control(stdin="quit\n")
    except (OSError, subprocess.TimeoutExpired):
        pass


MAX_FILE = 15 * 2**20  # the device tool brings back files of at most 16 MiB


def _tar(target: Path, sweep_dir: Path, keep) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(sweep_dir.rglob("*")):
            if path.is_file() and keep(path.relative_to(sweep_dir).parts):
                tar.add(path, arcname=str(path.relative_to(sweep_dir.parent)))
    return target


def pack(sweep_dir: Path, out: Path) -> list[Path]:
    """Every job's records, the probe's tables and the W&B offline runs into OUT/sweep.tar.gz. Checkpoints
    stay behind (too large), as do W&B's own debug logs. If that is over the size the device tool brings
    back, the W&B runs go into a tarball of their own."""

    def useful(parts):
        return "checkpoints" not in parts and "logs" not in parts and not parts[-1].startswith("debug")

    tarball = _tar(out / "sweep.tar.gz", sweep_dir, useful)
    if tarball.stat().st_size <= MAX_FILE:
        return [tarball]
    return [
        _tar(out / "sweep.tar.gz", sweep_dir, lambda parts: useful(parts) and "wandb" not in parts),
        _tar(out / "wandb.tar.gz", sweep_dir, lambda parts: useful(parts) and "wandb" in parts),
    ]


def summary(sweep_dir: Path) -> str:
    rows = ["| job | status | epochs | best val | test | tokens/s | wall s |", "|---|---|---|---|---|---|---|"]
    for path in sorted(sweep_dir.glob("*/result.json")):
        try:
            r = json.loads(path.read_text())
        except ValueError:
            rows.append(f"| {path.parent.name} | unreadable result.json | | | | | |")
            continue

        def num(key, fmt="{:.2f}"):
            return fmt.format(r[key]) if isinstance(r.get(key), (int, float)) else "-"

        rows.append(
            f"| {path.parent.name} | {r.get('status')} | {r.get('epochs')} | {num('best_val_ppl')} | "
            f"{num('test_ppl')} | {num('tokens_per_s', '{:,.0f}')} | {num('wall_time_s', '{:.0f}')} |"
        )
    return "\n".join(rows)
