"""The recurrent core, checked by observing the masks it applied and the outputs it produced."""

import pytest
import torch
from torch import nn

from tests.helpers import B, H, L, T, inputs, recurrent_core, reference
from zr_ablate.dropout import Connection, DropoutSpec
from zr_ablate.model.loop import LayerMasks, lstm_layer_fast
from zr_ablate.model.lstm import DroppedLSTM, lstm_layer_loop
from zr_ablate.model.masks import sample_mask


def spec(kind: str, p: float = 0.5) -> DropoutSpec:
    """The four presets, written out as the YAML files in zr_ablate/conf/dropout/ fill them."""
    if kind == "none":
        return DropoutSpec(name="none")
    mask = "sequence" if kind == "variational" else "step"
    c = Connection(p, mask)
    rec = Connection(0.0) if kind == "zaremba" else c
    return DropoutSpec(name=kind, embedding=c, between=c, recurrent=rec, output=c)


def untied(p: float = 0.5) -> DropoutSpec:
    """Gal & Ghahramani's untied variational dropout: a sequence mask per gate on every gate input."""
    c = Connection(p, "sequence", "untied")
    return DropoutSpec(name="gal_untied", embedding=c, between=c, recurrent=c, output=Connection(p, "sequence"))


def make(kind: str, impl: str = "auto", seed: int = 0) -> DroppedLSTM:
    return recurrent_core(untied() if kind == "untied" else spec(kind), impl=impl, seed=seed)


