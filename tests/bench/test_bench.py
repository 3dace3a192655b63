"""The benchmark: its FLOP count, its memory probe, and one end-to-end run on a tiny model (no timings asserted)."""

import json
from statistics import median

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zr_ablate.bench import cli as bench
from zr_ablate.bench import measure, workload

SIZE = "tiny"


def test_matmul_flops_per_token_matches_torch_flop_counter():
    """The analytic count against torch's own count of the reference loop (every matmul visible to it)."""
    cfg = workload.settings(SIZE, "none", "reference")
    model = workload.build_model(cfg, torch.device("cpu"))
    x, _ = workload.windows(1, 3, 4, torch.device("cpu"))[0]
    # h0 and c0 that need gradients, so that step 0's input gradient is computed like every other step's.
    state = tuple(s.requires_grad_(True) for s in model.init_state(3))
    with FlopCounterMode(display=False) as forward:
        logits, _ = model(x.t(), state)
    with FlopCounterMode(display=False) as backward:
        logits.sum().backward()
    tokens = x.numel()
    per_token = workload.matmul_flops_per_token(cfg.model.hidden, cfg.model.layers, training=False)
    assert forward.get_total_flops() == tokens * per_token
    assert forward.get_total_flops() + backward.get_total_flops() == tokens * workload.matmul_flops_per_token(
        cfg.model.hidden, cfg.model.layers
    )


@pytest.mark.slow  # two models
def test_memory_probe_counts_the_per_step_masks_naive_keeps_for_backward():
    """naive keeps a [T, B, H] mask per connection for backward, variational one [1, B, H]: same model, same
    loop, so the probe must see naive save more."""
    cpu = torch.device("cpu")
    naive = measure.peak_memory(SIZE, "naive", "auto", cpu)
    variational = measure.peak_memory(SIZE, "variational", "auto", cpu)
    assert naive["saved_for_backward_mb"] > variational["saved_for_backward_mb"] > 0


@pytest.mark.slow  # a fresh process per row
def test_bench_end_to_end_writes_consistent_tables(tmp_path, capsys):
    out = tmp_path / "bench.json"
    settings = "--placements naive zaremba --reference --repeats 2 --steps 1 --warmup 1 --threads 1"
    bench.main(
        ["--sizes", SIZE, *settings.split(), "--lightning", "zaremba", "--lightning-steps", "2", "--out", str(out)]
    )
    report = json.loads(out.read_text())
    rows = {(r["placement"], r["impl"]): r for r in report["placements"]}
    assert list(rows) == [("zaremba", "auto"), ("naive", "auto"), ("naive", "reference")]
    assert [r["path"] for r in rows.values()] == ["fused", "loop", "reference loop"]
    base = rows[("zaremba", "auto")]
    assert base["train_ratio"] == 1.0 and base["eval_ratio"] == 1.0
    for r in rows.values():
        assert len(r["train_tokens_per_s_repeats"]) == 2
        assert r["train_tokens_per_s"] == median(r["train_tokens_per_s_repeats"])
        # the ratio is per repeat against the baseline of the same repeat, then the median
        ratios = [a / b for a, b in zip(r["train_tokens_per_s_repeats"], base["train_tokens_per_s_repeats"])]
        assert r["train_ratio"] == pytest.approx(median(ratios))
        assert r["peak_mb"] > 0 and r["saved_for_backward_mb"] > 0  # from a fresh process per row
        assert r["gflops"] == pytest.approx(r["train_tokens_per_s"] * workload.matmul_flops_per_token(16, 2) / 1e9)
    (light,) = report["lightning"]
    assert light["ratio"] == pytest.approx(
        median(a / b for a, b in zip(light["lightning_repeats"], light["plain_repeats"]))
    )
    assert report["gemm_peak_gflops"] > 0 and report["threads"] == 1
    printed = capsys.readouterr().out
    assert "| tiny | naive | reference loop |" in printed and "Lightning / plain" in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--placements", "dropconnect"], "unknown dropout 'dropconnect'; choose from"),
        (["--sizes", "huge"], "unknown model 'huge'; choose from"),
        (["--out", "/proc/bench.json"], "cannot write /proc/bench.json"),
    ],
)
def test_bad_options_are_one_line_errors(args, message):
    with pytest.raises(SystemExit) as e:
        bench.main(["--sizes", SIZE, *args])
    assert message in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(SystemExit, match="torch sees no GPU; use --device cpu"):
        bench.main(["--device", "cuda"])


def test_profile_names_the_ops_of_each_rows_own_path(tmp_path, capsys):
    """--profile prints, per row, the ops by input shape: the loop placement's table holds the loop's own
    Function, the fused one's does not; and nothing is written where the tables would go."""
    out = tmp_path / "bench.json"
    args = "--profile --placements naive --steps 1 --warmup 1 --threads 1"
    bench.main(["--sizes", SIZE, *args.split(), "--out", str(out)])
    printed = capsys.readouterr().out
    fused, loop = printed.split(f"{SIZE}/naive (loop)")
    assert fused.startswith(f"{SIZE}/zaremba (fused)") and "aten::" in fused and "LoopLSTM" not in fused
    assert "LoopLSTM" in loop and "Input Shapes" in loop
    assert not out.exists()
