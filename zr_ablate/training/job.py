"""One training job: fit, test, and the records a sweep is judged by (epochs.csv, result.json, and under the
paper test protocol the per-sentence test losses, sentences_test.csv).

`run_job` takes built objects (data module, Lightning module, trainer settings); run.py builds them from
the Hydra config, so nothing here reads the global config. `quiet_trainer` is the bare Trainer the bench
and the tests fit with: no records, nothing printed.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar

from zr_ablate.model.language_model import count_parameters
from zr_ablate.records import (
    CHECKPOINTS,
    COMPLETED,
    DIVERGED,
    EPOCH_FIELDS,
    EPOCHS,
    FAILED,
    LAST_CHECKPOINT,
    RUNNING,
    SENTENCES,
    end_record,
    start_record,
    write_sentences,
)
from zr_ablate.training.clock import sync
from zr_ablate.training.interrupt import as_interrupted
from zr_ablate.training.lightning_module import Diverged

log = logging.getLogger(__name__)


class EpochRecorder(pl.Callback):
    """Appends one row per epoch to epochs.csv and times the training part of each epoch (not validation).

    The clock runs from the epoch's start to the end of its last training window, read after waiting for
    the device once (GPU work is queued: a clock read after every step without waiting would time the
    launches, and waiting every step would stall the GPU)."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []
        self.start = time.perf_counter()

    def read_rows(self, resume_epoch: int) -> list[dict]:
        return read_rows(self.path, resume_epoch)

    def on_train_epoch_start(self, trainer, pl_module):
        self.train_s, self.tokens = None, 0
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]
        sync(pl_module.device)
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tokens += batch[1].numel()
        if batch_idx + 1 == trainer.num_training_batches:  # the last training window of the epoch
            sync(pl_module.device)
            self.train_s = time.perf_counter() - self.t0

    def on_train_epoch_end(self, trainer, pl_module):
        if self.train_s is None:  # the epoch ended early (a limit, an interruption): time what ran
            self.train_s = time.perf_counter() - self.t0
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        # Callbacks run before the module's own on_train_epoch_end, which logs and resets the train
        # metric, so read it directly; validation has already ended and logged val_ppl.
        train = pl_module.ppl["fit"]
        train_ppl = float(train.compute()) if train.update_count else float("nan")
        row = {
            "epoch": trainer.current_epoch + 1,
            "lr": self.lr,
            "train_loss": math.log(train_ppl),
            "train_ppl": train_ppl,
            "val_loss": m.get("val_loss"),
            "val_ppl": m.get("val_ppl"),
            "tokens_per_s": self.tokens / self.train_s if self.train_s else float("nan"),
            "train_s": self.train_s,
            "elapsed_s": time.perf_counter() - self.start,
        }
        self.rows.append(row)
        pl_module.log("tokens_per_s", row["tokens_per_s"])
        log.info(epoch_line(row))
        append_row(self.path, row)


def epoch_line(row: dict) -> str:
    """The console line of one finished epoch (an epochs.csv row)."""
    val = row["val_ppl"] if row["val_ppl"] is not None else float("nan")
    return (
        f"epoch {row['epoch']}: lr {row['lr']:.4g}, train ppl {row['train_ppl']:.2f}, val ppl {val:.2f}, "
        f"{row['tokens_per_s']:.0f} tokens/s"
    )


def append_row(path: Path, row: dict) -> None:
    """One finished epoch's row at the end of epochs.csv (its header first, in a new file)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EPOCH_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_rows(path: Path, resume_epoch: int) -> list[dict]:
    """The rows of the epochs a checkpoint holds; later rows (an epoch cut short) are dropped, from the file
    too."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) if v else None for k, v in r.items()} for r in csv.DictReader(f)]
    rows = [dict(r, epoch=int(r["epoch"])) for r in rows if r["epoch"] <= resume_epoch]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EPOCH_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def curve_summary(rows: list[dict]) -> dict:
    """result.json's numbers that come from the epoch curve (epochs.csv rows)."""
    vals = [r["val_ppl"] for r in rows if r["val_ppl"] is not None]
    speeds = [r["tokens_per_s"] for r in rows]
    return dict(
        epochs=len(rows),
        best_val_ppl=min(vals) if vals else None,
        final_val_ppl=vals[-1] if vals else None,
        final_train_ppl=rows[-1]["train_ppl"] if rows else None,
        tokens_per_s=sum(speeds) / len(speeds) if speeds else None,
    )


