"""The time-budgeted run (python -m zr_ablate.bench.budget): its planner and GPU-path choice as pure functions,
its parts (sweep expansion, records, archive, process runner) on their own, and the whole command on the CPU:
a budget that fits some jobs but not all, then a rerun that finishes them."""

import json
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest
import torch

from tests.conftest import REPO
from zr_ablate.bench import archive, jobs, paths, runner
from zr_ablate.bench import plan as planning
from zr_ablate.bench.budget import duration
from zr_ablate.bench.plan import COMPLETE, NOT_STARTED, PARTIAL, Shape, Sharing, Speed, Work
from zr_ablate.records import LAST_CHECKPOINT, STOPPED, read_result

HALVES = Sharing({1: 1.0, 2: 0.5, 4: 0.25})  # jobs at once gain nothing in all


def work(name, epochs=1, epoch_s=10.0, start_s=0.0, test_s=0.0, resumed=False) -> Work:
    return Work(name, epochs, epoch_s, start_s, test_s, resumed)


def test_simulate_runs_jobs_as_slots_free_and_stops_them_at_the_end():
    four = [work(n) for n in "abcd"]
    out = planning.simulate(four, 2, HALVES, available_s=100, margin=1.0, partial=False)
    # two at a time at half speed: a, b end at 20; c, d start then and end at 40
    ends = [t for o in out.values() for t in (o.start_s, o.end_s)]
    assert list(out) == list("abcd") and ends == pytest.approx([0, 20, 0, 20, 20, 40, 20, 40])
    # a job alone runs at full speed once its partner ends
    out = planning.simulate([work("a"), work("b", epoch_s=30)], 2, HALVES, 100, 1.0, False)
    assert (out["a"].end_s, out["b"].end_s) == pytest.approx((20, 40))
    # at the end of the time, a running job is stopped with the epochs it checkpointed
    out = planning.simulate([work("a", epochs=5, epoch_s=4, start_s=2)], 1, HALVES, 15, 1.0, True)
    assert out["a"].expect == PARTIAL and out["a"].end_s == 15 and out["a"].epochs == 3  # (15 - 2) // 4
    assert HALVES.factor(3) == pytest.approx(0.375) and HALVES.factor(8) == pytest.approx(0.125)


def test_worth_starting_needs_the_whole_job_or_with_partial_its_first_epoch():
    w = work("a", epochs=4, epoch_s=10, start_s=5, test_s=5)  # 50 s alone, first checkpoint at 15 s
    assert planning.worth_starting(w, 56, rate=1.0, margin=1.1, partial=False) == COMPLETE
    assert planning.worth_starting(w, 54, 1.0, 1.1, partial=False) is None
    assert planning.worth_starting(w, 54, 1.0, 1.1, partial=True) == PARTIAL
    assert planning.worth_starting(w, 16, 1.0, 1.1, partial=True) is None  # 15 x 1.1 > 16
    assert planning.worth_starting(w, 111, rate=0.5, margin=1.1, partial=False) == COMPLETE
    assert planning.worth_starting(w, 109, rate=0.5, margin=1.1, partial=False) is None


def test_plan_fits_some_jobs_resumed_ones_first_and_passes_over_what_does_not_fit():
    jobs_ = [work("long", epochs=10), work("a", epochs=2), work("b", epochs=2), work("resumed", 1, resumed=True)]
    p = planning.plan(jobs_, available_s=60, margin=1.0, partial=False)
    assert p.order == ["resumed", "long", "a", "b"] and p.at_once == 1
    assert p.names(COMPLETE) == ["resumed", "a", "b"] and p.names(NOT_STARTED) == ["long"]
    # with partial, the jobs that complete go first; the long one takes the 35 s left and trains 3 epochs
    p = planning.plan(jobs_ + [work("c", epochs=1)], available_s=95, margin=1.0, partial=True)
    assert p.names(COMPLETE) == ["resumed", "a", "b", "c"] and p.names(PARTIAL) == ["long"]
    assert (p.outcomes["long"].start_s, p.outcomes["long"].end_s, p.outcomes["long"].epochs) == (60, 95, 3)


