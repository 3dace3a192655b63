"""Packed members against separate jobs: training tokens/s of M members packed in one process (model/packed.py)
against one solo job and against M solo jobs, one process each, all at once (concurrency.py), on one device.

    python -m zr_ablate.bench --packed 1 2 4 --packed-size small --threads 1 --device cpu

On a CPU the packed process runs --packed-threads torch threads (default: --threads, as each solo process);
--packed-threads M (the cores the M processes share out) asks what packing gains over processes on the same
cores, where the softmax matmuls set the pace and are already efficient at one thread. Each level M times
the packed step (training.packed_step: masks, forward, per-member loss, backward and
clipping, SGD) of M members on the same random windows as the solo jobs, for `seconds` of wall-clock time
after a warm-up, waiting for the device at both ends. Member m is placement m of the list (cycled) with seed
m + 1, as a packed sweep over those placements would build it. The M solo processes are those of the
concurrency measurement (their phases alone give the one-job figure). tokens/s counts every member's tokens.
"""

from __future__ import annotations

import time

import torch

from zr_ablate.bench import concurrency
from zr_ablate.bench.workload import VOCAB, settings, windows
from zr_ablate.experiment import build
from zr_ablate.training.clock import describe, sync
from zr_ablate.training.packed_step import PackedSGD, PackedTrainStep

WARMUP = 3


def packed_rate(size: str, placements: list[str], device: torch.device, seconds: float, overrides=()) -> float:
    """Training tokens/s of len(placements) packed members (all members' tokens)."""
    cfgs = [settings(size, p, "auto", (*overrides, f"seed={m + 1}")) for m, p in enumerate(placements)]
    model = build.packed_model(cfgs, VOCAB).to(device).train()
    step = PackedTrainStep(model, cfgs[0].optim.clip, cuda_graph=cfgs[0].cuda_graph == "step")
    opt = PackedSGD(model.parameters(), lr=cfgs[0].optim.lr, weight_decay=cfgs[0].optim.weight_decay)
    wins = windows(16, cfgs[0].data.batch_size, cfgs[0].data.bptt, device)
    state = None

    def train(x, y):
        nonlocal state
        _, state, _ = step(x, y, model.init_state(x.size(0)) if state is None else state)
        opt.step()

    for x, y in wins[:WARMUP]:
        train(x, y)
    sync(device)
    began, tokens, k = time.perf_counter(), 0, 0
    while time.perf_counter() - began < seconds:
        x, y = wins[k % len(wins)]
        train(x, y)
        tokens, k = tokens + x.numel() * len(placements), k + 1
    sync(device)
    return tokens / (time.perf_counter() - began)


def measure(
    size: str,
    placements: list[str],
    levels: list[int],
    seconds: float,
    device,
    threads: int,
    overrides=(),
    packed_threads: int | None = None,
):
    """Per level M: packed tokens/s, and the M solo processes' aggregate; one solo job's figure. threads: per
    solo process; packed_threads: the packed process's (default: threads)."""
    members = [placements[m % len(placements)] for m in range(max(levels))]
    solo = concurrency.measure(size, members, levels, seconds, device.type, tuple(overrides), threads=threads)
    together = {level["jobs"]: level["aggregate_tokens_per_s"] for level in solo["levels"]}
    one = together[1]
    rows, before = [], torch.get_num_threads()
    torch.set_num_threads(packed_threads or threads)
    for m in levels:
        rate = packed_rate(size, members[:m], device, seconds, overrides)
        rows.append(
            {
                "members": m,
                "placements": members[:m],
                "packed_threads": torch.get_num_threads() if device.type == "cpu" else None,
                "packed_tokens_per_s": rate,
                "packed_x_one_job": rate / one,
                "processes_tokens_per_s": together.get(m),
                "packed_x_processes": rate / together[m] if m in together else None,
            }
        )
    torch.set_num_threads(before)
    return {
        "size": size,
        "device": describe(device, threads),
        "threads_per_process": threads,
        "seconds": seconds,
        "one_job_tokens_per_s": one,
        "levels": rows,
        "concurrency": solo,
    }


def table(result: dict) -> str:
    """Markdown: per M, packed tokens/s, against one job and against M processes, the device beside."""
    lines = [
        f"device: {result['device']}; {result['size']}; {result['threads_per_process']} thread(s) per process",
        "",
        "| M | placements | packed threads | packed tok/s | x one job | M processes tok/s | packed / M processes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["levels"]:
        processes = f"{r['processes_tokens_per_s']:,.0f}" if r["processes_tokens_per_s"] else "-"
        ratio = f"{r['packed_x_processes']:.2f}" if r["packed_x_processes"] else "-"
        lines.append(
            f"| {r['members']} | {', '.join(r['placements'])} | {r['packed_threads'] or '-'} | "
            f"{r['packed_tokens_per_s']:,.0f} | "
            f"{r['packed_x_one_job']:.2f} | {processes} | {ratio} |"
        )
    return "\n".join(lines) + f"\n\none solo job: {result['one_job_tokens_per_s']:,.0f} tok/s"
