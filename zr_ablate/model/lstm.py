"""The recurrent core: a stack of LSTM layers with dropout placed by a `DropoutSpec`.

Two paths over the same weights (each layer is an `nn.LSTM`, so parameter names and counts match
PyTorch's and the paper's):
  fused  the fused LSTM kernel (cuDNN on GPU). Used whenever no mask sits inside the time loop: masks on
         the embedding, between layers and on the output sit outside the kernel, and DropConnect on W_hh
         only changes the matrix the kernel is given for the window.
  loop   an explicit step loop, needed for masks on h_{t-1} (naive, variational) or g_t (semeniuta), and
         for zoneout (training and evaluation): `loop.LoopLSTM`, an autograd.Function with its own
         backward (the input projection of the whole window is one matmul before the loop, each step one
         matmul, the weight gradient one matmul after the backward walk).
         Its step arithmetic runs as PyTorch ops (`loop`) or as one Triton kernel per step each way
         (`triton_loop`, CUDA: far fewer kernels where a GPU at batch 20 is launch-bound): `loop_kernel`,
         whose default, auto, takes Triton on CUDA when it imports and PyTorch elsewhere.
  reference  `lstm_layer_loop` below: the same equations as a readable step loop under ordinary autograd,
         kept as the definition the fast loops are tested against (tests/model/test_lstm.py).
With dropout off all give the same numbers (tests/model/test_lstm.py).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from zr_ablate.dropout import IN_LOOP, DropoutSpec
from zr_ablate.model.graphs import GraphedLayers
from zr_ablate.model.loop import NO_MASKS, LayerMasks, input_gates, lstm_layer_fast, recurrent_term
from zr_ablate.model.masks import RandomStream, mask_at, window_masks

IMPLS = ("auto", "fused", "loop", "reference")
LOOP_KERNELS = ("auto", "torch", "triton")
State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [layers, batch, hidden]


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def lstm_layer_loop(
    x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, layer: nn.LSTM, w_hh=None, masks: LayerMasks = NO_MASKS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference LSTM layer, step by step under autograd, with the masks of one window (their shapes
    and where each one falls: loop.LayerMasks). x [T, B, I]; h, c [B, H]; w_hh [4H, H] replaces the
    layer's weight_hh_l0 (DropConnect). Returns outputs [T, B, H] and the final h, c [B, H]. Gate order is
    PyTorch's: i, f, g, o.
    """
    recurrent, cell_update, zoneout_c, zoneout_h = masks.in_loop
    w = layer.weight_hh_l0 if w_hh is None else w_hh
    gates_x = input_gates(x, layer, masks.input_mask)  # [T, B, 4H]
    outputs = []
    for t in range(x.size(0)):
        i, f, g, o = (gates_x[t] + recurrent_term(h, mask_at(recurrent, t), w)).chunk(4, dim=1)
        g = torch.tanh(g) if cell_update is None else torch.tanh(g) * mask_at(cell_update, t)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * g
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        # lerp(new, previous, d) = d*previous + (1-d)*new
        c = c_new if zoneout_c is None else torch.lerp(c_new, c, mask_at(zoneout_c, t))
        h = h_new if zoneout_h is None else torch.lerp(h_new, h, mask_at(zoneout_h, t))
        outputs.append(h)
    return torch.stack(outputs), h, c


