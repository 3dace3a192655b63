"""The working part of a budgeted run (zr_ablate.bench.budget): the device, CUDA MPS, the GPU paths, the
thread count, the speeds, the plan, then the jobs (a packed group as one process), each recorded as it
leaves the run."""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

from zr_ablate.bench import jobs as sweep
from zr_ablate.bench import mps, packing, paths, runner, speeds
from zr_ablate.bench.plan import COMPLETE, PARTIAL, Plan, Sharing, Speed, estimate
from zr_ablate.records import NEUTRAL_KEYS
from zr_ablate.training.clock import cpu_model


def device_of(choice: str) -> torch.device:
    """The device the jobs train on. NVML answers whether there is a GPU without a CUDA context in this
    process, so that MPS, started next, serves this process too."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    gpu = torch.cuda.is_available()
    if choice == "cuda" and not gpu:
        sys.exit("zr_ablate: error: --device cuda but torch sees no GPU; use --device cpu or auto")
    return torch.device("cuda" if gpu and choice != "cpu" else "cpu")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def given(overrides: list[str]) -> dict[str, str]:
    """The keys the user set on the command line, with their values: theirs win over what the run adds."""
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)


def speed_settings(overrides: list[str]) -> tuple[str, ...]:
    """The user's settings that can change a job's speed, for the measurement: single values of dotted
    keys that are not neutral (model.hidden=100, data.bptt=50; not seed=1,2 or data.dir)."""
    return tuple(f"{k}={v}" for k, v in given(overrides).items() if "." in k and "," not in v and k not in NEUTRAL_KEYS)


def job_threads(args, device: torch.device, key: tuple[str, str], extra: tuple[str, ...], log) -> int:
    """Torch threads per job: the user's threads=, else on a GPU cores / jobs at once (run.py's rule), on a
    CPU the faster of 1 and that, measured."""
    if given(args.overrides).get("threads", "").isdigit():
        return int(given(args.overrides)["threads"])
    share = max(1, cores() // (args.at_once or 1))
    if device.type == "cuda" or share == 1:
        return share
    best, measured = speeds.fastest_threads(*key, [1, share], extra)
    log(f"threads per job: {best} ({', '.join(f'{n}: {v:,.0f} tokens/s' for n, v in measured.items())})")
    return best


def speeds_for(args, todo, device, extra, bench, log, out: Path) -> tuple[dict, Sharing, Sharing]:
    """{(model, dropout): Speed} for every job, how jobs at once share the device, and packed members' speed."""
    keys = sorted({job.speed_key for job in todo})
    if args.speed:
        log(f"speeds: {args.speed:,.0f} tokens/s per job, as given (--speed)")
        return {k: Speed(args.speed, args.speed) for k in keys}, Sharing(), Sharing()
    if bench is None or "placements" not in bench:  # none given, or only a --packed file: its rows are kept
        given_bench = bench or {}
        bench = speeds.measure(keys, device, extra, log)
        bench |= {k: v for k, v in given_bench.items() if k in ("packed", "concurrency") and v and not bench.get(k)}
        out.with_suffix(".speeds.json").write_text(json.dumps(bench, indent=1))
        log(f"speeds written to {sweep.shown(out.with_suffix('.speeds.json'))} (as --bench: plans without measuring)")
    else:
        log(f"speeds: from {', '.join(map(str, args.bench))} ({bench.get('device')}, {bench.get('date')})")
    sizes = [job.cfg.model.name for job in todo]
    size = max(sizes, key=sizes.count)
    packs = speeds.packing(bench, size)
    if len(packs.levels) > 1:
        log(
            "packed in one process: "
            + ", ".join(f"{m} jobs {f * m:.2f} x one" for m, f in packs.levels.items() if m > 1)
        )
    elif bench.get("packed"):
        log(f"packed speeds not used: measured at model={bench['packed'].get('size')}, the jobs are model={size}")
    return {k: speeds.speed(bench, *k) for k in keys}, speeds.sharing(bench), packs


def describe(the_plan: Plan, work: dict) -> list[str]:
    packed = f", up to {the_plan.pack} jobs packed in one process" if the_plan.groups else ""
    lines = [f"plan: {the_plan.at_once} at once{packed}, {the_plan.available_s:.0f} s to train in"]
    for unit in the_plan.units:
        if unit.name in the_plan.groups:
            lines.append(f"  packed in one process (~{unit.seconds:.0f} s): {', '.join(the_plan.groups[unit.name])}")
    for name in the_plan.order:
        o, w = the_plan.outcomes[name], work[name]
        if o.expect == COMPLETE:
            lines.append(
                f"  {name}: completes at ~{o.end_s:.0f} s ({w.epochs_left} epoch(s) to train, ~{w.seconds:.0f} s alone)"
            )
        elif o.expect == PARTIAL:
            lines.append(
                f"  {name}: not expected to complete: ~{o.epochs} of {w.epochs_left} epoch(s), the rest next run"
            )
        else:
            lines.append(f"  {name}: not started (~{w.seconds:.0f} s alone)")
    return lines


