"""Throughput of several training jobs sharing one device, each in its own process (as Hydra's joblib
launcher runs a sweep), so that a sweep can pick how many jobs to run at once from a measurement.

    python -m zr_ablate.bench.concurrency --device cuda --size medium --placements zaremba none variational naive

One worker process per placement builds its model, warms up (a CUDA graph is captured then) and says
"ready"; the parent then sends all of them one start time, and they run a fixed schedule of phases of
`--seconds` each, in wall-clock time shared by all processes:
  - each worker alone, one after another (its solo speed in this setting);
  - the first k workers together, for every level k in --levels beyond 1.
A worker trains only in its phases (the PlainLoop step of the bench: forward, summed NLL / batch,
backward, clip, SGD) and sleeps in the others. Per phase it reports tokens/s over exactly the time it ran,
waiting for the device before reading the clock at both ends. The result: per level, the aggregate
tokens/s and each worker's speed as a fraction of its solo speed (`slowdown`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

STEPS_WARMUP = 3


def schedule(workers: int, levels: list[int]) -> list[list[int]]:
    """The phases: each worker alone, then the first k together for each level k > 1 (k <= workers)."""
    return [[i] for i in range(workers)] + [list(range(k)) for k in levels if 1 < k <= workers]


# --- the worker -----------------------------------------------------------------------------------------
def worker(size: str, placement: str, device: torch.device, overrides: tuple[str, ...]) -> None:
    from zr_ablate.bench.workload import PlainLoop, build_model, settings, windows
    from zr_ablate.training.clock import sync

    cfg = settings(size, placement, "auto", overrides)
    loop = PlainLoop(build_model(cfg, device), cfg)
    wins = windows(16, cfg.data.batch_size, cfg.data.bptt, device)
    for x, y in wins[:STEPS_WARMUP]:
        loop.train_step(x, y)
    sync(device)
    print("ready", flush=True)
    plan = json.loads(sys.stdin.readline())  # {"t0": wall-clock start, "seconds": S, "active": [bool per phase]}
    results = []
    for j, active in enumerate(plan["active"]):
        start, end = plan["t0"] + j * plan["seconds"], plan["t0"] + (j + 1) * plan["seconds"]
        time.sleep(max(0.0, start - time.time()))
        if not active:
            results.append(None)
            continue
        sync(device)
        began, tokens, k = time.time(), 0, 0
        while time.time() < end:  # the host runs ahead of the device by the launch queue at most
            x, y = wins[k % len(wins)]
            loop.train_step(x, y)
            tokens, k = tokens + x.numel(), k + 1
        sync(device)
        results.append(tokens / (time.time() - began))
    print(json.dumps(results), flush=True)


# --- the parent -----------------------------------------------------------------------------------------
def measure(
    size: str,
    placements: list[str],
    levels: list[int],
    seconds: float,
    device: str,
    overrides: tuple[str, ...] = (),
    timeout: float = 300.0,
    threads: int | None = None,
) -> dict:
    """Start one worker per placement, run the schedule, return per-phase and per-level results. threads:
    torch threads per worker (default: the cores shared out, as run.py's joblib thread budget)."""
    phases = schedule(len(placements), levels)
    threads = threads or max(1, (os.cpu_count() or 1) // len(placements))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zr_ablate.bench.concurrency",
                "--worker",
                size,
                p,
                "--device",
                device,
                "--threads",
                str(threads),
                "--overrides",
                *overrides,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for p in placements
    ]
    try:
        deadline = time.time() + timeout
        for p, proc in zip(placements, procs):
            line = proc.stdout.readline().strip()
            if line != "ready" or time.time() > deadline:
                raise RuntimeError(f"concurrency worker {size}/{p} did not start (said {line!r})")
        t0 = time.time() + 0.5
        for i, proc in enumerate(procs):
            active = [i in phase for phase in phases]
            proc.stdin.write(json.dumps({"t0": t0, "seconds": seconds, "active": active}) + "\n")
            proc.stdin.flush()
        rates = []
        for p, proc in zip(placements, procs):
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
            if proc.returncode != 0:
                raise RuntimeError(f"concurrency worker {size}/{p} failed (exit {proc.returncode})")
            rates.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    n = len(placements)
    solo = [rates[i][i] for i in range(n)]  # rates[i][j]: worker i's tokens/s in phase j (None if idle)
    levels = [{"jobs": 1, "placements": placements[:1], "aggregate_tokens_per_s": solo[0], "slowdown": [1.0]}]
    for j in range(n, len(phases)):
        speeds = [rates[i][j] for i in phases[j]]
        levels.append(
            {
                "jobs": len(phases[j]),
                "placements": [placements[i] for i in phases[j]],
                "aggregate_tokens_per_s": sum(speeds),
                "slowdown": [s / solo[i] for s, i in zip(speeds, phases[j])],
            }
        )
    return {
        "size": size,
        "placements": placements,
        "seconds": seconds,
        "threads_per_job": threads,
        "solo_tokens_per_s": dict(zip(placements, solo)),
        "levels": levels,
    }


def table(result: dict) -> str:
    """Markdown: per level, the jobs, aggregate tokens/s, its ratio to one job, and each job's slowdown."""
    one = result["levels"][0]["aggregate_tokens_per_s"]
    rows = [
        "| jobs at once | placements | aggregate tok/s | x one job | each job x its solo speed |",
        "|---|---|---|---|---|",
    ]
    for level in result["levels"]:
        rows.append(
            f"| {level['jobs']} | {', '.join(level['placements'])} | {level['aggregate_tokens_per_s']:,.0f} "
            f"| {level['aggregate_tokens_per_s'] / one:.2f} | "
            f"{', '.join(f'{s:.2f}' for s in level['slowdown'])} |"
        )
    solo = ", ".join(f"{p} {v:,.0f}" for p, v in result["solo_tokens_per_s"].items())
    return "\n".join(rows) + f"\n\nsolo tok/s: {solo} ({result['threads_per_job']} threads per job)"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m zr_ablate.bench.concurrency", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="medium")
    p.add_argument("--placements", nargs="+", default=["zaremba", "none", "variational", "naive"])
    p.add_argument("--levels", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=4.0, help="length of each phase")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every job")
    p.add_argument("--worker", nargs=2, metavar=("SIZE", "PLACEMENT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        worker(*args.worker, torch.device(args.device), tuple(args.overrides))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("zr_ablate.bench.concurrency: error: --device cuda but torch sees no GPU; use --device cpu")
    if any(k < 1 for k in args.levels) or args.seconds <= 0:
        p.error("--levels must be >= 1 and --seconds > 0")
    result = measure(args.size, args.placements, args.levels, args.seconds, args.device, tuple(args.overrides))
    print(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
