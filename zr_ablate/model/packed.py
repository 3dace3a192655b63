"""Packed members: M language models of one shape in one module, every weight with a leading member dim.

    embedding  [M, V, E]      tokens [T, B] (shared) -> x [T, M*B, E]: one lookup in the stacked table
    W_ih       [M, 4H, In]    the window's input projection: one bmm [M, T*B, In] @ [M, In, 4H]
    W_hh       [M, 4H, H]     each step one bmm [M, B, H] @ [M, H, 4H] -> gates [M*B, 4H] -> one kernel
    decoder    [M, V, H]      logits [M, T, B, V]: one bmm [M, T*B, H] @ [M, H, V]
    masks      [.., M*B, F]   each member's drawn from its own generator in its solo order; ones where a
                              member does not drop (zeros for zoneout, whose d=0 keeps nothing)

Activations are one model's with the batch dimension holding the M members' batches one after another
(rows = M*B, member-major; member m's state is rows m*B..(m+1)*B). So DroppedLSTM.run_layers, the loop
Functions (loop.LoopLSTM with its hand-written backward, triton_loop.TritonLoopLSTM) and the CUDA graphs
of graphs.py run M members as they run one: only the matmuls see the member dimension (loop.rows_mm).
Every parameter keeps its solo name ("lstm.layers.0.weight_hh_l0"), stacked, so a member's slice of the
state_dict is its solo model's state_dict (`member_state`, `load_member`).

`PackedLM(members)` stacks solo LSTMLanguageModels built with the members' seeds: member m starts from the
weights its solo job starts from and continues that job's RandomStream, so it draws the same masks and,
up to float rounding, trains to the same numbers (tests/model/test_packed.py). Members share vocabulary,
sizes, unroll, batch and data; placements and rates may differ, except untied gates (Gal's per-gate
masks), which the packed layers do not take.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zr_ablate.dropout import CONNECTIONS, DEFAULT_MASKS, GATED, ZONEOUT, Connection, DropoutSpec
from zr_ablate.model.lstm import DroppedLSTM, State
from zr_ablate.model.masks import lm_window_masks, window_masks

LAYER_PARAMETERS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")  # nn.LSTM's, one layer


class Stacked(nn.Module):
    """M modules' parameters `names`, each stacked into one [M, ...] parameter of the same name."""

    def __init__(self, modules: list[nn.Module], names: tuple[str, ...]):
        super().__init__()
        for name in names:
            stacked = torch.stack([getattr(m, name).detach() for m in modules])
            self.register_parameter(name, nn.Parameter(stacked))


def unpackable(spec: DropoutSpec) -> str | None:
    """Why a placement cannot be a packed member (one line), or None."""
    untied = [k for k in GATED if getattr(spec, k).untied]
    if untied:
        return (
            f"placement {spec.name!r} masks each gate's input on its own ({', '.join(untied)}: gates=untied), "
            f"which packed members do not take"
        )
    return None


def envelope(specs: list[DropoutSpec]) -> DropoutSpec:
    """What the packed masks are, connection by connection: on where any member's is (its largest p),
    per step where any member's is. Run_layers and the CUDA graphs read only which connections are on."""

    def joined(conn: str) -> Connection:
        on = [getattr(s, conn) for s in specs if getattr(s, conn).active]
        if not on:
            return Connection(0.0, DEFAULT_MASKS[conn])
        return Connection(max(c.p for c in on), "step" if any(c.mask == "step" for c in on) else "sequence")

    return DropoutSpec(name="+".join(s.name for s in specs), **{c: joined(c) for c in CONNECTIONS})


def stack_masks(members: list[dict], batch: int, sizes: tuple[int, int]) -> dict:
    """Per-member masks (masks.lm_window_masks / window_masks layout, [T or 1, B, F] each) -> the packed
    layout: one [T or 1, M*B, F] per connection (T where any member's is per step), a member without a mask
    there given the neutral one; DropConnect's W_hh masks [M, 4H, H]. None where no member has one.
    sizes: (embedding width, hidden)."""
    packed = {}
    for key, first in members[0].items():
        if isinstance(first, list):
            packed[key] = [_stack(key, [m[key][i] for m in members], batch, sizes) for i in range(len(first))]
        else:
            packed[key] = _stack(key, [m[key] for m in members], batch, sizes)
    return packed


def _stack(key: str, masks: list, batch: int, sizes: tuple[int, int]) -> torch.Tensor | None:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    neutral = 0.0 if key in ZONEOUT else 1.0  # zoneout's d = 0 keeps nothing of the previous state
    if key == "weight_hh":
        return torch.stack([present[0].new_full(present[0].shape, neutral) if m is None else m for m in masks])
    features = {"word": 1, "embedding": sizes[0]}.get(key, sizes[1])
    steps = max(m.size(0) for m in present)
    full = [present[0].new_full((1, 1, 1), neutral) if m is None else m for m in masks]
    return torch.cat([m.expand(steps, batch, features) for m in full], dim=1)


