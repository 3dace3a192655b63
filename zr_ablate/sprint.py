"""The GPU sprint: one prepared command that turns a short GPU lease into the medium four-placement table.

    make device-sprint                  # on the GPU machine (installs the carried wheels first); writes $OUT
    make device-sprint DRY=1 OUT=dir    # the same plumbing on this CPU, tiny profile, no wheels, no GPU

Steps, each logged to OUT/sprint.log; a step that fails is logged and the next still runs:
 1. environment.json: GPU, driver, torch, Python.
 2. GPU tests (tests/test_gpu.py): each CUDA-graph mode (step, layers) trains exactly as eager does, the
    Triton loop as the PyTorch loop does, cuDNN runs in FP32. Only what passed its tests is used.
 3. MPS: if nvidia-cuda-mps-control is there, start its daemon and check that a CUDA process runs under
    it (else stop it and go on without). Without MPS, processes sharing a GPU take turns: the small
    batch-20 kernels of one job leave most of the GPU idle, and a second job's kernels cannot fill it.
    Under MPS they run side by side. Stopped again at the end; no setting of the GPU is changed.
 4. bench.json (python -m zr_ablate.bench): every placement at medium and large in the best mode that
    passed, with the other mode and with the fused placements on the fast loop beside it (`choose`
    picks the sweep's cuda_graph and model.lstm_impl from these rows); then 1, 2 and 4 concurrent medium
    jobs (one process each, zr_ablate.concurrency) with those settings, under MPS when it runs.
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
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path
from statistics import median
from xml.etree import ElementTree

from . import concurrency
from .data import TRAIN_TOKENS

REPO = Path(__file__).resolve().parents[1]
ORDER = ["zaremba", "none", "variational", "naive"]  # what matters most first: the paper's row, then its baseline
VALID_TOKENS, TEST_WINDOWS = 73_760, 82_430 // 35 + 1
# Per-job costs outside the training steps, not measured by the bench (estimates, kept on the safe side):
# process start + data + W&B, the paper-protocol test (batch 1, ~2,400 windows), and per epoch the
# checkpoint and Lightning's epoch overhead.
START_S, TEST_S, PER_EPOCH_S = 30.0, 20.0, 1.5
MARGIN = 1.1  # planned makespan x this must fit
# A sweep stopped at the deadline gets STOP_S to record itself; then the probe and packing.
STOP_S, PROBE_S, PACK_S = 15.0, 40.0, 15.0
MPS_DIR = Path("/tmp/zr_ablate-mps")  # the MPS daemon's pipe and log folders, passed to every child in its env


# --- the plan -------------------------------------------------------------------------------------------
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


def plan(bench: dict, size: str, epochs: int, train_tokens: int, available_s: float,
         order: list[str] = ORDER) -> dict:
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
    left_out = order[len(best["jobs"]):]
    why = (f"{', '.join(left_out)} left out: all {len(order)} would need "
           f"{min(max(simulate(alone, order, k, together).values()) for k in levels):.0f} s at best, "
           f"{available_s:.0f} s available") if left_out else ""
    if not fits:
        why = (f"not even {order[0]} alone fits ({alone[order[0]]:.0f} s needed, {available_s:.0f} s available): "
               f"it runs until the deadline and will be cut short")
    return {**best, "fits": fits, "left_out": left_out, "why": why, "seconds_alone": alone,
            "available_s": available_s, "epochs": epochs, "train_tokens": train_tokens}


# --- the steps ------------------------------------------------------------------------------------------
class Log:
    """Prints and appends to OUT/sprint.log, each line stamped with seconds since the sprint started."""

    def __init__(self, path: Path, started: float):
        self.path, self.started = path, started

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.started:6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def run_logged(cmd: list[str], log: Log, timeout: float) -> int:
    """Run cmd in its own process group, its output into the log; kill the group at the timeout."""
    log("$ " + " ".join(cmd))
    with open(log.path, "a") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            log(f"timeout after {timeout:.0f} s: stopping it (SIGTERM, then SIGKILL)")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return 124


def environment(dry: bool) -> dict:
    """Versions and the GPU, read without creating a CUDA context in this process (MPS starts later)."""
    import torch

    from .bench import cpu_model

    env = {"python": platform.python_version(), "torch": torch.__version__, "dry": dry, "cpu": cpu_model(),
           "cores": os.cpu_count()}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["gpu"] = smi.stdout.strip()
    return env


def mps_control(*args: str, stdin: str | None = None) -> int:
    return subprocess.run(["nvidia-cuda-mps-control", *args], input=stdin, text=True, capture_output=True,
                          timeout=30).returncode


def start_mps(log: Log) -> bool:
    """Start the MPS daemon and check that a CUDA process runs under it; otherwise leave things as they were."""
    if not shutil.which("nvidia-cuda-mps-control"):
        log("MPS: nvidia-cuda-mps-control not found; concurrent jobs take turns on the GPU")
        return False
    for sub in ("pipe", "log"):
        (MPS_DIR / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update(CUDA_MPS_PIPE_DIRECTORY=str(MPS_DIR / "pipe"), CUDA_MPS_LOG_DIRECTORY=str(MPS_DIR / "log"))
    check = [sys.executable, "-c", "import torch; print(float((torch.ones(2, device='cuda') * 2).sum()))"]
    try:
        started = mps_control("-d") == 0
        ran = started and subprocess.run(check, capture_output=True, text=True, timeout=60).stdout.strip() == "4.0"
    except (OSError, subprocess.TimeoutExpired) as e:
        started, ran = True, False
        log(f"MPS: {type(e).__name__}: {e}")
    if ran:
        log("MPS: on (daemon started, a CUDA process ran under it)")
        return True
    if started:
        stop_mps()
    for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        os.environ.pop(key, None)
    log("MPS: could not start or run a CUDA process under it; concurrent jobs take turns on the GPU")
    return False


def stop_mps() -> None:
    try:
        mps_control(stdin="quit\n")
    except (OSError, subprocess.TimeoutExpired):
        pass


def bench_command(args, out: Path, checks: dict) -> list[str]:
    """The placement table in the best passed mode, the other passed graph mode beside it for the looped
    placements, and the fused placements on the fast loop; concurrency is measured after `choose`."""
    modes = checks["modes"]
    cmd = [sys.executable, "-m", "zr_ablate.bench", "--out", str(out), "--overrides", f"cuda_graph={modes[0]}",
           "--concurrency"]
    if args.dry:
        return cmd + ["--device", "cpu", "--sizes", args.size, "--placements", *ORDER, "--repeats", "1", "--steps",
                      "1", "--warmup", "1", "--lightning", "zaremba", "--lightning-steps", "2", "--no-memory",
                      "--threads", "1"]
    variants = ["loop"] + (["layers"] if modes[0] == "step" and "layers" in modes else []) + (
        ["torch"] if checks["triton"] else [])
    return cmd + ["--device", "cuda", "--sizes", args.size, "large", "--variants", *variants, "--variant-sizes",
                  args.size, "--repeats", "2", "--steps", "3", "--warmup", "2", "--no-memory", "--lightning",
                  "zaremba", "variational", "--lightning-steps", "8", "--lightning-sizes", args.size]


def gpu_checks(log: Log, deadline: float) -> dict:
    """Run tests/test_gpu.py; -> {"modes": the CUDA-graph modes whose tests passed, best first, then "off"
    (always allowed); "triton": whether the Triton loop kernels passed}."""
    report = Path("/tmp/zr_ablate-gpu-tests.xml")
    report.unlink(missing_ok=True)
    code = run_logged([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py",
                       f"--junitxml={report}"], log, timeout=min(180.0, deadline - time.time()))
    failed = set()
    if report.exists():
        for case in ElementTree.parse(report).iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.add(case.get("name", ""))

    def passed(prefix: str) -> bool:
        return code in (0, 1) and report.exists() and not any(n.startswith(prefix) for n in failed)

    checks = {"modes": [m for m in ("step", "layers") if passed(f"test_{m}_graph")] + ["off"],
              "triton": passed("test_triton")}
    log(f"GPU tests exit {code}; failed: {sorted(failed) or 'none'}; may use: {checks}")
    return checks


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
    errors = {r["placement"] for r in bench["placements"] if r["size"] == size and r["impl"] == "auto"
              and r.get("graph_error")}

    def faster(variant: str, placements: list[str]) -> bool:
        measured = [p for p in placements if (p, variant) in rows]
        return bool(measured) and all(rows[(p, variant)] > 1.05 * rows[(p, "auto")] for p in measured)

    looped = [p for p in ORDER if (p, "layers") in rows or (p, "torch") in rows]
    if mode == "step" and "layers" in checks["modes"] and (errors or faster("layers", looped)):
        mode = "layers"
    if not kernel and faster("torch", looped):
        kernel = ["model.loop_kernel=torch"]
    seconds = {v: sum(1 / rows.get((p, v), rows[(p, "auto")]) for p in ORDER if (p, "auto") in rows)
               for v in ("auto", "loop")}
    impl = ["model.lstm_impl=loop"] if seconds["loop"] < seconds["auto"] / 1.05 else []
    return [f"cuda_graph={mode}", *impl, *kernel]


def sweep_command(args, jobs: list[str], at_once: int, overrides: list[str], root: Path) -> list[str]:
    return [sys.executable, "run.py", "-m", "grid=ablation_medium", f"model={args.size}", f"seed={args.seed}",
            f"dropout={','.join(jobs)}", "hydra/launcher=local", f"hydra.launcher.n_jobs={at_once}",
            "trainer.enable_progress_bar=false", f"data.dir={args.ptb}", "logger.mode=offline",
            f"out_root={root}", f"sweep={args.sweep}", *overrides]


MAX_FILE = 15 * 2**20  # the device tool brings back files of at most 16 MiB


def _tar(target: Path, sweep_dir: Path, keep) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(sweep_dir.rglob("*")):
            if path.is_file() and keep(path.relative_to(sweep_dir).parts):
                tar.add(path, arcname=str(path.relative_to(sweep_dir.parent)))
    return target


def pack(sweep_dir: Path, out: Path) -> list[Path]:
    """Every job's records, the probe's tables and the W&B offline runs into OUT/sweep.tar.gz. Checkpoints
    stay behind (too large), as do W&B's own debug logs. If that is over the size the device tool brings
    back, the W&B runs go into a tarball of their own."""
    def useful(parts):
        return "checkpoints" not in parts and "logs" not in parts and not parts[-1].startswith("debug")

    tarball = _tar(out / "sweep.tar.gz", sweep_dir, useful)
    if tarball.stat().st_size <= MAX_FILE:
        return [tarball]
    return [_tar(out / "sweep.tar.gz", sweep_dir, lambda parts: useful(parts) and "wandb" not in parts),
            _tar(out / "wandb.tar.gz", sweep_dir, lambda parts: useful(parts) and "wandb" in parts)]


def summary(sweep_dir: Path) -> str:
    rows = ["| job | status | epochs | best val | test | tokens/s | wall s |", "|---|---|---|---|---|---|---|"]
    for path in sorted(sweep_dir.glob("*/result.json")):
        try:
            r = json.loads(path.read_text())
        except ValueError:
            rows.append(f"| {path.parent.name} | unreadable result.json | | | | | |")
            continue

        def num(key, fmt="{:.2f}"):
            return fmt.format(r[key]) if isinstance(r.get(key), (int, float)) else "-"
        rows.append(f"| {path.parent.name} | {r.get('status')} | {r.get('epochs')} | {num('best_val_ppl')} | "
                    f"{num('test_ppl')} | {num('tokens_per_s', '{:,.0f}')} | {num('wall_time_s', '{:.0f}')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zr_ablate.sprint", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where the (at most 8) result files go")
    p.add_argument("--dry", action="store_true", help="CPU plumbing check: tiny profile, short bench")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds from --started-at to the last file written (default 540; dry 300)")
    p.add_argument("--started-at", type=float, default=None, help="epoch seconds the budget counts from")
    p.add_argument("--ptb", default=os.environ.get("ZR_ABLATE_PTB_DIR", ".device/ptb"), help="PTB folder")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sweep", default="gpu-medium", help="sweep name: the folder and the W&B group")
    p.add_argument("--work", type=Path, default=Path("outputs/device"), help="where the sweep's job folders go")
    p.add_argument("--bench", type=Path, default=None,
                   help="plan from this bench.json (an earlier sprint's) instead of measuring again: more time to train")
    p.add_argument("--done", type=Path, default=None,
                   help="a folder of job folders (reports/gpu-medium/runs): placements completed there at this size "
                        "and seed are not trained again, so successive leases work through the four")
    p.add_argument("--mps", choices=["auto", "off"], default="auto",
                   help="auto: run concurrent jobs under CUDA MPS when it starts (never in a dry run)")
    args = p.parse_args(argv)
    args.size = "tiny" if args.dry else "medium"
    started = args.started_at or time.time()
    deadline = started + (args.budget or (300.0 if args.dry else 540.0))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sprint.log").touch()
    except OSError as e:
        sys.exit(f"zr_ablate.sprint: error: cannot write {args.out} ({e.strerror}); pass --out a writable folder")
    if not (Path(args.ptb) / "ptb.train.txt").is_file():
        sys.exit(f"zr_ablate.sprint: error: no PTB in {args.ptb}; pass --ptb (make device-wheels copies it to .device/ptb)")
    args.ptb = str(Path(args.ptb).resolve())
    os.environ["ZR_ABLATE_PTB_DIR"] = args.ptb  # the GPU tests read PTB from here (no ../shared there)
    sweep_dir = (REPO / args.work / args.sweep).resolve()
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        sys.exit(f"zr_ablate.sprint: error: {sweep_dir} already holds jobs; move it away (a sprint starts clean)")
    log = Log(args.out / "sprint.log", started)
    log(f"sprint {'(dry) ' if args.dry else ''}budget {deadline - started:.0f} s, deadline in {deadline - time.time():.0f} s")

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
        log(f"nothing to train: {', '.join(ORDER)} are all completed in {args.done}")
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
            bench["concurrency"] = concurrency.measure(args.size, ORDER, [1, 2] if args.dry else [1, 2, 4],
                                                       1.0 if args.dry else 2.0, "cpu" if args.dry else "cuda",
                                                       tuple(overrides), timeout=min(120.0, deadline - time.time()))
            log("concurrency:\n" + concurrency.table(bench["concurrency"]))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            log(f"concurrency not measured ({e}): planning one job at a time")
        bench_path.write_text(json.dumps(bench, indent=1))
    cfg_epochs, tokens = sweep_shape(args.size)
    available = deadline - time.time() - STOP_S - PROBE_S - PACK_S
    if bench is None:
        log("bench failed: planning without measurements (the first two, two at a time)")
        the_plan = {"jobs": order[:2], "at_once": 2, "fits": None, "left_out": order[2:],
                    "why": "the bench failed, so nothing was measured", "available_s": available}
    else:
        the_plan = plan(bench, args.size, cfg_epochs, tokens, available, order)
    the_plan.update(overrides=overrides, mps=mps)
    (args.out / "plan.json").write_text(json.dumps(the_plan, indent=1))
    log(f"plan: {the_plan['jobs']} {the_plan['at_once']} at a time"
        + (f", expected {the_plan['makespan_s']:.0f} s of {available:.0f}" if "makespan_s" in the_plan else "")
        + (f"; {the_plan['why']}" if the_plan["why"] else ""))

    code = run_logged(sweep_command(args, the_plan["jobs"], the_plan["at_once"], overrides, REPO / args.work),
                      log, timeout=deadline - time.time() - PROBE_S - PACK_S)
    log(f"sweep exit {code}")
    sweep_dir = REPO / args.work / args.sweep
    if deadline - time.time() > PACK_S + 10:
        code = run_logged([sys.executable, "-m", "zr_ablate.probe", str(sweep_dir), "--data-dir", args.ptb],
                          log, timeout=deadline - time.time() - PACK_S)
        log(f"probe exit {code}")


def remaining(args, log: Log) -> list[str]:
    """ORDER without the placements completed in --done at this size and seed."""
    if args.done is None or not args.done.is_dir():
        return list(ORDER)
    from .results import NoRunsError, load_sweep

    try:
        runs, _ = load_sweep(args.done)
    except NoRunsError:
        return list(ORDER)
    done = runs[(runs["status"] == "completed") & (runs["size"] == args.size) & (runs["seed"] == args.seed)]
    finished = set(done["placement"])
    if finished:
        log(f"already completed in {args.done}: {', '.join(p for p in ORDER if p in finished)}")
    return [p for p in ORDER if p not in finished]


def sweep_shape(size: str) -> tuple[int, int]:
    """(epochs, training tokens per epoch) of the sweep's model profile, as run.py composes it."""
    from .bench import settings

    cfg = settings(size, ORDER[0])
    return int(cfg.trainer.max_epochs), int(cfg.data.train_tokens or TRAIN_TOKENS)


if __name__ == "__main__":
    sys.exit(main())
