"""Throughput benchmark: every dropout placement against the fused `zaremba` path, Lightning against a plain loop.

    python -m zr_ablate.bench                                # medium and large, every preset, this machine
    python -m zr_ablate.bench --sizes medium --threads 2 --reference
    python -m zr_ablate.bench --device cuda --out outputs/bench/gpu.json

Sizes and placements are the YAML files in conf/model and conf/dropout, composed as run.py composes them.
Tokens are random: speed does not depend on the text. What is measured:
- a training step as LMModule trains (forward, NLL summed over the unroll / batch, backward, one global-norm
  clip, SGD step) and an evaluation step (forward and summed NLL under no_grad), on batch x unroll windows;
- each repeat times `steps` windows of every placement in turn, interleaved, so that drift of the machine
  (another process, clock changes) hits all of them alike. tokens/s is the median over repeats; a ratio is
  the median over repeats of (this placement / fused zaremba in the same repeat);
- the first step's seconds beside the median step: nothing is compiled, so warm-up is that one step;
- achieved GFLOP/s from the model's matmul FLOPs (training = 3 x forward) against the best square matmul on
  this device, measured first;
- memory, in a fresh process per row: the peak to train the model (CUDA: allocator peak; CPU: growth of peak
  RSS over the process before the model was built) and the bytes autograd saves for backward in one step;
- Lightning: LMModule under a Trainer (no logger, checkpoint or progress bar) against a plain
  pytorch/examples-style loop over the same windows, interleaved; the median step (start of one batch to
  the start of the next) after the first `warmup` steps, so a stray slow step does not decide it.
Prints markdown tables and writes them, with every repeat, as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from . import build, concurrency
from .clock import sync, timed
from .lstm import loop_layer
from .lstm_loop import lstm_layer_fast
from .model import LSTMLanguageModel
from .report.tables import markdown_table

CONF = Path(__file__).resolve().parents[1] / "conf"
VOCAB = 10_000  # Mikolov's PTB
BASELINE = ("zaremba", "auto")  # the fused path every ratio is taken against
# Row variants: auto = what run.py trains with; reference = the plain autograd loop (model.lstm_impl=
# reference). On CUDA: eager and layers = cuda_graph off / layers instead of the default; loop = the fused
# placements on the fast loop instead of cuDNN; torch = the loop's step arithmetic as PyTorch ops instead
# of Triton kernels (model.loop_kernel).
VARIANTS = {"auto": [], "reference": ["model.lstm_impl=reference"], "eager": ["cuda_graph=off"],
            "layers": ["cuda_graph=layers"], "loop": ["model.lstm_impl=loop"], "torch": ["model.loop_kernel=torch"]}
# Which placements a variant differs from auto for: the looped ones or the fused ones.
APPLIES = {"reference": "looped", "eager": "looped", "layers": "looped", "loop": "fused", "torch": "looped"}
Window = tuple[torch.Tensor, torch.Tensor]  # (x, y), each [B, T]


class BenchError(ValueError):
    """A bad option, named with its fix."""


# --- settings and models ------------------------------------------------------------------------------
def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def settings(size: str, placement: str, variant: str = "auto", extra: tuple[str, ...] = ()) -> DictConfig:
    """The composed config of one row, exactly as `python run.py model=SIZE dropout=PLACEMENT EXTRA...` sees
    it (extra: --overrides, e.g. model.cuda_graph=false)."""
    for group, name in (("model", size), ("dropout", placement)):
        if name not in choices(group):
            raise BenchError(f"unknown {group} {name!r}; choose from {', '.join(choices(group))}")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        try:
            return compose("config", overrides=[f"model={size}", f"dropout={placement}", *extra, *VARIANTS[variant]])
        except Exception as e:  # a bad --overrides entry: Hydra's own message names it
            raise BenchError(f"bad --overrides {' '.join(extra)}: {e}") from None


def build_model(cfg: DictConfig, device: torch.device) -> LSTMLanguageModel:
    torch.manual_seed(0)  # every row starts from the same weights
    return build.model(cfg, VOCAB).to(device)


def needs_loop(size: str, placement: str) -> bool:
    return build.dropout_spec(settings(size, placement)).needs_step_loop


def path_of(loop: "PlainLoop", device: torch.device) -> str:
    """Which LSTM path training takes (fused kernel, fast loop and its kernels, reference loop) and, on
    CUDA, what is graphed."""
    model = loop.model
    path = model.lstm.path(masks_in_loop=model.lstm.spec.needs_step_loop)
    if path == "loop":
        path = "triton loop" if loop_layer(model.lstm.loop_kernel, device.type == "cuda") is not lstm_layer_fast \
            else "loop"
    path = "reference loop" if path == "reference" else path
    if device.type != "cuda":
        return path
    if loop.step.cuda_graph:
        return f"{path}, step graph"
    return f"{path}, layers graph" if model.lstm.cuda_graph and path.endswith("loop") else f"{path}, eager"


def windows(count: int, batch: int, bptt: int, device: torch.device, seed: int = 0) -> list[Window]:
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(VOCAB, (batch, count * bptt + 1), generator=g)
    return [(stream[:, i * bptt:(i + 1) * bptt].to(device), stream[:, i * bptt + 1:(i + 1) * bptt + 1].to(device))
            for i in range(count)]


def matmul_flops_per_token(hidden: int, layers: int, vocab: int = VOCAB, training: bool = True) -> int:
    """Multiply-adds x 2 of the matmuls per token: each layer's gates [4H, H + H], the softmax [V, H].
    Training adds the two gradient matmuls of each (input and weight gradients): 3 x forward."""
    forward = layers * 2 * 4 * hidden * (hidden + hidden) + 2 * hidden * vocab
    return 3 * forward if training else forward


# --- timing --------------------------------------------------------------------------------------------
class PlainLoop:
    """The pytorch/examples word_language_model training loop, taking LMModule's step (step.TrainStep:
    Zaremba's loss, backward, clip; a CUDA graph when cuda_graph=step) and SGD."""

    def __init__(self, model: LSTMLanguageModel, cfg: DictConfig):
        self.model, self.state = model, None
        self.step = build.train_step(cfg, model)
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.train()
        state = self.state if self.state is not None else self.model.init_state(x.size(0))
        _, self.state, _ = self.step(x, y, state)  # truncated BPTT: the state is carried, detached
        self.opt.step()

    @torch.no_grad()
    def eval_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.eval()
        logits, _ = self.model(x.t(), self.model.init_state(x.size(0)))
        F.cross_entropy(logits.reshape(-1, VOCAB), y.t().reshape(-1), reduction="sum")


