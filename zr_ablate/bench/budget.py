"""A time-budgeted run: as much of a sweep as fits in a wall-clock budget, stopped cleanly at the deadline,
the rest left for the next run of the same command.

    python -m zr_ablate.bench.budget grid=ablation_medium --budget 40m
    python -m zr_ablate.bench.budget model=medium dropout=none,zaremba seed=1,2 --budget 2h --bench FILE.json
    python -m zr_ablate.bench.budget model=tiny dropout=none,naive --budget 2m     # on a CPU, in minutes

The sweep is run.py's overrides (a grid, or lists of placements and seeds), expanded into the job folders
`python run.py -m` would use, and checked before anything runs. Then:
1. jobs already completed are skipped, a job with a checkpoint resumes from it (run.py does both);
2. on a GPU, each fast path (CUDA graphs, the Triton loop) is checked against the plain one in a few
   training steps, unless --cuda-graph / --loop-kernel give it (zr_ablate.bench.paths);
3. speeds: measured in seconds per placement (zr_ablate.bench.speeds), or read (--bench), or given
   (--speed); on a GPU also 1, 2 and 4 jobs at once, under CUDA MPS when it starts (--mps), and 2 and 4
   jobs packed in one process;
4. the plan (zr_ablate.bench.plan, packing): how many jobs at once, which packed together (only where that
   measured faster, or --pack), which are expected to complete, which to train some epochs that the next
   run resumes, which to leave;
5. the jobs run, each as `python run.py <its overrides>`, a packed group as `python run.py -m <its jobs>
   hydra/launcher=packed` (zr_ablate.bench.runner); --stop-grace before
   the deadline (or on SIGTERM / Ctrl-C) running jobs are stopped; every job's result.json then says
   where it stands (zr_ablate.bench.jobs);
6. with --archive, the records are packed into size-limited tarballs (zr_ablate.bench.archive);
7. a summary (zr_ablate.bench.summary). Exit 0: all jobs finished; 75: some are left, run the same command
   again; 1: a job failed.
The log, the plan and measured speeds (a bench file for --bench) go to <sweep folder>/budget/.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

PROG = "python -m zr_ablate.bench.budget"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """'40m', '1h30m', '90s', '2.5h' or plain seconds -> seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d*)?", text):
        return float(text)
    if not re.fullmatch(r"(\d+(\.\d*)?[smhd])+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 40m, 1h30m, 90s or 3600")
    return sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d*)?)([smhd])", text))


def pack_option(text: str) -> int | None:
    """--pack: 'auto' -> None (the plan decides), 'off' -> 1, M -> M."""
    if text in ("auto", "off"):
        return None if text == "auto" else 1
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: write auto, off or a number of jobs >= 1")
    return int(text)


