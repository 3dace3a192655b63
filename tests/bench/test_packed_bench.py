"""bench --packed: packed members' training tokens/s beside one solo job's and M solo processes', per M, with
the device named."""

import json

import pytest

from zr_ablate.bench import cli as bench
from zr_ablate.training.clock import cpu_model


@pytest.mark.slow  # a process per solo job
def test_packed_bench_compares_packing_with_one_job_and_with_processes(tmp_path, capsys):
    out = tmp_path / "packed.json"
    args = "--packed 1 2 --packed-size tiny --packed-placements naive variational --packed-seconds 0.5"
    bench.main([*args.split(), "--threads", "1", "--device", "cpu", "--out", str(out)])
    report = json.loads(out.read_text())
    assert cpu_model() in report["device"] and report["threads_per_process"] == 1
    one = report["one_job_tokens_per_s"]
    levels = {r["members"]: r for r in report["levels"]}
    assert list(levels) == [1, 2] and levels[2]["placements"] == ["naive", "variational"]
    assert one == report["concurrency"]["solo_tokens_per_s"]["naive"] > 0
    for r in levels.values():
        assert r["packed_tokens_per_s"] > 0 and r["packed_threads"] == 1
        assert r["packed_x_one_job"] == pytest.approx(r["packed_tokens_per_s"] / one)
        assert r["packed_x_processes"] == pytest.approx(r["packed_tokens_per_s"] / r["processes_tokens_per_s"])
    printed = capsys.readouterr().out
    assert f"device: {report['device']}" in printed and "| 2 | naive, variational | 1 |" in printed


def test_packed_bench_options_are_checked(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--packed", "0"])
    assert "--packed counts" in capsys.readouterr().err
