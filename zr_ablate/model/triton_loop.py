"""The fast LSTM loop with each step's gate arithmetic in one Triton kernel (model.loop_kernel=triton; CUDA).

`loop.LoopLSTM` runs every step as one matmul plus ~8 elementwise PyTorch kernels forward and ~8
backward. On a GPU at batch 20 each of those kernels runs for a few microseconds, so a medium window
(35 steps x 2 layers) is ~1,200 tiny kernels whose launch gaps, not arithmetic, set the time. Here each
step is two kernels each way:
  forward   addmm (gates_x[t] + h_in @ W_hh^T -> pre [B, 4H]), then `_forward_step`: the activations, the
            cell update with its mask, tanh, the output, zoneout, and the next step's masked h_in;
  backward  `_backward_step` (everything LoopLSTM.backward does per step, reading the saved activations),
            then mm (grad_gates[t] @ W_hh -> the next dh).
The weight gradient is one matmul after the walk, as in LoopLSTM. Same equations, same saved tensors and
same argument conventions as LoopLSTM; tests/test_triton.py checks the two against each other (outputs
and all gradients, every mask kind) with Triton's CPU interpreter, and tests/model/test_gpu.py on a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from zr_ablate.model.loop import (
    NO_MASKS,
    LayerMasks,
    Saved,
    input_gates,
    recurrent_grad,
    recurrent_term,
    rows_mm,
    untied,
    weight_grad,
)
from zr_ablate.model.masks import mask_at

BLOCK = 256


@triton.jit
def _tanh(x):
    # libdevice's tanh is not in Triton's CPU interpreter; this is within ~1e-7 (fp32) / 1e-13 (fp64) of it.
    a = tl.abs(x)
    t = tl.exp(-2.0 * a)
    big = (1.0 - t) / (1.0 + t)
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(a < 0.1, small, tl.where(x < 0, -big, big))


@triton.jit
def _lerp(start, end, w):
    # torch.lerp's two-sided formula, exact at w = 0 and w = 1 (zoneout's training masks)
    return tl.where(w < 0.5, start + w * (end - start), end - (end - start) * (1.0 - w))


@triton.jit
def _forward_step(
    pre,
    c_prev,
    h_prev,
    m,
    zc,
    zh,
    r_next,
    gates,
    c_out,
    tanh_out,
    h_out,
    h_in_next,
    n,
    H,
    HAS_M: tl.constexpr,
    HAS_ZC: tl.constexpr,
    HAS_ZH: tl.constexpr,
    HAS_R: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One step for B*H units: pre [B, 4H] (i, f, g, o pre-activations) -> gates [B, 4H] activated, c_out,
    tanh_out (tanh of the new cell, before zoneout), h_out [B, H], and h_in_next = h_out * r_next."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = e < n
    row = (e // H) * 4 * H + e % H
    i = tl.sigmoid(tl.load(pre + row, mask=ok))
    f = tl.sigmoid(tl.load(pre + row + H, mask=ok))
    g = _tanh(tl.load(pre + row + 2 * H, mask=ok))
    o = tl.sigmoid(tl.load(pre + row + 3 * H, mask=ok))
    tl.store(gates + row, i, mask=ok)
    tl.store(gates + row + H, f, mask=ok)
    tl.store(gates + row + 2 * H, g, mask=ok)
    tl.store(gates + row + 3 * H, o, mask=ok)
    cp = tl.load(c_prev + e, mask=ok)
    g_in = g * tl.load(m + e, mask=ok) if HAS_M else g
    c = f * cp + i * g_in
    tc = _tanh(c)
    h = o * tc
    if HAS_ZC:  # c_t = d*c_{t-1} + (1-d)*c_new
        c = _lerp(c, cp, tl.load(zc + e, mask=ok))
    if HAS_ZH:
        h = _lerp(h, tl.load(h_prev + e, mask=ok), tl.load(zh + e, mask=ok))
    tl.store(c_out + e, c, mask=ok)
    tl.store(tanh_out + e, tc, mask=ok)
    tl.store(h_out + e, h, mask=ok)
    if HAS_R:
        tl.store(h_in_next + e, h * tl.load(r_next + e, mask=ok), mask=ok)


@triton.jit
def _backward_step(
    dh_mm,
    r_next,
    carry,
    grad_out,
    dc,
    gates,
    c_prev,
    tanh_c,
    m,
    zc,
    zh,
    grad_gates,
    n,
    H,
    HAS_M: tl.constexpr,
    HAS_ZC: tl.constexpr,
    HAS_ZH: tl.constexpr,
    HAS_R: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Step t of the reverse walk. dh_mm: the gradient reaching h_t through step t+1's matmul (before its
    recurrent mask r_next); carry: zoneout's dh_{t+1} * zh_{t+1}. Writes grad_gates [B, 4H] and, in place,
    dc (for c_{t-1}) and carry (dh_t * zh_t)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = e < n
    row = (e // H) * 4 * H + e % H
    dh = tl.load(dh_mm + e, mask=ok)
    if HAS_R:
        dh = dh * tl.load(r_next + e, mask=ok)
    if HAS_ZH:
        dh = dh + tl.load(carry + e, mask=ok)
    dh_t = dh + tl.load(grad_out + e, mask=ok)
    i = tl.load(gates + row, mask=ok)
    f = tl.load(gates + row + H, mask=ok)
    g = tl.load(gates + row + 2 * H, mask=ok)
    o = tl.load(gates + row + 3 * H, mask=ok)
    cp = tl.load(c_prev + e, mask=ok)
    tc = tl.load(tanh_c + e, mask=ok)
    dc_in = tl.load(dc + e, mask=ok)
    dh_new = dh_t
    dc_new = dc_in
    if HAS_ZH:
        zh_t = tl.load(zh + e, mask=ok)
        dh_new = dh_t * (1.0 - zh_t)
    if HAS_ZC:
        zc_t = tl.load(zc + e, mask=ok)
        dc_new = dc_in * (1.0 - zc_t)
    dc_new = dc_new + dh_new * o * (1.0 - tc * tc)
    d_g = dc_new * i * (1.0 - g * g)
    if HAS_M:
        m_t = tl.load(m + e, mask=ok)
        g = g * m_t
        d_g = d_g * m_t
    tl.store(grad_gates + row, dc_new * g * i * (1.0 - i), mask=ok)
    tl.store(grad_gates + row + H, dc_new * cp * f * (1.0 - f), mask=ok)
    tl.store(grad_gates + row + 2 * H, d_g, mask=ok)
    tl.store(grad_gates + row + 3 * H, dh_new * tc * o * (1.0 - o), mask=ok)
    dc_out = dc_new * f
    if HAS_ZC:
        dc_out = dc_out + dc_in * zc_t
    tl.store(dc + e, dc_out, mask=ok)
    if HAS_ZH:
        tl.store(carry + e, dh_t * zh_t, mask=ok)


def _full(mask: torch.Tensor | None, batch: int, hid: int) -> torch.Tensor | None:
    """[T, B, H] or [1, B, H] masks as they are; zoneout's evaluation expectation [1, 1, 1] spread to [1, B, H],
    so that every step's mask is a contiguous [B, H] block the kernels index like the state."""
    if mask is None or mask.shape != (1, 1, 1):  # untied recurrent masks are [.., B, 4H]
        return mask
    return mask.expand(1, batch, hid).contiguous()


