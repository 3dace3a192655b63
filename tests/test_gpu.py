"""CUDA only (skipped without a GPU; the device sprint runs them first): the CUDA-graph path gives the same
training as eager, and cuDNN's fused LSTM runs in FP32 unless TF32 is asked for."""
import pytest
import torch
import torch.nn.functional as F

from zr_ablate.bench import settings
from zr_ablate.build import apply_precision, model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")
VOCAB, B, T = 500, 6, 9


def make(placement: str, cuda_graph: bool):
    cfg = settings("tiny", placement, "auto", (f"model.cuda_graph={str(cuda_graph).lower()}", "model.hidden=48"))
    torch.manual_seed(0)
    return model(cfg, VOCAB).to(CUDA), cfg.optim


def windows(n: int, last: int):
    """n full [B, T] windows, then one short [B, last] one (an epoch's last window)."""
    g = torch.Generator().manual_seed(3)
    stream = torch.randint(VOCAB, (B, n * T + last + 1), generator=g).to(CUDA)
    starts = [i * T for i in range(n)] + [n * T]
    lengths = [T] * n + [last]
    return [(stream[:, s:s + k], stream[:, s + 1:s + k + 1]) for s, k in zip(starts, lengths)]


def train(placement: str, cuda_graph: bool, wins) -> tuple[list, list, object]:
    """Zaremba's step on each window, the state carried; masks drawn from seed 100 + window index."""
    lm, optim = make(placement, cuda_graph)
    opt = torch.optim.SGD(lm.parameters(), lr=optim.lr)
    lm.train()
    state, losses, grads = lm.init_state(B), [], []
    for k, (x, y) in enumerate(wins):
        torch.manual_seed(100 + k)
        logits, (h, c) = lm(x.t(), state)
        state = (h.detach(), c.detach())
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.t().reshape(-1), reduction="sum") / B
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads.append([p.grad.detach().clone() for p in lm.parameters()])
        torch.nn.utils.clip_grad_norm_(lm.parameters(), optim.clip)
        opt.step()
        losses.append(loss.detach())
    return losses, grads, lm


@pytest.mark.parametrize("placement", ["naive", "variational", "semeniuta", "zoneout"])
def test_graphed_training_equals_eager(placement):
    apply_precision(False)
    wins = windows(3, last=4)
    eager_losses, eager_grads, eager = train(placement, False, wins)
    graph_losses, graph_grads, graphed = train(placement, True, wins)
    assert eager.lstm._graphed is None
    assert graphed.lstm._graphed is not None and graphed.lstm._graphed.replays == 3  # the short one ran eager
    for a, b in zip(eager_losses, graph_losses):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for step_a, step_b in zip(eager_grads, graph_grads):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the same weights after four SGD steps: the graph read every update in place
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_cudnn_matches_the_loop_in_fp32_by_default():
    """With TF32 off, cuDNN's LSTM and the cuBLAS step loop agree to FP32 rounding (~1e-6); TF32 would
    leave ~1e-3 relative differences."""
    apply_precision(False)
    fused, _ = make("none", True)
    looped, _ = make("none", True)
    looped.lstm.impl = "loop"
    x, _ = windows(1, last=1)[0]
    with torch.no_grad():
        a, _ = fused(x.t(), fused.init_state(B))
        b, _ = looped(x.t(), looped.init_state(B))
    assert ((a - b).norm() / b.norm()).item() < 2e-5