def test_plan_takes_jobs_at_once_only_where_measured_faster():
    four = [work(n, epochs=3) for n in "abcd"]  # 30 s each alone
    shares = Sharing({1: 1.0, 2: 0.9, 4: 0.6})  # 4 at once: 2.4 x one job's speed
    p = planning.plan(four, available_s=60, sharing=shares, margin=1.0)
    assert p.at_once == 4 and p.names(COMPLETE) == list("abcd")  # 30 / 0.6 = 50 s
    p = planning.plan(four, available_s=60, sharing=HALVES, margin=1.0)
    assert p.at_once == 1 and p.names(COMPLETE) == ["a", "b"]  # sharing gains nothing: one at a time
    assert planning.plan(four, 60, shares, at_once=2, margin=1.0).at_once == 2  # as given


def test_estimate_counts_every_split_at_its_speed_and_the_test_at_its_batch():
    shape = Shape(epochs_left=3, train_tokens=1000, valid_tokens=400, test_tokens=100, eval_batch=20, test_batch=1)
    w = planning.estimate("j", shape, Speed(train=100.0, evaluate=200.0), start_s=7)
    assert w.epoch_s == pytest.approx(10 + 2) and w.test_s == pytest.approx(100 / (200 / 20))
    assert w.seconds == pytest.approx(7 + 3 * 12 + 10) and w.first_checkpoint_s == pytest.approx(19)


def rows(**speeds) -> dict:
    """A bench file's rows at medium: speeds[f"{placement}_{variant}"] = training tokens/s."""
    return {
        "placements": [
            {"size": "medium", "placement": k.rsplit("_", 1)[0], "impl": k.rsplit("_", 1)[1], "train_tokens_per_s": v}
            for k, v in speeds.items()
        ]
    }


PLACEMENTS = ["zaremba", "none", "variational", "naive"]
ALL = {"modes": ["step", "layers", "off"], "triton": True, "given": []}


def test_choose_takes_what_trains_the_sweep_fastest_among_what_passed():
    base = dict(zaremba_auto=100, none_auto=100, variational_auto=120, naive_auto=120, zaremba_loop=130)
    base |= dict(none_loop=130, variational_layers=90, naive_layers=90, variational_torch=80, naive_torch=80)
    assert paths.choose(rows(**base), "medium", PLACEMENTS, ALL) == ["cuda_graph=step", "model.lstm_impl=loop"]
    # the Triton loop only if it passed its check; PyTorch ops if they measured faster
    no_triton = paths.choose(rows(**base), "medium", PLACEMENTS, dict(ALL, triton=False))
    assert no_triton[-1] == "model.loop_kernel=torch"
    torch_faster = dict(base, variational_torch=200, naive_torch=200)
    assert paths.choose(rows(**torch_faster), "medium", PLACEMENTS, ALL)[-1] == "model.loop_kernel=torch"
    # a gain under 5% is not worth leaving the default
    assert paths.choose(rows(**dict(base, zaremba_loop=102, none_loop=102)), "medium", PLACEMENTS, ALL) == [
        "cuda_graph=step"
    ]
    # layers measured faster for every looped placement, or the step graph failed to capture: layers
    assert paths.choose(rows(**dict(base, variational_layers=200, naive_layers=200)), "medium", PLACEMENTS, ALL)[0] == (
        "cuda_graph=layers"
    )
    failed = rows(**base)
    failed["placements"][2]["graph_error"] = "RuntimeError: operation not permitted when stream is capturing"
    assert paths.choose(failed, "medium", PLACEMENTS, ALL)[0] == "cuda_graph=layers"
    # only what passed: no graph mode -> off; the user's flags as given; a CPU -> nothing to choose
    assert paths.choose(None, "medium", PLACEMENTS, {"modes": ["off"], "triton": False, "given": []}) == [
        "cuda_graph=off",
        "model.loop_kernel=torch",
    ]
    given = dict(ALL, given=["cuda_graph=off", "model.loop_kernel=triton"])
    assert paths.choose(rows(**torch_faster), "medium", PLACEMENTS, given) == [
        "cuda_graph=off",
        "model.loop_kernel=triton",
        "model.lstm_impl=loop",
    ]
    assert paths.choose(rows(**base), "medium", PLACEMENTS, None) == []


