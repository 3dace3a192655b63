"""Hydra takes launchers only from the hydra_plugins namespace: this registers zr_ablate's SLURM launcher
(zr_ablate/experiment/slurm.py) there, for zr_ablate/conf/hydra/launcher/slurm.yaml."""

from zr_ablate.experiment.slurm import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    pass
