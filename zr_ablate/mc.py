"""MC-dropout evaluation (Gal & Ghahramani 2016): average the predictive distribution over K stochastic passes.

Per predicted token, p(y) = mean_k softmax(logits_k)[y] and NLL = -log p(y), summed into the perplexity as
usual. This averages probabilities (the ensemble's prediction), not log-probabilities or perplexities.

State across windows: each pass k carries its own (h, c) over the whole split, so MC evaluation equals
running the split K times with every stochastic mask on (as in training, fresh masks per window) and
averaging the K probabilities of each token. A pass's state is made by its own masks; carrying one pass's
state (or the mean state) into all K would give the others a context none of them produced.
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
        """Every pass starts the split from the zero state."""
        self.states: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.samples

    def nll(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y [B, T] (one window) -> the NLL of y under the K-pass average, summed over the window."""
        was_training = model.training
        model.train()  # every dropout mask on, as in training
        try:
            log_p = []  # K x [T, B]: log-probability of each target under pass k
            for k, state in enumerate(self.states):
                logits, (h, c) = model(x.t(), model.init_state(x.size(0)) if state is None else state)
                self.states[k] = (h.detach(), c.detach())
                log_p.append(logits.log_softmax(-1).gather(-1, y.t().unsqueeze(-1)).squeeze(-1))
        finally:
            model.train(was_training)
        # log mean_k p_k = logsumexp_k(log p_k) - log K: stable where some p_k underflow.
        return -(torch.logsumexp(torch.stack(log_p), dim=0) - math.log(self.samples)).sum()
