"""LightningModule for truncated-BPTT language modelling the way Zaremba et al. train it.

- One dataloader item is one [B, T] window; the (h, c) state is carried from window to window,
  detached, and reset at the start of every epoch. Validation and test keep their own state.
- Loss: NLL summed over the T unrolled steps, averaged over the B examples, with plain SGD (lr 1) and
  one global-norm clip over all parameters. A per-token mean loss would make gradients T times smaller.
  The step is explicit (Lightning's manual optimisation, `step.TrainStep`), so that on a GPU it can
  replay as one CUDA graph; the lr is set per epoch from the epoch number (`lr_at`), so a resumed run
  needs no scheduler state.
- Perplexity: exp(total NLL / predicted tokens) over the whole split (`TokenPerplexity`), the evaluation
  NLL summed in float64 token by token. Given the <eos> id, a test split read as one stream (batch 1, the
  paper protocol) also keeps its per-sentence losses (`sentences.SentenceLosses`), the same token losses.
- No host-GPU sync per step: on a GPU a step at batch 20 takes milliseconds, and every `.item()` or
  `bool(tensor)` waits for the queue to drain. The loss is summed on the device; the divergence check reads
  it every `check_every` steps and at every epoch end, and the running perplexity and gradient norm are
  logged only on the steps the logger writes (`Trainer(log_every_n_steps)`).
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from zr_ablate.schema import check_value
from zr_ablate.training.mc_dropout import MCDropoutEval
from zr_ablate.training.sentences import SentenceLosses
from zr_ablate.training.step import PaperSGD, TrainStep

# ModuleDict keys cannot be "train" (nn.Module.train exists), so stages are named by their split.
STAGES = ("fit", "val", "test", "mc_test")  # mc_test: MC-dropout evaluation of the test split


class Diverged(RuntimeError):
    """The loss became NaN or infinite, or so large that the perplexity overflows."""


MAX_NLL = math.log(torch.finfo(torch.float64).max)  # a mean NLL above this overflows exp() in float64


def divergence(stage: str, mean: float, epoch: int, where: str) -> str | None:
    """What a job that diverged records as its error, or None while the mean NLL of `stage` (fit, val) so
    far is finite and its perplexity does not overflow. epoch: 0-based; where: "step N" or "end"."""
    if mean <= MAX_NLL:  # False for NaN too
        return None
    return f"{'training' if stage == 'fit' else stage} loss is {mean:.4g} nats/token at epoch {epoch + 1} {where}"


def lr_at(epoch: int, lr: float, lr_decay: float, decay_after: int) -> float:
    """Epoch e (0-based) trains with lr / lr_decay ** max(0, e + 1 - decay_after)."""
    return lr * lr_decay ** -max(0, epoch + 1 - decay_after)


class TokenPerplexity(torchmetrics.Metric):
    """exp(sum of NLL / number of tokens), token-weighted over everything seen since the last reset."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("nll", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, tokens: int) -> None:
        self.nll += nll_sum.detach().double()
        self.tokens += tokens

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll / self.tokens)


class LMModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        lr: float,
        lr_decay: float,
        decay_after: int,
        clip: float,
        weight_decay: float = 0.0,
        mc_samples: int = 0,
        check_every: int = 50,
        cuda_graph: bool = False,
        sentence_end: int | None = None,
    ):
        """lr_decay: divide the lr by this at the end of every epoch after the first `decay_after` (paper:
        2 / 1.2 / 1.15 after 5 / 7 / 15, the timing of Zaremba's main.lua; the TF tutorial's is one
        earlier). clip: max global gradient norm (5 / 5 / 10). weight_decay: shrink every parameter by
        (1 - weight_decay) after each SGD step, as Gal's code does (`step.PaperSGD`; 0 in Zaremba's).
        mc_samples: K stochastic passes of MC-dropout evaluation on the test split, logged as mc_test_ppl
        beside test_ppl (0 = off).
        check_every: training steps between divergence checks (each one host-GPU sync). cuda_graph: on
        CUDA, replay each full training window as one CUDA graph (`step.TrainStep`). sentence_end: the <eos>
        id: keep the test stream's per-sentence losses (`sentences`; None: not kept)."""
        super().__init__()
        self.check_settings(lr, lr_decay, decay_after, clip, weight_decay)
        if check_every < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every}")
        self.check_every = check_every
        self.model = model
        self.lr, self.lr_decay, self.decay_after, self.clip = lr, lr_decay, decay_after, clip
        self.weight_decay = weight_decay
        self.ppl = nn.ModuleDict({s: TokenPerplexity() for s in STAGES})
        self._state: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self.mc = MCDropoutEval(mc_samples)
        self.sentences = None if sentence_end is None else SentenceLosses(sentence_end)
        self.automatic_optimization = False
        self.train_step = TrainStep(model, clip, cuda_graph)

    @staticmethod
    def check_settings(lr: float, lr_decay: float, decay_after: int, clip: float, weight_decay: float = 0.0) -> None:
        """The config's optim.* ranges (zr_ablate.schema), NaN and infinity refused, for a module built directly."""
        settings = dict(lr=lr, lr_decay=lr_decay, decay_after=decay_after, clip=clip, weight_decay=weight_decay)
        for key, value in settings.items():
            check_value(f"optim.{key}", value)

    # --- one window --------------------------------------------------------------------------------
    def _window(self, batch, stage: str) -> torch.Tensor:
        """Forward one window, carrying `stage`'s state. Returns the NLL of each target, [T, B] float64."""
        x, y = batch  # [B, T] each
        state = self._state.get(stage)
        if state is None:
            state = self.model.init_state(x.size(0))
        logits, (h, c) = self.model(x.t(), state)  # [T, B, V]
        self._state[stage] = (h.detach(), c.detach())
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.t().reshape(-1), reduction="none")
        nll = nll.view(y.t().shape).double()
        self.ppl[stage].update(nll.sum(), y.numel())
        return nll

    def training_step(self, batch, batch_idx):
        x, y = batch  # [B, T] each
        log_now = self._logging_step()  # before the optimiser step advances global_step
        state = self._state.get("fit") or self.model.init_state(x.size(0))
        nll, self._state["fit"], grad_norm = self.train_step(x, y, state)  # masks, forward, backward, clip
        self.optimizers().step()  # SGD at this epoch's lr (then Gal's weight decay, if any)
        tokens = y.numel()
        self.ppl["fit"].update(nll, tokens)
        if (batch_idx + 1) % self.check_every == 0:
            self._check_diverged("fit", f"step {batch_idx + 1}")
        self.log("train_loss", nll / tokens, on_step=False, on_epoch=True, batch_size=tokens)
        if log_now:
            self.log("train_ppl_running", self.ppl["fit"].compute(), prog_bar=True, on_step=True, on_epoch=False)
            self.log("grad_norm", grad_norm, on_step=True, on_epoch=False)  # before clipping
        return nll / x.size(0)  # the window's loss as back-propagated (detached): for callbacks

    def _logging_step(self) -> bool:
        """Whether the logger writes this step's metrics (Lightning writes when the number of optimiser
        steps after this one is a multiple of log_every_n_steps); per-step values are only made then."""
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        return every > 0 and (self.global_step + 1) % every == 0

    def _check_diverged(self, stage: str, where: str) -> None:
        """Raise Diverged if the NLL summed over `stage` so far is not finite or its perplexity overflows.
        The sum runs on the device, so one NaN or inf window anywhere since the last reset is caught."""
        metric = self.ppl[stage]
        if not metric.update_count:
            return
        mean = float(metric.nll / metric.tokens)  # the one host-GPU sync
        said = divergence(stage, mean, self.current_epoch, where)
        if said:
            raise Diverged(said)

    def validation_step(self, batch, batch_idx):
        nll = self._window(batch, "val")
        self.log("val_loss", nll.mean(), on_epoch=True, batch_size=nll.numel())

    def test_step(self, batch, batch_idx):
        nll = self._window(batch, "test")  # [T, B]
        self.log("test_loss", nll.mean(), on_epoch=True, batch_size=nll.numel())
        mc_nll = None
        if self.mc.samples:  # MC-dropout: K more passes over the same window, each with its own state
            mc_nll = self.mc.nll(self.model, *batch).double()
            self.ppl["mc_test"].update(mc_nll.sum(), nll.numel())
        if self.sentences is not None and nll.size(1) == 1:  # one stream (batch 1): sentences in order
            self.sentences.update(batch[1][0], nll[:, 0], None if mc_nll is None else mc_nll[:, 0])

    # --- state resets and epoch metrics -------------------------------------------------------------
    def on_train_epoch_start(self):
        self._state["fit"] = None
        self.log("lr", self.lr_at(self.current_epoch), on_step=False, on_epoch=True)

    def on_validation_epoch_start(self):
        self._state["val"] = None

    def on_test_epoch_start(self):
        self._state["test"] = None
        self.mc.reset()
        if self.sentences is not None:
            self.sentences.reset()

    def _log_epoch_ppl(self, stage: str, key: str):
        metric = self.ppl[stage]
        if metric.update_count:
            self.log(key, metric.compute(), prog_bar=stage == "val")
        metric.reset()

    def on_train_epoch_end(self):
        self._check_diverged("fit", "end")
        self._log_epoch_ppl("fit", "train_ppl")
        self._set_lr(self.current_epoch + 1)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self._check_diverged("val", "end")
        self._log_epoch_ppl("val", "val_ppl")

    def on_test_epoch_end(self):
        self._log_epoch_ppl("test", "test_ppl")
        self._log_epoch_ppl("mc_test", "mc_test_ppl")  # only when MC-dropout evaluation ran

    # --- checkpoints: the RNG too, so a resumed run draws the same dropout masks ---------------------
    def on_save_checkpoint(self, checkpoint):
        stream = getattr(self.model, "stream", None)  # the model's own generators (built with a seed)
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "model": None if stream is None else stream.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint):
        rng = checkpoint.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            if rng.get("model") is not None and getattr(self.model, "stream", None) is not None:
                self.model.stream.load_state_dict(rng["model"])

    # --- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        return PaperSGD(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def lr_at(self, epoch: int) -> float:
        return lr_at(epoch, self.lr, self.lr_decay, self.decay_after)

    def _set_lr(self, epoch: int) -> None:
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = self.lr_at(epoch)

    def on_train_start(self):
        self._set_lr(self.current_epoch)  # also after a resume: the epoch number is all it needs
