"""Wall-clock timing that is honest on a GPU: CUDA work is queued, so wait for the device before reading a clock."""
from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds for fn(), from an idle device to all of fn's device work done."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start
