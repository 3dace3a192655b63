"""Every job's config checked before any job trains (build.check, as the sweep guard runs it): unknown keys
with their close matches, NaN and infinity, Trainer arguments, an accelerator this machine lacks."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from zr_ablate.experiment.build import check, error_line
from zr_ablate.schema import CONF_DIR


def refused(*overrides: str) -> str:
    """The one line check (or Hydra's compose) refuses the tiny profile with `overrides` by."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            check(compose("config", overrides=["model=tiny", *overrides], return_hydra_config=True))
        except Exception as e:
            return error_line(e)
    raise AssertionError(f"{overrides} passed the check")


@pytest.mark.parametrize(
    "override,line",
    [
        # added with `+`, which Hydra lets through on any node
        ("+model.hiden=32", "unknown setting model.hiden (did you mean model.hidden?)"),
        ("+eval.x=1", "unknown setting eval.x (eval takes mc_samples)"),
        ("+foo=1", "unknown setting foo (the top level takes seed, threads"),
        ("+hidden=32", "unknown setting hidden (did you mean model.hidden?)"),
        ("+dropout.recurrent.pp=0.2", "unknown setting dropout.recurrent.pp (did you mean dropout.recurrent.p"),
        ("+trainer.max_epoch=1", "unknown setting trainer.max_epoch (did you mean trainer.max_epochs?)"),
        ("+trainer.foo=1", "unknown setting trainer.foo (not a Trainer argument)"),
        # without `+`: Hydra's own error, said the same way (not its advice to add the key with `+`)
        ("model.hiden=32", "unknown setting model.hiden (did you mean model.hidden?)"),
        ("dropout=gaal", "there is no dropout=gaal (did you mean dropout=gal?); pass one of dropout=gal, naive"),
    ],
)
def test_an_unknown_key_is_refused_with_its_close_matches(override, line):
    assert refused(override).startswith(line)


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=nan",
        "optim.lr=inf",
        "optim.clip=nan",
        "optim.lr_decay=-inf",
        "optim.weight_decay=nan",
        "dropout.p=nan",
        "model.init_scale=inf",
        "data.download_timeout=inf",
    ],
)
def test_nan_and_infinity_are_refused_for_every_number(override):
    key, value = override.split("=")
    assert refused(override).startswith(f"{key}={value} is out of range: it must be a finite number")


def test_a_gpu_accelerator_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "has no GPU that torch can use; pass trainer.accelerator=auto" in refused("trainer.accelerator=gpu")
