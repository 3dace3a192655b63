"""CUDA only (skipped without a GPU): packed members on the device train as they do eagerly and as their solo
jobs do: under a step graph (cuda_graph=step), with graphed layers (cuda_graph=layers), on the Triton loop
kernels, and against each member trained alone on the device (FP32 rounding apart)."""

import pytest
import torch

from zr_ablate.bench.workload import PlainLoop, settings
from zr_ablate.experiment.build import apply_precision, model, packed_model
from zr_ablate.training.packed_step import PackedSGD, PackedTrainStep

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")
VOCAB, B, T = 500, 6, 9
MEMBERS = ["naive", "zaremba", "variational", "zoneout"]


def configs(*overrides: str):
    return [
        settings("tiny", p, "auto", ("model.hidden=48", f"seed={m + 1}", *overrides)) for m, p in enumerate(MEMBERS)
    ]


def windows(full: int = 3, last: int = 4):
    """`full` [B, T] windows, a short one (an epoch's last), then one more full one (a replay after an eager step)."""
    g = torch.Generator().manual_seed(3)
    lengths = [T] * full + [last, T]
    stream = torch.randint(VOCAB, (B, sum(lengths) + 1), generator=g).to(CUDA)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return [(stream[:, s : s + k], stream[:, s + 1 : s + k + 1]) for s, k in zip(starts, lengths)]


def train_packed(*overrides: str):
    """Per window: every member's loss, gradient norm and weights; and the step (for its graph counters)."""
    cfgs = configs(*overrides)
    packed = packed_model(cfgs, VOCAB).to(CUDA).train()
    step = PackedTrainStep(packed, cfgs[0].optim.clip, cuda_graph=cfgs[0].cuda_graph == "step")
    opt = PackedSGD(packed.parameters(), lr=cfgs[0].optim.lr)
    state, record = None, []
    for x, y in windows():
        nll, state, norms = step(x, y, packed.init_state(B) if state is None else state)
        opt.step()
        record.append([[nll[m], norms[m], packed.member_state(m)] for m in range(packed.members)])
    return record, step, packed


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    """a, b: per window, per member [loss, gradient norm, weights by name]."""
    for step_a, step_b in zip(a, b, strict=True):
        for member_a, member_b in zip(step_a, step_b, strict=True):
            torch.testing.assert_close(member_b, member_a, rtol=rtol, atol=atol)


def test_packed_step_graph_training_equals_eager():
    apply_precision(False)
    expected, _, _ = train_packed("cuda_graph=off", "model.loop_kernel=torch")
    got, step, _ = train_packed("cuda_graph=step", "model.loop_kernel=torch")
    assert step.graph_error is None and step.replays == 4  # the short window eager
    assert_close(expected, got)


def test_packed_layers_graph_training_equals_eager():
    apply_precision(False)
    expected, _, _ = train_packed("cuda_graph=off", "model.loop_kernel=torch")
    got, _, packed = train_packed("cuda_graph=layers", "model.loop_kernel=torch")
    assert packed.lstm._graphed is not None and packed.lstm._graphed.replays == 4
    assert_close(expected, got)


def test_packed_triton_training_matches_the_torch_loop():
    apply_precision(False)
    expected, _, _ = train_packed("cuda_graph=off", "model.loop_kernel=torch")
    got, step, _ = train_packed("cuda_graph=step", "model.loop_kernel=triton")
    assert step.graph_error is None and step.replays == 4
    assert_close(expected, got, rtol=1e-4, atol=1e-5)


def test_packed_members_train_as_their_solo_jobs_on_the_device():
    """Each member against its solo job on the path run.py gives it on CUDA (cuDNN for zaremba, the Triton
    loop in a step graph for the others): the same masks from the same seed, FP32 rounding apart."""
    apply_precision(False)
    got, _, _ = train_packed()
    for m, cfg in enumerate(configs()):
        loop = PlainLoop(model(cfg, VOCAB).to(CUDA), cfg)
        loop.model.train()
        for k, (x, y) in enumerate(windows()):
            nll, loop.state, norm = loop.step(x, y, loop.state if loop.state is not None else loop.model.init_state(B))
            loop.opt.step()
            torch.testing.assert_close(got[k][m], [nll, norm, loop.model.state_dict()], rtol=1e-4, atol=1e-5)