def gemm_peak(device: torch.device, size: int | None = None, repeats: int = 5) -> float:
    """Best GFLOP/s of a square float32 matmul: the ceiling the model's matmuls are compared against."""
    n = size or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    return max(2 * n ** 3 / timed(lambda: a @ b, device) for _ in range(repeats)) / 1e9


# --- memory, one fresh process per row ----------------------------------------------------------------
def _rss_peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def probe_memory(size: str, placement: str, impl: str, device: torch.device, extra: tuple[str, ...] = ()) -> dict:
    """Two training steps of one row (on CPU in a fresh process, --probe-memory). Returns the peak MB to
    train it and the MB autograd saved for backward in one step (unique storages)."""
    cfg = settings(size, placement, impl, extra)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _rss_peak_mb() if device.type == "cpu" else 0.0
    model = build_model(cfg, device)
    loop = PlainLoop(model, cfg)
    wins = windows(2, cfg.data.batch_size, cfg.data.bptt, device)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    loop.train_step(*wins[0])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loop.train_step(*wins[1])
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else _rss_peak_mb() - before
    return {"peak_mb": peak, "saved_for_backward_mb": sum(saved.values()) / 2 ** 20}


def memory_of_row(size: str, placement: str, impl: str, device: torch.device, threads: int,
                  extra: tuple[str, ...] = ()) -> dict:
    if device.type == "cuda":  # the allocator's peak resets in-process; no fresh process needed
        result = probe_memory(size, placement, impl, device, extra)
        torch.cuda.empty_cache()
        return result
    cmd = [sys.executable, "-m", "zr_ablate.bench", "--probe-memory", size, placement, impl,
           "--device", device.type, "--threads", str(threads), "--overrides", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {size}/{placement} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the placement table -------------------------------------------------------------------------------
def bench_size(size: str, rows: list[tuple[str, str]], device: torch.device, args, peak: float) -> list[dict]:
    """Every (placement, impl) row of one size, interleaved. rows[0] is the fused zaremba baseline."""
    loops, first_step, results = {}, {}, []
    for row in rows:
        cfg = settings(size, *row, args.overrides)
        loops[row] = PlainLoop(build_model(cfg, device), cfg)
    batch, bptt = cfg.data.batch_size, cfg.data.bptt
    wins = windows(args.steps + args.warmup, batch, bptt, device)
    tokens = args.steps * batch * bptt
    for row, loop in loops.items():  # warm-up; the first step is the cold start a short run pays
        first_step[row] = timed(lambda: loop.train_step(*wins[0]), device)
        for x, y in wins[1:args.warmup]:
            loop.train_step(x, y)
        loop.eval_step(*wins[0])
    train = {row: [] for row in rows}
    evaluate = {row: [] for row in rows}
    for _ in range(args.repeats):
        for row, loop in loops.items():
            t = timed(lambda: [loop.train_step(x, y) for x, y in wins[args.warmup:]], device)
            train[row].append(tokens / t)
            t = timed(lambda: [loop.eval_step(x, y) for x, y in wins[args.warmup:]], device)
            evaluate[row].append(tokens / t)
    hidden, layers = cfg.model.hidden, cfg.model.layers
    for row, loop in loops.items():
        ratios = [a / b for a, b in zip(train[row], train[rows[0]])]
        eval_ratios = [a / b for a, b in zip(evaluate[row], evaluate[rows[0]])]
        tok_s = median(train[row])
        gflops = tok_s * matmul_flops_per_token(hidden, layers) / 1e9
        memory = memory_of_row(size, *row, device, args.threads, args.overrides) if args.memory else {}
        results.append({
            "size": size, "placement": row[0], "impl": row[1], "path": path_of(loop, device),
            "train_tokens_per_s": tok_s, "train_ratio": median(ratios),
            "eval_tokens_per_s": median(evaluate[row]), "eval_ratio": median(eval_ratios),
            "gflops": gflops, "gemm_peak_fraction": gflops / peak,
            "first_step_s": first_step[row], "median_step_s": batch * bptt / tok_s, **memory,
            "graph_error": loop.step.graph_error,  # why a step graph could not be captured (then eager)
            "train_tokens_per_s_repeats": train[row], "eval_tokens_per_s_repeats": evaluate[row]})
    return results


# --- Lightning against the plain loop --------------------------------------------------------------------
class _StepClock(pl.Callback):
    """The time at the start of every training batch and at the end of the last: step i lasts from its
    start to the next one's, so whatever Lightning does between batches is inside it."""

    def __init__(self, device: torch.device):
        self.device, self.marks = device, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync(self.device)
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, module):
        sync(self.device)
        self.marks.append(time.perf_counter())