def lstm_layer_fused(
    x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, layer: nn.LSTM, w_hh: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer on the fused kernel, same arguments and returns as `lstm_layer_loop`.

    The kernel nn.LSTM.forward calls, given the weights explicitly so that a dropped W_hh [4H, H] can stand
    in for weight_hh_l0 for this window without touching the parameter (swapping the module's parameter
    would re-flatten cuDNN's weight buffer around a non-leaf tensor). Gradients reach the raw weight
    through the mask multiply. On GPU, cuDNN copies weights that are not in its flat buffer once per call.
    """
    weights = [layer.weight_ih_l0, layer.weight_hh_l0 if w_hh is None else w_hh, layer.bias_ih_l0, layer.bias_hh_l0]
    out, h, c = torch._VF.lstm(x, (h[None], c[None]), weights, True, 1, 0.0, layer.training, False, False)
    return out, h[0], c[0]


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def loop_layer(kernel: str, cuda: bool):
    """The fast loop's layer function for `loop_kernel` on this device (triton_loop imports Triton: only
    when it is used)."""
    if kernel == "triton" or (kernel == "auto" and cuda and triton_importable()):
        from zr_ablate.model.triton_loop import lstm_layer_triton

        return lstm_layer_triton
    return lstm_layer_fast


class DroppedLSTM(nn.Module):
    """Stacked LSTM: embedding mask -> layer 1 -> between mask -> ... -> layer L -> output mask.

    A forward first draws every mask of the window (`sample_masks`, in a fixed order, so the random
    stream is the same whichever path runs), then runs the layers on them (`run_layers`). On CUDA in
    training, a placement that needs the step loop runs the layers as a captured CUDA graph
    (`graphs.GraphedLayers`, `cuda_graph=True`): the loop launches ~20 small kernels per step and layer,
    which on a GPU is bound by launch latency; the graph replays them without the host. Only the first
    training window shape seen is captured; any other (the short last window of an epoch) runs eager.

    Set `record_masks = True` to keep the masks of the last forward in `last_masks` (for tests and
    inspection): {"embedding": m, "output": m, "between": [m per gap], and per layer [m per layer] for
    "recurrent", "cell_update", "zoneout_c", "zoneout_h" and "weight_hh"}, each None where no mask was
    applied. At evaluation only zoneout's expectation [1, 1, 1] is recorded.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: DropoutSpec,
        impl: str = "auto",
        cuda_graph: bool = True,
        loop_kernel: str = "auto",
    ):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"lstm impl must be one of {IMPLS}, got {impl!r}")
        if loop_kernel not in LOOP_KERNELS:
            raise ValueError(f"model.loop_kernel must be one of {LOOP_KERNELS}, got {loop_kernel!r}")
        self.loop_kernel = loop_kernel
        if impl == "fused" and dropout.needs_step_loop:
            active = [k for k in IN_LOOP if getattr(dropout, k).active]
            active += [f"{k} untied" for k in ("embedding", "between") if getattr(dropout, k).untied]
            raise ValueError(
                f"placement {dropout.name!r} masks h_(t-1), g_t, zones out the state or masks each gate's "
                f"input on its own ({', '.join(active)}), which the fused LSTM cannot do; use impl auto, "
                f"loop or reference"
            )
        self.spec, self.impl, self.hidden_size = dropout, impl, hidden_size
        sizes = [input_size] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(nn.LSTM(sizes[i], hidden_size) for i in range(num_layers))
        self.cuda_graph = cuda_graph
        self._graphed = None  # graphs.GraphedLayers once captured; a plain attribute, not a submodule
        self.record_masks = False
        self.last_masks: dict | None = None
        self.stream: RandomStream | None = None

    def path(self, masks_in_loop: bool) -> str:
        """The layer implementation a forward takes: "reference", "loop" (the fast loop) or "fused".
        masks_in_loop: whether any mask sits inside the time loop for this forward."""
        if self.impl in ("reference", "loop"):
            return self.impl
        return "loop" if masks_in_loop else "fused"

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        zeros = like.new_zeros(len(self.layers), batch, self.hidden_size)
        return zeros, zeros.clone()

    def generator(self, device: torch.device) -> torch.Generator | None:
        """Where this core's masks come from on `device`: its `stream` (masks.RandomStream, set by the
        language model built with a seed), else None: torch's global generator."""
        return None if self.stream is None else self.stream.on(device)

    def sample_masks(self, x: torch.Tensor) -> dict:
        """Every mask of one window x [T, B, I] (masks.window_masks: its order and layout)."""
        hid, layers = self.hidden_size, len(self.layers)
        return window_masks(self.spec, x, hid, layers, self.training, self.generator(x.device))

    def run_layers(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, masks: dict):
        """x [T, B, I] (the embedded words), h0, c0 [L, B, H] -> top outputs [T, B, H] (before the
        output mask), h, c [L, B, H]. Uses every mask of `masks` but word and output: a layer's input mask
        (embedding for layer 1, between after) multiplies x here when tied and goes into the layer's input
        projection when untied."""
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            conn, mask = (
                (self.spec.embedding, masks["embedding"]) if i == 0 else (self.spec.between, masks["between"][i - 1])
            )
            if not conn.untied:
                x = _masked(x, mask)
            layer_masks = LayerMasks(mask if conn.untied else None, **{k: masks[k][i] for k in IN_LOOP})
            w_mask = masks["weight_hh"][i]
            w_hh = None if w_mask is None else layer.weight_hh_l0 * w_mask
            path = self.path(any(m is not None for m in layer_masks))
            if path == "fused":
                x, h, c = lstm_layer_fused(x, h0[i], c0[i], layer, w_hh)
            elif path == "reference":
                x, h, c = lstm_layer_loop(x, h0[i], c0[i], layer, w_hh, layer_masks)
            else:
                layer_fn = loop_layer(self.loop_kernel, x.is_cuda)
                x, h, c = layer_fn(x, h0[i], c0[i], layer, w_hh, layer_masks)
            hs.append(h)
            cs.append(c)
        return x, torch.stack(hs), torch.stack(cs)

    def _graph_applies(self, x: torch.Tensor) -> bool:
        """Capture/replay a CUDA graph: training with gradients on CUDA, on a placement that takes the loop."""
        if not (self.cuda_graph and self.training and x.is_cuda and torch.is_grad_enabled()):
            return False
        return self.path(self.spec.needs_step_loop) == "loop"

    def forward(self, x: torch.Tensor, state: State, masks: dict | None = None) -> tuple[torch.Tensor, State]:
        """x [T, B, I], state (h, c) [L, B, H] -> outputs [T, B, H] (output mask applied), new state.
        masks: from sample_masks (drawn here when not given)."""
        h0, c0 = state
        masks = self.sample_masks(x) if masks is None else masks
        if self._graph_applies(x):
            if self._graphed is None:
                self._graphed = GraphedLayers(self, x, h0, c0, masks)
            out, h, c = self._graphed(x, h0, c0, masks)
        else:
            out, h, c = self.run_layers(x, h0, c0, masks)
        out = _masked(out, masks["output"])
        if self.record_masks:
            self.last_masks = masks
        return out, (h, c)
