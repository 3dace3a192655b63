"""The regularisers beyond the four placements, checked by the masks they applied and the outputs they
produced: semeniuta (g_t), weight_drop (W_hh), zoneout (c, h), word dropout, weight tying, MC dropout."""

import copy
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.helpers import B, H, L, T, inputs, recurrent_core, reference, tiny_lm
from zr_ablate.dropout import Connection, DropoutSpec
from zr_ablate.model.language_model import LSTMLanguageModel, count_parameters
from zr_ablate.model.lstm import DroppedLSTM
from zr_ablate.training.job import quiet_trainer
from zr_ablate.training.mc_dropout import MCDropoutEval

NEW_PRESETS = ["semeniuta", "weight_drop", "zoneout"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: with one thread, torch does not spin-wait against other work on the cores (tens of
    times slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(layers: int = L, impl: str = "auto", **connections) -> DroppedLSTM:
    """A core that records the masks it draws (for helpers.reference)."""
    lstm = recurrent_core(DropoutSpec(name="test", **connections), layers, impl)
    lstm.record_masks = True
    return lstm


def assert_matches(got, want):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def run_core(core, x, state):
    out, (h, c) = core(x, state)
    return out, h, c


def untouched(masks: dict, *keys) -> bool:
    return all(m is None for k in keys for m in masks[k])


# ---- semeniuta: a mask on g_t only ---------------------------------------------------------------------


@pytest.mark.parametrize("kind,rows", [("step", T), ("sequence", 1)])
def test_semeniuta_masks_the_cell_update_and_nothing_else(kind, rows):
    core = make(cell_update=Connection(0.5, kind))
    core.train()
    x, state = inputs()
    got = run_core(core, x, state)
    m = core.last_masks
    assert untouched(m, "recurrent", "weight_hh", "zoneout_c", "zoneout_h")
    assert all(g.shape == (rows, B, H) and g.eq(0).any() for g in m["cell_update"])
    # The recorded g_t masks in a plain LSTM (h and c otherwise untouched) give the same outputs and state.
    assert_matches(got, reference(core, x, state, m))
    core.eval()
    assert_matches(run_core(core, x, state), reference(core, x, state, {}))


# ---- weight_drop: DropConnect on W_hh, fused kernel -----------------------------------------------------


def test_weight_drop_runs_the_fused_kernel_with_one_dropped_w_hh_per_window():
    core = make(impl="fused", weight_hh=Connection(0.5, "sequence"))  # fused accepts it
    core.train()
    x, state = inputs()
    out, h, c = run_core(core, x, state)
    m = core.last_masks
    assert untouched(m, "recurrent", "cell_update", "zoneout_c", "zoneout_h")
    for mask in m["weight_hh"]:
        assert mask.shape == (4 * H, H) and set(mask.unique().tolist()) == {0.0, 2.0}
    # A plain nn.LSTM holding the dropped matrices gives the same numbers: one mask at every step.
    y = x
    for li, layer in enumerate(core.layers):
        plain = copy.deepcopy(layer)
        with torch.no_grad():
            plain.weight_hh_l0.mul_(m["weight_hh"][li])
        y, _ = plain(y, (state[0][li : li + 1], state[1][li : li + 1]))
    torch.testing.assert_close(out, y)
    # Gradients reach the raw weight, and only where the mask kept it.
    out.square().sum().backward()
    for li, layer in enumerate(core.layers):
        grad, kept = layer.weight_hh_l0.grad, m["weight_hh"][li] != 0
        assert grad[~kept].eq(0).all() and grad[kept].ne(0).all()
    core(x, state)
    assert not torch.equal(m["weight_hh"][0], core.last_masks["weight_hh"][0])  # a new window, a new mask
    core.eval()
    assert_matches(run_core(core, x, state), reference(core, x, state, {}))


def test_weight_drop_gives_the_same_numbers_on_the_loop_path():
    x, state = inputs()
    results = []
    for impl in ("fused", "loop"):
        core = make(impl=impl, weight_hh=Connection(0.5, "sequence"))
        core.train()
        torch.manual_seed(5)
        results.append(run_core(core, x, state))
    assert_matches(*results)
    assert_matches(results[1], reference(core, x, state, core.last_masks))


# ---- zoneout: units keep their previous values in training, the expectation at evaluation -------------


def test_zoneout_units_copy_their_previous_values_in_training():
    core = make(zoneout_c=Connection(0.3), zoneout_h=Connection(0.3))
    core.train()
    x, state = inputs()
    got = run_core(core, x, state)
    m = core.last_masks
    assert untouched(m, "recurrent", "cell_update", "weight_hh")
    d_h = m["zoneout_h"][-1]  # top layer, [T, B, H], 1 where h_t keeps h_{t-1}
    assert d_h.shape == (T, B, H) and set(d_h.unique().tolist()) == {0.0, 1.0}
    out = got[0]
    previous = torch.cat([state[0][-1:], out[:-1]])  # h_{t-1} of the top layer
    kept = d_h.bool()
    assert torch.equal(out[kept], previous[kept]) and out[~kept].ne(previous[~kept]).all()
    assert_matches(got, reference(core, x, state, m))  # the c masks too, applied as recorded
    torch.manual_seed(1)
    assert not torch.equal(out, core(x, state)[0])  # stochastic: a fresh mask per step and window


def test_zoneout_evaluation_is_the_expectation_of_training():
    z_c, z_h = 0.25, 0.4
    core = make(zoneout_c=Connection(z_c), zoneout_h=Connection(z_h))
    core.eval()
    x, state = inputs()
    got = run_core(core, x, state)
    expectation = {"zoneout_c": [torch.tensor([z_c])] * L, "zoneout_h": [torch.tensor([z_h])] * L}
    assert_matches(got, reference(core, x, state, expectation))  # c_t = z c_{t-1} + (1 - z) c_new
    assert_matches(got, run_core(core, x, state))  # deterministic
    assert not torch.allclose(got[0], reference(core, x, state, {})[0])  # and not a plain LSTM
    # One step of one layer is linear in d, so the training average converges to the evaluation value.
    one = make(layers=1, zoneout_c=Connection(z_c), zoneout_h=Connection(z_h))
    n = 20_000
    x1, s1 = x[:1, :1].expand(1, n, H), (state[0][:1, :1].expand(1, n, H), state[1][:1, :1].expand(1, n, H))
    one.eval()
    _, h_eval, c_eval = run_core(one, x1[:, :1], (s1[0][:, :1], s1[1][:, :1]))
    one.train()
    _, h_train, c_train = run_core(one, x1, s1)
    torch.testing.assert_close(c_train.mean(1), c_eval[:, 0], atol=0.02, rtol=0)
    torch.testing.assert_close(h_train.mean(1), h_eval[:, 0], atol=0.02, rtol=0)


# ---- word dropout: embedding rows, by word type per example --------------------------------------------


def word_model(kind: str) -> LSTMLanguageModel:
    torch.manual_seed(0)
    return LSTMLanguageModel(20, H, 1, DropoutSpec(word=Connection(0.5, kind)), init_scale=0.1)


def embed(model: LSTMLanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    """The embedded window as the model's forward feeds it to the LSTM: rows times the word mask."""
    mask = model.sample_masks(tokens)["word"]
    return model.embedding(tokens) if mask is None else model.embedding(tokens) * mask


def test_word_dropout_drops_all_occurrences_of_a_word_in_an_example_together():
    model = word_model("sequence")
    model.train()
    tokens = torch.randint(0, 4, (30, 1)).expand(30, 16)  # 16 examples of the same text: 4 words, repeated
    emb = embed(model, tokens)  # [T, B, H]
    dropped = emb.eq(0).all(-1)  # [T, B]: the whole row zeroed
    for b in range(16):
        for w in tokens[:, b].unique():
            assert dropped[tokens[:, b] == w, b].unique().numel() == 1  # every occurrence shares the draw
    assert len({tuple(dropped[:, b].tolist()) for b in range(16)}) > 1  # each example draws its own
    torch.testing.assert_close(emb[~dropped], model.embedding(tokens)[~dropped] / 0.5)
    assert not torch.equal(dropped, embed(model, tokens).eq(0).all(-1))  # a new window, new draws
    model.eval()
    assert torch.equal(embed(model, tokens), model.embedding(tokens))


def test_word_dropout_per_step_drops_occurrences_independently_and_feeds_the_lstm():
    model = word_model("step")
    model.train()
    tokens = torch.zeros(40, 3, dtype=torch.long)  # one word, 40 occurrences per example
    dropped = embed(model, tokens).eq(0).all(-1)
    assert dropped.any() and not dropped.all(0).any()
    state = model.init_state(3)
    torch.manual_seed(2)
    logits, _ = model(tokens, state)
    torch.manual_seed(2)
    masks = model.sample_masks(tokens)  # the same draws, in the same order: word first, then the LSTM's
    expected = model.decoder(model.lstm(model.embedding(tokens) * masks["word"], state, masks)[0])
    torch.testing.assert_close(logits, expected)


# ---- weight tying ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden,expected", [(200, 2_653_200), (650, 13_280_400), (1500, 51_034_000)])
def test_tied_parameter_counts(hidden, expected):
    with torch.device("meta"):  # counts only: no memory, no time
        model = LSTMLanguageModel(10_000, hidden, 2, DropoutSpec(), init_scale=0.05, tie_weights=True)
    assert count_parameters(model) == expected


def test_tied_embedding_and_decoder_are_one_tensor():
    tied = LSTMLanguageModel(50, H, 1, DropoutSpec(), init_scale=0.1, tie_weights=True)
    untied = LSTMLanguageModel(50, H, 1, DropoutSpec(), init_scale=0.1)
    untied.load_state_dict(tied.state_dict())
    tokens = torch.randint(0, 50, (T, B))
    for model in (tied, untied):
        model(tokens, model.init_state(B))[0].square().sum().backward()
    # One tensor, so its gradient is the sum of both roles' gradients in the untied copy.
    assert tied.decoder.weight.data_ptr() == tied.embedding.weight.data_ptr()
    torch.testing.assert_close(tied.embedding.weight.grad, untied.embedding.weight.grad + untied.decoder.weight.grad)


# ---- MC-dropout evaluation ------------------------------------------------------------------------------


def test_mc_with_one_pass_and_no_dropout_equals_standard_evaluation(ptb_dir):
    dm, module = tiny_lm(ptb_dir, DropoutSpec(), mc_samples=1, eval_tokens=300)
    out = quiet_trainer().test(module, datamodule=dm, verbose=False)[0]
    assert out["mc_test_ppl"] == pytest.approx(out["test_ppl"], rel=1e-6)


def test_mc_averages_probabilities_over_passes_that_each_carry_their_own_state(ptb_dir):
    spec = DropoutSpec(embedding=Connection(0.5), zoneout_h=Connection(0.2))
    dm, module = tiny_lm(ptb_dir, spec, mc_samples=3, eval_tokens=300)
    model = module.model.eval()
    windows = [w for _, w in zip(range(2), dm.test_dataloader())]
    mc = module.mc
    torch.manual_seed(7)
    with torch.no_grad():
        got = [mc.nll(model, x, y).sum() for x, y in windows]
    assert not model.training  # left as it was found
    torch.manual_seed(7)
    model.train()
    states = [model.init_state(1)] * 3
    with torch.no_grad():
        for (x, y), nll in zip(windows, got):
            probs = []
            for k in range(3):
                logits, states[k] = model(x.t(), states[k])
                probs.append(logits.softmax(-1).gather(-1, y.t().unsqueeze(-1)))
            torch.testing.assert_close(nll, -torch.stack(probs).mean(0).log().sum())
    with pytest.raises(ValueError, match="mc_samples must be >= 0"):
        MCDropoutEval(-1)


def test_mc_holds_each_pass_masks_over_the_whole_stream_with_word_dropout_off(ptb_dir):
    """Gal's MC test: pass k draws its sequence masks once and keeps them in every window of the stream
    (step masks stay fresh per window); word dropout is off; different passes draw different masks."""
    held = Connection(0.5, "sequence")
    spec = DropoutSpec(
        word=Connection(0.3, "sequence"),
        embedding=Connection(0.5, "sequence", "untied"),
        between=Connection(0.5),  # step masks: fresh every window
        recurrent=Connection(0.3, "sequence", "untied"),
        output=held,
    )
    dm, module = tiny_lm(ptb_dir, spec, mc_samples=2, eval_tokens=300)
    model, mc = module.model.eval(), module.mc
    seen = [[], []]  # per pass, the masks of each window
    with torch.no_grad():
        for _, (x, y) in zip(range(3), dm.test_dataloader()):
            mc.nll(model, x, y)
            for k in range(2):
                seen[k].append(mc.masks[k])
    for k in range(2):
        first = seen[k][0]
        assert first["word"] is None
        assert first["embedding"].shape == (1, 1, 4 * 16)  # untied, one per gate; the test stream is 1 column
        for later in seen[k][1:]:
            for key in ("embedding", "output"):
                assert torch.equal(later[key], first[key])
            assert all(torch.equal(a, b) for a, b in zip(later["recurrent"], first["recurrent"]))
            assert not torch.equal(later["between"][0], first["between"][0])
    assert not torch.equal(seen[0][0]["embedding"], seen[1][0]["embedding"])
    mc.reset()
    assert mc.masks == [None, None]


# ---- end to end -----------------------------------------------------------------------------------------


@pytest.mark.slow  # a sweep in a subprocess
def test_new_presets_train_and_report_mc_results_end_to_end(tmp_path, ptb_dir):
    cmd = [
        sys.executable,
        "run.py",
        "-m",
        "model=tiny",
        f"dropout={','.join(NEW_PRESETS)}",
        "dropout.word.p=0.1",
        "eval.mc_samples=2",
        f"data.dir={ptb_dir}",
        f"out_root={tmp_path}",
        "sweep=new",
        "logger.mode=disabled",
        "trainer.enable_progress_bar=false",
        "data.eval_tokens=300",
        "threads=1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for preset in NEW_PRESETS:
        [job] = (tmp_path / "new").glob(f"*dropout={preset},*")
        result = json.loads((job / "result.json").read_text())
        assert result["status"] == "completed" and result["config"]["dropout"]["name"] == preset
        assert result["mc_samples"] == 2 and 1 < result["mc_test_ppl"] < 20_000
        assert result["mc_test_ppl"] != pytest.approx(result["test_ppl"], rel=1e-6)
