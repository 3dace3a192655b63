"""Packed members train as their solo jobs do (float64, CPU): step by step the same losses, gradient norms
and weights as each job run alone with the same seed, whichever placements are packed together; and a
member that diverges is frozen without touching the others."""

import pytest
import torch

from zr_ablate.bench.workload import settings
from zr_ablate.experiment.build import model as build_model
from zr_ablate.model.packed import PackedLM
from zr_ablate.training.mc_dropout import MCDropoutEval
from zr_ablate.training.packed_step import PackedMCDropoutEval, PackedSGD, PackedTrainStep
from zr_ablate.training.step import PaperSGD, TrainStep

V, B, T = 60, 4, 5
CLIP, LR, DECAY = 0.5, 1.0, 0.01  # a clip the gradients cross, so clipping is exercised, and Gal's decay


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def solo(placement: str, seed: int, *overrides: str):
    """The model `python run.py model=tiny dropout=PLACEMENT seed=SEED` trains (its own random stream)."""
    return build_model(settings("tiny", placement, "auto", (f"seed={seed}", *overrides)), V)


def windows(lengths=(T, T, T, 3)):
    """Windows [B, t] of one token stream, the last one short as an epoch's last window."""
    g = torch.Generator().manual_seed(11)
    stream = torch.randint(V, (B, sum(lengths) + 1), generator=g)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return [(stream[:, s : s + k], stream[:, s + 1 : s + k + 1]) for s, k in zip(starts, lengths)]


def train_solo(model, wins) -> list[tuple]:
    """(NLL, gradient norm, weights) after each window, trained as LMModule trains."""
    model.train()
    step, opt = TrainStep(model, CLIP), PaperSGD(model.parameters(), lr=LR, weight_decay=DECAY)
    state, record = model.init_state(B), []
    for x, y in wins:
        nll, state, norm = step(x, y, state)
        opt.step()
        record.append((nll, norm, {k: v.clone() for k, v in model.state_dict().items()}))
    return record


def train_packed(packed: PackedLM, wins, frozen_after: dict | None = None) -> list[list[tuple]]:
    """Per member, (NLL, gradient norm, weights) after each window."""
    packed.train()
    step, opt = PackedTrainStep(packed, CLIP), PackedSGD(packed.parameters(), lr=LR, weight_decay=DECAY)
    state, record = packed.init_state(B), [[] for _ in range(packed.members)]
    for x, y in wins:
        nll, state, norms = step(x, y, state)
        opt.step()
        for m in range(packed.members):
            record[m].append((nll[m], norms[m], packed.member_state(m)))
    return record


def assert_same(expected: list[tuple], got: list[tuple], tol: float = 1e-10) -> None:
    for (nll_a, norm_a, w_a), (nll_b, norm_b, w_b) in zip(expected, got, strict=True):
        torch.testing.assert_close(nll_b, nll_a, rtol=tol, atol=tol)
        torch.testing.assert_close(norm_b, norm_a, rtol=tol, atol=tol)
        assert w_a.keys() == w_b.keys()
        for k in w_a:
            torch.testing.assert_close(w_b[k], w_a[k], rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "members",
    [
        [("none", 1), ("naive", 2), ("zaremba", 3), ("variational", 4)],  # the paper's four placements
        [("variational", 1), ("variational", 2)],  # one placement, two seeds
        [("zoneout", 5), ("semeniuta", 6), ("weight_drop", 7)],  # in-loop masks, DropConnect
    ],
    ids=["four-placements", "two-seeds", "other-regularisers"],
)
def test_packed_members_train_as_their_solo_jobs(members):
    wins = windows()
    packed = PackedLM([solo(p, s) for p, s in members])
    got = train_packed(packed, wins)
    for m, (placement, seed) in enumerate(members):
        assert_same(train_solo(solo(placement, seed), wins), got[m])
    # Clipping was exercised: some member's norm was above the clip in some window.
    assert any(float(norm) > CLIP for member in got for _, norm, _ in member)


def test_one_packed_member_is_its_solo_job_on_the_reference_loop_too():
    wins = windows()
    packed = PackedLM([solo("naive", 3)], impl="reference")
    assert_same(train_solo(solo("naive", 3), wins), train_packed(packed, wins)[0])


def test_tied_weights_stay_tied_per_member():
    wins = windows()
    members = [("zaremba", 1, "model.tie_weights=true"), ("none", 2, "model.tie_weights=true")]
    packed = PackedLM([solo(*m) for m in members])
    assert packed.decoder.weight is packed.embedding.weight
    got = train_packed(packed, wins)
    for m, args in enumerate(members):
        assert_same(train_solo(solo(*args), wins), got[m])


def test_a_frozen_member_keeps_its_weights_and_the_others_train_as_alone():
    """Member 1's softmax is made to blow up (NaN loss and gradients); once frozen its weights stop moving,
    and members 0 and 2 still end with their solo numbers."""
    wins = windows()
    members = [("naive", 1), ("zaremba", 2), ("variational", 3)]
    packed = PackedLM([solo(p, s) for p, s in members])
    with torch.no_grad():
        packed.decoder.bias[1, 0] = float("nan")  # NaN logits, loss and gradients for member 1 only
    packed.train()
    step, opt = PackedTrainStep(packed, CLIP), PackedSGD(packed.parameters(), lr=LR, weight_decay=DECAY)
    state = packed.init_state(B)
    nll, state, _ = step(*wins[0], state)
    opt.step()
    assert not torch.isfinite(nll[1]) and torch.isfinite(nll[[0, 2]]).all()
    opt.frozen.add(1)
    frozen = packed.member_state(1)
    for x, y in wins[1:]:
        _, state, _ = step(x, y, state)
        opt.step()
    for k, v in packed.member_state(1).items():
        assert torch.equal(v.nan_to_num(), frozen[k].nan_to_num()), k
    for m in (0, 2):
        expected = train_solo(solo(*members[m]), wins)[-1][2]
        for k, v in packed.member_state(m).items():
            torch.testing.assert_close(v, expected[k], rtol=1e-10, atol=1e-10)


def test_mc_dropout_evaluation_per_member_equals_each_solo_one():
    """MC-dropout passes hold each member's sequence masks by its own placement and draw from its stream."""
    wins = windows((T, T, T))
    members = [("variational", 1), ("naive", 2), ("none", 3)]
    packed = PackedLM([solo(p, s) for p, s in members]).eval()
    mc = PackedMCDropoutEval(3)
    got = sum(mc.nll(packed, x, y).reshape(len(members), -1).sum(1) for x, y in wins)
    for m, (placement, seed) in enumerate(members):
        model, solo_mc = solo(placement, seed).eval(), MCDropoutEval(3)
        expected = sum(solo_mc.nll(model, x, y).sum() for x, y in wins)
        torch.testing.assert_close(got[m], expected, rtol=1e-10, atol=1e-10)


def test_packed_members_on_the_triton_kernels_train_as_on_the_torch_loop():
    """The Triton loop's gate kernels on M*B rows and its per-member matmuls (Triton's CPU interpreter here;
    tests/model/test_packed_gpu.py on a GPU)."""
    pytest.importorskip("triton")
    wins = windows()
    members = [("naive", 1), ("zoneout", 2), ("variational", 3)]
    torch_loop = train_packed(PackedLM([solo(p, s) for p, s in members], loop_kernel="torch"), wins)
    triton = train_packed(PackedLM([solo(p, s) for p, s in members], loop_kernel="triton"), wins)
    for m in range(len(members)):
        assert_same(torch_loop[m], triton[m], tol=1e-9)
