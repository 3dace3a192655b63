"""Word-level LSTM language model: embedding -> DroppedLSTM -> linear softmax, paper initialisation."""
from __future__ import annotations

import torch
from torch import nn

from .dropout import DropoutSpec, word_mask
from .lstm import DroppedLSTM, State


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int, dropout: DropoutSpec,
                 init_scale: float, tie_weights: bool = False, lstm_impl: str = "auto", cuda_graph: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.lstm = DroppedLSTM(hidden, hidden, layers, dropout, impl=lstm_impl, cuda_graph=cuda_graph)
        self.decoder = nn.Linear(hidden, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        # Zaremba: every parameter, biases included, starts U(-a, a).
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale)

    def init_state(self, batch: int) -> State:
        return self.lstm.init_state(batch, self.decoder.weight)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [T, B] -> [T, B, H]; in training, word dropout zeroes whole embedding rows (dropout.word)."""
        x = self.embedding(tokens)
        mask = word_mask(self.lstm.spec.word, tokens, self.embedding.num_embeddings, x) if self.training else None
        return x if mask is None else x * mask

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens [T, B] -> logits [T, B, V], new state (h, c) [L, B, H]."""
        out, state = self.lstm(self.embed(tokens), state)
        return self.decoder(out), state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
