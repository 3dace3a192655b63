"""The bench's measurements: every placement of one size timed in interleaved repeats, memory per row, and
Lightning against the plain loop. cli.py runs them and prints the tables."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from statistics import median

import pytorch_lightning as pl
import torch

from zr_ablate.bench.workload import (
    PlainLoop,
    build_model,
    matmul_flops_per_token,
    path_of,
    settings,
    windows,
)
from zr_ablate.experiment import build
from zr_ablate.training.clock import sync, timed
from zr_ablate.training.job import quiet_trainer


def _rss_peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def peak_memory(size: str, placement: str, impl: str, device: torch.device, extra: tuple[str, ...] = ()) -> dict:
    """Two training steps of one row (on CPU in a fresh process, --peak-memory). Returns the peak MB to
    train it and the MB autograd saved for backward in one step (unique storages)."""
    cfg = settings(size, placement, impl, extra)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _rss_peak_mb() if device.type == "cpu" else 0.0
    model = build_model(cfg, device)
    loop = PlainLoop(model, cfg)
    wins = windows(2, cfg.data.batch_size, cfg.data.bptt, device)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    loop.train_step(*wins[0])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loop.train_step(*wins[1])
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_peak_mb() - before
    return {"peak_mb": peak, "saved_for_backward_mb": sum(saved.values()) / 2**20}


def memory_of_row(
    size: str, placement: str, impl: str, device: torch.device, threads: int, extra: tuple[str, ...] = ()
) -> dict:
    if device.type == "cuda":  # the allocator's peak resets in-process; no fresh process needed
        result = peak_memory(size, placement, impl, device, extra)
        torch.cuda.empty_cache()
        return result
    cmd = [
        sys.executable,
        "-m",
        "zr_ablate.bench.cli",
        "--peak-memory",
        size,
        placement,
        impl,
        "--device",
        device.type,
        "--threads",
        str(threads),
        "--overrides",
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {size}/{placement} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_row(size: str, placement: str, device: torch.device, args, rows: int = 15) -> str:
    """torch.profiler over `args.steps` training windows of one row after the warm-up: the ops that took
    the most time, by input shape (which matmul of the step is slow, not only that matmuls are)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = settings(size, placement, "auto", args.overrides)
    loop = PlainLoop(build_model(cfg, device), cfg)
    wins = windows(args.steps + args.warmup, cfg.data.batch_size, cfg.data.bptt, device)
    for x, y in wins[: args.warmup]:
        loop.train_step(x, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for x, y in wins[args.warmup :]:
            loop.train_step(x, y)
        sync(device)
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total",
        row_limit=rows,
        max_name_column_width=30,
        max_shapes_column_width=60,
    )
    return f"{size}/{placement} ({path_of(loop, device)}), {args.steps} training windows:\n{table}"


def bench_size(size: str, rows: list[tuple[str, str]], device: torch.device, args, peak: float) -> list[dict]:
    """Every (placement, impl) row of one size, interleaved. rows[0] is the fused zaremba baseline."""
    loops, first_step, results = {}, {}, []
    for row in rows:
        cfg = settings(size, *row, args.overrides)
        loops[row] = PlainLoop(build_model(cfg, device), cfg)
    batch, bptt = cfg.data.batch_size, cfg.data.bptt
    wins = windows(args.steps + args.warmup, batch, bptt, device)
    tokens = args.steps * batch * bptt
    for row, loop in loops.items():  # warm-up; the first step is the cold start a short run pays
        first_step[row] = timed(lambda: loop.train_step(*wins[0]), device)
        for x, y in wins[1 : args.warmup]:
            loop.train_step(x, y)
        loop.eval_step(*wins[0])
    train = {row: [] for row in rows}
    evaluate = {row: [] for row in rows}
    for _ in range(args.repeats):
        for row, loop in loops.items():
            t = timed(lambda: [loop.train_step(x, y) for x, y in wins[args.warmup :]], device)
            train[row].append(tokens / t)
            t = timed(lambda: [loop.eval_step(x, y) for x, y in wins[args.warmup :]], device)
            evaluate[row].append(tokens / t)
    hidden, layers = cfg.model.hidden, cfg.model.layers
    for row, loop in loops.items():
        ratios = [a / b for a, b in zip(train[row], train[rows[0]])]
        eval_ratios = [a / b for a, b in zip(evaluate[row], evaluate[rows[0]])]
        tok_s = median(train[row])
        gflops = tok_s * matmul_flops_per_token(hidden, layers) / 1e9
        memory = memory_of_row(size, *row, device, args.threads, args.overrides) if args.memory else {}
        results.append(
            {
                "size": size,
                "placement": row[0],
                "impl": row[1],
                "path": path_of(loop, device),
                "train_tokens_per_s": tok_s,
                "train_ratio": median(ratios),
                "eval_tokens_per_s": median(evaluate[row]),
                "eval_ratio": median(eval_ratios),
                "gflops": gflops,
                "gemm_peak_fraction": gflops / peak,
                "first_step_s": first_step[row],
                "median_step_s": batch * bptt / tok_s,
                **memory,
                "graph_error": loop.step.graph_error,  # why a step graph could not be captured (then eager)
                "train_tokens_per_s_repeats": train[row],
                "eval_tokens_per_s_repeats": evaluate[row],
            }
        )
    return results


class _StepClock(pl.Callback):
    """The time at the start of every training batch and at the end of the last: step i lasts from its
    start to the next one's, so whatever Lightning does between batches is inside it."""

    def __init__(self, device: torch.device):
        self.device, self.marks = device, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync(self.device)
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, module):
        sync(self.device)
        self.marks.append(time.perf_counter())


def _step_seconds(marks: list[float], warmup: int) -> float:
    """Median seconds per step after the warm-up steps: robust to a stray slow step on a shared machine."""
    return median(b - a for a, b in zip(marks[warmup:], marks[warmup + 1 :]))


def bench_lightning(size: str, placement: str, device: torch.device, args) -> dict:
    cfg = settings(size, placement, "auto", args.overrides)
    batch, bptt = cfg.data.batch_size, cfg.data.bptt
    wins = windows(args.lightning_steps + args.warmup, batch, bptt, device, seed=1)
    plain, lightning, fit_wall = [], [], []
    for _ in range(args.repeats):
        loop = PlainLoop(build_model(cfg, device), cfg)
        marks = []
        for x, y in wins:
            sync(device)
            marks.append(time.perf_counter())
            loop.train_step(x, y)
        sync(device)
        marks.append(time.perf_counter())
        plain.append(batch * bptt / _step_seconds(marks, args.warmup))

        module = build.lm_module(cfg, build_model(cfg, device))
        clock = _StepClock(device)
        accelerator = "gpu" if device.type == "cuda" else "cpu"
        trainer = quiet_trainer(accelerator=accelerator, devices=1, limit_val_batches=0, callbacks=[clock])
        loader = torch.utils.data.DataLoader(wins, batch_size=None, shuffle=False)
        fit_wall.append(timed(lambda: trainer.fit(module, train_dataloaders=loader), device))
        lightning.append(batch * bptt / _step_seconds(clock.marks, args.warmup))
    return {
        "size": size,
        "placement": placement,
        "plain_tokens_per_s": median(plain),
        "lightning_tokens_per_s": median(lightning),
        "ratio": median(a / b for a, b in zip(lightning, plain)),
        "lightning_fit_wall_s": median(fit_wall),
        "plain_repeats": plain,
        "lightning_repeats": lightning,
    }
