"""Config -> objects: the one module that reads the composed Hydra config.

run.py, the bench, the sweep's pre-check (conf/config.yaml: hydra.callbacks.sweep_guard.check) and the
tests build through these functions, so a setting is wired to its constructor in one place:

    cfg.dropout           -> DropoutSpec                      dropout_spec
    cfg.model (+ vocab)   -> LSTMLanguageModel                model
    cfg.optim, cfg.eval   -> LMModule                         lm_module
    cfg.data              -> PTBDataModule (its _target_)     datamodule
    cfg.tf32              -> torch's float32 precision flags  apply_precision
    cfg.cuda_graph        -> graphed layers (model) or graphed steps (TrainStep in LMModule and the bench)
"""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .data import DataError, PTBDataModule
from .dropout import DropoutSpec
from .mc import MCDropoutEval
from .model import LSTMLanguageModel
from .module import LMModule
from .step import TrainStep

CONFIG_ERRORS = (ValueError, DataError, InstantiationException)
CUDA_GRAPHS = ("off", "layers", "step")


def error_line(e: BaseException) -> str:
    """The message that names the fix: instantiate() wraps the constructor's own error, so unwrap it."""
    return str(e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e)


def dropout_spec(cfg: DictConfig) -> DropoutSpec:
    return DropoutSpec.from_dict(OmegaConf.to_container(cfg.dropout, resolve=True))


def model(cfg: DictConfig, vocab_size: int) -> LSTMLanguageModel:
    m = cfg.model
    return LSTMLanguageModel(
        vocab_size=vocab_size,
        hidden=m.hidden,
        layers=m.layers,
        dropout=dropout_spec(cfg),
        init_scale=m.init_scale,
        tie_weights=m.tie_weights,
        lstm_impl=m.lstm_impl,
        cuda_graph=cuda_graph(cfg) == "layers",
        loop_kernel=m.loop_kernel,
    )


def cuda_graph(cfg: DictConfig) -> str:
    if cfg.cuda_graph not in CUDA_GRAPHS:
        raise ValueError(f"cuda_graph must be one of {', '.join(CUDA_GRAPHS)}, got {cfg.cuda_graph!r}")
    return cfg.cuda_graph


def lm_module(cfg: DictConfig, lm: LSTMLanguageModel) -> LMModule:
    return LMModule(
        lm,
        **cfg.optim,
        mc_samples=cfg.eval.mc_samples,
        check_every=cfg.check_every_n_steps,
        cuda_graph=cuda_graph(cfg) == "step",
    )


def train_step(cfg: DictConfig, lm: LSTMLanguageModel) -> TrainStep:
    """The bench's plain loop takes the same step as LMModule."""
    return TrainStep(lm, cfg.optim.clip, cuda_graph=cuda_graph(cfg) == "step")


def datamodule(cfg: DictConfig) -> PTBDataModule:
    return instantiate(cfg.data)


def check(cfg: DictConfig) -> None:
    """Cheap checks of one job's settings, without data or model: raises ValueError naming the fix.
    Run for every job of a sweep before any job trains (zr_ablate.sweep.SweepGuard)."""
    dropout_spec(cfg)
    cuda_graph(cfg)
    LMModule.check_settings(**cfg.optim)
    MCDropoutEval(cfg.eval.mc_samples)
    datamodule(cfg).check_shape()


def build(cfg: DictConfig) -> tuple[LMModule, PTBDataModule]:
    """Config -> (Lightning module, data module). Raises one of CONFIG_ERRORS on bad settings."""
    data = datamodule(cfg)
    data.setup()  # the vocabulary size shapes the model
    return lm_module(cfg, model(cfg, len(data.vocab))), data


def apply_precision(tf32: bool) -> dict:
    """FP32 as the paper trained, unless tf32: PyTorch lets cuDNN's LSTM use TF32 by default while cuBLAS
    matmuls stay FP32, so without this the fused and loop placements would run at different precisions.
    Returns the settings in force, for result.json."""
    torch.backends.cudnn.allow_tf32 = tf32  # the legacy flags: mixing them with fp32_precision raises
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # sets cuda.matmul.allow_tf32
    return {
        "tf32": tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
