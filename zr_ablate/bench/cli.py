"""Throughput benchmark: every dropout placement against the fused `zaremba` path, Lightning against a plain loop.

    python -m zr_ablate.bench                                # medium and large, every preset, this machine
    python -m zr_ablate.bench --sizes medium --threads 2 --reference
    python -m zr_ablate.bench --device cuda --out outputs/bench/gpu.json
    python -m zr_ablate.bench --profile --sizes medium --placements naive --steps 4 --threads 2
    python -m zr_ablate.bench --packed 1 2 4 --packed-size small --threads 1    # packed members (bench/packed.py)

Sizes and placements are the YAML files in zr_ablate/conf/model and zr_ablate/conf/dropout, composed as run.py
composes them.
Tokens are random: speed does not depend on the text. What is measured:
- a training step as LMModule trains (forward, NLL summed over the unroll / batch, backward, one global-norm
  clip, SGD step) and an evaluation step (forward and summed NLL under no_grad), on batch x unroll windows;
- each repeat times `steps` windows of every placement in turn, interleaved, so that drift of the machine
  (another process, clock changes) hits all of them alike. tokens/s is the median over repeats; a ratio is
  the median over repeats of (this placement / fused zaremba in the same repeat);
- the first step's seconds beside the median step: nothing is compiled, so warm-up is that one step;
- achieved GFLOP/s from the model's matmul FLOPs (training = 3 x forward) against the best square matmul on
  this device, measured first;
- memory, in a fresh process per row: the peak to train the model (CUDA: allocator peak; CPU: growth of peak
  RSS over the process before the model was built) and the bytes autograd saves for backward in one step;
- Lightning: LMModule under a Trainer (no logger, checkpoint or progress bar) against a plain
  pytorch/examples-style loop over the same windows, interleaved; the median step (start of one batch to
  the start of the next) after the first `warmup` steps, so a stray slow step does not decide it.
Prints markdown tables and writes them, with every repeat, as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from zr_ablate.analysis.report.tables import markdown_table
from zr_ablate.bench import concurrency, packed
from zr_ablate.bench.measure import bench_lightning, bench_size, peak_memory, profile_row
from zr_ablate.bench.workload import APPLIES, BASELINE, BenchError, gemm_peak, needs_loop, settings
from zr_ablate.training.clock import describe

# The printed tables' columns after size and placement: heading -> (format, the fields it formats). A column
# whose fields the rows lack (memory, without --no-memory) is left out.
PLACEMENT_COLUMNS = {
    "path": ("{}", "path"),
    "train tok/s": ("{:,.0f}", "train_tokens_per_s"),
    "x fused zaremba": ("{:.2f}", "train_ratio"),
    "eval tok/s": ("{:,.0f}", "eval_tokens_per_s"),
    "eval x": ("{:.2f}", "eval_ratio"),
    "GFLOP/s (% peak)": ("{:.0f} ({:.0%})", "gflops", "gemm_peak_fraction"),
    "first / median step s": ("{:.2f} / {:.2f}", "first_step_s", "median_step_s"),
    "peak MB": ("{:,.0f}", "peak_mb"),
    "saved for backward MB": ("{:,.0f}", "saved_for_backward_mb"),
}
LIGHTNING_COLUMNS = {
    "plain loop tok/s": ("{:,.0f}", "plain_tokens_per_s"),
    "Lightning tok/s": ("{:,.0f}", "lightning_tokens_per_s"),
    "Lightning / plain": ("{:.3f}", "ratio"),
    "fit wall s (incl. setup)": ("{:.1f}", "lightning_fit_wall_s"),
}


def table(results: list[dict], columns: dict) -> str:
    """Bench rows as a markdown table: size, placement, then each of `columns` the rows have."""
    import pandas as pd

    kept = {head: spec for head, spec in columns.items() if all(f in results[0] for f in spec[1:])}
    shown = [
        {"size": r["size"], "placement": r["placement"]}
        | {head: fmt.format(*(r[f] for f in fields)) for head, (fmt, *fields) in kept.items()}
        for r in results
    ]
    return markdown_table(pd.DataFrame(shown))


def timed_comparison(p: argparse.ArgumentParser, name: str, nargs: str, metavar: str, help: str, placements: str):
    """--NAME levels, and the model profile, placements and phase length they are measured with (the
    concurrency and packing comparisons take the same four options)."""
    p.add_argument(f"--{name}", nargs=nargs, type=int, default=None, metavar=metavar, help=help)
    p.add_argument(f"--{name}-size", default="medium", help="model profile of the comparison")
    p.add_argument(
        f"--{name}-placements", nargs="+", default=["zaremba", "none", "variational", "naive"], help=placements
    )
    p.add_argument(f"--{name}-seconds", type=float, default=4.0, help="length of each timed phase")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zr_ablate.bench", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["medium", "large"], help="zr_ablate/conf/model profiles")
    p.add_argument(
        "--placements",
        nargs="+",
        default=["none", "naive", "zaremba", "variational", "semeniuta", "weight_drop", "zoneout"],
        help="zr_ablate/conf/dropout presets (fused zaremba is always measured: it is the baseline)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="add the plain autograd loop (impl=reference) for every looped placement",
    )
    p.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=["eager", "layers", "loop", "torch"],
        help="CUDA: add rows per placement with cuda_graph=off (eager) or layers, or the loop on PyTorch "
        "ops instead of Triton (torch) (looped placements); on the fast loop instead of cuDNN "
        "(loop; fused placements)",
    )
    p.add_argument("--variant-sizes", nargs="+", default=None, help="sizes that get the --variants rows (default: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed windows per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed windows first")
    p.add_argument(
        "--lightning",
        nargs="*",
        default=["zaremba", "variational"],
        help="placements timed under Lightning and the plain loop (none: skip)",
    )
    p.add_argument("--lightning-steps", type=int, default=15, help="timed windows per Lightning repeat")
    p.add_argument("--lightning-sizes", nargs="+", default=None, help="sizes timed under Lightning (default: all)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory probes")
    p.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every row, as on run.py's command line (e.g. model.cuda_graph=false)",
    )
    timed_comparison(
        p,
        "concurrency",
        nargs="*",
        metavar="K",
        help="aggregate throughput of K jobs at once, one process each (default: 1 2 4 on CUDA, none on CPU; "
        "zr_ablate.bench.concurrency)",
        placements="one concurrent job per placement; level K runs the first K",
    )
    timed_comparison(
        p,
        "packed",
        nargs="+",
        metavar="M",
        help="instead of the tables: training tokens/s of M members packed in one process against one solo job "
        "and M solo processes, per M (zr_ablate.bench.packed; --threads per process)",
        placements="member m's placement is the m-th (cycled)",
    )
    p.add_argument("--packed-threads", type=int, default=None, help="the packed process's torch threads (--threads)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the tables: torch.profiler's top ops by input shape over --steps training windows of "
        "every --sizes x --placements row",
    )
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench.json"))
    p.add_argument("--peak-memory", nargs=3, metavar=("SIZE", "PLACEMENT", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.overrides = tuple(args.overrides)
    if min(args.repeats, args.steps, args.warmup, args.lightning_steps) < 1:
        p.error("--repeats, --steps, --warmup and --lightning-steps must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.packed is not None and (min(args.packed) < 1 or args.packed_seconds <= 0 or (args.packed_threads or 1) < 1):
        p.error("--packed counts and --packed-threads must be at least 1 and --packed-seconds > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("zr_ablate.bench: error: --device cuda but torch sees no GPU; use --device cpu")
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    if args.peak_memory:
        print(json.dumps(peak_memory(*args.peak_memory, device, args.overrides)))
        return
    try:
        if not args.profile:  # the profile is printed, not written
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.touch()
    except OSError as e:
        sys.exit(f"zr_ablate.bench: error: cannot write {args.out} ({e.strerror}); pass --out to a writable path")
    placements = [BASELINE] + [(p, "auto") for p in args.placements if (p, "auto") != BASELINE]
    if args.concurrency is None:
        args.concurrency = [1, 2, 4] if device.type == "cuda" else []
    try:
        for size in args.sizes:
            for placement, _ in placements:
                settings(size, placement, "auto", args.overrides)  # every name checked before anything runs
        for placement in args.concurrency_placements if args.concurrency else []:
            settings(args.concurrency_size, placement, "auto", args.overrides)
        for placement in args.packed_placements if args.packed else []:
            settings(args.packed_size, placement, "auto", args.overrides)
    except BenchError as e:
        sys.exit(f"zr_ablate.bench: error: {e}")
    command = "python -m zr_ablate.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.packed:
        result = packed.measure(
            args.packed_size,
            args.packed_placements,
            args.packed,
            args.packed_seconds,
            device,
            args.threads,
            args.overrides,
            args.packed_threads,
        )
        result["command"] = command
        args.out.write_text(json.dumps(result, indent=1))
        print(packed.table(result))
        print(f"\nwritten: {args.out}")
        return
    if args.profile:
        for size in args.sizes:
            for placement, _ in placements:
                print(profile_row(size, placement, device, args), flush=True)
        return
    peak = gemm_peak(device)
    print(
        f"device: {describe(device, args.threads)}; torch {torch.__version__}; float32 GEMM peak {peak:.0f} GFLOP/s",
        flush=True,
    )
    results, lightning = [], []
    for size in args.sizes:
        rows = list(placements)
        looped = [p for p, _ in placements if needs_loop(size, p)]
        variants = args.variants if device.type == "cuda" and size in (args.variant_sizes or [size]) else []
        for variant in variants:
            rows += [(p, variant) for p, _ in placements if (p in looped) == (APPLIES[variant] == "looped")]
        if args.reference:
            rows += [(p, "reference") for p in looped]
        results += bench_size(size, rows, device, args, peak)
        print(table([r for r in results if r["size"] == size], PLACEMENT_COLUMNS), flush=True)
        for placement in args.lightning if args.lightning_sizes is None or size in args.lightning_sizes else []:
            lightning.append(bench_lightning(size, placement, device, args))
            print(f"lightning {size}/{placement}: {lightning[-1]['ratio']:.3f} x plain loop", flush=True)
    together = None
    if args.concurrency:
        together = concurrency.measure(
            args.concurrency_size,
            args.concurrency_placements,
            args.concurrency,
            args.concurrency_seconds,
            device.type,
            args.overrides,
        )
    report = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": describe(device, args.threads),
        "torch": torch.__version__,
        "threads": args.threads,
        "gemm_peak_gflops": peak,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "placements": results,
        "lightning": lightning,
        "concurrency": together,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print("\n## Training and evaluation throughput\n")
    print(table(results, PLACEMENT_COLUMNS))
    if lightning:
        print("\n## Lightning against a plain PyTorch loop (training)\n")
        print(table(lightning, LIGHTNING_COLUMNS))
    if together:
        print(f"\n## Concurrent {args.concurrency_size} jobs, one process each (training, plain loop)\n")
        print(concurrency.table(together))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
