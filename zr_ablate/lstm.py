"""The recurrent core: a stack of LSTM layers with dropout placed by a `DropoutSpec`.

Two paths over the same weights (each layer is an `nn.LSTM`, so parameter names and counts match
PyTorch's and the paper's):
  fused  `nn.LSTM` per layer (cuDNN on GPU). Used whenever h_{t-1} is not masked: masks on the
         embedding, between layers and on the output sit outside the kernel.
  loop   an explicit step loop, needed when h_{t-1} is masked (naive, variational). The input
         projection of the whole window is one matmul before the loop; each step is one matmul.
With dropout off both give the same numbers (tests/test_lstm.py).
"""
from __future__ import annotations

import torch
from torch import nn

from .dropout import DropoutSpec, sample_mask

IMPLS = ("auto", "fused", "loop")
State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [layers, batch, hidden]


def lstm_layer_loop(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, layer: nn.LSTM,
                    h_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer, step by step, with an optional mask on h_{t-1} where it enters the gates.

    x [T, B, I]; h, c [B, H]; h_mask None, [T, B, H] (fresh per step) or [1, B, H] (same every step).
    The carried h is not masked, only its use in the gates (Gal's formulation); c is never masked.
    Returns outputs [T, B, H] and the final h, c [B, H]. Gate order is PyTorch's: i, f, g, o.
    """
    steps, batch, _ = x.shape
    w_hh_t = layer.weight_hh_l0.t()
    # [T*B, I] @ [I, 4H] once for the window: the input side does not depend on the recurrence.
    gates_x = torch.addmm(layer.bias_ih_l0 + layer.bias_hh_l0, x.reshape(steps * batch, -1),
                          layer.weight_ih_l0.t()).view(steps, batch, -1)
    outputs = []
    for t in range(steps):
        h_in = h if h_mask is None else h * h_mask[t if h_mask.size(0) > 1 else 0]
        i, f, g, o = torch.addmm(gates_x[t], h_in, w_hh_t).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


class DroppedLSTM(nn.Module):
    """Stacked LSTM: embedding mask -> layer 1 -> between mask -> ... -> layer L -> output mask.

    Set `record_masks = True` to keep the masks of the last forward in `last_masks` (for tests and
    inspection): {"embedding": m, "between": [m per gap], "recurrent": [m per layer], "output": m},
    each None where no mask was applied.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: DropoutSpec,
                 impl: str = "auto"):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"lstm impl must be one of {IMPLS}, got {impl!r}")
        if impl == "fused" and dropout.needs_step_loop:
            raise ValueError(f"placement {dropout.name!r} masks h_(t-1), which the fused LSTM cannot do; "
                             f"use impl auto or loop")
        self.spec, self.impl, self.hidden_size = dropout, impl, hidden_size
        sizes = [input_size] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(nn.LSTM(sizes[i], hidden_size) for i in range(num_layers))
        self.record_masks = False
        self.last_masks: dict | None = None

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        zeros = like.new_zeros(len(self.layers), batch, self.hidden_size)
        return zeros, zeros.clone()

    def _mask(self, x: torch.Tensor, which: str) -> torch.Tensor | None:
        if not self.training:
            return None
        steps, batch, features = x.shape
        return sample_mask(getattr(self.spec, which), steps, batch, features, x)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x [T, B, I], state (h, c) [L, B, H] -> outputs [T, B, H] (output mask applied), new state."""
        h0, c0 = state
        masks = {"embedding": self._mask(x, "embedding"), "between": [], "recurrent": []}
        x = x if masks["embedding"] is None else x * masks["embedding"]
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                m = self._mask(x, "between")
                masks["between"].append(m)
                x = x if m is None else x * m
            h_mask = self._mask(x.new_empty(x.size(0), x.size(1), self.hidden_size), "recurrent")
            masks["recurrent"].append(h_mask)
            if h_mask is None and self.impl != "loop":
                x, (h, c) = layer(x, (h0[i : i + 1], c0[i : i + 1]))
                h, c = h[0], c[0]
            else:
                x, h, c = lstm_layer_loop(x, h0[i], c0[i], layer, h_mask)
            hs.append(h)
            cs.append(c)
        masks["output"] = self._mask(x, "output")
        x = x if masks["output"] is None else x * masks["output"]
        if self.record_masks:
            self.last_masks = masks
        return x, (torch.stack(hs), torch.stack(cs))
