"""One training step the way Zaremba et al. take it, shared by the Lightning module and the bench's plain loop.

    step = TrainStep(model, clip=5.0, cuda_graph=False)
    nll, state, grad_norm = step(x, y, state)     # then optimizer.step()

A step draws the window's dropout masks, runs the model from the carried state, sums the NLL over the T
unrolled steps and averages it over the B examples (the loss Zaremba back-propagates), back-propagates and
clips the global gradient norm. The optimiser's update is left to the caller (SGD, whose lr falls per epoch).

On CUDA with cuda_graph=True the whole step (forward, loss, backward, clip) is captured once as a CUDA
graph for the first full-size window and replayed for every later window of that shape. At batch 20 a step
is ~1,000-3,000 small kernels and the host, not the GPU, sets the pace: eager, Lightning and the loop's
launches took 1.5 times as long as the GPU needed (H100, medium). What keeps the replay exact:
- the masks are drawn eagerly (`model.sample_masks`) and copied into the graph's static inputs, so the
  random stream and the masks are those of an eager step;
- the gradients live in static buffers the graph writes; they are re-attached to the parameters before
  each replay, because an eager step in between (a short last window) sets them to None;
- the parameters are read in place, so the optimiser's in-place update is seen by the next replay.
If capture fails (an op that cannot be captured), the step says why in `graph_error` and stays eager.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_unflatten

State = tuple[torch.Tensor, torch.Tensor]


class PaperSGD(torch.optim.SGD):
    """Plain SGD, then, when weight_decay > 0, every parameter shrunk by the factor (1 - weight_decay) after
    the update, as Gal & Ghahramani's code does it (BayesianRNN LM_code/main_new_dropout_SOTA_v3.lua, bp():
    `paramx:add(-params.weight_decay, paramx)` after `paramx:add(paramdx:mul(-params.lr))`): not scaled by
    the lr and not clipped with the gradient, unlike torch.optim.SGD's weight_decay."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, lr=lr)
        self.shrink = weight_decay

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        if self.shrink:
            for group in self.param_groups:
                torch._foreach_mul_(group["params"], 1.0 - self.shrink)
        return loss


class TrainStep:
    def __init__(self, model: torch.nn.Module, clip: float, cuda_graph: bool = False):
        self.model, self.clip, self.cuda_graph = model, clip, cuda_graph
        self.graph: _GraphedStep | None = None
        self.graph_error: str | None = None
        self.replays = 0

    def compute(self, x: torch.Tensor, y: torch.Tensor, state: State, masks: dict):
        """x, y [B, T] -> (summed NLL, h, c, gradient norm before clipping); gradients left in .grad."""
        logits, (h, c) = self.model(x.t(), state, masks)  # [T, B, V]
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.t().reshape(-1), reduction="sum")
        (nll / x.size(0)).backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        return nll.detach(), h.detach(), c.detach(), norm

    def __call__(self, x: torch.Tensor, y: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        masks = self.model.sample_masks(x.t())
        if self._graph_applies(x):
            try:
                if self.graph is None:
                    self.graph = _GraphedStep(self, x, y, state, masks)
                if self.graph.fits(x, y, state, masks):
                    self.replays += 1
                    nll, h, c, norm = self.graph(x, y, state, masks)
                    return nll, (h, c), norm
            except RuntimeError as e:  # capture failed: train eagerly, and say so
                self.graph, self.graph_error = None, f"{type(e).__name__}: {e}"
        for p in self.model.parameters():
            p.grad = None
        nll, h, c, norm = self.compute(x, y, state, masks)
        return nll, (h, c), norm

    def _graph_applies(self, x: torch.Tensor) -> bool:
        return self.cuda_graph and x.is_cuda and self.graph_error is None and self.model.training


def _shapes(leaves: list) -> list:
    return [None if t is None else tuple(t.shape) for t in leaves]


class _GraphedStep:
    """TrainStep.compute captured as one CUDA graph for fixed shapes (x, y, state and every mask)."""

    def __init__(self, step: TrainStep, x: torch.Tensor, y: torch.Tensor, state: State, masks: dict):
        self.params = [p for p in step.model.parameters() if p.requires_grad]
        leaves, self.spec = tree_flatten((x, y, state, masks))
        self.static = [None if t is None else t.detach().clone() for t in leaves]
        self.shapes = _shapes(leaves)
        inputs = tree_unflatten(self.static, self.spec)
        # Warm up on a side stream (cuBLAS/cuDNN handles and workspaces are made outside the capture).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                for p in self.params:
                    p.grad = None
                step.compute(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        for p in self.params:
            p.grad = None  # so the captured backward allocates the gradients in the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step.compute(*inputs)
        self.grads = [p.grad for p in self.params]

    def fits(self, x, y, state, masks) -> bool:
        return _shapes(tree_flatten((x, y, state, masks))[0]) == self.shapes

    def __call__(self, x, y, state, masks):
        for buffer, value in zip(self.static, tree_flatten((x, y, state, masks))[0]):
            if buffer is not None:
                buffer.copy_(value)
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.graph.replay()
        nll, h, c, norm = self.outputs
        return nll.clone(), h, c, norm.clone()  # h, c: copied into the inputs before the next replay
