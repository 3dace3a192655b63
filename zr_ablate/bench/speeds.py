"""The speeds a budgeted run plans with, in the bench's JSON format (python -m zr_ablate.bench --out):
read from such files, or measured here in a few seconds per placement with the settings the jobs will
train with. `speed`, `sharing` and `packing` turn that JSON into the planner's numbers."""

from __future__ import annotations

import time
import warnings
from statistics import mean, median
from types import SimpleNamespace

import torch

from zr_ablate.bench import concurrency, packed
from zr_ablate.bench.measure import bench_lightning, bench_size
from zr_ablate.bench.plan import Sharing, Speed
from zr_ablate.training.clock import describe

# A measurement short enough to spend from a time budget: per (size, placement) row 2 warm-up and 3 timed
# windows, once; Lightning's share over 8 windows of one placement; on a GPU, 2-s phases of 1, 2 and 4
# concurrent jobs.
STEPS, WARMUP, LIGHTNING_STEPS, LEVELS, PHASE_S = 3, 2, 8, [1, 2, 4], 2.0


def speed(bench: dict, size: str, placement: str) -> Speed | None:
    """One job's speed alone: the bench row's training tokens/s (the concurrency measurement's solo speed
    where it has one) times Lightning's share of the plain loop at this size, and its evaluation tokens/s.
    None if the file has no row for it."""
    rows = {(r["size"], r["placement"]): r for r in bench["placements"] if r["impl"] == "auto"}
    row = rows.get((size, placement))
    if row is None:
        return None
    together = bench.get("concurrency") or {}
    solo = together.get("solo_tokens_per_s", {}) if together.get("size") == size else {}
    ratios = [r["ratio"] for r in bench.get("lightning") or [] if r["size"] == size]
    train = solo.get(placement, row["train_tokens_per_s"]) * (median(ratios) if ratios else 1.0)
    return Speed(train, row["eval_tokens_per_s"])


def sharing(bench: dict | None) -> Sharing:
    """Each job's mean speed at every measured number of jobs at once, as a fraction of its speed alone."""
    together = (bench or {}).get("concurrency")
    if not together:
        return Sharing()
    return Sharing({level["jobs"]: mean(level["slowdown"]) for level in together["levels"]})


def packing(bench: dict | None, size: str) -> Sharing:
    """Each packed member's speed at every measured number of members M, as a fraction of one job's speed
    alone (the packed aggregate / M), from a packed measurement of the jobs' model size; {1: 1.0} (no gain
    known) when there is none."""
    measured = (bench or {}).get("packed")
    if not measured or measured.get("size") != size:
        return Sharing()
    return Sharing(
        {1: 1.0} | {r["members"]: r["packed_x_one_job"] / r["members"] for r in measured["levels"] if r["members"] > 1}
    )


def merge(files: dict[str, dict]) -> dict:
    """Bench files as one: a file of python -m zr_ablate.bench --out (placements, Lightning, concurrency) and
    one of --packed (under "packed"; its concurrency too if the other has none). Raises ValueError naming a
    file that is neither, or two of one kind."""
    merged, kinds = {}, {}
    for name, bench in files.items():
        kind = "placements" if isinstance(bench, dict) and isinstance(bench.get("placements"), list) else None
        if isinstance(bench, dict) and any("members" in r for r in bench.get("levels") or [{}]):
            kind = "packed"
        if kind is None:
            raise ValueError(f"{name} is not a bench file (no placements or packed levels); pass one python -m "
                             "zr_ablate.bench wrote")  # fmt: skip
        if kind in kinds:
            raise ValueError(f"{kinds[kind]} and {name} both hold {kind}; pass one of them")
        kinds[kind] = name
        if kind == "placements":
            merged = bench | {k: v for k, v in merged.items() if k == "packed" or not bench.get(k)}
        else:
            merged["packed"] = bench
            if not merged.get("concurrency"):
                merged["concurrency"] = bench.get("concurrency")
    return merged


