"""Hydra takes launchers only from the hydra_plugins namespace: this registers zr_ablate's packed launcher
(zr_ablate/experiment/packed_launcher.py) there, for zr_ablate/conf/hydra/launcher/packed.yaml."""

from zr_ablate.experiment.packed_launcher import PackedLauncher as _PackedLauncher


class PackedLauncher(_PackedLauncher):
    pass