class TritonLoopLSTM(torch.autograd.Function):
    """Same signature and equations as loop.LoopLSTM."""

    @staticmethod
    def forward(ctx, gates_x, h0, c0, w_hh, recurrent, cell_update, zoneout_c, zoneout_h):
        steps, batch, four_h = gates_x.shape
        hid = four_h // 4
        n = batch * hid
        masks = [_full(mk, batch, hid) for mk in (recurrent, cell_update, zoneout_c, zoneout_h)]
        per_gate = _untied(masks[0], hid)  # [.., B, 4H]: the masked matmul runs in PyTorch, not in the kernel
        recurrent, cell_update, zoneout_c, zoneout_h = None if per_gate is not None else masks[0], *masks[1:]
        flags = _flags(recurrent, cell_update, zoneout_c, zoneout_h)
        w_t = w_hh.transpose(-2, -1)  # [H, 4H], packed members [M, H, 4H]
        pre = gates_x.new_empty(batch, four_h)
        gates = torch.empty_like(gates_x)
        cells = gates_x.new_empty(steps + 1, batch, hid)  # cells[t] = c_{t-1} (after zoneout)
        tanh_c = gates_x.new_empty(steps, batch, hid)
        out = gates_x.new_empty(steps, batch, hid)
        cells[0] = c0
        # h_{t-1} as it enters step t's matmul: with a recurrent mask, the previous kernel writes it masked
        # into one of two buffers in turn; without, it is the previous output itself.
        masked = [h0 * mask_at(recurrent, 0), gates_x.new_empty(batch, hid)] if recurrent is not None else None
        grid = (triton.cdiv(n, BLOCK),)
        for t in range(steps):
            h_prev = h0 if t == 0 else out[t - 1]
            if per_gate is not None:
                torch.add(gates_x[t], recurrent_term(h_prev, mask_at(per_gate, t), w_hh), out=pre)
            else:
                rows_mm(h_prev if masked is None else masked[t % 2], w_t, add=gates_x[t], out=pre)
            r_next = mask_at(recurrent, t + 1) if recurrent is not None and t + 1 < steps else None
            _forward_step[grid](
                pre,
                cells[t],
                h_prev,
                _arg(mask_at(cell_update, t), pre),
                _arg(mask_at(zoneout_c, t), pre),
                _arg(mask_at(zoneout_h, t), pre),
                _arg(r_next, pre),
                gates[t],
                cells[t + 1],
                tanh_c[t],
                out[t],
                pre if masked is None else masked[(t + 1) % 2],
                n,
                hid,
                **{**flags, "HAS_R": r_next is not None},
            )
        ctx.save_for_backward(gates, cells, tanh_c, out, h0, w_hh, *masks)
        return out, out[-1].clone(), cells[-1].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        s = Saved(*ctx.saved_tensors)
        steps, batch, four_h = s.gates.shape
        n = batch * four_h // 4
        per_gate = _untied(s.recurrent, four_h // 4)
        recurrent = None if per_gate is not None else s.recurrent
        cell_update, zoneout_c, zoneout_h = s.cell_update, s.zoneout_c, s.zoneout_h
        flags = _flags(recurrent, cell_update, zoneout_c, zoneout_h)
        grid = (triton.cdiv(n, BLOCK),)
        grad_out = grad_out.contiguous()
        grad_gates = torch.empty_like(s.gates)
        dc = grad_c.contiguous().clone()
        carry = torch.zeros_like(dc)  # zoneout's dh_{t+1} * zh_{t+1}; nothing comes after the last step
        ones = torch.ones_like(dc) if recurrent is not None else None  # no mask after the last step
        dh_mm = grad_h.contiguous().clone()  # the last step's h gets its gradient from the output h_T
        for t in reversed(range(steps)):
            r_next = (mask_at(recurrent, t + 1) if t + 1 < steps else ones) if recurrent is not None else None
            _backward_step[grid](
                dh_mm,
                _arg(r_next, dc),
                carry,
                grad_out[t],
                dc,
                s.gates[t],
                s.cells[t],
                s.tanh_c[t],
                _arg(mask_at(cell_update, t), dc),
                _arg(mask_at(zoneout_c, t), dc),
                _arg(mask_at(zoneout_h, t), dc),
                grad_gates[t],
                n,
                four_h // 4,
                **flags,
            )
            if per_gate is not None:  # through each gate's masked copy of h_{t-1}
                dh_mm = recurrent_grad(grad_gates[t], mask_at(per_gate, t), s.w_hh)
            else:
                rows_mm(grad_gates[t], s.w_hh, out=dh_mm)  # [B, 4H] @ [4H, H] (per member when packed)
        dh0 = dh_mm if recurrent is None else dh_mm * mask_at(recurrent, 0)
        if zoneout_h is not None:
            dh0 = dh0 + carry
        return grad_gates, dh0, dc, weight_grad(grad_gates, s.h0, s.out, s.recurrent, s.w_hh), None, None, None, None


def _untied(recurrent: torch.Tensor | None, hid: int) -> torch.Tensor | None:
    """The recurrent mask when it is untied ([.., B, 4H], a mask per gate), else None."""
    return recurrent if untied(recurrent, hid) else None


def _flags(recurrent, cell_update, zoneout_c, zoneout_h) -> dict:
    """The kernels' compile-time switches: which masks a window has (the kernel masks only a tied h_{t-1})."""
    return dict(
        HAS_M=cell_update is not None,
        HAS_ZC=zoneout_c is not None,
        HAS_ZH=zoneout_h is not None,
        HAS_R=recurrent is not None,
        BLOCK=BLOCK,
    )


def _arg(t: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """A kernel argument for an optional tensor: the kernel never reads it when its HAS_ flag is off."""
    return dummy if t is None else t


def lstm_layer_triton(x, h, c, layer, w_hh=None, masks: LayerMasks = NO_MASKS):
    """Drop-in for lstm.lstm_layer_loop (same arguments and returns; loop.LayerMasks) on the Triton
    kernels. CUDA tensors, or CPU ones under TRITON_INTERPRET=1 (Triton's interpreter, for tests). An
    untied input mask is applied in the input projection; untied recurrent masks in the per-step matmul,
    which then runs in PyTorch (a batched matmul per gate) and leaves the kernels only the gate arithmetic."""
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("model.loop_kernel=triton needs a CUDA GPU; use loop_kernel auto or torch on the CPU")

    w = layer.weight_hh_l0 if w_hh is None else w_hh
    return TritonLoopLSTM.apply(
        input_gates(x, layer, masks.input_mask), h.contiguous(), c.contiguous(), w, *masks.in_loop
    )
