"""Composing and running sweeps (floor 4: imports training/, model/ and the base modules).

- build.py: config -> objects (the one module that reads a composed config);
- guard.py: the sweep guard, a Hydra callback: every job checked before any trains, a summary at the end;
- slurm.py: the SLURM launcher (registered in hydra_plugins/);
- packed_launcher.py, packed_run.py: hydra/launcher=packed, a sweep's jobs of one shape as packed groups;
- wandb_run.py: one W&B run per job;
- wandb_sweeps.py: the W&B sweep files written from the named grids.
"""