def test_fused_and_loop_agree_in_outputs_and_gradients():
    x, state = inputs()
    results = []
    for impl in ("fused", "loop", "reference"):
        core = make("none", impl)
        xi = x.clone().requires_grad_(True)
        out, (h, c) = core(xi, state)
        (out.square().sum() + h.sum() + c.sum()).backward()
        results.append((out, h, c, xi.grad, [p.grad for p in core.parameters()]))
    (o1, h1, c1, gx1, gp1) = results[0]
    for o2, h2, c2, gx2, gp2 in results[1:]:
        for a, b in [(o1, o2), (h1, h2), (c1, c2), (gx1, gx2)] + list(zip(gp1, gp2)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _bits(p: float, *shape, g) -> torch.Tensor:
    return (torch.rand(*shape, generator=g, dtype=torch.float64) < p).double()


# Every kind of in-loop mask the fast loop takes, as dropout.py shapes them ([T, B, H] fresh per step,
# [1, B, H] per sequence, [1, 1, 1] zoneout's expectation at evaluation), alone and all together.
FAST_CASES = {
    "no masks": lambda g: {},
    "recurrent per step": lambda g: dict(recurrent=_bits(0.5, T, B, H, g=g) * 2),
    "recurrent per sequence": lambda g: dict(recurrent=_bits(0.5, 1, B, H, g=g) * 2),
    "cell update": lambda g: dict(cell_update=_bits(0.7, T, B, H, g=g) / 0.7),
    "zoneout training": lambda g: dict(zoneout_c=_bits(0.3, T, B, H, g=g), zoneout_h=_bits(0.1, T, B, H, g=g)),
    "zoneout evaluation": lambda g: dict(
        zoneout_c=torch.full((1, 1, 1), 0.3, dtype=torch.float64),
        zoneout_h=torch.full((1, 1, 1), 0.1, dtype=torch.float64),
    ),
    "dropped W_hh": lambda g: dict(w_hh=_bits(0.5, 4 * H, H, g=g) * 2),
    # Untied (Gal's code): a mask per gate, [.., B, 4H] on h_{t-1} and [.., B, 4I] on the input.
    "untied recurrent per sequence": lambda g: dict(recurrent=_bits(0.5, 1, B, 4 * H, g=g) * 2),
    "untied recurrent per step": lambda g: dict(recurrent=_bits(0.5, T, B, 4 * H, g=g) * 2),
    "untied input": lambda g: dict(input_mask=_bits(0.5, 1, B, 4 * H, g=g) * 2),
    "all at once": lambda g: dict(
        recurrent=_bits(0.5, 1, B, H, g=g) * 2,
        cell_update=_bits(0.7, T, B, H, g=g) / 0.7,
        zoneout_c=_bits(0.3, T, B, H, g=g),
        zoneout_h=_bits(0.1, 1, B, H, g=g),
        w_hh=_bits(0.5, 4 * H, H, g=g) * 2,
    ),
}


def triton_layer(*args, **kwargs):
    """triton_loop on this machine: compiled on a GPU, else in Triton's interpreter (tests/conftest.py)."""
    pytest.importorskip("triton")
    from zr_ablate.model.triton_loop import lstm_layer_triton

    return lstm_layer_triton(*args, **kwargs)


@pytest.mark.parametrize("fast", [lstm_layer_fast, triton_layer], ids=["loop", "triton"])
@pytest.mark.parametrize("case", list(FAST_CASES))
def test_fast_loop_equals_the_reference_loop_in_outputs_and_every_gradient(case, fast):
    """The hand-written backwards of loop.LoopLSTM and triton_loop.TritonLoopLSTM against autograd
    through the reference loop, in float64: outputs, final h and c, and the gradients of x, h0, c0 and all
    four weights."""
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    layer = nn.LSTM(H, H).double()
    for p in layer.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    masks = FAST_CASES[case](g)
    w_mask = masks.pop("w_hh", None)
    x0, h00, c00 = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(T, B, H), (B, H), (B, H)])
    weights = [
        torch.randn(T, B, H, generator=g, dtype=torch.float64),
        torch.randn(B, H, generator=g, dtype=torch.float64),
        torch.randn(B, H, generator=g, dtype=torch.float64),
    ]
    results = []
    for fn in (lstm_layer_loop, fast):
        layer.zero_grad()
        x, h0, c0 = (v.clone().requires_grad_(True) for v in (x0, h00, c00))
        w_hh = None if w_mask is None else layer.weight_hh_l0 * w_mask
        out, h, c = fn(x, h0, c0, layer, w_hh, LayerMasks(**masks))
        # A loss that reaches every output: each step's h, and the final h and c on their own.
        sum((v * w).sum() for v, w in zip((out, h, c), weights)).backward()
        results.append([out, h, c, x.grad, h0.grad, c0.grad] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", ["naive", "variational", "untied"])
def test_the_core_draws_the_same_masks_and_numbers_on_the_fast_and_the_reference_loop(kind):
    x, state = inputs()
    results = []
    for impl in ("loop", "reference"):
        core = make(kind, impl).double().train()
        torch.manual_seed(7)
        xi = x.double().requires_grad_(True)
        out, (h, c) = core(xi, tuple(s.double() for s in state))
        (out.square().sum() + h.sum()).backward()
        results.append([out, h, c, xi.grad] + [p.grad for p in core.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", ["none", "naive", "zaremba", "variational", "untied"])
def test_outputs_are_exactly_the_recorded_masks_applied_to_a_plain_lstm(kind):
    """Whatever the placement, train-mode output = plain LSTM + the masks the core says it used.
    So the recorded masks are the only randomness, and they sit where they are recorded."""
    core = make(kind)
    core.train()
    core.record_masks = True
    x, state = inputs()
    out, (h, c) = core(x, state)
    ref_out, ref_h, ref_c = reference(core, x, state, core.last_masks)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c, ref_c, atol=1e-5, rtol=1e-5)


def test_zaremba_never_touches_h_or_c():
    core = make("zaremba")
    core.train()
    core.record_masks = True
    x, state = inputs()
    out, (h, c) = core(x, state)
    m = core.last_masks
    assert m["recurrent"] == [None, None]
    assert m["embedding"].shape == (T, B, H) and m["embedding"].eq(0).any()
    # The input-side masks through an LSTM with an untouched recurrence reproduce h and c exactly.
    _, ref_h, ref_c = reference(core, x, state, {**m, "recurrent": [None, None]})
    torch.testing.assert_close(h, ref_h)
    torch.testing.assert_close(c, ref_c)


def test_naive_resamples_the_recurrent_mask_every_step():
    core = make("naive")
    core.train()
    core.record_masks = True
    core(*inputs())
    m = core.last_masks["recurrent"][0]
    assert m.shape == (T, B, H)
    assert all(not torch.equal(m[t], m[t + 1]) for t in range(T - 1))
    assert not torch.equal(core.last_masks["embedding"][0], core.last_masks["embedding"][1])


def test_variational_mask_is_fixed_over_the_window_per_example_and_new_each_window():
    core = make("variational")
    core.train()
    core.record_masks = True
    x, state = inputs()
    core(x, state)
    first = core.last_masks
    for m in [first["embedding"], first["between"][0], first["output"]] + first["recurrent"]:
        assert m.shape == (1, B, H)  # one mask per example, broadcast over all T steps
        assert any(not torch.equal(m[0, 0], m[0, b]) for b in range(1, B))  # differs across examples
    core(x, state)
    assert not torch.equal(first["recurrent"][0], core.last_masks["recurrent"][0])  # new window, new mask


def test_untied_masks_are_one_per_gate_and_per_sequence():
    """Untied: each gate's copy of x and of h_{t-1} has its own mask ([1, B, 4F], quarters i, f, g, o),
    held over the window; the fused kernel cannot apply them, so the core takes the loop."""
    core = make("untied")
    assert core.spec.needs_step_loop and core.path(True) == "loop"
    core.train()
    core.record_masks = True
    core(*inputs())
    m = core.last_masks
    for mask in [m["embedding"], m["between"][0]] + m["recurrent"]:
        assert mask.shape == (1, B, 4 * H)
        quarters = mask[0].chunk(4, dim=-1)
        assert any(not torch.equal(quarters[0], q) for q in quarters[1:])  # the gates' masks differ
    assert m["output"].shape == (1, B, H)  # the softmax's input is not a gate: one mask
    with pytest.raises(ValueError, match="use impl auto, loop or reference"):
        DroppedLSTM(H, H, L, untied(), impl="fused")


def test_variational_output_uses_one_mask_at_every_step():
    """Observed from outputs alone: a unit dropped at the output is zero at every step of the window."""
    core = make("variational")
    core.train()
    out, _ = core(*inputs())
    zero = out.eq(0)  # [T, B, H]
    assert zero.any()
    assert torch.equal(zero, zero[:1].expand_as(zero))


def test_eval_mode_applies_no_dropout_and_takes_the_fused_path():
    x, state = inputs()
    naive, plain = make("naive"), make("none", "fused")
    naive.eval()
    plain.eval()
    torch.testing.assert_close(naive(x, state)[0], plain(x, state)[0])


def test_mask_statistics():
    conn = Connection(0.3, "step")
    m = sample_mask(conn, 50, 40, 30, torch.empty(0))
    values = m.unique().tolist()
    assert values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7) and len(values) == 2
    assert abs(m.eq(0).float().mean().item() - 0.3) < 0.02
    assert sample_mask(Connection(0.0), 5, 4, 3, torch.empty(0)) is None


def test_fused_impl_refuses_recurrent_masks():
    with pytest.raises(ValueError, match="masks h_\\(t-1\\)"):
        DroppedLSTM(H, H, L, spec("naive"), impl="fused")


def test_loop_matches_nn_lstm_for_one_layer():
    torch.manual_seed(0)
    layer = nn.LSTM(H, H)
    x, (h0, c0) = inputs()
    out, (h, c) = layer(x, (h0[:1], c0[:1]))
    out2, h2, c2 = lstm_layer_loop(x, h0[0], c0[0], layer)
    torch.testing.assert_close(out, out2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c[0], c2, atol=1e-6, rtol=1e-5)
