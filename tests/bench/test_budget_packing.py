"""Packing in a time-budgeted run: the plan packs same-shape jobs only where packing measured faster than
processes, never jobs resuming from different epochs, and each group is exactly a product of its jobs'
overrides (zr_ablate.bench.packing); the whole command on the CPU with packing forced, stopped and rerun."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from zr_ablate.bench import jobs, speeds
from zr_ablate.bench.launch import task
from zr_ablate.bench.packing import choose, product_groups, sweep_overrides
from zr_ablate.bench.plan import COMPLETE, NOT_STARTED, Sharing, Work
from zr_ablate.records import LAST_CHECKPOINT, STOPPED, read_result

NO_GAIN = Sharing({1: 1.0, 2: 0.5, 4: 0.25})  # processes at once gain nothing in all


def four(key="k", resumed=False) -> list[Work]:
    """Four jobs of one shape, 30 s each alone (3 epochs of 10 s)."""
    return [Work(n, 3, 10.0, 0.0, 0.0, resumed, key) for n in "abcd"]


OVERRIDES = {n: {"model": "model=tiny", "dropout": f"dropout={d}"} for n, d in zip("abcd", ["none", "naive", "x", "y"])}


def test_packs_where_packing_measured_faster_and_expects_the_group_complete():
    packed = Sharing({1: 1.0, 4: 0.625})  # 4 packed: 2.5 x one job
    alone = choose(four(), 60, NO_GAIN, Sharing(), OVERRIDES, margin=1.0)
    assert alone.groups == {} and alone.names(COMPLETE) == ["a", "b"]  # processes: two of 30 s fit in 60 s
    p = choose(four(), 60, NO_GAIN, packed, OVERRIDES, margin=1.0)
    assert p.pack == 4 and list(p.groups.values()) == [list("abcd")] and len(p.units) == 1
    assert p.names(COMPLETE) == list("abcd") and [p.outcomes[n].end_s for n in "abcd"] == [pytest.approx(48)] * 4
    assert p.units[0].seconds == pytest.approx(30 / 0.625)  # the group: its members' length at the packed rate


def test_does_not_pack_where_processes_measured_faster_or_as_fast():
    processes = Sharing({1: 1.0, 2: 0.9, 4: 0.6})  # 4 processes at once: 2.4 x one job
    slower = Sharing({1: 1.0, 2: 0.45, 4: 0.4})  # as a CPU measures packing: below processes
    p = choose(four(), 60, processes, slower, OVERRIDES, margin=1.0)
    assert p.groups == {} and p.at_once == 4 and p.names(COMPLETE) == list("abcd")
    tie = choose(four(), 60, processes, Sharing({1: 1.0, 4: 0.6}), OVERRIDES, margin=1.0)
    assert tie.groups == {} and tie.at_once == 4  # as fast: no packing
    # forced (--pack 2) where nothing was measured: no gain assumed, a group of two takes twice as long
    forced = choose(four(), 200, NO_GAIN, Sharing(), OVERRIDES, pack=2, margin=1.0)
    assert list(forced.groups.values()) == [["a", "b"], ["c", "d"]] and forced.units[0].seconds == pytest.approx(60)
    assert [forced.outcomes[n].end_s for n in "abcd"] == pytest.approx([60, 60, 120, 120])
    assert choose(four(), 60, NO_GAIN, Sharing({1: 1.0, 4: 0.625}), OVERRIDES, pack=1, margin=1.0).groups == {}


def test_jobs_resuming_from_different_epochs_or_unpackable_are_not_packed_together():
    work = [Work(n, 2, 10.0, 0.0, 0.0, True, "k|1") for n in "ab"] + [
        Work(n, 3, 10.0, 0.0, 0.0, False, "k|0") for n in "cd"
    ]
    work.append(Work("gal", 3, 10.0, 0.0, 0.0, False, None))  # its placement cannot be packed
    overrides = dict(OVERRIDES, gal={"model": "model=tiny", "dropout": "dropout=gal"})
    p = choose(work, 1000, NO_GAIN, Sharing({1: 1.0, 2: 0.9}), overrides, margin=1.0)
    assert list(p.groups.values()) == [["a", "b"], ["c", "d"]] and [u.name for u in p.units][-1] == "gal"


def test_groups_are_products_of_their_overrides_and_their_command_sweeps_exactly_them():
    names, overrides = [], {}
    for d in ("none", "naive", "zaremba", "variational"):
        for s in (1, 2, 3):
            names.append(f"{d}{s}")
            overrides[f"{d}{s}"] = {"model": "model=tiny", "dropout": f"dropout={d}", "seed": f"seed={s}"}
    by_seed = product_groups(names, overrides, 4)
    assert by_seed == [[f"{d}{s}" for d in ("none", "naive", "zaremba", "variational")] for s in (1, 2, 3)]
    assert sweep_overrides([overrides[n] for n in by_seed[0]]) == [
        "model=tiny",
        "dropout=none,naive,zaremba,variational",
        "seed=1",
    ]
    assert product_groups(names, overrides, 12) == [names]
    # one job finished: {none, naive} x {1, 2, 3} and ... never a set that a sweep's product would overshoot
    left = [n for n in names if n != "zaremba2"]
    for group in product_groups(left, overrides, 6):
        swept = sweep_overrides([overrides[n] for n in group])
        lists = [o.split("=", 1)[1].split(",") for o in swept]
        assert len(group) == len(lists[0]) * len(lists[1]) * len(lists[2])  # the product is exactly the group
    quoted = {"a": {"x": "x='1,2'"}, "b": {"x": "x=3"}}
    assert product_groups(["a", "b"], quoted, 2) == [["a"], ["b"]]  # a value a sweep list cannot hold as is


def test_pack_keys_follow_settings_and_resume_epoch(tmp_path):
    found = jobs.expand([f"out_root={tmp_path}", "model=tiny", "dropout=none,naive,gal"])
    none, naive, gal = found
    assert jobs.pack_key(none) == jobs.pack_key(naive) is not None and jobs.pack_key(gal) is None
    (naive.folder / LAST_CHECKPOINT).parent.mkdir(parents=True)
    (naive.folder / LAST_CHECKPOINT).write_bytes(b"x")
    (naive.folder / "result.json").write_text(json.dumps({"status": STOPPED, "epochs": 1, "config": naive.settings}))
    assert jobs.pack_key(none) != jobs.pack_key(naive)  # it resumes after epoch 1, the other starts
    unit = Work(naive.name, 1, 1.0, 0.0, 0.0)
    assert "hydra/launcher=packed" not in task(unit, [naive], []).argv  # a solo checkpoint: run.py alone
    # a checkpoint a packed group wrote: only the packed launcher resumes it, so even alone the job runs under it
    (naive.folder / "result.json").write_text(
        json.dumps({"status": STOPPED, "epochs": 1, "config": naive.settings, "packed_with": [none.name]})
    )
    assert jobs.packed_checkpoint(naive) and task(unit, [naive], []).argv[2:] == [
        "-m",
        *naive.overrides,
        "hydra/launcher=packed",
        "hydra.launcher.max_members=1",
    ]
    pair = task(Work("pair", 1, 1.0, 0.0, 0.0), [none, naive], ["threads=1"])
    assert pair.argv[2:] == [
        "-m",
        f"out_root={tmp_path}",
        "model=tiny",
        "dropout=none,naive",
        "hydra/launcher=packed",
    ] + [
        "hydra.launcher.max_members=2",
        "threads=1",
    ]
    assert pair.console == none.folder / "console.log" and pair.pointers == [naive.folder / "console.log"]


def test_a_packed_bench_file_gives_packing_and_its_processes(tmp_path):
    packed_file = {
        "size": "tiny",
        "levels": [{"members": 1, "packed_x_one_job": 0.9}, {"members": 2, "packed_x_one_job": 1.6}],
        "concurrency": {"levels": [{"jobs": 1, "slowdown": [1.0]}, {"jobs": 2, "slowdown": [0.9, 0.9]}]},
    }
    bench = speeds.merge({"packed.json": packed_file, "gpu.json": {"placements": [], "concurrency": None}})
    assert speeds.packing(bench, "tiny").levels == {1: 1.0, 2: 0.8} and speeds.sharing(bench).levels[2] == 0.9
    assert speeds.packing(bench, "medium").levels == {1: 1.0}  # measured at another size: not used
    with pytest.raises(ValueError, match="not a bench file"):
        speeds.merge({"x.json": {"levels": []}})


def budget(tmp_path, ptb_dir, *extra: str) -> list[str]:
    """The command on two tiny jobs of three epochs (1,000 windows each: seconds, so the test's signal lands in the
    second even on a busy machine) packed in pairs, planned at 1,000 tokens/s."""
    return [
        sys.executable,
        "-m",
        "zr_ablate.bench.budget",
        *("model=tiny", "dropout=none,zaremba", "data.train_tokens=20000", "trainer.max_epochs=3", "threads=1"),
        *(f"out_root={tmp_path}", f"data.dir={ptb_dir}", "sweep=budget", "logger.mode=offline"),
        *("--stop-grace", "5", "--job-start", "8", "--speed", "1000", "--pack", "2"),
        *extra,
    ]


@pytest.mark.slow  # three budgeted runs of one packed group of two tiny jobs, in subprocesses
def test_a_packed_group_stopped_at_the_deadline_resumes_and_completes(tmp_path, ptb_dir):
    sweep = tmp_path / "budget"
    name = {p: f"data.train_tokens=20000,dropout={p},model=tiny,trainer.max_epochs=3" for p in ("none", "zaremba")}
    folder = {p: sweep / n for p, n in name.items()}
    first = subprocess.Popen(budget(tmp_path, ptb_dir, "--budget", "400"), cwd=REPO, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while first.poll() is None and time.time() < deadline:
        if all((f / LAST_CHECKPOINT).exists() for f in folder.values()):
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # as a scheduler's time limit does: the group is then in its second epoch
    said = first.communicate(timeout=60)[0]
    assert first.returncode == 75, said
    plan = json.loads(next((sweep / "budget").glob("*.plan.json")).read_text())["plan"]
    assert list(plan["groups"].values()) == [[name["none"], name["zaremba"]]] and plan["pack"] == 2
    assert "packed in one process" in said and "hydra/launcher=packed" in (folder["none"] / "console.log").read_text()
    for f in folder.values():
        record = read_result(f)
        assert record["status"] == STOPPED and record["epochs"] == 1 and record["checkpoint"] == LAST_CHECKPOINT, record
        assert "resumes from checkpoints/last.ckpt (after epoch 1)" in record["error"]
    # the same command: the group resumes (packed: only the packed launcher reads its checkpoints) and completes
    second = subprocess.run(budget(tmp_path, ptb_dir, "--budget", "400"), cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    records = {p: read_result(f) for p, f in folder.items()}
    assert [r["status"] for r in records.values()] == ["completed"] * 2
    assert records["none"]["packed_with"] == [name["zaremba"]] and records["zaremba"]["packed_with"] == [name["none"]]
    assert records["none"]["resumed_from_epoch"] == 1 and records["none"]["epochs"] == 3
    assert "2 jobs: 2 completed" in second.stdout
    # and again: nothing left to do, nothing already done touched
    third = subprocess.run(budget(tmp_path, ptb_dir, "--budget", "400"), cwd=REPO, capture_output=True, text=True)
    assert third.returncode == 0 and "2 finished before, 0 to run" in third.stdout, third.stdout[-2000:]
    assert NOT_STARTED not in {read_result(f)["status"] for f in folder.values()}
