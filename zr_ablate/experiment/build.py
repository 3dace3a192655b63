"""Config -> objects: the one module that reads the composed Hydra config.

run.py, the bench, the sweep's pre-check (zr_ablate/conf/config.yaml: hydra.callbacks.sweep_guard.check) and the
tests build through these functions, so a setting is wired to its constructor in one place:

    cfg.dropout           -> DropoutSpec                      dropout_spec
    cfg.model (+ vocab)   -> LSTMLanguageModel                model
    cfg.optim, cfg.eval   -> LMModule                         lm_module
    cfg.data              -> PTBDataModule (its _target_)     datamodule
    cfg.tf32              -> torch's float32 precision flags  apply_precision
    cfg.cuda_graph        -> graphed layers (model) or graphed steps (TrainStep in LMModule and the bench)
"""

from __future__ import annotations

import difflib
import inspect

import pytorch_lightning as pl
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from zr_ablate.data import DataError, PTBDataModule
from zr_ablate.dropout import DropoutSpec
from zr_ablate.model.language_model import LSTMLanguageModel
from zr_ablate.schema import Config, check_keys, check_ranges, unknown_key_line
from zr_ablate.training.lightning_module import LMModule
from zr_ablate.training.mc_dropout import MCDropoutEval
from zr_ablate.training.step import TrainStep

CONFIG_ERRORS = (ValueError, DataError, InstantiationException)


def error_line(e: BaseException) -> str:
    """One line that names the fix. instantiate() wraps the constructor's own error: unwrap it. Hydra's
    compose wraps OmegaConf's: an unknown key becomes check_keys' line (not Hydra's advice to add it with
    `+`), an unknown preset lists the presets there are, and a value of the wrong type keeps both first lines."""
    cause = e.__cause__
    if isinstance(e, InstantiationException) and cause:
        return _first_line(cause)
    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(name, e.options, n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"there is no {group}={name}{hint}; pass one of {group}={', '.join(e.options)}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        return unknown_key_line(cause.full_key)
    if isinstance(e, ConfigCompositionException) and cause:
        return f"{_first_line(e).rstrip('.')} ({_first_line(cause)})"
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


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
        cuda_graph=cfg.cuda_graph == "layers",
        loop_kernel=m.loop_kernel,
    )


def lm_module(cfg: DictConfig, lm: LSTMLanguageModel) -> LMModule:
    return LMModule(
        lm,
        **cfg.optim,
        mc_samples=cfg.eval.mc_samples,
        check_every=cfg.check_every_n_steps,
        cuda_graph=cfg.cuda_graph == "step",
    )


def train_step(cfg: DictConfig, lm: LSTMLanguageModel) -> TrainStep:
    """The bench's plain loop takes the same step as LMModule."""
    return TrainStep(lm, cfg.optim.clip, cuda_graph=cfg.cuda_graph == "step")


def saved_config(saved: dict | DictConfig) -> DictConfig:
    """A job's config as it was saved (.hydra/config.yaml, result.json), typed by today's schema: keys added
    since take their defaults and keys since removed are dropped."""
    saved = OmegaConf.to_container(OmegaConf.create(saved))
    schema = OmegaConf.structured(Config)
    return OmegaConf.merge(schema, _known(saved, OmegaConf.to_container(schema)))


def _known(saved: dict, schema: dict) -> dict:
    """`saved` without the keys `schema` does not have (free-form nodes, such as trainer, kept whole)."""
    return {
        k: _known(v, schema[k]) if isinstance(v, dict) and isinstance(schema[k], dict) and schema[k] else v
        for k, v in saved.items()
        if k in schema
    }


def datamodule(cfg: DictConfig) -> PTBDataModule:
    return instantiate(cfg.data)


def check(cfg: DictConfig) -> None:
    """Cheap checks of one job's settings, without data or model: raises ValueError naming the fix.
    Run for every job of a sweep before any job trains (zr_ablate.experiment.guard.SweepGuard)."""
    check_keys(cfg)
    check_ranges(cfg)
    check_trainer(cfg)
    dropout_spec(cfg)
    LMModule.check_settings(**cfg.optim)
    MCDropoutEval(cfg.eval.mc_samples)
    datamodule(cfg).check_shape()


def check_trainer(cfg: DictConfig) -> None:
    """The trainer node is free-form (any Trainer argument): its keys must be the Trainer's, and an
    accelerator must exist on this machine when the jobs run on it (not under SLURM, where the login node
    that checks may have no GPU while the compute nodes do)."""
    known = [k for k in inspect.signature(pl.Trainer.__init__).parameters if k != "self"]
    for key in cfg.trainer:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=2, cutoff=0.8)
            hint = f"did you mean {' or '.join(f'trainer.{k}' for k in close)}?" if close else "not a Trainer argument"
            raise ValueError(f"unknown setting trainer.{key} ({hint}); remove it or correct its name")
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default=""))
    present = torch.cuda.is_available() or (accelerator == "gpu" and torch.backends.mps.is_available())
    if accelerator in ("gpu", "cuda") and not present and "Slurm" not in launcher:
        raise ValueError(
            f"trainer.accelerator={accelerator} but this machine has no GPU that torch can use; pass "
            f"trainer.accelerator=auto (a GPU where there is one, else the CPU) or trainer.accelerator=cpu"
        )


def build(cfg: DictConfig) -> tuple[LMModule, PTBDataModule]:
    """Config -> (Lightning module, data module). Raises one of CONFIG_ERRORS on bad settings."""
    check_keys(cfg)
    check_ranges(cfg)
    check_trainer(cfg)
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
