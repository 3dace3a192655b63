"""Run records -> pandas: one row per job (`runs`) and one row per job per epoch (`curves`).

Two sources give the same frames: a sweep folder written by run.py (`load_sweep`) and a W&B group
(`load_wandb`). Failed, diverged, still-running and missing jobs stay in the frames with their status;
whoever aggregates decides what to leave out.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from zr_ablate.analysis.recipes import match, setup
from zr_ablate.dropout import CONNECTIONS
from zr_ablate.records import (
    COMPLETED,
    DIVERGED,
    EPOCH_FIELDS,
    EPOCHS,
    FAILED,
    HYDRA_CONFIG,
    MISSING,
    RECORD_FIELDS,
    RESULT,
    RUNNING,
    UNREADABLE,
    RecordError,
    flat,
    is_job_folder,
    read_result,
    record_problem,
)

# Each connection of the DropoutSpec gives a column <connection>_p, its probability, so a sweep over one
# connection's rate can be told apart. (mc_test_ppl and mc_samples only where MC-dropout evaluation ran.)
RATES = [f"{c}_p" for c in CONNECTIONS]
# placement: the preset's name; variant: the same plus a marker for each setting that changes the method
# beyond the preset (e.g. zaremba+tied+word0.1); p: the preset's shared probability, config dropout.p.
IDENTITY = ["job", "placement", "size", "seed", "status", "variant", "p", *RATES]
# recipe: the published recipe the run's settings follow exactly (recipes.py), or empty; recipe_note: its
# name, or the nearest recipe and what differs; setup: a digest of its recipe settings other than dropout
# (recipes.setup: runs that share it differ only in where dropout goes and in seed).
RUN_COLUMNS = IDENTITY + ["recipe", "recipe_note", "setup"] + RECORD_FIELDS
CURVE_COLUMNS = IDENTITY + EPOCH_FIELDS
# A completed record with one of these NaN or infinite counts as diverged.
PERPLEXITIES = ["best_val_ppl", "final_val_ppl", "test_ppl", "mc_test_ppl", "final_train_ppl"]
# W&B run state -> our status, for runs whose summary does not say how the job ended.
WANDB_STATES = {"finished": COMPLETED, "crashed": FAILED, "failed": FAILED, "killed": FAILED, "running": RUNNING}


class NoRunsError(FileNotFoundError):
    """The source holds no run records; the message says what to pass instead."""


def variant(placement: str | None, tied: bool, word_p: float) -> str | None:
    """The placement plus +tied (tied input and output embeddings) and +word<p> (word-type dropout)."""
    if placement is None:
        return None
    return placement + ("+tied" if tied else "") + (f"+word{word_p:g}" if word_p > 0 else "")


def _row(job: str, config: dict, record: dict, status: str) -> dict:
    infinite = [k for k in PERPLEXITIES if isinstance(record.get(k), float) and not math.isfinite(record[k])]
    if status == COMPLETED and infinite:  # e.g. a test perplexity that overflowed: no mean may include it
        status, record = DIVERGED, dict(record, error=f"recorded {COMPLETED} with {infinite[0]}={record[infinite[0]]}")
    settings = flat(config)
    placement = settings.get("dropout.name")
    # A connection a (pre-)preset does not name is off; a job without any config has no rates at all.
    rates = {f"{c}_p": settings.get(f"dropout.{c}.p", 0.0 if placement else None) for c in CONNECTIONS}
    fields = {k: record.get(k) for k in RECORD_FIELDS}
    if fields["mc_test_ppl"] is not None and fields["mc_samples"] is None:  # e.g. a W&B summary
        fields["mc_samples"] = settings.get("eval.mc_samples")
    tied, word_p = bool(settings.get("model.tie_weights")), rates["word_p"] or 0.0
    recipe, recipe_note = match(settings) if settings else (None, "no recorded config")
    return {
        "job": job,
        "placement": placement,
        "size": settings.get("model.name"),
        "seed": settings.get("seed"),
        "status": status,
        "variant": variant(placement, tied, word_p),
        "p": settings.get("dropout.p"),
        **rates,
        "recipe": recipe,
        "recipe_note": recipe_note,
        "setup": setup(settings) if settings else None,
        **fields,
    }


def _unreadable(job: str, why: str) -> dict:
    """The row of a job whose record cannot be used; the warning names the file or run and the field."""
    print(f"warning: {why}", file=sys.stderr)
    return _row(job, {}, {"error": why}, UNREADABLE)


def _frames(rows: list[dict], curves: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    curves = [c for c in curves if not c.empty]  # concat of empty frames would upset the dtypes
    curve = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    return runs, curve.reindex(columns=CURVE_COLUMNS)


def _with_identity(curve: pd.DataFrame, row: dict) -> pd.DataFrame:
    return curve.assign(**{k: row[k] for k in IDENTITY})


def _hydra_config(path: Path) -> dict:
    """A job's .hydra/config.yaml with its interpolations (p: ${model.dropout_p}) resolved, as result.json
    holds it; unresolved where one cannot be resolved outside the job."""
    config = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(config)


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if is_job_folder(p))


def load_sweep(path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A sweep folder (outputs/<sweep>/, one sub-folder per Hydra job) -> (runs, curves)."""
    sweep = Path(path)
    if not sweep.is_dir():
        raise NoRunsError(f"{sweep} is not a folder; pass a sweep folder such as outputs/<sweep>")
    if (sweep / RESULT).exists():
        raise NoRunsError(f"{sweep} is one job's folder; pass the sweep folder above it, {sweep.parent}")
    jobs = job_folders(sweep)
    if not jobs:
        raise NoRunsError(
            f"{sweep} holds no job folders; pass a sweep folder such as outputs/<sweep> "
            f"(run.py -m writes one sub-folder per job there)"
        )
    rows, curves = [], []
    for job in jobs:
        try:
            result = read_result(job)
        except RecordError as e:  # one unreadable record must not take the whole report down
            rows.append(_unreadable(job.name, str(e)))
            continue
        if result is not None:
            row = _row(job.name, result["config"], result, result["status"])
        else:
            # run.py writes .hydra/config.yaml as the job starts; result.json comes a moment later.
            hydra_config = job / HYDRA_CONFIG
            config = _hydra_config(hydra_config) if hydra_config.exists() else {}
            row = _row(
                job.name,
                config,
                {"error": "no result.json: the job never started or was killed before writing it"},
                MISSING,
            )
        rows.append(row)
        curve = _epochs(job / EPOCHS)
        if curve is not None:
            curves.append(_with_identity(curve, row))
    return _frames(rows, curves)


