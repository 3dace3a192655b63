"""The job record: what a job folder holds, what each status means, and how records are written and read.

Torch-free, so that the sweep guard, the results loader and the report can import it without loading
torch. One job folder (a Hydra job; see zr_ablate/conf/config.yaml for its name):

    result.json        RESULT: how the job ended (STATUSES), its config and its numbers (RECORD_FIELDS)
    epochs.csv         EPOCHS: one row per finished epoch (EPOCH_FIELDS)
    sentences_test.csv SENTENCES: per test sentence, its tokens and summed NLL (SENTENCE_FIELDS); paper protocol
    checkpoints/last.ckpt   the weights, optimiser and RNG after the last finished epoch (resume)
    .hydra/config.yaml      the job's composed config, written by run.py when the job starts (not when a
                            record is kept or refused, so that it always matches result.json)
    .lock              LOCK: the advisory lock a running job holds (job_lock), with its pid and host
    .result.failed.json     FALLBACK: the record that replaces result.json if the final one cannot be written
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
HYDRA, LOCK, FALLBACK = ".hydra", ".lock", ".result.failed.json"
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
WRITTEN = (COMPLETED, DIVERGED, FAILED, RUNNING, STOPPED, NOT_STARTED)  # what a result.json may say
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
# What a reader may rely on: each field's type where it is given (null always allowed), the fields a
# completed record must give, and the config entries every record must give. A record that breaks one is
# unreadable, named with the field (record_problem).
NUMBER, INTEGER, TEXT = (int, float), (int,), (str,)
FIELD_TYPES = {
    **dict.fromkeys(["best_val_ppl", "final_val_ppl", "test_ppl", "mc_test_ppl", "final_train_ppl"], NUMBER),
    **dict.fromkeys(["wall_time_s", "tokens_per_s"], NUMBER),
    **dict.fromkeys(["epochs", "n_params", "mc_samples"], INTEGER),
    **dict.fromkeys(["test_protocol", "error"], TEXT),
}
COMPLETED_FIELDS = ["best_val_ppl", "final_val_ppl", "test_ppl", "final_train_ppl", "test_protocol"]
CONFIG_FIELDS = {"model.name": TEXT, "dropout.name": TEXT, "seed": INTEGER}
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


NAME_MAX = 255  # bytes in one file name (ext4, XFS, APFS; NFS and Lustre mounts of them)


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder inside the sweep folder, as the fix to make, or None: a `/` would
    split it into folders, `..` or `.` would leave the sweep folder."""
    if "/" in name or "\0" in name or name in ("", ".", ".."):
        return f"{name!r} is not one folder's name inside the sweep folder; pass values without '/', '..' or NUL"
    if len(name.encode()) > NAME_MAX:
        return (
            f"{name[:60]!r}... is {len(name.encode())} bytes, more than the {NAME_MAX} a file name may have; pass "
            f"fewer or shorter overrides (those that cannot change results, e.g. data.dir, are left out of it)"
        )
    return None


def job_name(override_dirname: str) -> str:
    """A job folder's name: its overrides (minus NEUTRAL_KEYS), as Hydra joins them; no overrides: default.
    Raises ValueError when that cannot be a folder inside the sweep folder."""
    name = override_dirname or "default"
    problem = folder_name_problem(name)
    if problem:
        raise ValueError(f"job folder {problem}")
    return name


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
    for name in (RESULT, EPOCHS, SENTENCES, CHECKPOINTS, HYDRA, "wandb"):
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


def start_record(job_dir: str | Path, record: dict) -> None:
    """Write a job's first record (running) and, beside it, the failed record that end_record falls back to."""
    job = Path(job_dir)
    unwritten = "its final record could not be written (a full disk?); free space and rerun to resume"
    write_json_atomic(job / FALLBACK, dict(record, status=FAILED, error=unwritten))
    write_json_atomic(job / RESULT, record)


def end_record(job_dir: str | Path, record: dict) -> None:
    """Write a job's final record. If it cannot be written (a full disk), the record start_record prepared takes
    its place, so the job never stays `running`: a rename needs no free space."""
    job = Path(job_dir)
    try:
        write_json_atomic(job / RESULT, record)
    except OSError:
        os.replace(job / FALLBACK, job / RESULT)
        raise
    (job / FALLBACK).unlink(missing_ok=True)


def _type_problem(name: str, value, types: tuple) -> str | None:
    if value is None or (isinstance(value, types) and not isinstance(value, bool)):
        return None
    kind = {NUMBER: "a number", INTEGER: "an integer", TEXT: "text"}[types]
    return f"{name} is {type(value).__name__} {value!r:.40}, not {kind}"


def record_problem(record: dict) -> str | None:
    """What makes `record` unusable (a missing field, one of the wrong type), naming the field; or None."""
    if record.get("status") not in WRITTEN:
        return f"status {record.get('status')!r:.40} is none of {', '.join(WRITTEN)}"
    config = record.get("config")
    if not isinstance(config, dict):
        return "it has no config" if config is None else f"config is {type(config).__name__}, not a mapping"
    settings = flat(config)
    for key, types in CONFIG_FIELDS.items():
        problem = _type_problem(f"config {key}", settings.get(key), types)
        if problem or settings.get(key) is None:
            return problem or f"config {key} is missing"
    for key, types in FIELD_TYPES.items():
        problem = _type_problem(key, record.get(key), types)
        if problem:
            return problem
    missing = [key for key in COMPLETED_FIELDS if record.get(key) is None]
    if record["status"] == COMPLETED and missing:
        return f"it says {COMPLETED} but gives no {', '.join(missing)}"
    return None


def read_result(job_dir: str | Path) -> dict | None:
    """The job's result.json, or None if it has none. A file that is not JSON (a write cut short outside
    write_json_atomic, a hand edit) or not a usable record (record_problem) raises RecordError naming it."""
    path = Path(job_dir) / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"{path} is not a readable result ({e}); delete it to rerun the job, or restore it") from e
    if not isinstance(result, dict):
        raise RecordError(f"{path} holds {type(result).__name__}, not a result record; delete it to rerun the job")
    problem = record_problem(result)
    if problem:
        raise RecordError(f"{path} is not a usable result: {problem}; delete it to rerun the job, or restore it")
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
