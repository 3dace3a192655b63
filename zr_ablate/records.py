"""The job record: what a job folder holds, what each status means, and how records are written and read.

Torch-free, so that the sweep guard, the results loader and the report can import it without loading
torch. One job folder (a Hydra job; see zr_ablate/conf/config.yaml for its name):

    result.json        RESULT: how the job ended (STATUSES), its config and its numbers (RECORD_FIELDS)
    epochs.csv         EPOCHS: one row per finished epoch (EPOCH_FIELDS)
    sentences_test.csv SENTENCES: per test sentence, its tokens and summed NLL (SENTENCE_FIELDS); paper protocol
    checkpoints/last.ckpt   the weights, optimiser and RNG after the last finished epoch (resume)
    .hydra/config.yaml      the job's composed config, written by Hydra before the job starts
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

from omegaconf import OmegaConf

RESULT, EPOCHS, CHECKPOINTS, HYDRA_CONFIG = "result.json", "epochs.csv", "checkpoints", ".hydra/config.yaml"
LAST_CHECKPOINT = f"{CHECKPOINTS}/last.ckpt"
# Statuses a job records in result.json, and those the readers add: "missing" (Hydra made the folder but the
# job never wrote result.json), "unreadable" (its result.json is not JSON) and, in a sweep's summary,
# "skipped" (final before this command started).
COMPLETED, DIVERGED, FAILED, RUNNING = "completed", "diverged", "failed", "running"
MISSING, UNREADABLE, SKIPPED = "missing", "unreadable", "skipped"
STATUSES = (COMPLETED, DIVERGED, FAILED, RUNNING, MISSING, UNREADABLE)
# And those only a time-budgeted run records (zr_ablate.bench.jobs): "stopped" at its deadline, resumable from
# the last checkpoint; "not started", no room in the budget. Reports list them where they occur.
STOPPED, NOT_STARTED = "stopped", "not started"
FINAL_STATUSES = (COMPLETED, DIVERGED)  # a rerun skips these; running and failed jobs are resumed
# The per-job numbers of result.json; wandb_run.end_run copies them into the W&B run summary.
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
# Per test sentence (the predicted tokens up to and including each <eos>, in stream order; a stream cut short
# ends in a last, open sentence): tokens, the NLL summed over them in nats, and the same under MC-dropout
# evaluation where it ran (else blank). Written only under the paper test protocol (one stream, batch 1), so
# two runs' rows are the same sentences and exp(sum nll / sum tokens) is the run's test_ppl: comparisons are
# paired over sentences without re-running (zr_ablate/analysis/compare.py).
SENTENCES = "sentences_test.csv"
SENTENCE_FIELDS = ["tokens", "nll", "mc_nll"]


# Settings that cannot change a job's numbers: left out of the job folder's name (zr_ablate/conf/config.yaml reads this
# list through the zr_neutral_keys resolver) and of the stale-result comparison. Hydra matches an override's
# key exactly, so each is listed whole (data.urls.train, not data.urls).
NEUTRAL_KEYS = [
    *("sweep", "grid", "out_root", "threads", "check_every_n_steps", "cuda_graph", "on_stale"),
    *("study.storage", "study.name"),
    *("model.lstm_impl", "model.loop_kernel", "data.dir", "data.cache_dir", "data.download_timeout"),
    *(f"data.urls.{split}" for split in ("train", "valid", "test")),
    *(f"data.sha256.ptb.{split}.txt" for split in ("train", "valid", "test")),
    *(f"logger.{key}" for key in ("mode", "project", "entity", "log_every_n_steps", "init_timeout", "quiet")),
    *("trainer.accelerator", "trainer.devices", "trainer.enable_progress_bar"),
]


def job_name(override_dirname: str) -> str:
    """A job folder's name: its overrides (minus NEUTRAL_KEYS), as Hydra joins them; no overrides: default."""
    return override_dirname or "default"


def register_resolvers() -> None:
    """The resolvers zr_ablate/conf/config.yaml names the job folders with; before Hydra composes it."""
    OmegaConf.register_new_resolver("zr_job_name", job_name, replace=True)
    OmegaConf.register_new_resolver("zr_neutral_keys", lambda: list(NEUTRAL_KEYS), replace=True)


def flat(config: dict, prefix: str = "") -> dict:
    """{"dropout": {"name": ..}} -> {"dropout.name": ..}; keys already dotted stay as they are."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(recorded: dict, current: dict) -> list[str]:
    """The settings that differ between the config a job recorded and the one it would run with now, as
    `key: old -> new`, leaving out NEUTRAL_KEYS and keys one side does not have (a record older than a
    setting, or a setting since removed)."""
    old, new = flat(recorded), flat(current)
    return [
        f"{k}: {old[k]!r} -> {new[k]!r}"
        for k in sorted(old.keys() & new.keys())
        if old[k] != new[k] and k not in NEUTRAL_KEYS
    ]


def stale_line(job_dir: str | Path, changed: list[str]) -> str:
    """The one line that stops a job whose record was made with other settings."""
    return (
        f"{job_dir} was run with other settings ({'; '.join(changed)}); pass on_stale=rerun to run it "
        f"again (its records move to a stale-<time>/ folder inside it) or on_stale=keep to keep its result"
    )


def set_aside(job_dir: str | Path) -> Path:
    """Move a job's records and checkpoints into stale-<time>/ inside its folder, so that it can run again
    from scratch and nothing it wrote is lost. Returns that folder."""
    job = Path(job_dir)
    target = job / time.strftime("stale-%Y%m%d-%H%M%S")
    target.mkdir()
    for name in (RESULT, EPOCHS, SENTENCES, CHECKPOINTS, "wandb"):
        if (job / name).exists():
            shutil.move(str(job / name), str(target / name))
    return target


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


def write_sentences(job_dir: str | Path, tokens: list[int], nll: list[float], mc_nll: list[float] | None) -> None:
    """SENTENCES: one row per sentence; floats as repr, so the sums read back are the ones written."""
    path = Path(job_dir) / SENTENCES
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SENTENCE_FIELDS)
        for i, (n, loss) in enumerate(zip(tokens, nll)):
            writer.writerow([n, repr(loss), "" if mc_nll is None else repr(mc_nll[i])])
    os.replace(tmp, path)


def is_job_folder(path: Path) -> bool:
    """A Hydra job folder (with .hydra/) or a copied record (with result.json); not .submitit/ or what tools
    write beside the jobs, such as the probe's probe/."""
    return path.is_dir() and not path.name.startswith(".") and ((path / ".hydra").is_dir() or (path / RESULT).is_file())
