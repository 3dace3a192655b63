"""Packed members (model/packed.py) trained and evaluated as if each ran alone.

    step = PackedTrainStep(packed, clip, cuda_graph)  # step.TrainStep, per member
    nll, state, norms = step(x, y, state)             # nll [M] summed over the window, norms [M] before clipping
    opt = PackedSGD(packed.parameters(), lr, weight_decay); opt.step()

- Loss: member m's NLL summed over the T steps and averaged over the B examples, as TrainStep's. One
  backward of the members' summed losses gives each member the gradient of its own loss: no weight is
  shared between members.
- Clipping: each member's gradients scaled by its own global norm (clip_grad_norm_'s formula, per member).
- SGD, then Gal's weight decay, are elementwise, so PaperSGD on the stacked weights is each member's own;
  a frozen member (one that diverged, `PackedSGD.frozen`) keeps its weights while the others train on.
- MC-dropout evaluation: each member holds its own pass masks, by its own placement (`PackedMCDropoutEval`).
On CUDA, cuda_graph=True replays the whole packed step as one CUDA graph, as TrainStep does for one model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zr_ablate.training.mc_dropout import MCDropoutEval, held
from zr_ablate.training.step import PaperSGD, TrainStep


def token_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits [M, T, B, V], targets y [B, T] (shared) -> the NLL of every target under every member, [M, T, B]."""
    members, vocab = logits.size(0), logits.size(-1)
    targets = y.t().expand(members, -1, -1)  # [M, T, B]
    nll = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


def member_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits [M, T, B, V], targets y [B, T] (shared) -> each member's NLL summed over the window, [M]."""
    return token_nll(logits, y).flatten(1).sum(1)


def clip_members(parameters, max_norm: float, members: int) -> torch.Tensor:
    """Scale each member's gradients so that their global 2-norm is at most max_norm (the member's slice
    [m] of every parameter, as torch.nn.utils.clip_grad_norm_ does for one model). Returns the norms before
    clipping, [M]."""
    grads = [p.grad for p in parameters if p.grad is not None]
    per_param = torch.stack([torch.linalg.vector_norm(g.reshape(members, -1), dim=1) for g in grads])  # [P, M]
    norms = torch.linalg.vector_norm(per_param, dim=0)  # [M]
    scale = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
    return norms


class PackedTrainStep(TrainStep):
    """TrainStep (masks drawn eagerly, CUDA graph or eager) with each member's loss and clipping."""

    def compute(self, x: torch.Tensor, y: torch.Tensor, state, masks: dict):
        """x, y [B, T] -> (NLL per member [M], h, c, gradient norm per member before clipping [M])."""
        logits, (h, c) = self.model(x.t(), state, masks)  # [M, T, B, V]
        nll = member_nll(logits, y)
        (nll.sum() / x.size(0)).backward()
        norms = clip_members(list(self.model.parameters()), self.clip, self.model.members)
        return nll.detach(), h.detach(), c.detach(), norms


class PackedSGD(PaperSGD):
    """PaperSGD on stacked weights; the members in `frozen` (indices) keep the weights they had when frozen."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.frozen: set[int] = set()

    @torch.no_grad()
    def step(self, closure=None):
        if not self.frozen:
            return super().step(closure)
        keep = sorted(self.frozen)
        params = [p for group in self.param_groups for p in group["params"]]
        before = [p[keep].clone() for p in params]
        loss = super().step(closure)
        for p, old in zip(params, before):
            p[keep] = old
        return loss


class PackedMCDropoutEval(MCDropoutEval):
    """MC-dropout evaluation of packed members: nll() returns [M]; each pass holds each member's sequence
    masks by that member's own placement (mc_dropout.held)."""

    def _masks(self, model, k: int, tokens: torch.Tensor) -> dict:
        kept = self.masks[k] or [None] * model.members
        self.masks[k] = [held(s, fresh, old) for s, fresh, old in zip(model.specs, model.member_masks(tokens), kept)]
        return model.stack(self.masks[k], tokens.size(1))


@torch.no_grad()
def evaluate(model, windows, device: torch.device, mc: PackedMCDropoutEval | None = None, sentences=None):
    """Every member over the windows [B, T] of one split, state carried from window to window (LMModule's
    validation and test) -> (NLL summed per member [M], float64; MC-dropout's [M] or None; tokens).
    sentences: one SentenceLosses per member, given each window's token losses when the split is one stream
    (batch 1), as LMModule.test_step gives its own."""
    model.eval()
    nll = torch.zeros(model.members, dtype=torch.float64, device=device)
    mc_nll = torch.zeros_like(nll) if mc is not None and mc.samples else None
    if mc_nll is not None:
        mc.reset()
    state, tokens = None, 0
    for x, y in windows:
        x, y = x.to(device), y.to(device)
        logits, state = model(x.t(), model.init_state(x.size(0)) if state is None else state)
        window = token_nll(logits, y).double()  # [M, T, B]
        nll += window.flatten(1).sum(1)
        mc_window = None
        if mc_nll is not None:  # K more passes over the same window, each with its own state
            mc_window = mc.nll(model, x, y).double()  # [M, T, B]
            mc_nll += mc_window.flatten(1).sum(1)
        if sentences is not None and x.size(0) == 1:
            for m, kept in enumerate(sentences):
                kept.update(y[0], window[m, :, 0], None if mc_window is None else mc_window[m, :, 0])
        tokens += y.numel()
    return nll, mc_nll, tokens
