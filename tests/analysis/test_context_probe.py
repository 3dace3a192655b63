"""The context-length probe: chunked evaluation against explicit token-by-token stepping, and end to end."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO
from zr_ablate.analysis import context_probe as probe
from zr_ablate.bench.workload import settings
from zr_ablate.experiment.build import model as build_model

V = 50


def make(placement: str):
    torch.manual_seed(0)
    m = build_model(settings("tiny", placement), V)
    return m.eval()


def stream(n: int = 23):
    return torch.randint(V, (n,), generator=torch.Generator().manual_seed(1))


def stepped_ppl(m, s: torch.Tensor, k: int | None) -> float:
    """One token at a time, the state reset to zero before every k-th prediction (never when k is None)."""
    total, state = 0.0, None
    with torch.no_grad():
        for i in range(s.numel() - 1):
            if state is None or (k is not None and i % k == 0):
                state = m.init_state(1)
            logits, state = m(s[i : i + 1, None], state)
            total += F.cross_entropy(logits[0], s[i + 1 : i + 2]).item()
    return math.exp(total / (s.numel() - 1))


def chunked_ppl(m, s, k, max_tokens=8192):
    nll, count = probe.chunked_nll(m, s, k, max_tokens)
    assert count.sum().item() == s.numel() - 1  # every target predicted exactly once
    return math.exp(nll.sum().item() / count.sum().item())


@pytest.mark.parametrize("placement", ["naive", "zoneout"])  # fused at evaluation; zoneout's own loop
def test_chunked_equals_stepping_with_explicit_resets(placement):
    m, s = make(placement), stream()
    for k in (1, 3, 5, 40):  # 40 > the stream: one chunk
        # max_tokens 6 splits the chunks into several groups, as a long split would
        assert chunked_ppl(m, s, k, max_tokens=6) == pytest.approx(stepped_ppl(m, s, k), rel=1e-5)


def test_k1_is_one_token_from_the_zero_state_each_time():
    m, s = make("variational"), stream()
    with torch.no_grad():
        logits, _ = m(s[:-1][None], m.init_state(s.numel() - 1))  # every token its own sequence
    expected = math.exp(F.cross_entropy(logits[0], s[1:]).item())
    assert chunked_ppl(m, s, 1) == pytest.approx(expected, rel=1e-5)


def test_whole_stream_carries_the_state():
    m, s = make("zaremba"), stream()
    total, n = probe.whole_nll(m, s, window=4)
    assert math.exp(total / n) == pytest.approx(stepped_ppl(m, s, None), rel=1e-5)


def test_k90_is_the_first_interval_with_most_of_the_gain():
    ppl = {1: 300.0, 2: 250.0, 5: 215.0, 10: 205.0, "whole": 200.0}
    assert probe.k90(ppl, 100.0) == 10
    assert probe.k90({1: 300.0, 2: 299.0, "whole": 200.0}, 100.0) == "whole"


@pytest.mark.slow  # trains a job in a subprocess
def test_probe_of_a_trained_job_matches_its_test_perplexity(tmp_path, ptb_dir):
    run = subprocess.run(
        [
            sys.executable,
            "run.py",
            "model=tiny",
            "dropout=zoneout",
            "trainer.max_epochs=1",
            f"out_root={tmp_path}",
            "sweep=s",
            f"data.dir={ptb_dir}",
            "logger.mode=disabled",
            "trainer.enable_progress_bar=false",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    job = next((tmp_path / "s").iterdir())
    test_ppl = json.loads((job / "result.json").read_text())["test_ppl"]
    probe.main([str(tmp_path / "s"), "--k", "1", "2", "20", "--device", "cpu"])
    table = pd.read_csv(tmp_path / "s" / "probe" / "probe.csv")
    whole = table[(table.split == "test") & (table.k == "whole")].ppl.item()
    assert whole == pytest.approx(test_ppl, rel=1e-6)
    memory = pd.read_csv(tmp_path / "s" / "probe" / "memory.csv")
    assert set(memory.split) == {"test", "valid"} and (memory.ppl_k1 > memory.ppl_whole).all()
    positions = pd.read_csv(tmp_path / "s" / "probe" / "positions.csv")
    assert positions.groupby("split").position.max().tolist() == [20, 20]
    # the report shows it, and a report kept with --keep-runs regenerates it from its runs/
    from zr_ablate.analysis.report.cli import main as report

    report([str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--keep-runs"])
    assert "## Memory: how much context each placement uses" in (tmp_path / "r" / "results.md").read_text()
    assert (tmp_path / "r" / "memory_test.png").is_file() and (tmp_path / "r" / "positions_test.png").is_file()
    gain = pd.read_csv(tmp_path / "r" / "memory_test.csv")
    assert gain.gain_mean.item() == pytest.approx(memory[memory.split == "test"].memory_gain.item())
    report([str(tmp_path / "r" / "runs"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "memory_test.csv").read_text() == (tmp_path / "r" / "memory_test.csv").read_text()


def test_a_sweep_without_checkpoints_says_what_to_do(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "result.json").write_text('{"status": "completed"}')
    with pytest.raises(SystemExit, match="no completed job with a checkpoint under"):
        probe.main([str(tmp_path)])
