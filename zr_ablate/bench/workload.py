"""The bench's workload: configs composed as run.py composes them, models, random windows, the plain
training loop, FLOP counts and the GEMM ceiling. Used by the bench (measure.py, cli.py), the concurrency
measurement, the budgeted run's speeds and GPU-path checks, and the GPU tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from zr_ablate.experiment import build
from zr_ablate.model.language_model import LSTMLanguageModel
from zr_ablate.model.loop import lstm_layer_fast
from zr_ablate.model.lstm import loop_layer
from zr_ablate.schema import CONF_DIR
from zr_ablate.training.clock import timed
from zr_ablate.training.step import PaperSGD

VOCAB = 10_000  # Mikolov's PTB

BASELINE = ("zaremba", "auto")  # the fused path every ratio is taken against

# Row variants: auto = what run.py trains with; reference = the plain autograd loop (model.lstm_impl=
# reference). On CUDA: eager and layers = cuda_graph off / layers instead of the default; loop = the fused
# placements on the fast loop instead of cuDNN; torch = the loop's step arithmetic as PyTorch ops instead
# of Triton kernels (model.loop_kernel).
VARIANTS = {
    "auto": [],
    "reference": ["model.lstm_impl=reference"],
    "eager": ["cuda_graph=off"],
    "layers": ["cuda_graph=layers"],
    "loop": ["model.lstm_impl=loop"],
    "torch": ["model.loop_kernel=torch"],
}

# Which placements a variant differs from auto for: the looped ones or the fused ones.
APPLIES = {"reference": "looped", "eager": "looped", "layers": "looped", "loop": "fused", "torch": "looped"}

Window = tuple[torch.Tensor, torch.Tensor]  # (x, y), each [B, T]


class BenchError(ValueError):
    """A bad option, named with its fix."""


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def settings(size: str, placement: str, variant: str = "auto", extra: tuple[str, ...] = ()) -> DictConfig:
    """The composed config of one row, exactly as `python run.py model=SIZE dropout=PLACEMENT EXTRA...` sees
    it (extra: --overrides, e.g. model.cuda_graph=false)."""
    for group, name in (("model", size), ("dropout", placement)):
        if name not in choices(group):
            raise BenchError(f"unknown {group} {name!r}; choose from {', '.join(choices(group))}")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            return compose("config", overrides=[f"model={size}", f"dropout={placement}", *extra, *VARIANTS[variant]])
        except Exception as e:  # a bad --overrides entry: Hydra's own message names it
            raise BenchError(f"bad --overrides {' '.join(extra)}: {e}") from None


def build_model(cfg: DictConfig, device: torch.device) -> LSTMLanguageModel:
    torch.manual_seed(0)  # every row starts from the same weights
    return build.model(cfg, VOCAB).to(device)


def needs_loop(size: str, placement: str) -> bool:
    return build.dropout_spec(settings(size, placement)).needs_step_loop


def path_of(loop: PlainLoop, device: torch.device) -> str:
    """Which LSTM path training takes (fused kernel, fast loop and its kernels, reference loop) and, on
    CUDA, what is graphed."""
    model = loop.model
    path = model.lstm.path(masks_in_loop=model.lstm.spec.needs_step_loop)
    if path == "loop":
        path = (
            "triton loop"
            if loop_layer(model.lstm.loop_kernel, device.type == "cuda") is not lstm_layer_fast
            else "loop"
        )
    path = "reference loop" if path == "reference" else path
    if device.type != "cuda":
        return path
    if loop.step.cuda_graph:
        return f"{path}, step graph"
    return f"{path}, layers graph" if model.lstm.cuda_graph and path.endswith("loop") else f"{path}, eager"


def windows(count: int, batch: int, bptt: int, device: torch.device, seed: int = 0) -> list[Window]:
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(VOCAB, (batch, count * bptt + 1), generator=g)
    return [
        (stream[:, i * bptt : (i + 1) * bptt].to(device), stream[:, i * bptt + 1 : (i + 1) * bptt + 1].to(device))
        for i in range(count)
    ]


def matmul_flops_per_token(hidden: int, layers: int, vocab: int = VOCAB, training: bool = True) -> int:
    """Multiply-adds x 2 of the matmuls per token: each layer's gates [4H, H + H], the softmax [V, H].
    Training adds the two gradient matmuls of each (input and weight gradients): 3 x forward."""
    forward = layers * 2 * 4 * hidden * (hidden + hidden) + 2 * hidden * vocab
    return 3 * forward if training else forward


class PlainLoop:
    """The pytorch/examples word_language_model training loop, taking LMModule's step (step.TrainStep:
    Zaremba's loss, backward, clip; a CUDA graph when cuda_graph=step) and SGD."""

    def __init__(self, model: LSTMLanguageModel, cfg: DictConfig):
        self.model, self.state = model, None
        self.step = build.train_step(cfg, model)
        self.opt = PaperSGD(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

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
    return max(2 * n**3 / timed(lambda: a @ b, device) for _ in range(repeats)) / 1e9
