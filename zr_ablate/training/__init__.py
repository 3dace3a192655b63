"""How one model is trained (floor 3: imports model/ and the base modules).

- step.py: one training step (loss summed over the unroll, global-norm clip) and the paper's SGD schedule;
- lightning_module.py: LMModule, the LightningModule (state carried across windows, paper evaluation);
- mc_dropout.py: MC-dropout test evaluation;
- job.py: one job: fit, test, resume, divergence, its records (result.json, epochs.csv);
- interrupt.py: SIGTERM and SIGINT end a job as Interrupted, recorded, and its sweep with exit 143 / 130;
- clock.py: honest timing on a GPU and the name of the device a speed is reported beside;
- packed_step.py, packed_job.py: packed members trained as if alone, and their jobs' records.
"""
