"""CUDA MPS for jobs that share one GPU. Without it, processes on a GPU take turns: one batch-20 job's small
kernels leave most of the GPU idle, and a second job's kernels cannot fill it. Under MPS (NVIDIA's
Multi-Process Service) their kernels run side by side. `start` starts a daemon of this run's own (its pipe
and log folders in the environment every child inherits) and checks that a CUDA process runs under it;
otherwise it leaves everything as it was. No setting of the GPU is changed; `stop` ends the daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ENV = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
PROBE = "import torch; print(float((torch.ones(2, device='cuda') * 2).sum()))"  # prints 4.0 under MPS


def _control(*args: str, stdin: str | None = None) -> int:
    return subprocess.run(
        ["nvidia-cuda-mps-control", *args], input=stdin, text=True, capture_output=True, timeout=30
    ).returncode


def start(log: Callable[[str], None]) -> bool:
    """Start the MPS daemon and check that a CUDA process runs under it. True if it does."""
    if not shutil.which("nvidia-cuda-mps-control"):
        log("MPS: nvidia-cuda-mps-control not found; jobs at once take turns on the GPU")
        return False
    root = Path(tempfile.mkdtemp(prefix="zr_ablate-mps-"))
    for key, sub in zip(ENV, ("pipe", "log")):
        (root / sub).mkdir()
        os.environ[key] = str(root / sub)
    try:
        started = _control("-d") == 0
        probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
        ran = started and probe.stdout.strip() == "4.0"
    except (OSError, subprocess.TimeoutExpired) as e:
        started, ran = True, False
        log(f"MPS: {type(e).__name__}: {e}")
    if ran:
        log("MPS: on (daemon started, a CUDA process ran under it)")
        return True
    if started:
        stop()
    for key in ENV:
        os.environ.pop(key, None)
    log("MPS: could not start it or run a CUDA process under it; jobs at once take turns on the GPU")
    return False


def stop() -> None:
    try:
        _control(stdin="quit\n")
    except (OSError, subprocess.TimeoutExpired):
        pass
