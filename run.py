"""Train one LSTM language model per Hydra job.

    python run.py dropout=zaremba model=medium seed=1
    python run.py -m dropout=none,naive,zaremba,variational model=demo

The only place that reads the composed config: it builds the data module, the model and the Lightning
module from it, and hands them to zr_ablate.train.run_job.
"""
from __future__ import annotations

import sys

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zr_ablate.data import DataError
from zr_ablate.dropout import DropoutSpec
from zr_ablate.model import LSTMLanguageModel
from zr_ablate.module import LMModule
from zr_ablate.tracking import end_run, start_run
from zr_ablate.train import run_job

# Job folders are named from the overrides (not timestamps) so a rerun finds them; no overrides -> "default".
OmegaConf.register_new_resolver("zr_job_name", lambda overrides: overrides or "default", replace=True)


def build(cfg: DictConfig):
    """Config -> (Lightning module, data module). Raises ValueError/DataError on bad settings."""
    spec = DropoutSpec.from_dict(OmegaConf.to_container(cfg.dropout, resolve=True))
    datamodule = instantiate(cfg.data)
    datamodule.setup()  # the vocabulary size shapes the model
    model = LSTMLanguageModel(
        vocab_size=len(datamodule.vocab), hidden=cfg.model.hidden, layers=cfg.model.layers, dropout=spec,
        init_scale=cfg.model.init_scale, tie_weights=cfg.model.tie_weights, lstm_impl=cfg.model.lstm_impl)
    module = LMModule(model, **cfg.optim)
    return module, datamodule


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        module, datamodule = build(cfg)
    except (ValueError, DataError, InstantiationException) as e:
        # instantiate() wraps the constructor's own error; show the one that names the fix.
        sys.exit(f"zr_ablate: error: {e.__cause__ if isinstance(e, InstantiationException) else e}")
    hydra_cfg = HydraConfig.get()
    job_dir = hydra_cfg.runtime.output_dir
    config = OmegaConf.to_container(cfg, resolve=True)
    wandb_logger = start_run(
        cfg.logger.mode, project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.sweep,
        name=hydra_cfg.job.override_dirname or "default", tags=[cfg.dropout.name, cfg.model.name, "ptb"],
        config=config, job_dir=job_dir, init_timeout=cfg.logger.init_timeout)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs["log_every_n_steps"] = cfg.logger.log_every_n_steps
    result = run_job(module, datamodule, job_dir, trainer_kwargs, config=config,
                     test_protocol=cfg.data.test_protocol, loggers=[wandb_logger] if wandb_logger else None)
    end_run(result)  # a job that raised is finished by the FinishWandbRun Hydra callback instead
    print(f"{result['status']}: best val ppl {result['best_val_ppl']}, test ppl {result.get('test_ppl')} "
          f"({result['test_protocol']} protocol) -> {result['job_dir']}")
    return result.get("best_val_ppl")


if __name__ == "__main__":
    main()
