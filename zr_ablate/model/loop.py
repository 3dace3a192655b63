"""The fast explicit LSTM loop: one layer's time loop as an autograd.Function with a hand-written backward.

Masks on h_{t-1} or g_t, and zoneout, sit inside the time loop, so those placements cannot use the fused
kernel. Run through autograd, a step loop records ~15 small ops per step and replays them backward, and
its weight gradient is T rank-B updates. This Function follows the cuDNN/haste design instead:
  forward   per step one addmm [B, H] @ [H, 4H] onto the precomputed input gates, then in-place gate math
            into preallocated [T, ...] buffers (no autograd graph, no per-step allocations for the saved
            tensors);
  backward  the reverse walk carries only dh and dc through the steps. Everything that does not depend on
            the carried gradient (sigmoid/tanh derivatives times the saved activations) is computed for
            the whole window in a few vectorised ops first, so each step is ~6 small ops plus one
            matmul [B, 4H] @ [4H, H]. The weight gradient is one matmul after the walk,
            [4H, T*B] @ [T*B, H], which is where the explicit loop gains on a per-step autograd graph.
The input projection (x @ W_ih + biases for the whole window) stays outside, under ordinary autograd.

Packed members (model/packed.py): the same Functions run M models of one shape at once. Their weights
have a leading member dimension (W_hh [M, 4H, H]) and the rows of every [rows, ...] tensor are the M
members' batches one after another (rows = M*B, member-major); each matmul is then one batched matmul
over the members (`rows_mm`) and the gate arithmetic runs on all M*B rows as it runs on B. One model is
the plain 2-D case, computed exactly as before.

`lstm.lstm_layer_loop` is the plain reference (autograd over a readable step loop); tests/model/test_lstm.py
checks this Function against it, outputs and gradients, for every mask kind.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from zr_ablate.model.masks import mask_at


class LayerMasks(NamedTuple):
    """One layer's masks for one window, each None (off) or as dropout.py shapes them: [T, B, F] fresh per
    step, [1, B, F] the same every step; zoneout's may be [1, 1, 1], its expectation at evaluation.

    input_mask   [.., B, 4I] untied dropout on x, one mask per gate's copy (a tied mask is applied to x
                 before the layer instead, outside the layer functions)
    recurrent    h_{t-1} where it enters the gates, not the carried h (Gal's formulation); [.., B, 4H]
                 when untied, one mask per gate's copy of h_{t-1}
    cell_update  g_t only: c_t = f*c_{t-1} + i*(g_t*m) (Semeniuta et al.), so c_{t-1} is never masked
    zoneout_c/h  c_t = d*c_{t-1} + (1-d)*c_new, h_t = d*h_{t-1} + (1-d)*o*tanh(c_new) (Krueger et al.: h
                 from the new cell before zoneout); the zoned h is the layer's output and carried state
    Every layer function (lstm.lstm_layer_loop, lstm_layer_fast below, triton_loop.lstm_layer_triton)
    takes (x [T, B, I], h, c [B, H], layer, w_hh [4H, H] or None, LayerMasks) and returns the outputs
    [T, B, H] and the final h, c [B, H]; w_hh replaces the layer's weight_hh_l0 (DropConnect)."""

    input_mask: torch.Tensor | None = None
    recurrent: torch.Tensor | None = None
    cell_update: torch.Tensor | None = None
    zoneout_c: torch.Tensor | None = None
    zoneout_h: torch.Tensor | None = None

    @property
    def in_loop(self) -> tuple:
        """The masks the loop Functions take, in their argument order: recurrent, cell_update, zoneout_c/h."""
        return self.recurrent, self.cell_update, self.zoneout_c, self.zoneout_h


NO_MASKS = LayerMasks()


def rows_mm(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None, out=None) -> torch.Tensor:
    """a [R, K] @ b (+ add [R, N]) -> [R, N]: one matrix b [K, N] for every row (mm, addmm), or packed
    members' b [M, K, N], member m's for its block of R/M rows (bmm, baddbmm). out: written in place."""
    if b.dim() == 2:
        return torch.mm(a, b, out=out) if add is None else torch.addmm(add, a, b, out=out)
    members = b.size(0)

    def per(t):  # [R, F] -> [M, R/M, F]
        return None if t is None else t.view(members, -1, t.size(-1))

    if add is None:
        done = torch.bmm(per(a), b, out=per(out))
    else:
        done = torch.baddbmm(per(add), per(a), b, out=per(out))
    return done.view(a.size(0), -1)


def input_gates(x: torch.Tensor, layer, input_mask: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, B, I] -> x @ W_ih^T + b_ih + b_hh [T, B, 4H]: one [T*B, I] @ [I, 4H] matmul for the window,
    under autograd, since the input side does not depend on the recurrence. input_mask ([T or 1, B, 4I],
    untied dropout): each gate's copy of x gets its own mask, so each gate's block of W_ih its own input.
    Packed members (W_ih [M, 4H, I], rows M*B): one batched matmul [M, T*B, I] @ [M, I, 4H]."""
    steps, batch, features = x.shape
    bias = layer.bias_ih_l0 + layer.bias_hh_l0
    if layer.weight_ih_l0.dim() == 3:
        if input_mask is not None:
            raise ValueError("packed members take tied input masks only (applied to x before the layer)")
        members = layer.weight_ih_l0.size(0)
        per_member = x.view(steps, members, -1, features).transpose(0, 1).reshape(members, -1, features)
        gates = torch.bmm(per_member, layer.weight_ih_l0.transpose(1, 2)).add_(bias.unsqueeze(1))  # [M, T*B, 4H]
        return gates.view(members, steps, -1, gates.size(-1)).transpose(0, 1).reshape(steps, batch, -1)
    if input_mask is None:
        return torch.addmm(bias, x.reshape(steps * batch, -1), layer.weight_ih_l0.t()).view(steps, batch, -1)
    per_gate = x[:, :, None, :] * input_mask.view(input_mask.size(0), batch, 4, features)  # [T, B, 4, I]
    weight = layer.weight_ih_l0.view(4, -1, features)  # [4, H, I]
    return torch.einsum("tbgi,ghi->tbgh", per_gate, weight).reshape(steps, batch, -1) + bias


def untied(mask: torch.Tensor | None, hid: int) -> bool:
    """Whether a recurrent mask is untied: [.., B, 4H], one per gate's copy of h_{t-1} (tied: [.., B, H])."""
    return mask is not None and mask.size(-1) != hid


def recurrent_term(h: torch.Tensor, r: torch.Tensor | None, w_hh: torch.Tensor) -> torch.Tensor:
    """h [B, H] through W_hh [4H, H] (packed: [M, 4H, H]) with its recurrent mask r: None, [B, H] (tied:
    one mask for all gates) or [B, 4H] (untied: each gate's copy of h masked on its own) -> [B, 4H]."""
    if not untied(r, h.size(-1)):
        return rows_mm(h if r is None else h * r, w_hh.transpose(-2, -1))
    batch, hid = h.shape
    per_gate = (h[:, None, :] * r.view(batch, 4, hid)).transpose(0, 1)  # [4, B, H]
    return torch.bmm(per_gate, w_hh.view(4, hid, hid).transpose(1, 2)).transpose(0, 1).reshape(batch, 4 * hid)


def recurrent_grad(grad_gates: torch.Tensor, r: torch.Tensor | None, w_hh: torch.Tensor) -> torch.Tensor:
    """The gradient reaching h [B, H] from d pre-activation [B, 4H] through recurrent_term."""
    if not untied(r, w_hh.size(-1)):
        dh = rows_mm(grad_gates, w_hh)
        return dh if r is None else dh * r
    batch, hid = grad_gates.size(0), w_hh.size(1)
    per_gate = torch.einsum("bgk,gkh->bgh", grad_gates.view(batch, 4, hid), w_hh.view(4, hid, hid))
    return (per_gate * r.view(batch, 4, hid)).sum(1)


class Saved(NamedTuple):
    """What the loop Functions (LoopLSTM, triton_loop.TritonLoopLSTM) save for backward, in this order."""

    gates: torch.Tensor  # [T, B, 4H] activated i, f, g, o
    cells: torch.Tensor  # [T+1, B, H] cells[t] = c_{t-1} after zoneout, cells[0] = c0
    tanh_c: torch.Tensor  # [T, B, H] tanh of the new cell, before zoneout
    out: torch.Tensor  # [T, B, H] h_t
    h0: torch.Tensor  # [B, H]
    w_hh: torch.Tensor  # [4H, H], packed [M, 4H, H]
    recurrent: torch.Tensor | None
    cell_update: torch.Tensor | None
    zoneout_c: torch.Tensor | None
    zoneout_h: torch.Tensor | None


class LoopLSTM(torch.autograd.Function):
    """gates_x [T, B, 4H] (x @ W_ih^T + b_ih + b_hh), h0, c0 [B, H], w_hh [4H, H], masks (each None,
    [T, B, H] or [1, B, H]; zoneout's may be [1, 1, 1]) -> outputs [T, B, H], h_T, c_T [B, H].
    Same equations as lstm.lstm_layer_loop; masks are constants (no gradient)."""

    @staticmethod
    def forward(ctx, gates_x, h0, c0, w_hh, recurrent, cell_update, zoneout_c, zoneout_h):
        steps, batch, four_h = gates_x.shape
        hid = four_h // 4
        w_t = w_hh.transpose(-2, -1)  # [H, 4H] (packed [M, H, 4H]) view; BLAS reads the transpose in place
        gates = torch.empty_like(gates_x)  # activated i, f, g, o per step
        cells = gates_x.new_empty(steps + 1, batch, hid)  # cells[t] = c_{t-1} (after zoneout), cells[0] = c0
        tanh_c = gates_x.new_empty(steps, batch, hid)  # tanh of the new cell, before zoneout
        out = gates_x.new_empty(steps, batch, hid)  # h_t, the layer's output and carried state
        cells[0] = c0
        h = h0
        for t in range(steps):
            r, m = mask_at(recurrent, t), mask_at(cell_update, t)
            g = gates[t]
            if not untied(r, hid):
                rows_mm(h if r is None else h * r, w_t, add=gates_x[t], out=g)
            else:  # untied: a mask per gate's copy of h
                torch.add(gates_x[t], recurrent_term(h, r, w_hh), out=g)
            g[:, : 2 * hid].sigmoid_()
            g[:, 2 * hid : 3 * hid].tanh_()
            g[:, 3 * hid :].sigmoid_()
            i, f, gg, o = g.chunk(4, dim=1)
            c = cells[t + 1]
            torch.mul(f, cells[t], out=c)
            c.addcmul_(i, gg if m is None else gg * m)
            torch.tanh(c, out=tanh_c[t])
            torch.mul(o, tanh_c[t], out=out[t])
            if zoneout_c is not None:  # c_t = d*c_{t-1} + (1-d)*c_new
                c.lerp_(cells[t], mask_at(zoneout_c, t))
            if zoneout_h is not None:
                out[t].lerp_(h, mask_at(zoneout_h, t))
            h = out[t]
        ctx.save_for_backward(gates, cells, tanh_c, out, h0, w_hh, recurrent, cell_update, zoneout_c, zoneout_h)
        return out, out[-1].clone(), cells[-1].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        gates, cells, tanh_c, out, h0, w_hh, recurrent, cell_update, zoneout_c, zoneout_h = Saved(*ctx.saved_tensors)
        steps, batch, four_h = gates.shape
        i, f, g, o = gates.chunk(4, dim=2)  # each [T, B, H]
        g_in = g if cell_update is None else g * cell_update  # what entered the cell
        # Per-step factors that do not depend on the carried gradient, for the whole window at once:
        #   d pre_{i,f,g} = dc_new * k[:, :, :3H]   d pre_o = dh_new * k[:, :, 3H:]
        #   dc_new = dc_carry*(1-z_c) + dh_new * o*(1 - tanh(c)^2)
        k = torch.empty_like(gates)
        ki, kf, kg, ko = k.chunk(4, dim=2)
        torch.mul(g_in, i * (1 - i), out=ki)
        torch.mul(cells[:-1], f * (1 - f), out=kf)
        torch.mul(i, 1 - g * g, out=kg)
        if cell_update is not None:
            kg.mul_(cell_update)
        torch.mul(tanh_c, o * (1 - o), out=ko)
        through_h = o * (1 - tanh_c * tanh_c)
        k3 = k.view(steps, batch, 4, -1)

        grad_gates = torch.empty_like(gates)  # d pre-activation [T, B, 4H]
        g3 = grad_gates.view(steps, batch, 4, -1)
        dh, dc = grad_h, grad_c  # autograd passes zeros for outputs that got no gradient (materialize_grads)
        for t in reversed(range(steps)):
            zc, zh, r = mask_at(zoneout_c, t), mask_at(zoneout_h, t), mask_at(recurrent, t)
            dh_t = dh + grad_out[t]
            dh_new = dh_t if zh is None else dh_t * (1 - zh)
            dc_new = dc if zc is None else dc * (1 - zc)
            dc_new = dc_new + dh_new * through_h[t]
            torch.mul(k3[t, :, :3], dc_new[:, None], out=g3[t, :, :3])
            torch.mul(k3[t, :, 3], dh_new, out=g3[t, :, 3])
            dc_prev = dc_new * f[t]
            dc = dc_prev if zc is None else dc_prev + dc * zc
            dh = recurrent_grad(grad_gates[t], r, w_hh)  # [B, 4H] @ [4H, H], masked
            if zh is not None:
                dh = dh + dh_t * zh
        return grad_gates, dh, dc, weight_grad(grad_gates, h0, out, recurrent, w_hh), None, None, None, None


def weight_grad(
    grad_gates: torch.Tensor, h0: torch.Tensor, out: torch.Tensor, recurrent: torch.Tensor | None, w_hh: torch.Tensor
) -> torch.Tensor:
    """The W_hh gradient of a whole window in one matmul after the backward walk:
    grad_gates [T, B, 4H], h0 [B, H], out [T, B, H] -> [4H, T*B] @ [T*B, H] = [4H, H] (untied recurrent
    masks: each gate's block from its own masked copy of h, one batched matmul). Packed members (w_hh
    [M, 4H, H]): per member [4H, T*B] @ [T*B, H], one batched matmul -> [M, 4H, H]."""
    h_in = torch.cat([h0[None], out[:-1]])  # h_{t-1} as it entered each step's matmul: [T, B, H]
    if not untied(recurrent, h_in.size(-1)):
        h_in = h_in if recurrent is None else h_in * recurrent
        if w_hh.dim() == 3:
            members, (steps, rows, _) = w_hh.size(0), grad_gates.shape
            per = (steps, members, rows // members, -1)
            return torch.einsum("tmbk,tmbh->mkh", grad_gates.view(per), h_in.view(per))
        return grad_gates.flatten(0, 1).t() @ h_in.flatten(0, 1)
    steps, batch, hid = h_in.shape
    per_gate = h_in[:, :, None, :] * recurrent.view(recurrent.size(0), batch, 4, hid)  # [T, B, 4, H]
    return torch.einsum("tbgk,tbgh->gkh", grad_gates.view(steps, batch, 4, hid), per_gate).reshape(4 * hid, hid)


def lstm_layer_fast(x, h, c, layer, w_hh=None, masks: LayerMasks = NO_MASKS):
    """Drop-in for lstm.lstm_layer_loop (same arguments and returns; LayerMasks) on the LoopLSTM Function."""
    w = layer.weight_hh_l0 if w_hh is None else w_hh
    return LoopLSTM.apply(input_gates(x, layer, masks.input_mask), h, c, w, *masks.in_loop)