def last_checkpoint(job_dir: str) -> Path | None:
    path = Path(job_dir) / LAST_CHECKPOINT
    return path if path.is_file() else None


def read_checkpoint(path: Path) -> dict:
    """A job's checkpoint. One cut off mid-write (a kill while saving) is an error that names the fix rather
    than a crash deep in Lightning."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(
            f"cannot read the checkpoint {path} ({e}); delete it to restart this job from scratch"
        ) from e


def checkpoint_epochs(path: Path) -> int:
    """Epochs a checkpoint has completed."""
    return read_checkpoint(path)["epoch"] + 1


def run_job(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    job_dir: str,
    trainer_kwargs: dict,
    config: dict,
    test_protocol: str,
    loggers: list | None = None,
    extra: dict | None = None,
) -> dict:
    """Fit and test; always leave a result.json saying how the job ended, then re-raise any error.

    If the job folder holds a checkpoint from an interrupted run, training resumes from it (weights,
    optimiser, lr schedule, epoch, RNG) and the epoch curve so far is kept: the result equals that of an
    uninterrupted run. `extra` goes into result.json as is (e.g. the W&B run id).
    """
    job = Path(job_dir)
    job.mkdir(parents=True, exist_ok=True)
    resume = last_checkpoint(job_dir)
    if resume is None:
        (job / EPOCHS).unlink(missing_ok=True)  # a fresh run rewrites its curve
    (job / SENTENCES).unlink(missing_ok=True)  # written again by this run's test, never left from another
    recorder = EpochRecorder(job / EPOCHS)
    result = {
        "status": RUNNING,
        "config": config,
        "n_params": count_parameters(module.model),
        "test_protocol": test_protocol,
        "job_dir": str(job),
        **(extra or {}),
        "resumed_from_epoch": None,
    }
    start_record(job, result)
    start = time.perf_counter()
    try:
        # Saved at every epoch end (after validation), when the carried state is reset anyway.
        checkpoint = ModelCheckpoint(
            dirpath=job / CHECKPOINTS, filename="last", save_top_k=1, enable_version_counter=False
        )  # one file, overwritten each epoch
        callbacks = [recorder, checkpoint] + ([RichProgressBar()] if trainer_kwargs.get("enable_progress_bar") else [])
        trainer = pl.Trainer(
            default_root_dir=str(job),
            callbacks=callbacks,
            logger=loggers or False,
            num_sanity_val_steps=0,
            **trainer_kwargs,
        )
        if resume is not None:
            saved = read_checkpoint(resume)
            if "packed_with" in saved:  # training/packed_job.py's: weights and random stream, no Trainer state
                raise RuntimeError(
                    f"{resume} was written by a packed sweep; rerun with hydra/launcher=packed to resume this job, "
                    f"or delete the checkpoint to train it alone from the start"
                )
            recorder.rows = recorder.read_rows(resume_epoch=saved["epoch"] + 1)
            result["resumed_from_epoch"] = len(recorder.rows)
            # Clocks continue from the interrupted run's last recorded epoch.
            offset = recorder.rows[-1]["elapsed_s"] if recorder.rows else 0.0
            recorder.start -= offset
            start -= offset
            log.info("resuming %s from %s (after epoch %d)", job, resume, len(recorder.rows))
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted")
        tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
        result.update(status=COMPLETED, test_ppl=tested["test_ppl"])
        if "mc_test_ppl" in tested:  # MC-dropout evaluation ran (eval.mc_samples > 0)
            result.update(mc_test_ppl=tested["mc_test_ppl"], mc_samples=module.mc.samples)
        sentences = getattr(module, "sentences", None)
        if sentences is not None and len(sentences):  # the test split ran as one stream
            write_sentences(job, *sentences.sums())
    except Diverged as e:
        result.update(status=DIVERGED, error=str(e))
    except BaseException as e:
        interrupted = as_interrupted(e)
        error = f"{interrupted}; rerun the same command to resume from the last checkpoint" if interrupted else None
        result.update(status=FAILED, error=error or f"{type(e).__name__}: {e}")
        raise
    finally:
        result.update(**curve_summary(recorder.rows), wall_time_s=time.perf_counter() - start)
        end_record(job, result)
    return result


def quiet_trainer(**kw) -> pl.Trainer:
    """One epoch with nothing written or printed: no logger, checkpoint, progress bar, model summary or
    sanity validation. `kw` adds Trainer arguments or overrides these."""
    quiet = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**(quiet | kw))