PACKED = ["hydra/launcher=packed"]  # with hydra.launcher.max_members: the group's jobs as one packed group


def written(job: sweep.Job) -> dict[str, str]:
    """A job's overrides as {key: the override as written}, for packing.product_groups."""
    return {o.split("=", 1)[0]: o for o in job.overrides}


def task(unit, members: list, extra: list[str]) -> runner.Task:
    """A run unit's process: `python run.py <overrides>` for a job alone; for a packed group (or a job whose
    checkpoint a packed group wrote, which only the packed launcher resumes) `python run.py -m` over exactly
    its jobs under the packed launcher. Its output goes to the first job's console.log (the others' say where)."""
    if len(members) == 1 and not sweep.packed_checkpoint(members[0]):
        argv = [*members[0].overrides]
    else:
        swept = packing.sweep_overrides([written(job) for job in members])
        argv = ["-m", *swept, *PACKED, f"hydra.launcher.max_members={len(members)}"]
    consoles = [job.folder / "console.log" for job in members]
    return runner.Task(unit, [sys.executable, str(sweep.RUN_PY), *argv, *extra], consoles[0], consoles[1:])


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_model(), "cores": cores()}
    return env | ({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})


def run_budget(
    args, todo: list, tokens: dict, bench, out: Path, log, deadline: float, stop: threading.Event
) -> dict[str, runner.Ended]:
    """Everything from the device to the jobs' records, within `deadline` (time.monotonic seconds); -> how
    each job left the run."""
    device = device_of(args.device)
    on_mps = device.type == "cuda" and args.mps == "auto" and args.at_once != 1 and mps.start(log)
    try:
        placements = sorted({job.cfg.dropout.name for job in todo})
        sizes = [job.cfg.model.name for job in todo]
        checks = paths.check(placements, device, args.cuda_graph, args.loop_kernel, log)
        mine = given(args.overrides)
        chosen = [
            o
            for o in paths.choose(bench, max(sizes, key=sizes.count), placements, checks)
            if o.split("=")[0] not in mine
        ]
        threads = job_threads(args, device, todo[0].speed_key, (*chosen, *speed_settings(args.overrides)), log)
        torch.set_num_threads(threads)
        speed, sharing, packs = speeds_for(
            args, todo, device, (*chosen, *speed_settings(args.overrides)), bench, log, out
        )
        work = {
            job.name: estimate(
                job.name,
                sweep.shape(job, tokens[job.name]),
                speed[job.speed_key],
                args.job_start,
                None if args.pack == 1 else sweep.pack_key(job),
            )
            for job in todo
        }
        available = deadline - args.stop_grace - time.monotonic()
        the_plan = packing.choose(
            list(work.values()),
            available,
            sharing,
            packs,
            {job.name: written(job) for job in todo},
            args.at_once,
            args.pack,
            args.margin,
            args.partial,
        )
        for line in describe(the_plan, work):
            log(line)
        if device.type == "cuda" and "threads" not in mine:
            threads = max(1, cores() // the_plan.at_once)
        extra = [*chosen, f"threads={threads}", *(["trainer.accelerator=cpu"] if device.type == "cpu" else [])]
        extra = [o for o in extra if o.split("=")[0] not in mine]
        log(f"each job: python run.py <its overrides> {' '.join(extra)}" + (" (under MPS)" if on_mps else ""))
        if the_plan.groups:
            log(f"each packed group: python run.py -m <its jobs' overrides> {' '.join(PACKED)} {' '.join(extra)}")
        record = {"command": args.command, "environment": environment(device), "overrides": extra, "mps": on_mps}
        out.with_suffix(".plan.json").write_text(json.dumps(record | {"plan": the_plan.as_dict()}, indent=1))
        jobs = {job.name: job for job in todo}

        def on_end(task: runner.Task, ended: runner.Ended) -> None:
            for name in the_plan.groups.get(task.work.name, [task.work.name]):  # each job of a packed group
                job = jobs[name]
                if ended.how == runner.ENDED:
                    result = sweep.mark_ended(job, ended.code, task.console)
                    log(f"{job.name}: {result['status']} after {ended.seconds:.0f} s")
                elif ended.how == runner.STOPPED:
                    why = "stopped on request" if stop.is_set() else "stopped at the time budget's deadline"
                    result = sweep.mark_stopped(job, why)
                    log(f"{job.name}: {result['status']} after {ended.seconds:.0f} s ({result.get('error')})")
                else:
                    sweep.mark_not_started(
                        job, f"not started: no room in the time budget (~{work[name].seconds:.0f} s alone)"
                    )

        members = {u.name: [jobs[n] for n in the_plan.groups.get(u.name, [u.name])] for u in the_plan.units}
        tasks = [task(unit, members[unit.name], extra) for unit in the_plan.units]
        return runner.run(
            tasks,
            the_plan.at_once,
            sharing,
            deadline,
            args.stop_grace,
            log,
            on_end,
            stop,
            args.margin,
            args.partial,
            Path.cwd(),
        )
    finally:
        if on_mps:
            mps.stop()
            log("MPS: stopped")
