"""Where dropout goes, as data: a `DropoutSpec` names a probability and a mask kind per connection.

Connections of a stacked LSTM language model (T steps, B examples, F features):

    embedding  the embedded word entering layer 1            x_t        [T, B, H]
    between    layer l's output entering layer l+1           h^l_t      [T, B, H]
    recurrent  h_{t-1} entering the gates of its own layer   h^l_{t-1}  [B, H] at each step
    output     the top layer's output entering the softmax   h^L_t      [T, B, H]

Mask kinds:
    step      a fresh Bernoulli mask for every step and example (ordinary dropout);
    sequence  one mask per example for the whole BPTT window, the same at every step, resampled for the
              next window (Gal & Ghahramani's variational dropout). Shape [B, F], broadcast over T.

The four named placements are YAML presets in conf/dropout/; here only the vocabulary they use.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

MASK_KINDS = ("step", "sequence")
CONNECTIONS = ("embedding", "between", "recurrent", "output")


@dataclass(frozen=True)
class Connection:
    p: float = 0.0
    mask: str = "step"

    def __post_init__(self):
        if not isinstance(self.p, (int, float)) or not 0.0 <= self.p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {self.p!r}")
        if self.mask not in MASK_KINDS:
            raise ValueError(f"dropout mask must be one of {MASK_KINDS}, got {self.mask!r}")

    @property
    def active(self) -> bool:
        return self.p > 0.0


@dataclass(frozen=True)
class DropoutSpec:
    name: str = "none"
    embedding: Connection = field(default_factory=Connection)
    between: Connection = field(default_factory=Connection)
    recurrent: Connection = field(default_factory=Connection)
    output: Connection = field(default_factory=Connection)

    @classmethod
    def from_dict(cls, d: dict) -> "DropoutSpec":
        """Build from the `dropout` config node; unknown keys are errors, not silently ignored."""
        d = dict(d)
        name = d.pop("name", "custom")
        d.pop("p", None)  # the shared default that the presets interpolate into each connection
        unknown = set(d) - set(CONNECTIONS)
        if unknown:
            raise ValueError(f"unknown dropout connection(s) {sorted(unknown)}; known: {list(CONNECTIONS)}")
        conns = {}
        for key, value in d.items():
            value = dict(value)
            bad = set(value) - {f.name for f in fields(Connection)}
            if bad:
                raise ValueError(f"dropout.{key} has unknown key(s) {sorted(bad)}; use p and mask")
            try:
                conns[key] = Connection(**value)
            except ValueError as e:
                raise ValueError(f"dropout.{key}: {e}") from None
        return cls(name=name, **conns)

    @property
    def needs_step_loop(self) -> bool:
        """A recurrent mask lives inside the time loop, so the fused LSTM kernel cannot be used."""
        return self.recurrent.active


def sample_mask(conn: Connection, steps: int, batch: int, features: int,
                like: torch.Tensor) -> torch.Tensor | None:
    """Inverted-dropout mask (0 or 1/(1-p)) for one window, or None when the connection is off.

    step -> [steps, batch, features]; sequence -> [1, batch, features] (broadcasts over steps).
    """
    if not conn.active:
        return None
    rows = steps if conn.mask == "step" else 1
    keep = 1.0 - conn.p
    return torch.empty(rows, batch, features, dtype=like.dtype, device=like.device).bernoulli_(keep) / keep
