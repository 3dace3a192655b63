"""Per-sentence test losses: the NLL of every predicted token of one test stream, summed per sentence.

Under the paper protocol the test split is one stream at batch 1 and its windows arrive in order, so the
predictions y_1 .. y_(N-1) of the stream can be cut into sentences: a sentence is the run of predicted tokens
up to and including a target `<eos>` (the stream's first word is never predicted; a stream cut short by
data.eval_tokens ends in an open sentence). Summing the same float64 token losses the perplexity metric sums,
the file's totals give back the run's test_ppl (records.SENTENCES holds the layout; job.py writes it).
"""

from __future__ import annotations

import numpy as np
import torch


class SentenceLosses:
    def __init__(self, end: int):
        """end: the token id that closes a sentence (the vocabulary's <eos>)."""
        self.end = end
        self.reset()

    def reset(self) -> None:
        self.targets: list[torch.Tensor] = []
        self.nll: list[torch.Tensor] = []
        self.mc_nll: list[torch.Tensor] = []

    def update(self, targets: torch.Tensor, nll: torch.Tensor, mc_nll: torch.Tensor | None = None) -> None:
        """One window of the stream: its targets [T], their NLL [T] (float64) and, with MC-dropout evaluation,
        their NLL under it [T]. Kept on the device until the end of the split (no sync per window)."""
        self.targets.append(targets.detach())
        self.nll.append(nll.detach())
        if mc_nll is not None:
            self.mc_nll.append(mc_nll.detach())

    def __len__(self) -> int:
        return sum(t.numel() for t in self.targets)

    def sums(self) -> tuple[list[int], list[float], list[float] | None]:
        """(tokens, NLL sum, MC NLL sum or None) per sentence, in stream order."""
        targets = torch.cat(self.targets).cpu().numpy()
        # Sentence index of each prediction: the number of <eos> targets before it.
        sentence = np.concatenate([[0], np.cumsum(targets == self.end)[:-1]])
        tokens = np.bincount(sentence)

        def per_sentence(losses: list[torch.Tensor]) -> list[float]:
            weights = torch.cat(losses).double().cpu().numpy()
            return np.bincount(sentence, weights=weights).tolist()

        mc = per_sentence(self.mc_nll) if self.mc_nll else None
        return tokens.tolist(), per_sentence(self.nll), mc
