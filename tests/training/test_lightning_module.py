"""Training arithmetic: loss scaling, state carry, perplexity, LR schedule, clipping, test protocols."""

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tests.helpers import tiny_lm
from zr_ablate.training.job import quiet_trainer
from zr_ablate.training.lightning_module import LMModule
from zr_ablate.training.step import PaperSGD, TrainStep


def manual_ppl(model, stream: torch.Tensor, batch: int, bptt: int) -> float:
    """exp(sum NLL / tokens) with the state carried across windows, written out by hand."""
    n = stream.numel() // batch
    data = stream[: n * batch].view(batch, n).t()  # [n, batch]
    state, nll, count = model.init_state(batch), 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in range(0, n - 1, bptt):
            x, y = data[s : min(s + bptt, n - 1)], data[s + 1 : min(s + bptt, n - 1) + 1]
            logits, state = model(x, state)
            nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    return math.exp(nll / count)


def test_training_loss_is_summed_over_steps_and_averaged_over_batch(ptb_dir):
    """The step back-propagates sum NLL / B = T x the per-token mean: its gradients are T times the mean's."""
    dm, module = tiny_lm(ptb_dir)
    x, y = next(iter(dm.train_dataloader()))
    step = TrainStep(module.model, clip=1e9)  # no clipping
    nll, _, _ = step(x, y, module.model.init_state(4))
    grads = [p.grad.clone() for p in module.model.parameters()]
    logits, _ = module.model(x.t(), module.model.init_state(4))
    mean_ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.t().reshape(-1))
    torch.testing.assert_close(nll / x.size(0), mean_ce.detach() * x.size(1))
    expected = torch.autograd.grad(mean_ce * x.size(1), list(module.model.parameters()))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


def test_validation_perplexity_is_token_weighted_over_the_split(ptb_dir):
    dm, module = tiny_lm(ptb_dir)
    out = quiet_trainer().validate(module, datamodule=dm, verbose=False)[0]
    assert out["val_ppl"] == pytest.approx(manual_ppl(module.model, dm.tokens["valid"], 4, 5), rel=1e-5)
    assert out["val_ppl"] == pytest.approx(math.exp(out["val_loss"]), rel=1e-4)


def test_paper_test_protocol_equals_one_step_at_a_time(ptb_dir):
    dm, module = tiny_lm(ptb_dir, test_protocol="paper", bptt=5)
    out = quiet_trainer().test(module, datamodule=dm, verbose=False)[0]
    one_step = manual_ppl(module.model, dm.tokens["test"], batch=1, bptt=1)
    assert out["test_ppl"] == pytest.approx(one_step, rel=1e-5)
    dm_fast, _ = tiny_lm(ptb_dir, test_protocol="fast")
    fast = quiet_trainer().test(module, datamodule=dm_fast, verbose=False)[0]["test_ppl"]
    assert fast == pytest.approx(manual_ppl(module.model, dm.tokens["test"], batch=4, bptt=5), rel=1e-5)
    assert fast != pytest.approx(one_step, rel=1e-6)  # the protocols really differ


def _train_losses(ptb_dir, **trainer_kw):
    dm, module = tiny_lm(ptb_dir)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    quiet_trainer(callbacks=[Record()], **trainer_kw).fit(module, datamodule=dm)
    return losses, module


def test_validation_mid_epoch_does_not_disturb_the_training_state(ptb_dir):
    plain, _ = _train_losses(ptb_dir, limit_val_batches=0)
    with_val, _ = _train_losses(ptb_dir, val_check_interval=0.5)
    assert len(plain) == len(with_val) > 100
    assert with_val == pytest.approx(plain, rel=1e-6)


def test_state_is_carried_across_windows_and_reset_each_epoch(ptb_dir):
    dm, module = tiny_lm(ptb_dir)
    module.train()
    loader = iter(dm.train_dataloader())
    w1, w2 = next(loader), next(loader)
    with torch.no_grad():
        module.on_train_epoch_start()
        module._window(w1, "fit")
        carried = module._window(w2, "fit").sum()
        module.on_train_epoch_start()  # a new epoch starts from zeros
        fresh = module._window(w2, "fit").sum()
    assert carried.item() != pytest.approx(fresh.item(), rel=1e-5)
    logits, _ = module.model(w2[0].t(), module.model.init_state(4))
    zero_start = F.cross_entropy(logits.reshape(-1, logits.size(-1)), w2[1].t().reshape(-1), reduction="sum")
    torch.testing.assert_close(fresh, zero_start.double())


