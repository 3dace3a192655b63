"""The job record: what a job folder holds, what each status means, and how records are written and read.

Torch-free, so that the sweep guard, the results loader and the report can import it without loading
torch. One job folder (a Hydra job; see conf/config.yaml for its name):

    result.json        RESULT: how the job ended (STATUSES), its config and its numbers (RECORD_FIELDS)
    epochs.csv         EPOCHS: one row per finished epoch (EPOCH_FIELDS)
    checkpoints/last.ckpt   the weights, optimiser and RNG after the last finished epoch (resume)
    .hydra/config.yaml      the job's composed config, written by Hydra before the job starts
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULT, EPOCHS, CHECKPOINTS, HYDRA_CONFIG = "result.json", "epochs.csv", "checkpoints", ".hydra/config.yaml"
LAST_CHECKPOINT = f"{CHECKPOINTS}/last.ckpt"
# Statuses a job records in result.json, and the two the readers add: "missing" (Hydra made the folder but
# the job never wrote result.json) and, in a sweep's summary, "skipped" (final before this command started).
COMPLETED, DIVERGED, FAILED, RUNNING = "completed", "diverged", "failed", "running"
MISSING, SKIPPED = "missing", "skipped"
STATUSES = (COMPLETED, DIVERGED, FAILED, RUNNING, MISSING)
FINAL_STATUSES = (COMPLETED, DIVERGED)  # a rerun skips these; running and failed jobs are resumed
# The per-job numbers of result.json; tracking.end_run copies them into the W&B run summary.
RECORD_FIELDS = [
    "best_val_ppl",
    "final_val_ppl",
    "test_ppl",
    "test_protocol",
    "mc_test_ppl",
    "mc_samples",
    "final_train_ppl",
    "epochs",
    "wall_time_s",
    "tokens_per_s",
    "n_params",
    "error",
]
SUMMARY_FIELDS = ["status", *RECORD_FIELDS]
EPOCH_FIELDS = ["epoch", "lr", "train_loss", "train_ppl", "val_loss", "val_ppl", "tokens_per_s", "train_s", "elapsed_s"]


class RecordError(ValueError):
    """A record that cannot be read; the message names the file and what to do."""


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a record."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_result(job_dir: str | Path) -> dict | None:
    """The job's result.json, or None if it has none. A file that is not JSON (a write cut short outside
    write_json_atomic, a hand edit) raises RecordError naming it."""
    path = Path(job_dir) / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"{path} is not a readable result ({e}); delete it to rerun the job, or restore it") from e
    if not isinstance(result, dict):
        raise RecordError(f"{path} holds {type(result).__name__}, not a result record; delete it to rerun the job")
    return result


def is_job_folder(path: Path) -> bool:
    """A Hydra job folder (with .hydra/) or a copied record (with result.json); not .submitit/ or what tools
    write beside the jobs, such as the probe's probe/."""
    return path.is_dir() and not path.name.startswith(".") and ((path / ".hydra").is_dir() or (path / RESULT).is_file())
