"""The GPU sprint: one prepared command that turns a short GPU lease into the medium four-placement table.

    make device-sprint                  # on the GPU machine (installs the carried wheels first); writes $OUT
    make device-sprint DRY=1 OUT=dir    # the same plumbing on this CPU, tiny profile, no wheels, no GPU

Steps, each logged to OUT/sprint.log; a step that fails is logged and the next still runs:
 1. environment.json: GPU, driver, torch, Python.
 2. GPU tests (tests/model/test_gpu.py): each CUDA-graph mode (step, layers) trains exactly as eager does, the
    Triton loop as the PyTorch loop does, cuDNN runs in FP32. Only what passed its tests is used.
 3. MPS: if nvidia-cuda-mps-control is there, start its daemon and check that a CUDA process runs under
    it (else stop it and go on without). Without MPS, processes sharing a GPU take turns: the small
    batch-20 kernels of one job leave most of the GPU idle, and a second job's kernels cannot fill it.
    Under MPS they run side by side. Stopped again at the end; no setting of the GPU is changed.
 4. bench.json (python -m zr_ablate.bench): every placement at medium and large in the best mode that
    passed, with the other mode and with the fused placements on the fast loop beside it (`choose`
    picks the sweep's cuda_graph and model.lstm_impl from these rows); then 1, 2 and 4 concurrent medium
    jobs (one process each, zr_ablate.bench.concurrency) with those settings, under MPS when it runs.
 5. plan.json (`plan`): from the measured speeds, which jobs finish before the deadline and how many run at
    once, taking jobs in the order zaremba, none, variational, naive, leaving out those already completed
    in --done (so successive leases work through the four); what is left out, and why. --bench plans from
    an earlier sprint's measurements instead of step 4, leaving more of the lease to train.
 6. the sweep: run.py -m grid=ablation_medium seed=1 dropout=<planned> with the joblib launcher, stopped
    at the deadline if it overruns (its jobs then end as failed/running, and say so).
 7. the context-length probe (python -m zr_ablate.probe) on the finished jobs' checkpoints, which
    cannot travel back (too large): its tables go into the sweep folder's probe/.
 8. OUT/sweep.tar.gz: every job's result.json, epochs.csv, run.log, .hydra/ and W&B offline run (no
    checkpoints) and the probe's tables, and a summary table printed last.
Everything lands in at most 8 files under OUT, the most the device tool brings back.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from xml.etree import ElementTree

from zr_ablate.bench import concurrency
from zr_ablate.bench.lease import MAX_FILE, REPO, Log, environment, pack, run_logged, start_mps, stop_mps, summary
from zr_ablate.bench.plan import PRIORITY, choose, plan, remaining, sweep_shape

# A sweep stopped at the deadline gets STOP_S to record itself; then the probe and packing.
STOP_S, PROBE_S, PACK_S = 15.0, 40.0, 15.0


def bench_command(args, out: Path, checks: dict) -> list[str]:
    """The placement table in the best passed mode, the other passed graph mode beside it for the looped
    placements, and the fused placements on the fast loop; concurrency is measured after `choose`."""
    modes = checks["modes"]
    cmd = [sys.executable, "-m", "zr_ablate.bench.cli", "--out", str(out), "--overrides", f"cuda_graph={modes[0]}"]
    cmd.append("--concurrency")  # with no counts: measured after `choose`, by sprint itself
    if args.dry:  # one quick pass of every table on the CPU, to exercise the plumbing
        return cmd + [
            *f"--device cpu --sizes {args.size} --placements".split(),
            *PRIORITY,
            *"--repeats 1 --steps 1 --warmup 1 --lightning zaremba --lightning-steps 2 --no-memory --threads 1".split(),
        ]
    variants = (
        ["loop"]
        + (["layers"] if modes[0] == "step" and "layers" in modes else [])
        + (["torch"] if checks["triton"] else [])
    )
    return cmd + [
        *f"--device cuda --sizes {args.size} large --variants".split(),
        *variants,
        *f"--variant-sizes {args.size} --repeats 2 --steps 3 --warmup 2 --no-memory".split(),
        *f"--lightning zaremba variational --lightning-steps 8 --lightning-sizes {args.size}".split(),
    ]


def gpu_checks(log: Log, deadline: float) -> dict:
    """Run tests/model/test_gpu.py; -> {"modes": the CUDA-graph modes whose tests passed, best first, then "off"
    (always allowed); "triton": whether the Triton loop kernels passed}."""
    report = Path("/tmp/zr_ablate-gpu-tests.xml")
    report.unlink(missing_ok=True)
    code = run_logged(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/model/test_gpu.py",
            f"--junitxml={report}",
        ],
        log,
        timeout=min(180.0, deadline - time.time()),
    )
    failed = set()
    if report.exists():
        for case in ElementTree.parse(report).iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.add(case.get("name", ""))

    def passed(prefix: str) -> bool:
        return code in (0, 1) and report.exists() and not any(n.startswith(prefix) for n in failed)

    checks = {
        "modes": [m for m in ("step", "layers") if passed(f"test_{m}_graph")] + ["off"],
        "triton": passed("test_triton"),
    }
    log(f"GPU tests exit {code}; failed: {sorted(failed) or 'none'}; may use: {checks}")
    return checks


def sweep_command(args, jobs: list[str], at_once: int, overrides: list[str], root: Path) -> list[str]:
    return [
        sys.executable,
        "run.py",
        "-m",
        "grid=ablation_medium",
        f"model={args.size}",
        f"seed={args.seed}",
        f"dropout={','.join(jobs)}",
        "hydra/launcher=local",
        f"hydra.launcher.n_jobs={at_once}",
        "trainer.enable_progress_bar=false",
        f"data.dir={args.ptb}",
        "logger.mode=offline",
        f"out_root={root}",
        f"sweep={args.sweep}",
        *overrides,
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zr_ablate.bench.sprint", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where the (at most 8) result files go")
    p.add_argument("--dry", action="store_true", help="CPU plumbing check: tiny profile, short bench")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds from --started-at to the last file written (default 540; dry 300)",
    )
    p.add_argument("--started-at", type=float, default=None, help="epoch seconds the budget counts from")
    p.add_argument("--ptb", default=os.environ.get("ZR_ABLATE_PTB_DIR", ".device/ptb"), help="PTB folder")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sweep", default="gpu-medium", help="sweep name: the folder and the W&B group")
    p.add_argument("--work", type=Path, default=Path("outputs/device"), help="where the sweep's job folders go")
    p.add_argument(
        "--bench",
        type=Path,
        default=None,
        help="plan from this bench.json (an earlier sprint's) instead of measuring: more time to train",
    )
    p.add_argument(
        "--done",
        type=Path,
        default=None,
        help="a folder of job folders (reports/gpu-medium/runs): placements completed there at this size "
        "and seed are not trained again, so successive leases work through the four",
    )
    p.add_argument(
        "--mps",
        choices=["auto", "off"],
        default="auto",
        help="auto: run concurrent jobs under CUDA MPS when it starts (never in a dry run)",
    )
    args = p.parse_args(argv)
    args.size = "tiny" if args.dry else "medium"
    started = args.started_at or time.time()
    deadline = started + (args.budget or (300.0 if args.dry else 540.0))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sprint.log").touch()
    except OSError as e:
        sys.exit(f"zr_ablate.bench.sprint: error: cannot write {args.out} ({e.strerror}); pass --out a writable folder")
    if not (Path(args.ptb) / "ptb.train.txt").is_file():
        sys.exit(
            f"zr_ablate.bench.sprint: error: no PTB in {args.ptb}; pass --ptb "
            "(make device-wheels copies it to .device/ptb)"
        )
    args.ptb = str(Path(args.ptb).resolve())
    os.environ["ZR_ABLATE_PTB_DIR"] = args.ptb  # the GPU tests read PTB from here (no ../shared there)
    sweep_dir = (REPO / args.work / args.sweep).resolve()
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        sys.exit(f"zr_ablate.bench.sprint: error: {sweep_dir} already holds jobs; move it away (a sprint starts clean)")
    log = Log(args.out / "sprint.log", started)
    log(
        f"sprint {'(dry) ' if args.dry else ''}budget {deadline - started:.0f} s, "
        f"deadline in {deadline - time.time():.0f} s"
    )

    env = environment(args.dry)
    (args.out / "environment.json").write_text(json.dumps(env, indent=1))
    log(f"environment: {json.dumps(env)}")

    checks = gpu_checks(log, deadline)

    mps = not args.dry and args.mps == "auto" and start_mps(log)
    try:
        run_measured(args, log, checks, deadline, mps)
    except Exception:  # whatever broke, what the sweep wrote so far still gets packed
        log("sprint step failed:\n" + traceback.format_exc())
    finally:
        if mps:
            stop_mps()
            log("MPS: stopped")
    if sweep_dir.exists():
        for tarball in pack(sweep_dir, args.out):
            size = tarball.stat().st_size
            log(f"packed {tarball} ({size / 2**20:.1f} MiB{'; TOO LARGE to come back' if size > MAX_FILE else ''})")
        table = summary(sweep_dir)
        (args.out / "summary.md").write_text(table + "\n")
        log("summary:\n" + table)
    log("done")
    return 0


def run_measured(args, log: Log, checks: dict, deadline: float, mps: bool) -> None:
    """Steps 4-7: bench, concurrency, plan, sweep, probe."""
    order = remaining(args, log)
    if not order:
        log(f"nothing to train: {', '.join(PRIORITY)} are all completed in {args.done}")
        return
    bench_path = args.out / "bench.json"
    if args.bench:
        bench = json.loads(args.bench.read_text())
        log(f"planning from {args.bench} ({bench.get('device')}, {bench.get('date')}): not measured again")
    else:
        code = run_logged(bench_command(args, bench_path, checks), log, timeout=min(150.0, deadline - time.time()))
        bench = json.loads(bench_path.read_text()) if code == 0 and bench_path.stat().st_size else None
    overrides = choose(bench, args.size, checks)
    log(f"training with {' '.join(overrides)}")
    if bench is not None and not args.bench:
        try:
            bench["concurrency"] = concurrency.measure(
                args.size,
                PRIORITY,
                [1, 2] if args.dry else [1, 2, 4],
                1.0 if args.dry else 2.0,
                "cpu" if args.dry else "cuda",
                tuple(overrides),
                timeout=min(120.0, deadline - time.time()),
            )
            log("concurrency:\n" + concurrency.table(bench["concurrency"]))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            log(f"concurrency not measured ({e}): planning one job at a time")
        bench_path.write_text(json.dumps(bench, indent=1))
    cfg_epochs, tokens = sweep_shape(args.size)
    available = deadline - time.time() - STOP_S - PROBE_S - PACK_S
    if bench is None:
        log("bench failed: planning without measurements (the first two, two at a time)")
        the_plan = {
            "jobs": order[:2],
            "at_once": 2,
            "fits": None,
            "left_out": order[2:],
            "why": "the bench failed, so nothing was measured",
            "available_s": available,
        }
    else:
        the_plan = plan(bench, args.size, cfg_epochs, tokens, available, order)
    the_plan.update(overrides=overrides, mps=mps)
    (args.out / "plan.json").write_text(json.dumps(the_plan, indent=1))
    log(
        f"plan: {the_plan['jobs']} {the_plan['at_once']} at a time"
        + (f", expected {the_plan['makespan_s']:.0f} s of {available:.0f}" if "makespan_s" in the_plan else "")
        + (f"; {the_plan['why']}" if the_plan["why"] else "")
    )

    code = run_logged(
        sweep_command(args, the_plan["jobs"], the_plan["at_once"], overrides, REPO / args.work),
        log,
        timeout=deadline - time.time() - PROBE_S - PACK_S,
    )
    log(f"sweep exit {code}")
    sweep_dir = REPO / args.work / args.sweep
    if deadline - time.time() > PACK_S + 10:
        code = run_logged(
            [sys.executable, "-m", "zr_ablate.analysis.context_probe", str(sweep_dir), "--data-dir", args.ptb],
            log,
            timeout=deadline - time.time() - PACK_S,
        )
        log(f"probe exit {code}")


if __name__ == "__main__":
    sys.exit(main())
