"""The config's types, defaults and ranges, checked before any job trains.

Types: dataclasses registered in Hydra's ConfigStore as `zr_ablate_schema`, the first entry of
zr_ablate/conf/config.yaml's defaults, so every YAML file and override is merged into typed nodes: OmegaConf itself
rejects `seed=abc` or an unknown key when the config is composed. The defaults here are the paper's common
settings and every dropout connection switched off, so a profile (zr_ablate/conf/model/) states only what differs
and a preset (zr_ablate/conf/dropout/) only the connections it turns on, while `dropout.recurrent.p=0.2` still works
on any preset.

Keys and ranges: `check_keys` refuses a key the schema does not have (Hydra lets `+model.hiden=32` add one
to any node), naming the close matches; `check_ranges` refuses a value outside its range, NaN and infinity
included, naming the key and what it must be. Both run in build.check for every job of a sweep before any
job trains (and in build.build for a single job).
"""

import difflib
import math
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Dict, Optional, get_type_hints  # noqa: UP035  OmegaConf reads these typing forms

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from zr_ablate.dropout import CONNECTIONS, DEFAULT_MASKS, Connection
from zr_ablate.model.lstm import IMPLS, LOOP_KERNELS
from zr_ablate.records import register_resolvers

CONF_DIR = Path(__file__).resolve().parent / "conf"  # every Hydra config: profiles, presets, grid/, paper/, wandb/

# The allowed values of the settings that take one of a few words. The model's own (model.lstm_impl,
# model.loop_kernel) are zr_ablate.model.lstm's, which also refuses others when built directly.
CUDA_GRAPH = ("off", "layers", "step")  # training.step / model.graphs: what one CUDA graph holds
ON_STALE = ("stop", "rerun", "keep")  # a job folder holding a record made with other settings
TEST_PROTOCOLS = ("paper", "fast")  # zr_ablate.data: batch 1 one step at a time, or batch x unroll
LOGGER_MODES = ("auto", "online", "offline", "disabled")  # experiment.wandb_run.resolve_mode


def one_of(values: tuple[str, ...]):
    """A range entry for a setting that takes one of `values`."""
    return (lambda v: v in values, "one of " + ", ".join(values))


# The dropout node's types, generated from zr_ablate.dropout (the runtime spec, frozen and validated there),
# so a connection or a connection setting is added in dropout.py alone. A connection: p, mask, gates.
_CONNECTION_TYPES = get_type_hints(Connection)  # dropout.py's annotations are strings (postponed)
ConnectionConf = make_dataclass(
    "ConnectionConf", [(f.name, _CONNECTION_TYPES[f.name], f.default) for f in fields(Connection)]
)


def _connection(mask: str):
    return field(default_factory=lambda: ConnectionConf(0.0, mask))


# Every connection of DropoutSpec, off (with the spec's default mask kind) unless the preset turns it on.
DropoutConf = make_dataclass(
    "DropoutConf",
    [("name", str, "custom"), ("p", float, 0.0)]  # p: the presets' shared rate, interpolated into connections
    + [(c, ConnectionConf, _connection(DEFAULT_MASKS[c])) for c in CONNECTIONS],
)


@dataclass
class ModelConf:
    name: str = MISSING
    hidden: int = MISSING
    init_scale: float = MISSING  # every parameter starts U(-a, a)
    dropout_p: float = 0.0  # the presets' default rate
    layers: int = 2
    tie_weights: bool = False
    lstm_impl: str = "auto"  # auto (fused where the placement allows) | fused | loop | reference
    loop_kernel: str = "auto"  # the loop's step arithmetic: torch | triton (auto: triton on CUDA)