def _step_seconds(marks: list[float], warmup: int) -> float:
    """Median seconds per step after the warm-up steps: robust to a stray slow step on a shared machine."""
    return median(b - a for a, b in zip(marks[warmup:], marks[warmup + 1:]))


def bench_lightning(size: str, placement: str, device: torch.device, args) -> dict:
    cfg = settings(size, placement, "auto", args.overrides)
    batch, bptt = cfg.data.batch_size, cfg.data.bptt
    wins = windows(args.lightning_steps + args.warmup, batch, bptt, device, seed=1)
    plain, lightning, fit_wall = [], [], []
    for _ in range(args.repeats):
        loop = PlainLoop(build_model(cfg, device), cfg)
        marks = []
        for x, y in wins:
            sync(device)
            marks.append(time.perf_counter())
            loop.train_step(x, y)
        sync(device)
        marks.append(time.perf_counter())
        plain.append(batch * bptt / _step_seconds(marks, args.warmup))

        module = build.lm_module(cfg, build_model(cfg, device))
        clock = _StepClock(device)
        trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                             callbacks=[clock])
        loader = torch.utils.data.DataLoader(wins, batch_size=None, shuffle=False)
        fit_wall.append(timed(lambda: trainer.fit(module, train_dataloaders=loader), device))
        lightning.append(batch * bptt / _step_seconds(clock.marks, args.warmup))
    return {"size": size, "placement": placement, "plain_tokens_per_s": median(plain),
            "lightning_tokens_per_s": median(lightning),
            "ratio": median(a / b for a, b in zip(lightning, plain)), "lightning_fit_wall_s": median(fit_wall),
            "plain_repeats": plain, "lightning_repeats": lightning}