class PackedLSTM(DroppedLSTM):
    """M DroppedLSTM cores of one shape as one, on the step loop (impl loop or reference). The layers are
    `Stacked` nn.LSTM parameters, which the loop's layer functions take as they take an nn.LSTM; the masks
    are each member's, stacked (`stack_masks`)."""

    def __init__(self, cores: list[DroppedLSTM], impl: str = "loop", cuda_graph: bool = False, loop_kernel="auto"):
        specs = [c.spec for c in cores]
        refused = [why for s in specs if (why := unpackable(s))]
        if refused:
            raise ValueError(f"{refused[0]}; run it without hydra/launcher=packed")
        if impl not in ("loop", "reference"):
            raise ValueError(f"packed members run on the step loop: impl loop or reference, got {impl!r}")
        first = cores[0]
        # DroppedLSTM's settings and checks with no nn.LSTM layers of its own: the members' are stacked below.
        super().__init__(
            first.layers[0].input_size, first.hidden_size, 0, envelope(specs), impl, cuda_graph, loop_kernel
        )
        self.layers = nn.ModuleList(
            Stacked([c.layers[i] for c in cores], LAYER_PARAMETERS) for i in range(len(first.layers))
        )
        self.specs, self.streams, self.members = specs, [c.stream for c in cores], len(cores)

    def generators(self, device: torch.device) -> list:
        """Each member's generator on `device` (None: torch's global one, for a member built without a seed)."""
        return [None if s is None else s.on(device) for s in self.streams]

    def sample_masks(self, x: torch.Tensor) -> dict:
        """x [T, M*B, I] -> every member's masks for its [T, B, I], stacked."""
        steps, rows, width = x.shape
        shaped = x.new_empty(steps, rows // self.members, width)
        hid, layers = self.hidden_size, len(self.layers)
        drawn = [
            window_masks(spec, shaped, hid, layers, self.training, g)
            for spec, g in zip(self.specs, self.generators(x.device))
        ]
        return stack_masks(drawn, rows // self.members, (width, hid))


class PackedLM(nn.Module):
    """M LSTMLanguageModels of one shape (their `from_members` stack) as one module."""

    def __init__(self, members: list, impl: str = "loop", cuda_graph: bool = False, loop_kernel: str = "auto"):
        super().__init__()
        first = members[0]
        shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in members}
        if len(shapes) > 1 or len({m.decoder.weight is m.embedding.weight for m in members}) > 1:
            raise ValueError("packed members must have one shape: vocabulary, sizes, layers and tied weights")
        self.members = len(members)
        self.embedding = Stacked([m.embedding for m in members], ("weight",))
        self.lstm = PackedLSTM([m.lstm for m in members], impl, cuda_graph, loop_kernel)
        tied = first.decoder.weight is first.embedding.weight
        self.decoder = Stacked([m.decoder for m in members], ("bias",) if tied else ("weight", "bias"))
        if tied:
            self.decoder.weight = self.embedding.weight
        self.vocab_size, self.width = first.embedding.num_embeddings, first.embedding.embedding_dim

    @property
    def specs(self) -> list[DropoutSpec]:
        return self.lstm.specs

    def init_state(self, batch: int) -> State:
        """Every member's zero state for `batch` examples: h, c [L, M*batch, H]."""
        return self.lstm.init_state(self.members * batch, self.decoder.weight)

    def member_masks(self, tokens: torch.Tensor) -> list[dict]:
        """Each member's masks for the window tokens [T, B], from its own generator, in its solo order."""
        like = self.decoder.weight  # dtype and device
        sizes = (self.width, self.lstm.hidden_size, len(self.lstm.layers))
        return [
            lm_window_masks(spec, tokens, self.vocab_size, sizes, like, self.training, g)
            for spec, g in zip(self.specs, self.lstm.generators(like.device))
        ]

    def stack(self, masks: list[dict], batch: int) -> dict:
        return stack_masks(masks, batch, (self.width, self.lstm.hidden_size))

    def sample_masks(self, tokens: torch.Tensor) -> dict:
        return self.stack(self.member_masks(tokens), tokens.size(1))

    def forward(self, tokens: torch.Tensor, state: State, masks: dict | None = None) -> tuple[torch.Tensor, State]:
        """tokens [T, B], every member's state (h, c) [L, M*B, H] -> logits [M, T, B, V], new state."""
        masks = self.sample_masks(tokens) if masks is None else masks
        steps, batch = tokens.shape
        members, vocab = self.members, self.vocab_size
        offsets = torch.arange(members, device=tokens.device).view(1, members, 1) * vocab
        rows = (tokens.unsqueeze(1) + offsets).reshape(steps, members * batch)  # member m's rows of the table
        x = F.embedding(rows, self.embedding.weight.view(members * vocab, -1))  # [T, M*B, E]
        if masks["word"] is not None:  # word dropout zeroes whole embedding rows
            x = x * masks["word"]
        out, state = self.lstm(x, state, masks)  # [T, M*B, H]
        per_member = out.view(steps, members, batch, -1).transpose(0, 1).reshape(members, steps * batch, -1)
        # bmm, then the bias in place: baddbmm's broadcast of a [M, 1, V] bias ran ~15% slower on a CPU.
        logits = torch.bmm(per_member, self.decoder.weight.transpose(1, 2)).add_(self.decoder.bias.unsqueeze(1))
        return logits.view(members, steps, batch, vocab), state

    # --- one member's view: its solo state_dict -----------------------------------------------------
    def member_state(self, m: int) -> dict:
        """Member m's weights as its solo LSTMLanguageModel's state_dict (the same names, [m] of each)."""
        return {k: v[m].detach().clone() for k, v in self.state_dict().items()}

    @torch.no_grad()
    def load_member(self, m: int, state: dict) -> None:
        """Set member m's weights from a solo LSTMLanguageModel state_dict."""
        own = self.state_dict()
        if set(own) != set(state):
            raise ValueError(f"not a member's state: keys {sorted(set(own) ^ set(state))} differ")
        for k, v in state.items():
            own[k][m].copy_(v)