def fastest_threads(size: str, placement: str, candidates: list[int], overrides: tuple[str, ...]) -> tuple[int, dict]:
    """The torch thread count among `candidates` that trains one job fastest on this CPU, and the tokens/s
    of each: all cores is not always it (a small model, or cores other programs use too: on a busy
    2-core machine two threads trained the tiny profile 40x slower than one)."""
    args = SimpleNamespace(steps=STEPS, warmup=WARMUP, repeats=1, overrides=overrides, memory=False)
    cpu, speeds = torch.device("cpu"), {}
    for n in candidates:
        torch.set_num_threads(n)
        speeds[n] = bench_size(size, [(placement, "auto")], cpu, args, peak=float("nan"))[0]["train_tokens_per_s"]
    best = max(speeds, key=speeds.get)
    torch.set_num_threads(best)
    return best, speeds


def measure(pairs: list[tuple[str, str]], device: torch.device, overrides: tuple[str, ...], log) -> dict:
    """Bench rows for each (size, placement) with `overrides`, Lightning's share for the first, and on a
    GPU the concurrency levels of the most frequent size (one process per job, as the jobs will run)."""
    args = SimpleNamespace(
        steps=STEPS,
        warmup=WARMUP,
        repeats=1,
        overrides=overrides,
        memory=False,
        threads=torch.get_num_threads(),
        lightning_steps=LIGHTNING_STEPS,
    )
    started = time.time()
    sizes = list(dict.fromkeys(size for size, _ in pairs))
    rows, lightning = [], []
    for size in sizes:
        placements = [p for s, p in pairs if s == size]
        rows += bench_size(size, [(p, "auto") for p in placements], device, args, peak=float("nan"))
        with warnings.catch_warnings():  # the bench fits without validation data, on purpose
            warnings.filterwarnings("ignore", message=r".*validation_step.* no `val_dataloader`")
            lightning.append(bench_lightning(size, placements[0], device, args))
    together = packs = None
    if device.type == "cuda":
        size = max(sizes, key=lambda s: sum(1 for t, _ in pairs if t == s))
        placements = [p for s, p in pairs if s == size]
        workers = (placements * LEVELS[-1])[: LEVELS[-1]]  # one process per job, up to the largest level
        try:
            together = concurrency.measure(size, workers, LEVELS, PHASE_S, "cuda", overrides)
            log("concurrency:\n" + concurrency.table(together))
            packs = measure_packed(size, workers, together, device, overrides, log)
        except RuntimeError as e:
            log(f"concurrency not measured ({e}): one job at a time")
    log(f"speeds measured in {time.time() - started:.0f} s")
    return {
        "command": "measured by python -m zr_ablate.bench.budget",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": describe(device, args.threads),
        "torch": torch.__version__,
        "threads": args.threads,
        "settings": {"overrides": list(overrides), "steps": STEPS, "warmup": WARMUP, "repeats": 1},
        "placements": rows,
        "lightning": lightning,
        "concurrency": together,
        "packed": packs,
    }


def measure_packed(size: str, workers: list[str], together: dict, device, overrides: tuple, log) -> dict | None:
    """Training tokens/s of 2 and 4 members packed in one process (bench.packed), against the concurrency
    measurement's one job: the rows of python -m zr_ablate.bench --packed. None where the placements cannot
    be packed."""
    one, rows = together["levels"][0]["aggregate_tokens_per_s"], []
    try:
        for m in LEVELS[1:]:
            rate = packed.packed_rate(size, workers[:m], device, PHASE_S, overrides)
            rows.append({"members": m, "placements": workers[:m], "packed_tokens_per_s": rate,
                         "packed_x_one_job": rate / one})  # fmt: skip
    except (RuntimeError, ValueError) as e:
        log(f"packing not measured ({e}): no jobs packed")
        return None
    log("packed in one process: " + ", ".join(f"{r['members']} jobs {r['packed_x_one_job']:.2f} x one" for r in rows))
    return {"size": size, "one_job_tokens_per_s": one, "levels": rows}