@dataclass
class DataConf:  # where PTB comes from: zr_ablate/conf/data/ptb.yaml; its shape: the model profile, else these
    _target_: str = "zr_ablate.data.PTBDataModule"
    dir: Optional[str] = None  # noqa: UP045  a local folder (or env ZR_ABLATE_PTB_DIR); else the cache
    cache_dir: str = MISSING
    urls: Dict[str, str] = MISSING  # noqa: UP006
    sha256: Dict[str, str] = MISSING  # noqa: UP006
    download_timeout: float = 30.0
    batch_size: int = 20
    bptt: int = 35  # the unroll
    eval_batch_size: int = 20  # validation (and the fast test protocol): batch 20 x bptt, as the paper
    test_protocol: str = "paper"  # paper: batch 1, state carried over the whole test text | fast: batch 20
    train_tokens: Optional[int] = None  # noqa: UP045  the first N training tokens only (CPU demo, tests)
    eval_tokens: Optional[int] = None  # noqa: UP045  the first N valid/test tokens only (tests)


@dataclass
class OptimConf:
    lr: float = 1.0
    lr_decay: float = MISSING
    decay_after: int = MISSING
    clip: float = 5.0
    weight_decay: float = 0.0  # Gal's: each parameter times (1 - weight_decay) after every SGD step


@dataclass
class EvalConf:
    mc_samples: int = 0  # MC-dropout test evaluation (Gal): the softmax averaged over K stochastic passes; 0 = off


@dataclass
class LoggerConf:  # values: zr_ablate/conf/logger/wandb.yaml
    mode: str = MISSING
    project: str = MISSING
    entity: Optional[str] = None  # noqa: UP045
    log_every_n_steps: int = MISSING
    init_timeout: float = MISSING
    quiet: bool = True  # W&B's banners and run-history blocks off; logger.quiet=false shows them


@dataclass
class StudyConf:  # an Optuna study of dropout rates: hparams_search=<placement> fills it, tuned=<placement> reads it
    storage: str = "sqlite:///${out_root}/studies.db"  # one SQLite file holds every study (resumable)
    name: str = "${dropout.name}-${model.name}"  # e.g. naive-demo


