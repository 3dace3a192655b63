"""Word-level LSTM language model: embedding -> DroppedLSTM -> linear softmax, paper initialisation."""

from __future__ import annotations

import torch
from torch import nn

from zr_ablate.dropout import DropoutSpec
from zr_ablate.model.lstm import DroppedLSTM, State
from zr_ablate.model.masks import RandomStream, lm_window_masks


class LSTMLanguageModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        hidden: int,
        layers: int,
        dropout: DropoutSpec,
        init_scale: float,
        tie_weights: bool = False,
        lstm_impl: str = "auto",
        cuda_graph: bool = True,
        loop_kernel: str = "auto",
        seed: int | None = None,
    ):
        """seed: draw the initial weights, then every dropout mask, from the model's own generators
        (masks.RandomStream), so that nothing else in the process changes them; None: torch's global
        generator (the caller seeds it)."""
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.lstm = DroppedLSTM(
            hidden, hidden, layers, dropout, impl=lstm_impl, cuda_graph=cuda_graph, loop_kernel=loop_kernel
        )
        self.decoder = nn.Linear(hidden, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        self.stream = self.lstm.stream = None if seed is None else RandomStream(seed)
        init = None if self.stream is None else self.stream.on("cpu")
        # Zaremba: every parameter, biases included, starts U(-a, a).
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale, generator=init)

    def init_state(self, batch: int) -> State:
        return self.lstm.init_state(batch, self.decoder.weight)

    def sample_masks(self, tokens: torch.Tensor) -> dict:
        """Every dropout mask of one window tokens [T, B] (masks.lm_window_masks: word dropout's row mask,
        then the recurrent core's, in a fixed order, so a seed gives the same masks whatever runs them). At
        evaluation only zoneout's expectation is there."""
        like = self.decoder.weight
        sizes = (self.embedding.embedding_dim, self.lstm.hidden_size, len(self.lstm.layers))
        vocab = self.embedding.num_embeddings
        return lm_window_masks(
            self.lstm.spec, tokens, vocab, sizes, like, self.training, self.lstm.generator(like.device)
        )

    def forward(self, tokens: torch.Tensor, state: State, masks: dict | None = None) -> tuple[torch.Tensor, State]:
        """tokens [T, B] -> logits [T, B, V], new state (h, c) [L, B, H]. masks: from sample_masks (drawn
        here when not given); passing them lets a CUDA graph replay the window with new masks."""
        masks = self.sample_masks(tokens) if masks is None else masks
        x = self.embedding(tokens)
        if masks["word"] is not None:  # word dropout zeroes whole embedding rows
            x = x * masks["word"]
        out, state = self.lstm(x, state, masks)
        return self.decoder(out), state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
