"""The GPU paths a budgeted run trains with: each checked here, in this process, before any job uses it, or
given by the user; then the fastest of those that passed, where a bench file measured them.

- CUDA graphs (cuda_graph=step or layers): a few training steps graphed against the same steps eager,
  the same masks drawn for both: losses, gradients and weights must agree to float32 rounding;
- the loop's Triton kernels (model.loop_kernel=triton): the loop on Triton against the loop on PyTorch ops.
On a CPU neither applies; `check` says so in one line and returns no overrides.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zr_ablate.bench.workload import PlainLoop, build_model, needs_loop, settings, windows
from zr_ablate.experiment.build import apply_precision
from zr_ablate.schema import CUDA_GRAPH

GRAPH_MODES = [m for m in CUDA_GRAPH if m != "off"]  # best first: the step graph holds the most
CHECK_SHAPE = ("model.hidden=48",)  # small: a check takes seconds, and the arithmetic is the same at any size
STEPS = 4  # full windows, then a short one (an epoch's last: eager even under a graph) and one more full one


def training_trace(loop: PlainLoop, wins) -> list[torch.Tensor]:
    """Train on `wins`; the loss, gradient norm, gradients and weights after each window. The masks of
    window k are drawn from seed 100 + k, so two loops see the same masks."""
    loop.model.train()
    out = []
    for k, (x, y) in enumerate(wins):
        torch.manual_seed(100 + k)
        state = loop.state if loop.state is not None else loop.model.init_state(x.size(0))
        nll, loop.state, norm = loop.step(x, y, state)
        out += [nll, norm, *(p.grad.detach().clone() for p in loop.model.parameters())]
        loop.opt.step()
        out += [p.detach().clone() for p in loop.model.parameters()]
    return out


def same_training(
    placement: str, reference: tuple[str, ...], candidate: tuple[str, ...], device: torch.device, tol: float
) -> str | None:
    """None if the candidate settings train `placement` as the reference settings do, step by step (to
    relative tolerance `tol`); else why not, in a few words."""
    apply_precision(False)  # FP32 on both sides: TF32 alone would differ by ~1e-3
    traces = []
    for extra in (reference, candidate):
        cfg = settings("tiny", placement, "auto", CHECK_SHAPE + extra)
        loop = PlainLoop(build_model(cfg, device), cfg)
        full = windows(STEPS + 1, cfg.data.batch_size, cfg.data.bptt, device)
        wins = full[:STEPS] + [(full[STEPS][0][:, :2], full[STEPS][1][:, :2])] + full[:1]
        try:
            traces.append(training_trace(loop, wins))
        except Exception as e:  # a path that cannot run here (a capture or a kernel compile failing) is not used
            return f"{' '.join(extra)} raised {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        if loop.step.graph_error:
            return f"the step graph was not captured ({loop.step.graph_error.splitlines()[0]})"
    for a, b in zip(*traces):
        if not torch.allclose(a, b, rtol=tol, atol=tol / 10):
            worst = ((a - b).abs() / b.abs().clamp_min(tol)).max().item()
            return f"{' '.join(candidate)} trains otherwise than {' '.join(reference)} (relative error {worst:.1e})"
    return None


def check(
    placements: list[str], device: torch.device, cuda_graph: str, loop_kernel: str, log: Callable[[str], None]
) -> dict | None:
    """{"modes": CUDA-graph modes allowed, best first, ending in "off"; "triton": whether the Triton loop
    may be used; "given": the user's choices, taken unchecked ("auto": check)}. None on a CPU."""
    if device.type != "cuda":
        log("GPU paths: a CPU run, so CUDA graphs and the Triton loop do not apply (checks skipped)")
        return None
    looped = [p for p in placements if needs_loop("tiny", p)]
    given = [f"cuda_graph={cuda_graph}"] if cuda_graph != "auto" else []
    given += [f"model.loop_kernel={loop_kernel}"] if loop_kernel != "auto" else []
    modes = [cuda_graph] if cuda_graph != "auto" else []
    for mode in GRAPH_MODES if cuda_graph == "auto" else []:
        # A step graph holds every placement's step; the layers graph only the loop of the looped ones.
        problems = [
            f"{p}: {why}"
            for p in (placements if mode == "step" else looped)
            if (why := same_training(p, ("cuda_graph=off",), (f"cuda_graph={mode}",), device, 1e-5))
        ]
        log(f"GPU paths: cuda_graph={mode} " + ("trains as eager does" if not problems else f"NOT used: {problems}"))
        modes += [] if problems else [mode]
    triton = loop_kernel == "triton"
    if loop_kernel == "auto":
        ref, new = (("cuda_graph=off", "model.lstm_impl=loop", f"model.loop_kernel={k}") for k in ("torch", "triton"))
        problems = [
            f"{p}: {why}" for p in looped or placements[:1] if (why := same_training(p, ref, new, device, 1e-4))
        ]
        triton = not problems
        log("GPU paths: the Triton loop " + ("trains as the PyTorch loop does" if triton else f"NOT used: {problems}"))
    return {"modes": [*dict.fromkeys(modes + ["off"])], "triton": triton, "given": given}


def choose(bench: dict | None, size: str, placements: list[str], checks: dict | None) -> list[str]:
    """The jobs' overrides (none on a CPU): what the user gave, else from what passed its check and the
    bench file's rows at `size` (variants measured side by side: zr_ablate.bench.workload.VARIANTS):
    - cuda_graph: the first passed mode, unless its rows show a failed capture or the other passed mode
      trained every looped placement >5% faster;
    - model.loop_kernel=torch if the Triton loop failed its check or PyTorch ops trained every looped
      placement >5% faster;
    - model.lstm_impl=loop (the fused placements on the fast loop rather than cuDNN) if that trains the
      sweep's placements in >5% less time in all."""
    if checks is None:
        return []
    mode = checks["modes"][0]
    kernel = [] if checks["triton"] else ["model.loop_kernel=torch"]
    rows = {}
    if bench:
        rows = {(r["placement"], r["impl"]): r for r in bench["placements"] if r["size"] == size}
    speed = {k: r["train_tokens_per_s"] for k, r in rows.items()}

    def faster(variant: str, among: list[str]) -> bool:
        measured = [p for p in among if (p, variant) in speed and (p, "auto") in speed]
        return bool(measured) and all(speed[(p, variant)] > 1.05 * speed[(p, "auto")] for p in measured)

    failed = any(rows[(p, "auto")].get("graph_error") for p in placements if (p, "auto") in rows)
    if mode == "step" and "layers" in checks["modes"] and (failed or faster("layers", placements)):
        mode = "layers"
    if not kernel and faster("torch", placements):
        kernel = ["model.loop_kernel=torch"]
    timed = [p for p in placements if (p, "auto") in speed]
    seconds = {v: sum(1 / speed.get((p, v), speed[(p, "auto")]) for p in timed) for v in ("auto", "loop")}
    impl = ["model.lstm_impl=loop"] if timed and seconds["loop"] < seconds["auto"] / 1.05 else []
    given = {o.split("=")[0]: o for o in checks["given"]}
    return [*given.values(), *(o for o in (f"cuda_graph={mode}", *impl, *kernel) if o.split("=")[0] not in given)]
