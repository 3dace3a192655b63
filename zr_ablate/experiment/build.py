"""Config -> objects: the one module that reads the composed Hydra config.

run.py, the bench, the sweep's pre-check (zr_ablate/conf/config.yaml: hydra.callbacks.sweep_guard.check) and the
tests build through these functions, so a setting is wired to its constructor in one place:

    cfg.dropout           -> DropoutSpec                      dropout_spec
    cfg.model (+ vocab)   -> LSTMLanguageModel                model
    cfg.optim, cfg.eval   -> LMModule                         lm_module
    cfg.data              -> PTBDataModule (its _target_)     datamodule
    cfg.tf32              -> torch's float32 precision flags  apply_precision
    cfg.threads + launcher -> torch threads of one job         thread_budget
    cfg.cuda_graph        -> graphed layers (model) or graphed steps (TrainStep in LMModule and the bench)
    members' cfgs         -> PackedLM, and the schedule they share    packed_model, packed_schedule
"""

from __future__ import annotations

import difflib
import inspect
import os

import pytorch_lightning as pl
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from zr_ablate.data import EOS, DataError, PTBDataModule
from zr_ablate.dropout import DropoutSpec
from zr_ablate.experiment.optuna_space import register_resolvers
from zr_ablate.model.language_model import LSTMLanguageModel
from zr_ablate.model.packed import PackedLM
from zr_ablate.schema import Config, check_keys, check_ranges, unknown_key_line
from zr_ablate.training.lightning_module import LMModule
from zr_ablate.training.mc_dropout import MCDropoutEval
from zr_ablate.training.packed_job import Schedule
from zr_ablate.training.step import TrainStep

CONFIG_ERRORS = (ValueError, DataError, InstantiationException)
register_resolvers()  # ${zr_tuned:...}: the tuned=<placement> presets read their study's best rates


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
        seed=cfg.seed,
    )


def packed_model(cfgs: list[DictConfig], vocab_size: int) -> PackedLM:
    """The members' models (each `model(cfg)`, its seed's weights and random stream) packed as one. The
    packed layers run on the step loop: the reference loop when model.lstm_impl=reference, else the fast
    one (model.loop_kernel picks its kernels)."""
    m = cfgs[0].model
    return PackedLM(
        [model(cfg, vocab_size) for cfg in cfgs],
        impl="reference" if m.lstm_impl == "reference" else "loop",
        cuda_graph=cfgs[0].cuda_graph == "layers",
        loop_kernel=m.loop_kernel,
    )


# The Trainer settings a packed group follows; the others would change what it computes, so they are refused.
PACKED_TRAINER_KEYS = ("max_epochs", "accelerator", "devices", "enable_progress_bar", "enable_model_summary")
PACKED_LIMITS = {"train": "limit_train_batches", "val": "limit_val_batches", "test": "limit_test_batches"}


def packed_schedule(cfg: DictConfig) -> Schedule:
    """What a packed group shares besides the data: LMModule's settings, the Trainer's epochs and limits."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    unknown = set(trainer) - set(PACKED_TRAINER_KEYS) - set(PACKED_LIMITS.values()) - {"deterministic"}
    unknown |= {k for k in ("devices",) if trainer.get(k, 1) != 1}
    if unknown:
        raise ValueError(
            f"hydra/launcher=packed does not take trainer.{', trainer.'.join(sorted(unknown))}; run those jobs "
            f"without it"
        )
    if trainer.get("max_epochs") is None:
        raise ValueError("hydra/launcher=packed needs trainer.max_epochs (the model profiles set it)")
    LMModule.check_settings(**cfg.optim)
    return Schedule(
        **cfg.optim,
        max_epochs=trainer["max_epochs"],
        test_protocol=cfg.data.test_protocol,
        mc_samples=cfg.eval.mc_samples,
        check_every=cfg.check_every_n_steps,
        log_every=cfg.logger.log_every_n_steps,
        cuda_graph=cfg.cuda_graph == "step",
        limits={split: trainer.get(key) for split, key in PACKED_LIMITS.items()},
    )


def packed_device(cfg: DictConfig) -> torch.device:
    """trainer.accelerator for a packed group: a GPU under auto when there is one, as Lightning picks."""
    accelerator = cfg.trainer.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator} but torch sees no GPU; use trainer.accelerator=cpu")
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"hydra/launcher=packed runs on cpu or one GPU, not trainer.accelerator={accelerator}")
    return torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")


def lm_module(cfg: DictConfig, lm: LSTMLanguageModel, sentence_end: int | None = None) -> LMModule:
    """sentence_end: the <eos> id, to keep the test stream's per-sentence losses (None: not kept)."""
    return LMModule(
        lm,
        **cfg.optim,
        mc_samples=cfg.eval.mc_samples,
        check_every=cfg.check_every_n_steps,
        cuda_graph=cfg.cuda_graph == "step",
        sentence_end=sentence_end,
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
    return lm_module(cfg, model(cfg, len(data.vocab)), data.vocab.stoi[EOS]), data


def thread_budget(threads: int | None, cpus_per_task: int | None = None, at_once: int = 1) -> int | None:
    """threads, else the cores a scheduler gives the job (cpus_per_task), else cores / jobs at once when several
    run on one machine (at_once <= 0: one per core), else None (torch's own): two 2-thread jobs on 2 cores ran
    more than 5x slower than one (oversubscription), so each job gets its share."""
    if threads:
        return int(threads)
    if cpus_per_task:
        return int(cpus_per_task)
    if at_once != 1:
        cores = os.cpu_count() or 1
        return max(1, cores // (at_once if at_once > 0 else cores))
    return None


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
