"""Hydra takes sweepers only from the hydra_plugins namespace: this registers zr_ablate's Optuna sweeper
(zr_ablate/experiment/optuna_sweeper.py) there, for zr_ablate/conf/hydra/sweeper/optuna.yaml."""

from zr_ablate.experiment.optuna_sweeper import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    pass