def test_the_equivalence_check_passes_equal_paths_and_names_a_difference():
    """The check the GPU paths go through, on the CPU: the fast loop and the plain autograd loop train
    alike; a setting that changes training (the learning rate) does not pass."""
    cpu = torch.device("cpu")
    assert (
        paths.same_training("variational", ("model.lstm_impl=reference",), ("model.lstm_impl=loop",), cpu, 1e-4) is None
    )
    why = paths.same_training("variational", ("optim.lr=1.0",), ("optim.lr=0.5",), cpu, 1e-4)
    assert why is not None and "optim.lr=0.5 trains otherwise than optim.lr=1.0" in why


def test_durations():
    assert [duration(t) for t in ("40m", "1h30m", "90s", "2.5h", "3600")] == [2400, 5400, 90, 9000, 3600]
    with pytest.raises(Exception, match="not a duration"):
        duration("40 minutes")


def test_the_sweep_expands_into_run_py_s_job_folders(tmp_path):
    found = jobs.expand([f"out_root={tmp_path}", "model=tiny", "dropout=none,zaremba", "seed=1,2"])
    assert [j.name for j in found] == [f"dropout={d},model=tiny,seed={s}" for d in ("none", "zaremba") for s in (1, 2)]
    assert {j.folder.parent for j in found} == {tmp_path / "adhoc"} and found[0].speed_key == ("tiny", "none")
    grid = jobs.expand([f"out_root={tmp_path}", "grid=ablation_medium"])
    assert len(grid) == 12 and grid[0].folder.parent.name == "ablation_medium"
    with pytest.raises(
        ValueError, match=r"^job out_root=.*,dropout=nope: there is no dropout=nope \(did you mean dropout=none\?\)"
    ):
        jobs.expand([f"out_root={tmp_path}", "dropout=none,nope"])


CONFIG = {"seed": 1, "model": {"name": "tiny"}, "dropout": {"name": "none"}}  # what a record must say of itself


def test_records_of_stopped_and_not_started_jobs(tmp_path):
    job = jobs.Job(["dropout=none"], tmp_path / "dropout=none", CONFIG, cfg=None)
    jobs.mark_not_started(job, "not started: no room")
    assert read_result(job.folder) == {"status": "not started", "config": CONFIG, "error": "not started: no room"}
    # a job stopped before its first checkpoint starts again; with a checkpoint it resumes from it
    record = jobs.mark_stopped(job, "stopped at the deadline")
    assert record["status"] == STOPPED and record["checkpoint"] is None and "starts it again" in record["error"]
    (job.folder / LAST_CHECKPOINT).parent.mkdir()
    (job.folder / LAST_CHECKPOINT).write_bytes(b"x")
    (job.folder / "result.json").write_text(json.dumps({"status": "failed", "epochs": 3, "config": CONFIG}))
    record = jobs.mark_stopped(job, "stopped at the deadline")
    assert (
        record["checkpoint"] == LAST_CHECKPOINT
        and "resumes from checkpoints/last.ckpt (after epoch 3)" in record["error"]
    )
    jobs.mark_not_started(job, "not started")  # never over a record with something to resume
    assert read_result(job.folder)["status"] == STOPPED
    died = jobs.Job([], tmp_path / "died", {}, cfg=None)
    assert jobs.mark_ended(died, -9, tmp_path / "console.log")["status"] == "failed"