def parse(argv: list[str] | None) -> argparse.Namespace:
    intro, examples = __doc__.split("\n\n")[:2]
    p = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(" ".join(intro.split()), 100),
        epilog="examples:\n" + examples + "\n\nexit status: 0 all jobs finished, 75 some are left (run it again), "
        "1 a job failed or bad input, 2 bad options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="run.py's overrides; a,b lists sweep")

    def duration_option(flag: str, default: str, what: str) -> None:
        p.add_argument(flag, type=duration, default=duration(default), metavar="DURATION", help=f"{what} ({default})")

    duration_option("--budget", "1h", "the wall-clock budget, e.g. 40m, 1h30m, 90s or seconds")
    duration_option("--stop-grace", "30s", "how long before the deadline running jobs are told to stop")
    duration_option("--job-start", "30s", "estimated time from a job's launch to its first step")
    speeds = p.add_mutually_exclusive_group()
    speeds.add_argument(
        "--bench",
        type=Path,
        action="append",
        metavar="PATH",
        help="plan from this bench file (python -m zr_ablate.bench --out); again for a --packed one",
    )
    speeds.add_argument("--speed", type=float, metavar="TOKENS_PER_S", help="plan with this speed for every job")
    p.add_argument("--margin", type=float, default=1.1, help="a job starts if its estimate x this fits (1.1)")
    p.add_argument(
        "--at-once", type=int, metavar="N", help="jobs at once (default: the best measured on a GPU; 1 on a CPU)"
    )
    p.add_argument(
        "--partial",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start a job that cannot complete if an epoch of it can: the next run resumes it (default on)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--mps", choices=["auto", "off"], default="auto", help="jobs at once on a GPU under CUDA MPS")
    p.add_argument(
        "--pack",
        type=pack_option,
        default=None,
        metavar="auto|off|M",
        help="train up to M same-shape jobs packed in one process (default auto: where measured faster)",
    )
    auto = "auto (default): each checked against the plain path here, then the fastest that passed"
    p.add_argument("--cuda-graph", choices=["auto", "step", "layers", "off"], default="auto", help=auto)
    p.add_argument("--loop-kernel", choices=["auto", "triton", "torch"], default="auto", help=auto)
    p.add_argument("--archive", type=Path, metavar="PATH", help="pack the records into PATH (.tar.gz; -2, -3...)")
    p.add_argument("--archive-max-files", type=int, metavar="N", help="at most N tarballs (default: as needed)")
    p.add_argument("--archive-max-mb", type=float, metavar="MB", help="each at most MB MiB (default: no limit)")
    args = p.parse_intermixed_args(argv)  # overrides before, between or after the options
    if args.budget <= args.stop_grace:
        p.error(f"--budget ({args.budget:.0f} s) must be longer than --stop-grace ({args.stop_grace:.0f} s)")
    for name in ("speed", "margin", "at_once", "archive_max_files", "archive_max_mb"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if any(o.startswith(("hydra/launcher=", "-m", "--multirun")) for o in args.overrides):
        p.error("this command launches the jobs itself: drop -m and hydra/launcher=")
    args.command = f"{PROG} {shlex.join(argv if argv is not None else sys.argv[1:])}"
    return args


def prepare(args) -> tuple[list, dict, dict | None, Path]:
    """Everything checked before any work: the jobs, their data, the bench file, the archive's name.
    -> (every job of the sweep, tokens per split per job, the bench file's JSON, the sweep folder)."""
    from zr_ablate.bench import jobs as sweep
    from zr_ablate.bench.archive import part_name
    from zr_ablate.bench.speeds import merge, speed
    from zr_ablate.experiment.build import error_line

    if not sweep.RUN_PY.is_file():
        fail(f"{sweep.RUN_PY} not found: run this command from a checkout of zr_ablate (each job is run.py)")
    if args.archive and (part_name(args.archive, 1).exists() or part_name(args.archive, 2).exists()):
        fail(f"{args.archive} or its parts exist already; move them away or pass another --archive")
    bench, files = None, {}
    for path in args.bench or []:
        try:
            files[str(path)] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            fail(f"cannot read --bench {path} ({e}); pass a file that python -m zr_ablate.bench --out wrote")
    if files:
        try:
            bench = merge(files)
        except ValueError as e:
            fail(f"--bench {e}")
    try:
        jobs = sweep.expand(args.overrides)
        folders = {job.folder.parent for job in jobs}
        if len(folders) > 1:
            raise ValueError(f"the jobs go to {len(folders)} sweep folders ({sorted(folders)}); give one sweep=NAME")
        counted = {}  # one count per data setting (usually one for the whole sweep)
        for job in jobs:
            if sweep.data_key(job.cfg) not in counted:
                counted[sweep.data_key(job.cfg)] = sweep.split_tokens(job.cfg)
        tokens = {job.name: counted[sweep.data_key(job.cfg)] for job in jobs}
    except Exception as e:  # Hydra's, the data's and the sweep guard's errors: one line each
        fail(error_line(e))
    todo = [job for job in jobs if not sweep.is_final(job)]
    has_rows = bench is not None and "placements" in bench  # else (a --packed file alone) the speeds are measured
    missing = sorted({job.speed_key for job in todo if has_rows and speed(bench, *job.speed_key) is None})
    if missing:
        fail(f"--bench has no speed for (model, dropout) {missing}; drop --bench to measure, or pass --speed")
    return jobs, tokens, bench, next(iter(folders))


def fail(msg: str):
    sys.exit(f"zr_ablate: error: {msg}")


def main(argv: list[str] | None = None) -> int:
    started, wall = time.monotonic(), time.time()
    args = parse(argv)
    from zr_ablate.console import silence

    silence()  # Lightning's start-up lines, when the speeds are measured here
    from zr_ablate.bench import jobs as sweep
    from zr_ablate.bench.runner import NOT_STARTED, Log
    from zr_ablate.bench.summary import closing_lines, table

    jobs, tokens, bench, folder = prepare(args)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(wall))
    (folder / "budget").mkdir(parents=True, exist_ok=True)
    log = Log(folder / "budget" / f"{stamp}.log", wall)
    log(args.command)
    todo = [job for job in jobs if not sweep.is_final(job)]
    log(f"{len(jobs)} jobs in {sweep.shown(folder)}: {len(jobs) - len(todo)} finished before, {len(todo)} to run")
    stop = threading.Event()

    def on_signal(signum, frame):
        log(f"{signal.Signals(signum).name}: stopping")
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    ran = {}
    try:
        if todo:
            from zr_ablate.bench.launch import run_budget

            ran = run_budget(args, todo, tokens, bench, folder / "budget" / stamp, log, started + args.budget, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    log("where every job stands:\n" + table(jobs))
    # A budget no job fits in would leave a loop of reruns doing nothing: say so, and fail.
    nothing_fits = bool(ran) and not stop.is_set() and all(e.how == NOT_STARTED for e in ran.values())
    lines, code = closing_lines(jobs, args.command, sweep.shown(folder), nothing_fits)
    for line in lines:
        log(line)
    if args.archive:  # last, so that the log it packs holds the summary
        from zr_ablate.bench.archive import pack

        max_bytes = int(args.archive_max_mb * 2**20) if args.archive_max_mb else None
        parts, left_out = pack(folder, args.archive, args.archive_max_files, max_bytes)
        log(f"archive: {', '.join(sweep.shown(p.absolute()) for p in parts)}")
        for path in left_out:
            log(f"left out of the archive (raise --archive-max-mb or --archive-max-files): {sweep.shown(path)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
