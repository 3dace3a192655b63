"""Drawing the masks a `dropout.DropoutSpec` asks for, for one BPTT window (shapes in dropout.py's table).

Inverted-dropout masks are 0 or 1/(1-p); zoneout's are 1 where a unit keeps its previous value; word
dropout's are per embedding row. Each function returns None where its connection is off, so callers skip
the multiply.
"""

from __future__ import annotations

import torch

from zr_ablate.dropout import Connection


def _bernoulli(prob: float, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(prob)


def sample_mask(conn: Connection, steps: int, batch: int, features: int, like: torch.Tensor) -> torch.Tensor | None:
    """Inverted-dropout mask (0 or 1/(1-p)) for one window, or None when the connection is off.

    step -> [steps, batch, features]; sequence -> [1, batch, features] (broadcasts over steps). Untied
    (gates="untied"): 4 x features, one mask per gate in the order i, f, g, o.
    """
    if not conn.active:
        return None
    rows = steps if conn.mask == "step" else 1
    keep = 1.0 - conn.p
    return _bernoulli(keep, (rows, batch, features * (4 if conn.untied else 1)), like) / keep


def mask_at(mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """Step t of an in-loop mask: [T, B, H] fresh per step, or [1, ...] (per sequence, or zoneout's
    expectation) the same at every step. None stays None."""
    if mask is None:
        return None
    return mask[t if mask.size(0) > 1 else 0]


def weight_mask(conn: Connection, weight: torch.Tensor) -> torch.Tensor | None:
    """DropConnect: one inverted-dropout mask shaped like `weight` ([4H, H]) for the window, or None."""
    mask = sample_mask(conn, 1, *weight.shape, weight)
    return None if mask is None else mask[0]


def zoneout_mask(
    conn: Connection, steps: int, batch: int, features: int, like: torch.Tensor, training: bool
) -> torch.Tensor | None:
    """d, the weight of the previous value in state_t = d*state_{t-1} + (1-d)*new_t, or None when off.

    Training: Bernoulli(p), 1 where a unit keeps its previous value, [steps or 1, batch, features].
    Evaluation: the expectation p itself, [1, 1, 1], so state_t = p*state_{t-1} + (1-p)*new_t. This is
    Krueger et al.'s test-time rule (like dropout's weight scaling, the noise is replaced by its mean; their
    Theano code feeds masks filled with the probability at test time), not a plain LSTM.
    """
    if not conn.active:
        return None
    if not training:
        return like.new_full((1, 1, 1), conn.p)
    return _bernoulli(conn.p, (steps if conn.mask == "step" else 1, batch, features), like)


def word_mask(conn: Connection, tokens: torch.Tensor, vocab_size: int, like: torch.Tensor) -> torch.Tensor | None:
    """Inverted-dropout mask on the embedding rows of tokens [T, B] -> [T, B, 1], or None when off.

    sequence (Gal's word dropout): one draw per example per word type, [B, V], read off at every token, so
    all occurrences of a word in an example's window are dropped together. step: each occurrence alone.
    """
    steps, batch = tokens.shape
    if conn.mask == "step":
        return sample_mask(conn, steps, batch, 1, like)
    types = sample_mask(conn, 1, batch, vocab_size, like)
    return None if types is None else types[0].gather(1, tokens.t()).t().unsqueeze(-1)
