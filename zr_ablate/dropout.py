"""Where dropout goes, as data: a `DropoutSpec` names a probability and a mask kind per connection.

Connections of a stacked LSTM language model (T steps, B examples, F features, V words, per layer where a
layer is named; c_t = f*c_{t-1} + i*g_t, h_t = o*tanh(c_t), gates i, f, g, o):

    word         rows of the embedding table, by word type (Gal)        e(w_t)         [T, B, 1] row mask
    embedding    the embedded word entering layer 1                     x_t            [T, B, H]
    between      layer l's output entering layer l+1                    h^l_t          [T, B, H]
    recurrent    h_{t-1} entering the gates of its own layer            h^l_{t-1}      [B, H] each step
    cell_update  the candidate g_t added to the cell (Semeniuta)        g^l_t          [B, H] each step
    weight_hh    the hidden-to-hidden matrix (DropConnect, Merity)      W^l_hh         [4H, H]
    zoneout_c    c_t keeps c_{t-1} with probability p (Krueger)         c^l_t          [B, H] each step
    zoneout_h    h_t keeps h_{t-1} with probability p (Krueger)         h^l_t          [B, H] each step
    output       the top layer's output entering the softmax            h^L_t          [T, B, H]

Mask kinds:
    step      a fresh Bernoulli mask for every step and example (ordinary dropout);
    sequence  one mask per example for the whole BPTT window, the same at every step, resampled for the
              next window (Gal & Ghahramani's variational dropout). Shape [B, F], broadcast over T.
For `word`, step drops each occurrence on its own and sequence drops a word type in all its occurrences in
an example's window (one mask [B, V]). `weight_hh` takes sequence only: the matrix is shared by the batch,
so its one mask per window is shared by every example too, and the fused kernel keeps working.

Dropout masks are inverted (0 or 1/(1-p)); zoneout's are not (1 where the unit keeps its previous value);
`masks.py` draws them. The named placements are YAML presets in zr_ablate/conf/dropout/; here only the vocabulary
they use. Torch-free, so that the results and report modules can name the connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

MASK_KINDS = ("step", "sequence")
GATES = ("tied", "untied")
# The connections that feed the four gates. Tied (the default): one mask, the same for every gate's copy of
# the input or of h_{t-1}. Untied: an independent mask per gate ([.., B, 4F], gate order i, f, g, o), as Gal
# & Ghahramani's code draws them; the layer then takes its input unmasked and masks each gate's copy itself.
GATED = ("embedding", "between", "recurrent")
# Masks applied inside the time loop: while any is on in training, the fused LSTM kernel cannot be used.
IN_LOOP = ("recurrent", "cell_update", "zoneout_c", "zoneout_h")
ZONEOUT = ("zoneout_c", "zoneout_h")


@dataclass(frozen=True)
class Connection:
    p: float = 0.0
    mask: str = "step"
    gates: str = "tied"

    def __post_init__(self):
        if not isinstance(self.p, (int, float)) or not 0.0 <= self.p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {self.p!r}")
        if self.mask not in MASK_KINDS:
            raise ValueError(f"dropout mask must be one of {MASK_KINDS}, got {self.mask!r}")
        if self.gates not in GATES:
            raise ValueError(f"dropout gates must be one of {GATES}, got {self.gates!r}")

    @property
    def untied(self) -> bool:
        return self.active and self.gates == "untied"

    @property
    def active(self) -> bool:
        return self.p > 0.0


def _off(mask: str = "step"):
    """An inactive connection; its mask kind is also the default of a config that gives only p."""
    return field(default_factory=lambda: Connection(0.0, mask))


@dataclass(frozen=True)
class DropoutSpec:
    name: str = "none"
    word: Connection = _off("sequence")
    embedding: Connection = _off()
    between: Connection = _off()
    recurrent: Connection = _off()
    cell_update: Connection = _off()
    weight_hh: Connection = _off("sequence")
    zoneout_c: Connection = _off()
    zoneout_h: Connection = _off()
    output: Connection = _off()

    def __post_init__(self):
        if self.weight_hh.mask != "sequence":
            raise ValueError(
                "dropout.weight_hh: DropConnect draws one W_hh mask per window, so its mask must be sequence"
            )
        for f in fields(self):
            if f.name != "name" and getattr(self, f.name).gates == "untied" and f.name not in GATED:
                raise ValueError(f"dropout.{f.name}.gates=untied: only {', '.join(GATED)} feed the gates")

    @classmethod
    def from_dict(cls, d: dict) -> DropoutSpec:
        """Build from the `dropout` config node; unknown keys are errors, not silently ignored."""
        d = dict(d)
        name = d.pop("name", "custom")
        d.pop("p", None)  # the shared default that the presets interpolate into each connection
        unknown = set(d) - set(CONNECTIONS)
        if unknown:
            raise ValueError(f"unknown dropout connection(s) {sorted(unknown)}; known: {CONNECTIONS}")
        conns = {}
        for key, value in d.items():
            value = dict(value)
            bad = set(value) - {f.name for f in fields(Connection)}
            if bad:
                raise ValueError(f"dropout.{key} has unknown key(s) {sorted(bad)}; use p, mask and gates")
            try:
                conns[key] = Connection(**{"mask": DEFAULT_MASKS[key], **value})
            except ValueError as e:
                raise ValueError(f"dropout.{key}: {e}") from None
        return cls(name=name, **conns)

    @property
    def needs_step_loop(self) -> bool:
        """Masks on h_{t-1}, g_t or zoneout live inside the time loop, and an untied input mask inside the
        layer's input projection: the fused kernel can apply none of them. (Zoneout also needs the loop at
        evaluation, where it takes its expectation.)"""
        return any(getattr(self, k).active for k in IN_LOOP) or self.embedding.untied or self.between.untied


CONNECTIONS = [f.name for f in fields(DropoutSpec) if f.name != "name"]  # in the order of the table above
# The mask kind a connection takes when its config gives only p (zr_ablate.schema's defaults too).
DEFAULT_MASKS = {f.name: f.default_factory().mask for f in fields(DropoutSpec) if f.name != "name"}