# --- output ---------------------------------------------------------------------------------------------
def placement_table(results: list[dict]) -> str:
    import pandas as pd
    df = pd.DataFrame(results)
    shown = pd.DataFrame({
        "size": df["size"], "placement": df["placement"], "path": df["path"],
        "train tok/s": df["train_tokens_per_s"].map("{:,.0f}".format),
        "x fused zaremba": df["train_ratio"].map("{:.2f}".format),
        "eval tok/s": df["eval_tokens_per_s"].map("{:,.0f}".format),
        "eval x": df["eval_ratio"].map("{:.2f}".format),
        "GFLOP/s (% peak)": [f"{g:.0f} ({100 * f:.0f}%)" for g, f in zip(df["gflops"], df["gemm_peak_fraction"])],
        "first / median step s": [f"{a:.2f} / {b:.2f}" for a, b in zip(df["first_step_s"], df["median_step_s"])]})
    if "peak_mb" in df:
        shown["peak MB"] = df["peak_mb"].map("{:,.0f}".format)
        shown["saved for backward MB"] = df["saved_for_backward_mb"].map("{:,.0f}".format)
    return markdown_table(shown)


def lightning_table(results: list[dict]) -> str:
    import pandas as pd
    df = pd.DataFrame(results)
    return markdown_table(pd.DataFrame({
        "size": df["size"], "placement": df["placement"],
        "plain loop tok/s": df["plain_tokens_per_s"].map("{:,.0f}".format),
        "Lightning tok/s": df["lightning_tokens_per_s"].map("{:,.0f}".format),
        "Lightning / plain": df["ratio"].map("{:.3f}".format),
        "fit wall s (incl. setup)": df["lightning_fit_wall_s"].map("{:.1f}".format)}))


