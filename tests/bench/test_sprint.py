"""The GPU sprint: its plan from measured speeds, and its whole plumbing run dry on the CPU."""

import json
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from zr_ablate.bench import lease
from zr_ablate.bench import plan as planning


def bench(solo: dict, slow2: float, slow4: float) -> dict:
    """A bench.json as the sprint reads it: one medium row per placement, concurrency levels 1/2/4."""
    order = list(solo)
    return {
        "placements": [
            {"size": "medium", "placement": p, "impl": "auto", "train_tokens_per_s": v, "eval_tokens_per_s": 1e9}
            for p, v in solo.items()
        ],
        "lightning": [{"size": "medium", "ratio": 1.0}],
        "concurrency": {
            "solo_tokens_per_s": solo,
            "levels": [
                {"jobs": 1, "placements": order[:1], "slowdown": [1.0]},
                {"jobs": 2, "placements": order[:2], "slowdown": [slow2, slow2]},
                {"jobs": 4, "placements": order, "slowdown": [slow4] * 4},
            ],
        },
    }


def test_simulate_runs_jobs_as_joblib_does():
    b = bench({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, slow2=0.5, slow4=0.25)["concurrency"]
    # two at a time at half speed: a, b end at 20; c, d start then and end at 40
    assert planning.simulate({"a": 10, "b": 10, "c": 10, "d": 10}, ["a", "b", "c", "d"], 2, b) == pytest.approx(
        {"a": 20, "b": 20, "c": 40, "d": 40}
    )
    # one job alone runs at full speed once its partner ends
    assert planning.simulate({"a": 10, "b": 30}, ["a", "b"], 2, b) == pytest.approx({"a": 20, "b": 40})
    # three running: between the measured levels 2 and 4
    assert planning.slowdown(b, 3, "a") == pytest.approx(0.375)


def test_plan_keeps_the_order_and_drops_from_the_end():
    solo = {"zaremba": 200_000.0, "none": 200_000.0, "variational": 100_000.0, "naive": 100_000.0}
    b = bench(solo, slow2=0.9, slow4=0.6)  # concurrency pays: 4 at once is 2.4x one
    per_job = {p: planning.job_seconds(b, "medium", p, 39, 929_589) for p in solo}
    everything = max(planning.simulate(per_job, list(solo), 4, b["concurrency"]).values())
    full = planning.plan(b, "medium", 39, 929_589, available_s=everything * planning.MARGIN + 1)
    assert full["fits"] and full["jobs"] == list(solo) and full["at_once"] == 4 and not full["left_out"]
    short = planning.plan(b, "medium", 39, 929_589, available_s=everything * 0.8)
    assert short["fits"] and short["jobs"] == list(solo)[: len(short["jobs"])] and short["left_out"]
    assert "naive" in short["left_out"] and short["why"].startswith(", ".join(short["left_out"]))
    hopeless = planning.plan(b, "medium", 39, 929_589, available_s=10)
    assert not hopeless["fits"] and hopeless["jobs"] == ["zaremba"] and "cut short" in hopeless["why"]


@pytest.mark.slow  # a whole sprint in subprocesses
def test_dry_sprint_runs_the_whole_plumbing_on_cpu(tmp_path, ptb_dir):
    """make device-sprint DRY=1: GPU tests (skipped), bench, plan, the sweep on the tiny profile, the probe,
    packing."""
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "zr_ablate.bench.sprint",
        "--dry",
        "--out",
        str(out),
        "--ptb",
        str(ptb_dir),
        "--work",
        str(work),
        "--budget",
        "900",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.json", "environment.json", "plan.json", "sprint.log", "summary.md", "sweep.tar.gz"]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["jobs"] == planning.PRIORITY and plan["fits"]
    with tarfile.open(out / "sweep.tar.gz") as tar:
        names = tar.getnames()
    assert not [n for n in names if "checkpoints" in n]
    assert {f"gpu-medium/probe/{f}.csv" for f in ("probe", "memory", "positions")} <= set(names)
    for placement in planning.PRIORITY:
        job = f"gpu-medium/dropout={placement},model=tiny,seed=1"
        assert {f"{job}/result.json", f"{job}/epochs.csv", f"{job}/.hydra/config.yaml"} <= set(names)
        assert any(n.startswith(f"{job}/wandb/") and n.endswith(".wandb") for n in names)
    assert "| dropout=zaremba,model=tiny,seed=1 | completed | 2 |" in (out / "summary.md").read_text()
    # a second sprint into the same work folder refuses rather than mixing old jobs with new ones
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "already holds jobs; move it away" in again.stderr


def test_pack_leaves_checkpoints_behind_and_splits_wandb_off_when_too_large(tmp_path, monkeypatch):
    job = tmp_path / "sweep" / "dropout=zaremba"
    for rel in (
        "result.json",
        "checkpoints/last.ckpt",
        "wandb/offline-run-1/run-1.wandb",
        "wandb/offline-run-1/logs/debug-core.log",
        "wandb/debug.log",
        "probe/probe.csv",
    ):
        (job / rel).parent.mkdir(parents=True, exist_ok=True)
        (job / rel).write_text("x" * 100)
    (tmp_path / "out").mkdir()
    small = lease.pack(tmp_path / "sweep", tmp_path / "out")
    with tarfile.open(small[0]) as tar:
        assert sorted(tar.getnames()) == [
            "sweep/dropout=zaremba/probe/probe.csv",
            "sweep/dropout=zaremba/result.json",
            "sweep/dropout=zaremba/wandb/offline-run-1/run-1.wandb",
        ]
    monkeypatch.setattr(lease, "MAX_FILE", 10)  # everything is too large now
    records, runs = lease.pack(tmp_path / "sweep", tmp_path / "out")
    with tarfile.open(records) as a, tarfile.open(runs) as b:
        assert not [n for n in a.getnames() if "wandb" in n]
        assert b.getnames() == ["sweep/dropout=zaremba/wandb/offline-run-1/run-1.wandb"]


def rows(**speeds) -> dict:
    """bench.json rows at medium: speeds[f"{placement}_{variant}"] = training tokens/s."""
    return {
        "placements": [
            {"size": "medium", "placement": k.rsplit("_", 1)[0], "impl": k.rsplit("_", 1)[1], "train_tokens_per_s": v}
            for k, v in speeds.items()
        ]
    }


ALL = {"modes": ["step", "layers", "off"], "triton": True}


def test_choose_takes_what_trains_the_sweep_fastest_among_what_passed():
    base = dict(
        zaremba_auto=100,
        none_auto=100,
        variational_auto=120,
        naive_auto=120,
        zaremba_loop=130,
        none_loop=130,
        variational_layers=90,
        naive_layers=90,
        variational_torch=80,
        naive_torch=80,
    )
    # loop saves >5% on the fused placements; the step graph beats layers; Triton beats torch ops
    assert planning.choose(rows(**base), "medium", ALL) == ["cuda_graph=step", "model.lstm_impl=loop"]
    # the Triton kernels only if they passed their tests; torch ops if they measured faster
    assert planning.choose(rows(**base), "medium", dict(ALL, triton=False)) == [
        "cuda_graph=step",
        "model.lstm_impl=loop",
        "model.loop_kernel=torch",
    ]
    torch_faster = dict(base, variational_torch=200, naive_torch=200)
    assert planning.choose(rows(**torch_faster), "medium", ALL)[-1] == "model.loop_kernel=torch"
    # a gain under 5% is not worth leaving the default
    assert planning.choose(rows(**dict(base, zaremba_loop=102, none_loop=102)), "medium", ALL) == ["cuda_graph=step"]
    # layers measured faster for every looped placement, or the step graph failed to capture: layers
    slow_step = dict(base, variational_layers=200, naive_layers=200)
    assert planning.choose(rows(**slow_step), "medium", ALL)[0] == "cuda_graph=layers"
    failed = rows(**base)
    failed["placements"][2]["graph_error"] = "RuntimeError: operation not permitted when stream is capturing"
    assert planning.choose(failed, "medium", ALL)[0] == "cuda_graph=layers"
    # only what passed its GPU tests: no step graph -> layers; nothing -> off
    assert (
        planning.choose(rows(**base), "medium", {"modes": ["layers", "off"], "triton": True})[0] == "cuda_graph=layers"
    )
    assert planning.choose(None, "medium", {"modes": ["off"], "triton": False}) == [
        "cuda_graph=off",
        "model.loop_kernel=torch",
    ]


def test_successive_leases_skip_what_is_already_completed(tmp_path):
    """--done: a placement completed at this size and seed is not trained again; other sizes, seeds and
    unfinished jobs do not count."""

    def job(name, placement, status, size="medium", seed=1):
        folder = tmp_path / name
        folder.mkdir()
        config = {"dropout": {"name": placement}, "model": {"name": size}, "seed": seed}
        numbers = dict.fromkeys(["best_val_ppl", "final_val_ppl", "test_ppl", "final_train_ppl"], 100.0)
        record = {"status": status, "config": config} | (
            numbers | {"test_protocol": "paper"} if status == "completed" else {}
        )
        (folder / "result.json").write_text(json.dumps(record))

    job("a", "zaremba", "completed")
    job("b", "none", "failed")
    job("c", "variational", "completed", seed=2)
    job("d", "naive", "completed", size="small")
    args = SimpleNamespace(done=tmp_path, size="medium", seed=1)
    assert planning.remaining(args, lambda msg: None) == ["none", "variational", "naive"]
    assert planning.remaining(SimpleNamespace(done=None, size="medium", seed=1), print) == planning.PRIORITY