def _epochs(path: Path) -> pd.DataFrame | None:
    """A job's epochs.csv, or None if it has none or it cannot be read as numbers (a warning says which)."""
    if not path.exists():
        return None
    try:
        curve = pd.read_csv(path)
        return curve.assign(**{k: pd.to_numeric(curve[k]) for k in EPOCH_FIELDS})
    except (ValueError, KeyError, UnicodeDecodeError, pd.errors.ParserError) as e:
        print(f"warning: {path} is not a readable epoch curve ({e}); its job's curve is left out", file=sys.stderr)
        return None


def _wandb_curve(run) -> pd.DataFrame:
    # The default 500 samples would thin out the epoch rows of a long run among its per-step rows.
    history = run.history(samples=100_000, pandas=True)
    if history.empty or "epoch" not in history:
        return pd.DataFrame()
    if "_step" in history:
        history = history.sort_values("_step")
    # Lightning's LearningRateMonitor logs lr at the start of an epoch without an epoch key: it belongs to
    # the next row's epoch. Rows still without one (none in Lightning's logs) cannot be placed.
    history = history.assign(epoch=history["epoch"].bfill())
    # One epoch spans several logged rows (per-step, validation, epoch-end); take each metric's value.
    epochs = history.dropna(subset=["epoch"]).groupby("epoch", as_index=False).first()
    epochs = epochs.reindex(columns=EPOCH_FIELDS)
    epochs = epochs.dropna(subset=["train_ppl", "val_ppl"], how="all")  # e.g. the test row after training
    return epochs.assign(epoch=epochs["epoch"].astype(int) + 1)  # Lightning counts from 0, epochs.csv from 1


def runs_from_wandb(wandb_runs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """W&B public-API runs (from wandb.Api().runs(...)) -> the same (runs, curves) as load_sweep."""
    rows, curves = [], []
    for run in wandb_runs:
        status = run.summary.get("status")
        if status in (None, RUNNING):  # a job that crashed never wrote its final status
            status = WANDB_STATES.get(run.state, run.state)
        problem = record_problem(dict(run.summary, status=status, config=run.config))
        if problem:
            rows.append(_unreadable(run.name, f"W&B run {run.name}: {problem}"))
            continue
        row = _row(run.name, run.config, run.summary, status)
        rows.append(row)
        curves.append(_with_identity(_wandb_curve(run), row))
    if not rows:
        raise NoRunsError("the W&B query found no runs; check ENTITY/PROJECT and the group (the sweep name)")
    return _frames(rows, curves)


def load_wandb(path_or_group: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ENTITY/PROJECT/GROUP (the group is the sweep name, as run.py sets it) -> (runs, curves), online."""
    project, _, group = path_or_group.rpartition("/")
    if project.count("/") != 1 or not group:
        raise NoRunsError(f"expected ENTITY/PROJECT/GROUP, got {path_or_group!r}")
    import wandb  # only this path needs it

    return runs_from_wandb(wandb.Api().runs(project, filters={"group": group}))
