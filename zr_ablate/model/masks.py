"""Drawing the masks a `dropout.DropoutSpec` asks for, for one BPTT window (shapes in dropout.py's table).

Inverted-dropout masks are 0 or 1/(1-p); zoneout's are 1 where a unit keeps its previous value; word
dropout's are per embedding row. Each function returns None where its connection is off, so callers skip
the multiply. `window_masks` is the one place the order of a window's draws is fixed (a seed then gives
the same masks whichever path runs them), and `RandomStream` a model's own generators to draw them from.
"""

from __future__ import annotations

import torch

from zr_ablate.dropout import IN_LOOP, ZONEOUT, Connection, DropoutSpec


class RandomStream:
    """One model's own random numbers, so that nothing else in the process (a data loader's seed draw, other
    models trained beside it) moves them: its initial weights on the CPU, then its dropout masks on the
    device they are drawn on. On the CPU both come from one generator in that order, as they came from
    torch's global one after torch.manual_seed(seed); on a GPU the masks come from a generator of that
    device seeded with the same seed (torch.manual_seed seeds every device alike). A checkpoint keeps
    `state_dict()`, so a resumed job draws the masks it would have drawn."""

    def __init__(self, seed: int):
        self.seed = seed
        self.generators = {"cpu": torch.Generator().manual_seed(seed)}

    def on(self, device: torch.device | str) -> torch.Generator:
        key = str(torch.device(device))
        if key not in self.generators:
            self.generators[key] = torch.Generator(device=key).manual_seed(self.seed)
        return self.generators[key]

    def state_dict(self) -> dict:
        return {"seed": self.seed, **{key: g.get_state() for key, g in self.generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if key != "seed":
                self.on(key).set_state(value)


def _bernoulli(prob: float, shape: tuple, like: torch.Tensor, generator=None) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(prob, generator=generator)


def sample_mask(
    conn: Connection, steps: int, batch: int, features: int, like: torch.Tensor, generator=None
) -> torch.Tensor | None:
    """Inverted-dropout mask (0 or 1/(1-p)) for one window, or None when the connection is off.

    step -> [steps, batch, features]; sequence -> [1, batch, features] (broadcasts over steps). Untied
    (gates="untied"): 4 x features, one mask per gate in the order i, f, g, o. generator: where the bits
    come from (None: torch's global generator).
    """
    if not conn.active:
        return None
    rows = steps if conn.mask == "step" else 1
    keep = 1.0 - conn.p
    return _bernoulli(keep, (rows, batch, features * (4 if conn.untied else 1)), like, generator) / keep


def mask_at(mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """Step t of an in-loop mask: [T, B, H] fresh per step, or [1, ...] (per sequence, or zoneout's
    expectation) the same at every step. None stays None."""
    if mask is None:
        return None
    return mask[t if mask.size(0) > 1 else 0]


def weight_mask(conn: Connection, hidden: int, like: torch.Tensor, generator=None) -> torch.Tensor | None:
    """DropConnect: one inverted-dropout mask shaped like W_hh [4H, H] for the window, or None."""
    mask = sample_mask(conn, 1, 4 * hidden, hidden, like, generator)
    return None if mask is None else mask[0]


def zoneout_mask(
    conn: Connection, steps: int, batch: int, features: int, like: torch.Tensor, training: bool, generator=None
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
    return _bernoulli(conn.p, (steps if conn.mask == "step" else 1, batch, features), like, generator)


def word_mask(
    conn: Connection, tokens: torch.Tensor, vocab_size: int, like: torch.Tensor, generator=None
) -> torch.Tensor | None:
    """Inverted-dropout mask on the embedding rows of tokens [T, B] -> [T, B, 1], or None when off.

    sequence (Gal's word dropout): one draw per example per word type, [B, V], read off at every token, so
    all occurrences of a word in an example's window are dropped together. step: each occurrence alone.
    """
    steps, batch = tokens.shape
    if conn.mask == "step":
        return sample_mask(conn, steps, batch, 1, like, generator)
    types = sample_mask(conn, 1, batch, vocab_size, like, generator)
    return None if types is None else types[0].gather(1, tokens.t()).t().unsqueeze(-1)


def window_masks(
    spec: DropoutSpec, like: torch.Tensor, hidden: int, layers: int, training: bool, generator=None
) -> dict:
    """Every mask of a recurrent core's window shaped like `like` [T, B, I], drawn in the order embedding,
    then per layer (between, recurrent, cell_update, zoneout_c, zoneout_h, weight_hh), then output.
    Layout: {"embedding": m, "output": m, and a list with a mask per layer (per gap for "between") under
    "between", "recurrent", "cell_update", "zoneout_c", "zoneout_h" and "weight_hh"}, each None where no
    mask applies. At evaluation only zoneout's expectation is there."""
    steps, batch, _ = like.shape

    def draw(which: str, features: int) -> torch.Tensor | None:
        conn = getattr(spec, which)
        if which in ZONEOUT:
            return zoneout_mask(conn, steps, batch, features, like, training, generator)
        return sample_mask(conn, steps, batch, features, like, generator) if training else None

    masks = {"embedding": draw("embedding", like.size(-1)), "between": [], "weight_hh": []}
    masks |= {k: [] for k in IN_LOOP}
    for i in range(layers):
        if i > 0:
            masks["between"].append(draw("between", hidden))
        for k in IN_LOOP:
            masks[k].append(draw(k, hidden))
        masks["weight_hh"].append(weight_mask(spec.weight_hh, hidden, like, generator) if training else None)
    masks["output"] = draw("output", hidden)
    return masks


def lm_window_masks(
    spec: DropoutSpec, tokens: torch.Tensor, vocab: int, sizes: tuple[int, int, int], like, training, generator=None
) -> dict:
    """Every mask of a language model's window tokens [T, B]: word dropout's row mask [T, B, 1] under
    "word" (training only), then `window_masks`. sizes: (embedding width, hidden, layers); like: a tensor of
    the masks' dtype and device."""
    width, hidden, layers = sizes
    word = word_mask(spec.word, tokens, vocab, like, generator) if training else None
    shaped = like.new_empty(*tokens.shape, width)  # [T, B, E]: shape, dtype, device
    return {"word": word, **window_masks(spec, shaped, hidden, layers, training, generator)}
