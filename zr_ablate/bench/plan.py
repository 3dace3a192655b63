"""The sprint's plan: from measured speeds, which medium jobs finish before a deadline, how many run at once
(`plan`), and the settings to train them with (`choose`). Pure functions of the bench's JSON, tested on
their own (tests/bench/test_sprint.py)."""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

from zr_ablate.data import TRAIN_TOKENS

PRIORITY = ["zaremba", "none", "variational", "naive"]  # what matters most first: the paper's row, then its baseline

VALID_TOKENS, TEST_WINDOWS = 73_760, 82_430 // 35 + 1

# Per-job costs outside the training steps, not measured by the bench (estimates, kept on the safe side):
# process start + data + W&B, the paper-protocol test (batch 1, ~2,400 windows), and per epoch the
# checkpoint and Lightning's epoch overhead.
START_S, TEST_S, PER_EPOCH_S = 30.0, 20.0, 1.5

MARGIN = 1.1  # planned makespan x this must fit


def slowdown(concurrency: dict, jobs: int, placement: str) -> float:
    """A job's speed with `jobs` running at once, as a fraction of its speed alone (measured levels;
    linear between them; beyond the largest level, the aggregate is assumed flat)."""
    levels = {lv["jobs"]: lv for lv in concurrency["levels"]}
    if jobs in levels:
        lv = levels[jobs]
        if placement in lv["placements"]:
            return lv["slowdown"][lv["placements"].index(placement)]
        return sum(lv["slowdown"]) / len(lv["slowdown"])
    known = sorted(levels)
    mean = {k: sum(levels[k]["slowdown"]) / len(levels[k]["slowdown"]) for k in known}
    if jobs > known[-1]:
        return mean[known[-1]] * known[-1] / jobs
    lo = max(k for k in known if k < jobs)
    hi = min(k for k in known if k > jobs)
    return mean[lo] + (mean[hi] - mean[lo]) * (jobs - lo) / (hi - lo)


def simulate(seconds_alone: dict[str, float], order: list[str], at_once: int, concurrency: dict) -> dict[str, float]:
    """Finish time of each job when `at_once` run together (as joblib does: the next starts when one ends),
    each running at its speed alone x slowdown(number running)."""
    pending, active, done, t = list(order), {}, {}, 0.0
    while pending or active:
        while pending and len(active) < at_once:
            job = pending.pop(0)
            active[job] = seconds_alone[job]
        rate = {j: slowdown(concurrency, len(active), j) for j in active}
        dt = min(active[j] / rate[j] for j in active)
        t += dt
        for j in list(active):
            active[j] -= rate[j] * dt
            if active[j] <= 1e-9:
                done[j] = t
                del active[j]
    return done


def job_seconds(bench: dict, size: str, placement: str, epochs: int, train_tokens: int) -> float:
    """One job alone: training at the measured speed (concurrency solo, x Lightning / plain loop), validation
    at the measured evaluation speed, plus the fixed costs above."""
    rows = {(r["size"], r["placement"], r["impl"]): r for r in bench["placements"]}
    row = rows[(size, placement, "auto")]
    train = (bench.get("concurrency") or {}).get("solo_tokens_per_s", {}).get(placement, row["train_tokens_per_s"])
    ratios = [r["ratio"] for r in bench.get("lightning", []) if r["size"] == size]
    lightning = median(ratios) if ratios else 0.9
    per_epoch = train_tokens / (train * lightning) + VALID_TOKENS / row["eval_tokens_per_s"] + PER_EPOCH_S
    return START_S + TEST_S + epochs * per_epoch


