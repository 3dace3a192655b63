"""Wall-clock timing that is honest on a GPU (CUDA work is queued, so wait for the device before reading a
clock), and the name of the device every timing is reported beside."""

from __future__ import annotations

import os
import platform
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


def cpu_model() -> str:
    """The CPU's model name (AMD and Intel machines differ by 20% in the loop's ratio): /proc/cpuinfo on
    Linux, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, {threads} torch threads"
