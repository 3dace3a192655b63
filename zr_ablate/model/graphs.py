"""CUDA-graph capture of the LSTM layers for one fixed training-window shape.

Why: the loop placements (naive, variational, semeniuta, zoneout) run `loop.LoopLSTM`, about 9 small
kernels per step forward and as many backward, per layer: 35 steps x 2 layers is ~1,300 launches per
window. On a GPU at batch 20 each kernel runs for a few microseconds, so the host's launch latency, not the
GPU, sets the speed. A CUDA graph records the launches once and replays them with one call.

How: `torch.cuda.make_graphed_callables` captures the forward and the backward of a module as two graphs
inside one autograd node, so the rest of the step (embedding, softmax, loss, clipping, SGD) stays ordinary
eager PyTorch under Lightning. What makes it exact and safe:
- No random numbers inside the graph. `DroppedLSTM.sample_masks` draws every mask eagerly, in the same
  order as without a graph, and the masks enter the graph as inputs; so a graphed run draws the same
  masks from the same seed as an eager one and gives the same numbers (tests/model/test_gpu.py).
- Static shapes. Only the shape captured first (the full [bptt, batch] window) replays; any other shape,
  such as an epoch's short last window, runs the eager layers (`__call__`).
- The graph reads its inputs from static buffers (make_graphed_callables copies x, h0, c0 and the masks
  in) and the parameters in place, so SGD's in-place updates and checkpoint loading are seen by it.
"""

from __future__ import annotations

import torch
from torch import nn

# The masks `DroppedLSTM.run_layers` uses: the embedding mask (one tensor) and lists of per-layer masks.
IN_GRAPH = ("embedding", "between", "recurrent", "cell_update", "zoneout_c", "zoneout_h", "weight_hh")


def _as_list(masks: dict, key: str) -> list:
    return [masks[key]] if key == "embedding" else masks[key]


def flatten(masks: dict) -> tuple[list[tuple[str, int]], list[torch.Tensor]]:
    """The masks the layers use -> (layout, tensors): layout[i] = (connection, index) of tensors[i].
    None masks are left out; which are None is fixed by the DropoutSpec, so the layout is too."""
    layout, tensors = [], []
    for key in IN_GRAPH:
        for i, m in enumerate(_as_list(masks, key)):
            if m is not None:
                layout.append((key, i))
                tensors.append(m)
    return layout, tensors


def unflatten(layout: list[tuple[str, int]], tensors, layers: int) -> dict:
    sizes = {"embedding": 1, "between": layers - 1}
    masks = {key: [None] * sizes.get(key, layers) for key in IN_GRAPH}
    for (key, i), m in zip(layout, tensors):
        masks[key][i] = m
    masks["embedding"] = masks["embedding"][0]
    return masks


class _Layers(nn.Module):
    """The module make_graphed_callables captures: tensors in, tensors out, and the LSTM layers as its
    parameters (so they get gradients). It is never registered under the model, so the model's
    state_dict and parameter list do not change."""

    def __init__(self, core: nn.Module, layout: list[tuple[str, int]]):
        super().__init__()
        self.layers = core.layers
        object.__setattr__(self, "core", core)  # a plain reference: registering it would make a cycle
        self.layout = layout

    def forward(self, x, h0, c0, *mask_tensors):
        masks = unflatten(self.layout, mask_tensors, len(self.layers))
        return self.core.run_layers(x, h0, c0, masks)


def _shapes(*tensors) -> tuple:
    return tuple(tuple(t.shape) for t in tensors)


class GraphedLayers:
    """`core.run_layers` as a CUDA graph for the shapes of the window it is built from; eager otherwise.
    `replays` counts the windows the graph ran (for tests and the bench)."""

    def __init__(self, core: nn.Module, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, masks: dict):
        self.core = core
        self.layout, tensors = flatten(masks)
        self.key = (self.layout, _shapes(x, h0, c0, *tensors))
        # Sample arguments: fresh tensors with the real ones' shapes and requires_grad (x needs a gradient,
        # the carried state and the masks do not). Warm-up and capture run on them, not on the batch.
        sample = (
            x.detach().clone().requires_grad_(x.requires_grad),
            h0.detach().clone(),
            c0.detach().clone(),
            *(m.detach().clone() for m in tensors),
        )
        self.graphed = torch.cuda.make_graphed_callables(_Layers(core, self.layout), sample)
        self.replays = 0

    def __call__(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, masks: dict):
        layout, tensors = flatten(masks)
        if (layout, _shapes(x, h0, c0, *tensors)) != self.key:
            return self.core.run_layers(x, h0, c0, masks)
        self.replays += 1
        return self.graphed(x, h0, c0, *tensors)
