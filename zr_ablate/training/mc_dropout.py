"""MC-dropout evaluation (Gal & Ghahramani 2016): average the predictive distribution over K stochastic passes.

Per predicted token, p(y) = mean_k softmax(logits_k)[y] and NLL = -log p(y), summed into the perplexity as
usual. This averages probabilities (the ensemble's prediction), not log-probabilities or perplexities.

Masks and state, as Gal's code runs it (BayesianRNN LM_code/main_new_dropout_SOTA_v3.lua, run_MC_test:
`sample_noise` once per pass, then the whole test stream under that noise, with `noise_x` set to 1):
- one mask set per pass, held for the whole split: a connection with sequence masks keeps the mask pass k
  drew at its first window in every later window (so does DropConnect's W_hh mask); step masks are fresh
  per step by definition and are drawn per window as in training;
- word dropout is off: a pass sees every word;
- each pass k carries its own (h, c) over the whole split. A pass's state is made by its own masks;
  carrying one pass's state (or the mean state) into all K would give the others a context none of them
  produced.
So MC evaluation equals running the split K times, each under one draw of the network, and averaging the
K probabilities of each token.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MCDropoutEval:
    def __init__(self, samples: int):
        if samples < 0:
            raise ValueError(f"eval.mc_samples must be >= 0 (0 = off), got {samples}")
        self.samples = samples
        self.reset()

    def reset(self) -> None:
        """Every pass starts the split from the zero state and draws its masks anew."""
        self.states: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.samples
        self.masks: list[dict | None] = [None] * self.samples  # pass k's masks of the last window (its held ones)

    def _masks(self, model: nn.Module, k: int, tokens: torch.Tensor) -> dict:
        """Pass k's masks for the window tokens [T, B]: its held sequence masks, fresh step masks, no word
        dropout. (model.sample_masks draws every mask, so the random stream advances as in training.)"""
        self.masks[k] = held(model.lstm.spec, model.sample_masks(tokens), self.masks[k])
        return self.masks[k]

    def nll(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y [B, T] (one window) -> the NLL of each target y under the K-pass average, [T, B] ([M, T, B]
        for packed members, whose logits are [M, T, B, V])."""
        was_training = model.training
        model.train()  # every dropout mask on, as in training
        try:
            log_p = []  # K x [T, B]: log-probability of each target under pass k
            for k, state in enumerate(self.states):
                state = model.init_state(x.size(0)) if state is None else state
                logits, (h, c) = model(x.t(), state, self._masks(model, k, x.t()))
                self.states[k] = (h.detach(), c.detach())
                target = y.t().unsqueeze(-1).expand(*logits.shape[:-1], 1)  # [(M,) T, B, 1]
                log_p.append(logits.log_softmax(-1).gather(-1, target).squeeze(-1))
        finally:
            model.train(was_training)
        # log mean_k p_k = logsumexp_k(log p_k) - log K: stable where some p_k underflow.
        return -(torch.logsumexp(torch.stack(log_p), dim=0) - math.log(self.samples))


def held(spec, fresh: dict, kept: dict | None) -> dict:
    """One pass's masks for a window: `fresh` (just drawn) with the connections whose masks are per sequence
    taken from `kept` (the pass's masks of its previous window, None at its first), and no word dropout."""
    if kept is not None:
        fresh |= {key: kept[key] for key in fresh if key != "word" and getattr(spec, key).mask == "sequence"}
    return fresh | {"word": None}