def test_archive_parts_keep_to_their_limits_and_leave_checkpoints_behind(tmp_path):
    sweep = tmp_path / "sweep"
    for rel, size in {
        "a/result.json": 3000,
        "a/checkpoints/last.ckpt": 9000,
        "a/wandb/offline-run-1/run-1.wandb": 6000,
        "a/wandb/offline-run-1/logs/debug-core.log": 100,
        "b/result.json": 3000,
        "budget/x.log": 500,
    }.items():
        (sweep / rel).parent.mkdir(parents=True, exist_ok=True)
        (sweep / rel).write_bytes(bytes(range(256)) * (size // 256))  # incompressible enough
    assert archive.part_name(tmp_path / "runs.tar.gz", 2).name == "runs-2.tar.gz"
    limit = archive.tar_bound([3000, 3000])
    written, left_out = archive.pack(sweep, tmp_path / "runs.tar.gz", max_files=2, max_bytes=limit)
    names = [tarfile.open(p).getnames() for p in written]
    assert names == [["sweep/a/result.json", "sweep/b/result.json"], ["sweep/budget/x.log"]]
    assert all(p.stat().st_size <= limit for p in written)
    assert [p.name for p in left_out] == ["run-1.wandb"]  # larger than a part
    written, left_out = archive.pack(sweep, tmp_path / "all.tar.gz", max_files=None, max_bytes=None)
    assert len(written) == 1 and not left_out and len(tarfile.open(written[0]).getnames()) == 4


def sleeper(name: str, seconds: float, tmp_path, ignore_term=False) -> runner.Task:
    code = "import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
    code += f"time.sleep({seconds})"
    return runner.Task(work(name, epochs=1, epoch_s=1.0), [sys.executable, "-c", code], tmp_path / f"{name}.log")


def test_runner_stops_running_jobs_before_the_deadline_and_starts_nothing_that_cannot_fit(tmp_path):
    heard = {}
    tasks = [sleeper("quick", 0.1, tmp_path), sleeper("slow", 60, tmp_path), sleeper("stubborn", 60, tmp_path, True)]
    tasks.append(runner.Task(work("huge", epoch_s=1e6), ["false"], tmp_path / "huge.log"))
    began = time.monotonic()
    out = runner.run(
        tasks, 3, Sharing(), began + 4, grace=1.5, log=print, on_end=lambda t, e: heard.setdefault(t.work.name, e.how)
    )
    assert time.monotonic() - began < 4  # the stubborn one killed within the grace
    assert (
        {n: e.how for n, e in out.items()}
        == {
            "quick": runner.ENDED,
            "slow": runner.STOPPED,
            "stubborn": runner.STOPPED,
            "huge": runner.NOT_STARTED,
        }
        == heard
    )
    assert out["quick"].code == 0 and out["slow"].code == -signal.SIGTERM and out["stubborn"].code == -signal.SIGKILL
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()  # told to stop: the same, at once
    out = runner.run(
        [sleeper("slow", 60, tmp_path), sleeper("next", 1, tmp_path)],
        1,
        Sharing(),
        time.monotonic() + 60,
        3,
        print,
        stop=stop,
    )
    assert [e.how for e in out.values()] == [runner.STOPPED, runner.NOT_STARTED]


def budget(tmp_path, ptb_dir, *extra: str) -> list[str]:
    """The command on the tiny profile, three jobs; 8,000 training tokens make an epoch last a second or
    two, so the job stopped in the middle has a checkpoint and an epoch to go."""
    return [
        sys.executable,
        "-m",
        "zr_ablate.bench.budget",
        *("model=tiny", "dropout=none,zaremba,variational", "data.train_tokens=8000", "threads=1"),
        *(f"out_root={tmp_path}", f"data.dir={ptb_dir}", "sweep=budget", "logger.mode=offline"),
        *("--stop-grace", "5", "--job-start", "8"),
        *extra,
    ]


@pytest.mark.slow  # two budgeted runs of three tiny jobs, in subprocesses
def test_a_budget_that_fits_some_jobs_then_a_rerun_that_finishes_them(tmp_path, ptb_dir):
    sweep = tmp_path / "budget"
    folder = {p: sweep / f"data.train_tokens=8000,dropout={p},model=tiny" for p in ("none", "zaremba", "variational")}
    # --speed 1000: each job is planned at 8 + 2 x 9,000/1,000 + 1,000/(1,000 / 20) = 46 s. With ~85 s to
    # plan in: the first completes, the second trains an epoch or so, the third is not started.
    first = subprocess.Popen(
        budget(tmp_path, ptb_dir, "--budget", "100", "--speed", "1000"), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (folder["zaremba"] / LAST_CHECKPOINT).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # as a scheduler's time limit does: the second job is then running
    said = first.communicate(timeout=60)[0]
    assert first.returncode == 75, said
    plan = json.loads(next((sweep / "budget").glob("*.plan.json")).read_text())["plan"]
    assert [plan["outcomes"][f.name]["expect"] for f in folder.values()] == [COMPLETE, PARTIAL, NOT_STARTED]
    records = {p: read_result(f) for p, f in folder.items()}
    assert [r["status"] for r in records.values()] == ["completed", "stopped", "not started"]
    assert records["zaremba"]["checkpoint"] == LAST_CHECKPOINT and records["zaremba"]["epochs"] == 1
    assert (
        "| data.train_tokens=8000,dropout=zaremba,model=tiny | stopped | 1/2 |" in said
        and "resumes it after epoch 1 |" in said
    )
    assert "3 jobs: 1 completed, 1 stopped, 1 not started" in said and "run the same command again" in said
    # the same command with a larger budget: the stopped job resumes from its checkpoint, the rest run
    archive_path = tmp_path / "out" / "records.tar.gz"
    archive_path.parent.mkdir()
    second = subprocess.run(
        budget(
            tmp_path,
            ptb_dir,
            "--budget",
            "600",
            "--speed",
            "1000",
            "--archive",
            str(archive_path),
            "--archive-max-mb",
            "0.05",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    records = {p: read_result(f) for p, f in folder.items()}
    assert [r["status"] for r in records.values()] == ["completed"] * 3
    assert records["zaremba"]["resumed_from_epoch"] == 1 and records["variational"]["resumed_from_epoch"] is None
    assert "1 finished before, 2 to run" in second.stdout and "3 jobs: 3 completed" in second.stdout
    parts = sorted(archive_path.parent.iterdir())
    names = [n for p in parts for n in tarfile.open(p).getnames()]
    assert all(p.stat().st_size <= 0.05 * 2**20 for p in parts) and not [n for n in names if "checkpoints" in n]
    assert {f"budget/{f.name}/result.json" for f in folder.values()} <= set(names)


def test_a_budget_nothing_fits_in_starts_nothing_and_records_why(tmp_path, ptb_dir):
    done = subprocess.run(
        budget(tmp_path, ptb_dir, "--budget", "60", "--speed", "10", "--no-partial"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "no job could start in this budget" in done.stdout, done.stdout[-2000:]
    records = [read_result(f) for f in sorted((tmp_path / "budget").glob("data*"))]
    assert [r["status"] for r in records] == ["not started"] * 3 and "no room in the time budget" in records[0]["error"]
    assert not list((tmp_path / "budget").glob("*/console.log"))  # no job was launched


def test_bad_input_is_one_line_before_anything_runs(tmp_path):
    cmd = [sys.executable, "-m", "zr_ablate.bench.budget", f"out_root={tmp_path}", "model=tiny"]
    bad = subprocess.run([*cmd, "dropout=none,nope"], cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("zr_ablate: error:")]
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and not list(tmp_path.iterdir())
    assert errors == bad.stderr.strip().splitlines()  # one line
    assert errors[0].startswith("zr_ablate: error: job out_root=") and "there is no dropout=nope" in errors[0]
    short = subprocess.run([*cmd, "--budget", "10s"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert short.returncode == 2 and "must be longer than --stop-grace" in short.stderr