@dataclass
class Config:
    seed: int = 1
    threads: Optional[int] = None  # noqa: UP045  torch threads for this job; null = torch's, or cores / jobs at once
    sweep: str = "adhoc"  # names the output folder <out_root>/<sweep>/ (a rerun finds its jobs there)
    out_root: str = "outputs"
    tf32: bool = False  # FP32 as the paper; true lets cuDNN and cuBLAS use TF32 on Ampere+ (in result.json)
    check_every_n_steps: int = 50  # divergence check (a host-GPU sync) every N training steps and epoch end
    cuda_graph: str = "step"  # CUDA training: step (the whole step) | layers (the loop's layers) | off
    on_stale: str = "stop"  # a job folder whose record has other settings: stop | rerun (set it aside) | keep
    eval: EvalConf = field(default_factory=EvalConf)
    study: StudyConf = field(default_factory=StudyConf)
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    optim: OptimConf = field(default_factory=OptimConf)
    dropout: DropoutConf = field(default_factory=DropoutConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    trainer: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006  pytorch_lightning.Trainer arguments


def register() -> None:
    """Make `zr_ablate_schema` and the job-folder resolvers known to Hydra: done on import, which run.py,
    the bench and the tests do (through build) before they compose."""
    ConfigStore.instance().store(name="zr_ablate_schema", node=Config)
    register_resolvers()


register()


def _keys(node: DictConfig | dict, prefix: str = "") -> list[str]:
    """Every dotted key of a config node, nodes and leaves (values left unresolved, missing ones too)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    keys = []
    for key, value in node.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _keys(value, f"{prefix}{key}.")
    return keys


# Nodes that take any key: Trainer arguments (build.check checks them against the Trainer) and the data's
# per-split addresses and checksums (data.py checks those). `hydra` is Hydra's own.
FREE_FORM = ("trainer", "data.urls", "data.sha256", "hydra")


def unknown_key_line(key: str, known: list[str] | None = None) -> str:
    """The one line that refuses a setting the schema does not have: the close matches at its depth, else the
    same name elsewhere (`hidden` -> model.hidden), else what its node does take."""
    known = known if known is not None else _keys(OmegaConf.structured(Config))
    node, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(key, [k for k in known if k.count(".") == key.count(".")], n=2, cutoff=0.8)
    close = close or [k for k in known if k.rpartition(".")[2] == leaf]
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    else:
        siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == node]
        hint = f"{node or 'the top level'} takes {', '.join(siblings)}" if siblings else "see zr_ablate/schema.py"
    return f"unknown setting {key} ({hint}); remove it or correct its name"


def check_keys(cfg: DictConfig) -> None:
    """Raise ValueError naming the first key the schema does not have, such as `+model.hiden=32`."""
    known = _keys(OmegaConf.structured(Config))
    for key in _keys(cfg):
        if key not in known and not key.startswith(tuple(f"{node}." for node in FREE_FORM)) and key != "hydra":
            raise ValueError(unknown_key_line(key, known))


# key -> (test, what it must be). Checked after types, so values are ints and floats here; a float that is
# NaN or infinite is refused for every key before these tests (a comparison with NaN is always false).
RANGES = {
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "threads": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "check_every_n_steps": (lambda v: v >= 1, "an integer >= 1"),
    "cuda_graph": one_of(CUDA_GRAPH),
    "on_stale": one_of(ON_STALE),
    "eval.mc_samples": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "model.hidden": (lambda v: v >= 1, "an integer >= 1"),
    "model.layers": (lambda v: v >= 1, "an integer >= 1"),
    "model.init_scale": (lambda v: v > 0, "> 0"),
    "model.lstm_impl": one_of(IMPLS),
    "model.loop_kernel": one_of(LOOP_KERNELS),
    "data.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.bptt": (lambda v: v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.test_protocol": one_of(TEST_PROTOCOLS),
    "data.train_tokens": (lambda v: v is None or v >= 2, "null or an integer >= 2"),
    "data.eval_tokens": (lambda v: v is None or v >= 2, "null or an integer >= 2"),
    "data.download_timeout": (lambda v: v > 0, "> 0 seconds"),
    "logger.mode": one_of(LOGGER_MODES),
    "logger.log_every_n_steps": (lambda v: v >= 1, "an integer >= 1"),
    "logger.init_timeout": (lambda v: v > 0, "> 0 seconds"),
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.lr_decay": (lambda v: v >= 1, ">= 1 (the lr is divided by it)"),
    "optim.decay_after": (lambda v: v >= 0, "an integer >= 0"),
    "optim.clip": (lambda v: v > 0, "> 0 (a gradient norm)"),
    "optim.weight_decay": (lambda v: 0 <= v < 1, "in [0, 1) (each step scales the weights by 1 - it)"),
    "trainer.max_epochs": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1 (0 records an untrained model)"),
}


def check_value(key: str, value) -> None:
    """Raise ValueError if `value` is NaN or infinite, or outside RANGES[key]."""
    ok, must = RANGES.get(key, (lambda v: True, None))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}={value!r} is out of range: it must be a finite number" + (f", {must}" if must else ""))
    if not ok(value):
        raise ValueError(f"{key}={value!r} is out of range: it must be {must}")


def check_ranges(cfg: DictConfig) -> None:
    """Raise ValueError naming the first key whose value is NaN, infinite or out of range, and what it must be."""
    values = dict(flat_leaves(cfg))
    for key, value in values.items():
        if isinstance(value, float):
            check_value(key, value)
    for key in RANGES:
        value = values.get(key)
        if value is None and key == "trainer.max_epochs":
            continue  # Lightning's default then
        check_value(key, value)


def flat_leaves(cfg: DictConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, resolved value) of every leaf outside Hydra's own node."""
    leaves = []
    for key, value in cfg.items():
        if key == "hydra" and not prefix:
            continue
        if isinstance(value, DictConfig):
            leaves += flat_leaves(value, f"{prefix}{key}.")
        else:
            leaves.append((f"{prefix}{key}", value))
    return leaves