def cpu_model() -> str:
    """The CPU's model name (AMD and Intel machines differ by 20% in the loop's ratio): /proc/cpuinfo on
    Linux, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, {threads} torch threads"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zr_ablate.bench", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["medium", "large"], help="conf/model profiles")
    p.add_argument("--placements", nargs="+",
                   default=["none", "naive", "zaremba", "variational", "semeniuta", "weight_drop", "zoneout"],
                   help="conf/dropout presets (fused zaremba is always measured: it is the baseline)")
    p.add_argument("--reference", action="store_true",
                   help="add the plain autograd loop (impl=reference) for every looped placement")
    p.add_argument("--variants", nargs="*", default=[], choices=["eager", "layers", "loop", "torch"],
                   help="CUDA: add rows per placement with cuda_graph=off (eager) or layers, or the loop on PyTorch "
                        "ops instead of Triton (torch) (looped placements); on the fast loop instead of cuDNN "
                        "(loop; fused placements)")
    p.add_argument("--variant-sizes", nargs="+", default=None, help="sizes that get the --variants rows (default: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed windows per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed windows first")
    p.add_argument("--lightning", nargs="*", default=["zaremba", "variational"],
                   help="placements timed under Lightning and the plain loop (none: skip)")
    p.add_argument("--lightning-steps", type=int, default=15, help="timed windows per Lightning repeat")
    p.add_argument("--lightning-sizes", nargs="+", default=None, help="sizes timed under Lightning (default: all)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory probes")
    p.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every row, as on run.py's command line (e.g. model.cuda_graph=false)")
    p.add_argument("--concurrency", nargs="*", type=int, default=None, metavar="K",
                   help="aggregate throughput of K jobs at once, one process each (default: 1 2 4 on CUDA, "
                        "none on CPU; zr_ablate.concurrency)")
    p.add_argument("--concurrency-size", default="medium", help="model profile of the concurrent jobs")
    p.add_argument("--concurrency-placements", nargs="+", default=["zaremba", "none", "variational", "naive"],
                   help="one concurrent job per placement; level K runs the first K")
    p.add_argument("--concurrency-seconds", type=float, default=4.0, help="length of each concurrency phase")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench.json"))
    p.add_argument("--probe-memory", nargs=3, metavar=("SIZE", "PLACEMENT", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.overrides = tuple(args.overrides)
    if min(args.repeats, args.steps, args.warmup, args.lightning_steps) < 1:
        p.error("--repeats, --steps, --warmup and --lightning-steps must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("zr_ablate.bench: error: --device cuda but torch sees no GPU; use --device cpu")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    if args.probe_memory:
        print(json.dumps(probe_memory(*args.probe_memory, device, args.overrides)))
        return
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.touch()
    except OSError as e:
        sys.exit(f"zr_ablate.bench: error: cannot write {args.out} ({e.strerror}); pass --out to a writable path")
    placements = [BASELINE] + [(p, "auto") for p in args.placements if (p, "auto") != BASELINE]
    if args.concurrency is None:
        args.concurrency = [1, 2, 4] if device.type == "cuda" else []
    try:
        for size in args.sizes:
            for placement, _ in placements:
                settings(size, placement, "auto", args.overrides)  # every name checked before anything runs
        for placement in args.concurrency_placements if args.concurrency else []:
            settings(args.concurrency_size, placement, "auto", args.overrides)
    except BenchError as e:
        sys.exit(f"zr_ablate.bench: error: {e}")
    peak = gemm_peak(device)
    print(f"device: {describe(device, args.threads)}; torch {torch.__version__}; "
          f"float32 GEMM peak {peak:.0f} GFLOP/s", flush=True)
    results, lightning = [], []
    for size in args.sizes:
        rows = list(placements)
        looped = [p for p, _ in placements if needs_loop(size, p)]
        variants = args.variants if device.type == "cuda" and size in (args.variant_sizes or [size]) else []
        for variant in variants:
            rows += [(p, variant) for p, _ in placements if (p in looped) == (APPLIES[variant] == "looped")]
        if args.reference:
            rows += [(p, "reference") for p in looped]
        results += bench_size(size, rows, device, args, peak)
        print(placement_table([r for r in results if r["size"] == size]), flush=True)
        for placement in args.lightning if args.lightning_sizes is None or size in args.lightning_sizes else []:
            lightning.append(bench_lightning(size, placement, device, args))
            print(f"lightning {size}/{placement}: {lightning[-1]['ratio']:.3f} x plain loop", flush=True)
    together = None
    if args.concurrency:
        together = concurrency.measure(args.concurrency_size, args.concurrency_placements, args.concurrency,
                                       args.concurrency_seconds, device.type, args.overrides)
    report = {"command": "python -m zr_ablate.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": describe(device, args.threads),
              "torch": torch.__version__, "threads": args.threads, "gemm_peak_gflops": peak,
              "settings": {k: str(v) for k, v in vars(args).items()}, "placements": results, "lightning": lightning,
              "concurrency": together}
    args.out.write_text(json.dumps(report, indent=1))
    print("\n## Training and evaluation throughput\n")
    print(placement_table(results))
    if lightning:
        print("\n## Lightning against a plain PyTorch loop (training)\n")
        print(lightning_table(lightning))
    if together:
        print(f"\n## Concurrent {args.concurrency_size} jobs, one process each (training, plain loop)\n")
        print(concurrency.table(together))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
