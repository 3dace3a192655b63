"""Hydra takes launchers only from the hydra_plugins namespace: this registers zr_ablate's SLURM launcher
(zr_ablate/slurm.py) there, for conf/hydra/launcher/slurm.yaml."""

from zr_ablate.slurm import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    pass