def plan(
    bench: dict, size: str, epochs: int, train_tokens: int, available_s: float, order: list[str] = PRIORITY
) -> dict:
    """The most jobs (a prefix of `order`) that finish inside available_s, and the concurrency that
    finishes them soonest. If not even the first fits, it runs alone and is expected to be cut short."""
    alone = {p: job_seconds(bench, size, p, epochs, train_tokens) for p in order}
    together = bench.get("concurrency") or {"levels": [{"jobs": 1, "placements": [], "slowdown": [1.0]}]}
    levels = sorted({lv["jobs"] for lv in together["levels"]})
    best = None
    for n in range(len(order), 0, -1):
        for k in sorted(set(levels + [n])):
            if k > n or k > max(levels):
                continue
            finish = simulate(alone, order[:n], k, together)
            makespan = max(finish.values())
            if makespan * MARGIN <= available_s and (best is None or makespan < best["makespan_s"]):
                best = {"jobs": order[:n], "at_once": k, "makespan_s": makespan, "finish_s": finish}
        if best:
            break
    fits = best is not None
    if not fits:
        best = {"jobs": order[:1], "at_once": 1, "makespan_s": alone[order[0]], "finish_s": {order[0]: alone[order[0]]}}
    left_out = order[len(best["jobs"]) :]
    why = (
        (
            f"{', '.join(left_out)} left out: all {len(order)} would need "
            f"{min(max(simulate(alone, order, k, together).values()) for k in levels):.0f} s at best, "
            f"{available_s:.0f} s available"
        )
        if left_out
        else ""
    )
    if not fits:
        why = (
            f"not even {order[0]} alone fits ({alone[order[0]]:.0f} s needed, {available_s:.0f} s available): "
            f"it runs until the deadline and will be cut short"
        )
    return {
        **best,
        "fits": fits,
        "left_out": left_out,
        "why": why,
        "seconds_alone": alone,
        "available_s": available_s,
        "epochs": epochs,
        "train_tokens": train_tokens,
    }


def choose(bench: dict | None, size: str, checks: dict) -> list[str]:
    """The sweep's overrides, from what passed its GPU tests and the bench's medium rows:
    - cuda_graph: the first passed mode, unless its rows show a failed capture or the other passed mode
      trained every looped placement >5% faster;
    - model.lstm_impl=loop (the fused placements on the fast loop rather than cuDNN) if that trains the
      sweep's placements in >5% less time in all;
    - model.loop_kernel=torch if the Triton kernels failed their tests, or PyTorch ops trained every looped
      placement >5% faster."""
    mode = checks["modes"][0]
    kernel = [] if checks["triton"] else ["model.loop_kernel=torch"]
    if bench is None:
        return [f"cuda_graph={mode}", *kernel]
    rows = {(r["placement"], r["impl"]): r["train_tokens_per_s"] for r in bench["placements"] if r["size"] == size}
    errors = {
        r["placement"]
        for r in bench["placements"]
        if r["size"] == size and r["impl"] == "auto" and r.get("graph_error")
    }

    def faster(variant: str, placements: list[str]) -> bool:
        measured = [p for p in placements if (p, variant) in rows]
        return bool(measured) and all(rows[(p, variant)] > 1.05 * rows[(p, "auto")] for p in measured)

    looped = [p for p in PRIORITY if (p, "layers") in rows or (p, "torch") in rows]
    if mode == "step" and "layers" in checks["modes"] and (errors or faster("layers", looped)):
        mode = "layers"
    if not kernel and faster("torch", looped):
        kernel = ["model.loop_kernel=torch"]
    seconds = {
        v: sum(1 / rows.get((p, v), rows[(p, "auto")]) for p in PRIORITY if (p, "auto") in rows)
        for v in ("auto", "loop")
    }
    impl = ["model.lstm_impl=loop"] if seconds["loop"] < seconds["auto"] / 1.05 else []
    return [f"cuda_graph={mode}", *impl, *kernel]


def remaining(args, log: Callable[[str], None]) -> list[str]:
    """PRIORITY without the placements completed in --done at this size and seed."""
    if args.done is None or not args.done.is_dir():
        return list(PRIORITY)
    from zr_ablate.analysis.runs import NoRunsError, load_sweep

    try:
        runs, _ = load_sweep(args.done)
    except NoRunsError:
        return list(PRIORITY)
    done = runs[(runs["status"] == "completed") & (runs["size"] == args.size) & (runs["seed"] == args.seed)]
    finished = set(done["placement"])
    if finished:
        log(f"already completed in {args.done}: {', '.join(p for p in PRIORITY if p in finished)}")
    return [p for p in PRIORITY if p not in finished]


def sweep_shape(size: str) -> tuple[int, int]:
    """(epochs, training tokens per epoch) of the sweep's model profile, as run.py composes it."""
    from zr_ablate.bench.workload import settings

    cfg = settings(size, PRIORITY[0])
    return int(cfg.trainer.max_epochs), int(cfg.data.train_tokens or TRAIN_TOKENS)
