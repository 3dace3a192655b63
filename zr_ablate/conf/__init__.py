"""Every Hydra config of zr_ablate, shipped with the package: `run.py` composes from here (pkg://zr_ablate.conf)."""
