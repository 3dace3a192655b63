"""CUDA only (skipped without a GPU): both CUDA-graph modes train exactly as eager does, the loop on Triton
kernels as on PyTorch ops, and cuDNN's fused LSTM runs in FP32 unless TF32 is asked for. The time-budgeted
run checks the same paths itself before it trains with them (zr_ablate/bench/paths.py, whose training trace
these tests share)."""

import pytest
import torch

from zr_ablate.bench.paths import training_trace
from zr_ablate.bench.workload import PlainLoop, settings
from zr_ablate.experiment.build import apply_precision, model
from zr_ablate.training.job import quiet_trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")
VOCAB, B, T = 500, 6, 9


def make(placement: str, *overrides: str) -> PlainLoop:
    cfg = settings("tiny", placement, "auto", ("model.hidden=48", *overrides))
    torch.manual_seed(0)
    return PlainLoop(model(cfg, VOCAB).to(CUDA), cfg)


def windows(full: int, last: int):
    """`full` [B, T] windows, a short [B, last] one (an epoch's last window), then one more full one: a
    replay after an eager step must still update the weights."""
    g = torch.Generator().manual_seed(3)
    lengths = [T] * full + [last, T]
    stream = torch.randint(VOCAB, (B, sum(lengths) + 1), generator=g).to(CUDA)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return [(stream[:, s : s + k], stream[:, s + 1 : s + k + 1]) for s, k in zip(starts, lengths)]


def assert_same(a: list, b: list, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Two training traces (loss, gradient norm, gradients and weights after each window) agree."""
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol)


# The sweep's placements on each path they may take (the CPU tests cover every mask kind of the layers):
# the loop on Triton kernels (the default on CUDA) and on PyTorch ops, cuDNN, and cuDNN's placements on the loop.
@pytest.mark.parametrize(
    "placement,impl,kernel",
    [
        ("naive", "auto", "auto"),
        ("variational", "auto", "auto"),
        ("variational", "auto", "torch"),
        ("zaremba", "auto", "auto"),
        ("zaremba", "loop", "auto"),
    ],
)
def test_step_graph_training_equals_eager(placement, impl, kernel):
    apply_precision(False)
    wins = windows(3, last=4)
    same = (f"model.lstm_impl={impl}", f"model.loop_kernel={kernel}")
    eager = make(placement, "cuda_graph=off", *same)
    graphed = make(placement, "cuda_graph=step", *same)
    expected, got = training_trace(eager, wins), training_trace(graphed, wins)
    assert graphed.step.graph_error is None
    assert graphed.step.replays == 4  # captured on window 1, replayed for the four full ones; the short one eager
    assert_same(expected, got)


@pytest.mark.parametrize("placement", ["naive", "variational"])
def test_layers_graph_training_equals_eager(placement):
    apply_precision(False)
    wins = windows(3, last=4)
    eager, graphed = make(placement, "cuda_graph=off"), make(placement, "cuda_graph=layers")
    expected, got = training_trace(eager, wins), training_trace(graphed, wins)
    assert graphed.model.lstm._graphed is not None and graphed.model.lstm._graphed.replays == 4
    assert_same(expected, got)


@pytest.mark.parametrize("placement", ["naive", "variational", "zoneout", "zaremba"])
def test_triton_training_matches_the_torch_loop(placement):
    """The loop on Triton kernels in a step graph against the loop on PyTorch ops, eager: other kernels, so
    FP32 rounding apart, the same losses, gradients and weights over five windows."""
    apply_precision(False)
    wins = windows(3, last=4)
    ref = make(placement, "cuda_graph=off", "model.lstm_impl=loop", "model.loop_kernel=torch")
    tri = make(placement, "cuda_graph=step", "model.lstm_impl=loop", "model.loop_kernel=triton")
    expected, got = training_trace(ref, wins), training_trace(tri, wins)
    assert tri.step.graph_error is None and tri.step.replays == 4
    assert_same(expected, got, rtol=1e-4, atol=1e-5)


def fit(ptb_dir, *overrides: str):
    """LMModule under a Lightning Trainer on the GPU, as run.py trains (tiny profile, one epoch)."""
    from zr_ablate.experiment.build import build

    cfg = settings("tiny", "variational", "auto", (f"data.dir={ptb_dir}", "trainer.max_epochs=1", *overrides))
    torch.manual_seed(0)
    module, data = build(cfg)
    trainer = quiet_trainer(accelerator="gpu", devices=1)
    torch.manual_seed(1)
    trainer.fit(module, datamodule=data)
    return module, trainer.callback_metrics


def test_step_graph_under_lightning_trains_as_eager_does(ptb_dir):
    """The whole path run.py takes (manual optimisation, the lr per epoch, the carried state, the short last
    window) on the GPU: the step graph and the Triton loop give eager's validation perplexity."""
    apply_precision(False)
    eager, expected = fit(ptb_dir, "cuda_graph=off", "model.loop_kernel=torch")
    graphed, got = fit(ptb_dir, "cuda_graph=step", "model.loop_kernel=triton")
    assert graphed.train_step.graph_error is None and graphed.train_step.replays > 10
    assert got["val_ppl"].item() == pytest.approx(expected["val_ppl"].item(), rel=1e-4)


def test_fused_cudnn_matches_the_loop_in_fp32_by_default():
    """With TF32 off, cuDNN's LSTM and the cuBLAS step loop agree to FP32 rounding (~1e-6); TF32 would
    leave ~1e-3 relative differences."""
    apply_precision(False)
    fused, looped = make("none").model, make("none", "model.lstm_impl=loop", "model.loop_kernel=torch").model
    x, _ = windows(1, last=1)[0]
    with torch.no_grad():
        a, _ = fused(x.t(), fused.init_state(B))
        b, _ = looped(x.t(), looped.init_state(B))
    assert ((a - b).norm() / b.norm()).item() < 2e-5
