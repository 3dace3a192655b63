"""Word-level LSTM language model: embedding -> DroppedLSTM -> linear softmax, paper initialisation."""

from __future__ import annotations

import torch
from torch import nn

from zr_ablate.dropout import DropoutSpec
from zr_ablate.model.lstm import DroppedLSTM, State
from zr_ablate.model.masks import word_mask


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
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.lstm = DroppedLSTM(
            hidden, hidden, layers, dropout, impl=lstm_impl, cuda_graph=cuda_graph, loop_kernel=loop_kernel
        )
        self.decoder = nn.Linear(hidden, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        # Zaremba: every parameter, biases included, starts U(-a, a).
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale)

    def init_state(self, batch: int) -> State:
        return self.lstm.init_state(batch, self.decoder.weight)

    def sample_masks(self, tokens: torch.Tensor) -> dict:
        """Every dropout mask of one window tokens [T, B]: word dropout's row mask [T, B, 1] under "word", then
        DroppedLSTM.sample_masks (a fixed order, so a seed gives the same masks whatever runs them). At
        evaluation only zoneout's expectation is there."""
        word = (
            word_mask(self.lstm.spec.word, tokens, self.embedding.num_embeddings, self.decoder.weight)
            if self.training
            else None
        )
        steps, batch = tokens.shape
        like = self.decoder.weight.new_empty(steps, batch, self.embedding.embedding_dim)  # shape, dtype, device
        return {"word": word, **self.lstm.sample_masks(like)}

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