# Zaremba's main.lua divides the lr at the end of each epoch e > max_epoch (4 small, 6 medium), so the
# first max_epoch + 1 epochs train at lr 1: decay_after 5 and 7 in zr_ablate/conf/model/.
@pytest.mark.parametrize(
    "decay,after,epochs,expected_tail",
    [
        (2.0, 5, 13, [1, 1, 1, 1, 1, 1 / 2, 1 / 4, 1 / 8]),  # small
        (1.2, 7, 39, [1, 1, 1, 1, 1, 1, 1, 1 / 1.2, 1 / 1.44]),  # medium
    ],
)
def test_paper_learning_rate_schedule(decay, after, epochs, expected_tail):
    module = LMModule(torch.nn.Linear(2, 2), lr=1.0, lr_decay=decay, decay_after=after, clip=5.0)
    lrs = [module.lr_at(e) for e in range(epochs)]
    assert lrs[: len(expected_tail)] == pytest.approx(expected_tail)
    assert lrs[-1] == pytest.approx(decay ** -(epochs - after))


@pytest.mark.parametrize("size,after", [("small", 5), ("medium", 7), ("large", 15)])
def test_paper_profiles_decay_on_zaremba_main_lua_timing(size, after):
    from zr_ablate.bench.workload import settings

    assert settings(size, "zaremba").optim.decay_after == after


def test_gradients_are_clipped_to_global_norm(ptb_dir):
    """One clip over all parameters together, after the whole window's backward; the step reports the norm
    before clipping."""
    dm, module = tiny_lm(ptb_dir)
    x, y = next(iter(dm.train_dataloader()))
    raw = TrainStep(module.model, clip=1e9)
    raw(x, y, module.model.init_state(4))
    raw_norm = torch.sqrt(sum(p.grad.square().sum() for p in module.model.parameters()))
    assert raw_norm > 0.5  # so a clip of half of it bites
    _, _, norm = TrainStep(module.model, clip=raw_norm.item() / 2)(x, y, module.model.init_state(4))
    total = torch.sqrt(sum(p.grad.square().sum() for p in module.model.parameters()))
    assert norm.item() == pytest.approx(raw_norm.item(), rel=1e-5)
    assert total.item() == pytest.approx(raw_norm.item() / 2, rel=1e-4)


def test_bad_optimisation_settings_are_rejected():
    with pytest.raises(ValueError, match=r"optim.lr_decay=0.5 is out of range: it must be >= 1"):
        LMModule(torch.nn.Linear(2, 2), lr=1.0, lr_decay=0.5, decay_after=1, clip=5.0)
    with pytest.raises(ValueError, match=r"optim.weight_decay=1.0 is out of range: it must be in \[0, 1\)"):
        LMModule(torch.nn.Linear(2, 2), lr=1.0, lr_decay=1.2, decay_after=1, clip=5.0, weight_decay=1.0)
    # NaN passes every comparison test (nan <= 0 is false): refused as not finite, as is infinity
    for bad in (dict(lr=float("nan")), dict(lr=float("inf")), dict(clip=float("nan"))):
        settings = dict(lr=1.0, lr_decay=1.2, decay_after=1, clip=5.0) | bad
        with pytest.raises(ValueError, match="it must be a finite number"):
            LMModule(torch.nn.Linear(2, 2), **settings)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_weight_decay_shrinks_every_parameter_after_the_sgd_step_as_gals_code(weight_decay):
    """Gal's bp(): p <- p - lr * g, then p <- p - wd * p. Not lr * wd (torch's SGD weight_decay adds wd * p to
    the gradient, so it would be scaled by the lr); at 0 it is plain SGD."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in layer.parameters()]
    layer(torch.randn(4, 3)).square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    PaperSGD(layer.parameters(), lr=0.5, weight_decay=weight_decay).step()
    for p, p0, g in zip(layer.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), (p0 - 0.5 * g) * (1 - weight_decay))


def test_the_module_trains_with_the_weight_decaying_sgd():
    module = LMModule(torch.nn.Linear(2, 2), lr=1.0, lr_decay=1.2, decay_after=1, clip=5.0, weight_decay=1e-7)
    opt = module.configure_optimizers()
    assert isinstance(opt, PaperSGD) and opt.shrink == 1e-7
