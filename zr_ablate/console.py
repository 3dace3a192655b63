"""A quiet console: each job prints its one line per epoch and its end; the libraries' known-harmless noise
is silenced where it is made, by message (never all warnings, never a whole logger's errors).

Silenced: Lightning's "Tip" advertising litlogger and its start-up lines (GPU/TPU available, LOCAL_RANK,
"`Trainer.fit` stopped"), its `srun` hint on machines that have SLURM installed, its warning that a
one-item-per-window DataLoader has few workers (by design: windows are read in order, state carried), and
the LeafSpec deprecation Lightning's own pytree helper triggers in torch. W&B is quietened through its
settings (wandb_run.start_run, logger.quiet).
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
LIGHTNING_LINES = (
    "💡 Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "LOCAL_RANK:",
    "`Trainer.fit` stopped:",
)
WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r"The '\w+_dataloader' does not have many workers",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LIGHTNING_LINES)


def silence() -> None:
    """Install the filters above (idempotent); run.py calls it before anything is built."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines())
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
