"""The jobs of a budgeted run on disk: a sweep's overrides expanded into jobs exactly as `python run.py -m`
expands them (same job folders, so either command resumes the other's jobs), what each job has done so far,
and the record of a job that the budget stopped or never started.

A job's record is its result.json (zr_ablate.records). Besides run.py's statuses a budgeted run writes:
- "stopped": it ran when the deadline came (or the command was told to stop); `epochs` says how far it
  got, `checkpoint` where the next run resumes from (null if it stopped before its first epoch ended);
- "not started": the budget had no room for it; the next run starts it.
`error` says why in words. run.py treats both as unfinished: the next run resumes or starts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zr_ablate.bench.plan import Shape
from zr_ablate.data import SPLITS, ensure_ptb
from zr_ablate.records import (
    FAILED,
    FINAL_STATUSES,
    LAST_CHECKPOINT,
    NOT_STARTED,
    RESULT,
    RUNNING,
    STOPPED,
    read_result,
    write_json_atomic,
)
from zr_ablate.schema import CONF_DIR

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"  # each job is `python run.py <its overrides>`
LIGHTNING_MAX_EPOCHS = 1000  # Lightning's own default when trainer.max_epochs is null


@dataclass
class Job:
    overrides: list[str]  # run.py's command line for this job
    folder: Path
    settings: dict  # the config its result.json records
    cfg: DictConfig

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def speed_key(self) -> tuple[str, str]:
        """What its speed is looked up by in a bench file: (model profile, dropout placement)."""
        return self.cfg.model.name, self.cfg.dropout.name


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def expand(overrides: list[str]) -> list[Job]:
    """Every job of the sweep, in the order `run.py -m` launches them, each checked as the sweep's guard
    checks it (settings in range; no folder holding a record made with other settings, unless on_stale
    says otherwise). Raises ValueError (Hydra's own errors included) naming the job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from zr_ablate.experiment.build import check, error_line
    from zr_ablate.experiment.guard import job_overrides, stale_settings
    from zr_ablate.experiment.job_folder import job_record

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    jobs = []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = compose("config", overrides=fixed, return_hydra_config=True)
        sweep = OmegaConf.create(
            {"hydra": {"sweeper": {"params": base.hydra.sweeper.get("params")}, "overrides": {"task": overrides}}}
        )
        for job in job_overrides(sweep):
            try:
                cfg = compose("config", overrides=job, return_hydra_config=True)
                check(cfg)
                stale = stale_settings(cfg)
            except Exception as e:
                raise ValueError(f"job {','.join(job)}: {error_line(e)}") from None
            if stale:
                raise ValueError(stale)
            folder, settings = job_record(cfg)
            jobs.append(Job(list(job), folder.absolute(), settings, cfg))
    return jobs


def data_key(cfg: DictConfig) -> tuple:
    """What the token counts depend on."""
    d = cfg.data
    return d.dir, d.cache_dir, d.train_tokens, d.eval_tokens


def split_tokens(cfg: DictConfig) -> dict[str, int]:
    """Tokens per split as the job reads them: PTB's (found or fetched as run.py finds it; raises
    DataError naming the fix) cut to data.train_tokens / data.eval_tokens."""
    d = cfg.data
    folder = ensure_ptb(d.dir, d.cache_dir, dict(d.urls), dict(d.sha256), d.download_timeout)
    limits = {"train": d.train_tokens, "valid": d.eval_tokens, "test": d.eval_tokens}
    counts = {}
    for split in SPLITS:
        with open(folder / f"ptb.{split}.txt") as f:
            counts[split] = sum(len(line.split()) + 1 for line in f)  # one <eos> per line
    return {s: min(n, limits[s]) if limits[s] else n for s, n in counts.items()}


def epochs_done(job: Job) -> int:
    """Epochs its checkpoint carries (as its record counts them); 0 without a checkpoint."""
    record = read_result(job.folder) or {}
    return int(record.get("epochs") or 0) if (job.folder / LAST_CHECKPOINT).is_file() else 0


def shape(job: Job, tokens: dict[str, int]) -> Shape:
    d, done = job.cfg.data, epochs_done(job)
    epochs = job.cfg.trainer.get("max_epochs") or LIGHTNING_MAX_EPOCHS
    return Shape(
        epochs_left=max(0, epochs - done),
        train_tokens=tokens["train"],
        valid_tokens=tokens["valid"],
        test_tokens=tokens["test"],
        eval_batch=d.eval_batch_size,
        test_batch=1 if d.test_protocol == "paper" else d.eval_batch_size,
        resumed=done > 0,
    )


def pack_key(job: Job) -> str | None:
    """Jobs with equal keys can train packed in one process, as the packed launcher groups them: equal
    settings but dropout and seed, the same epoch to resume from. None: it cannot be packed (its placement
    or a Trainer setting; packed_launcher.why_alone)."""
    from zr_ablate.experiment.packed_launcher import PER_MEMBER, why_alone

    if why_alone(job) is not None:
        return None
    shared = {k: v for k, v in job.settings.items() if k not in PER_MEMBER}
    return json.dumps([shared, epochs_done(job)], sort_keys=True, default=str)


def packed_checkpoint(job: Job) -> bool:
    """Its checkpoint was written by a packed group: only the packed launcher resumes it (run.py refuses)."""
    return (job.folder / LAST_CHECKPOINT).is_file() and "packed_with" in (read_result(job.folder) or {})


def status(job: Job) -> str | None:
    return (read_result(job.folder) or {}).get("status")


def is_final(job: Job) -> bool:
    return status(job) in FINAL_STATUSES


def mark_not_started(job: Job, why: str) -> None:
    """Record that the budget left it out, unless it has a record of its own (a checkpoint to resume)."""
    if status(job) not in (None, NOT_STARTED):
        return
    job.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job.folder / RESULT, {"status": NOT_STARTED, "config": job.settings, "error": why})


def mark_stopped(job: Job, why: str) -> dict:
    """Record that the budget stopped it, with how far it got and where the next run resumes from."""
    record = read_result(job.folder) or {"config": job.settings}
    if record.get("status") in FINAL_STATUSES:  # it ended by itself as it was told to stop
        return record
    has_checkpoint = (job.folder / LAST_CHECKPOINT).is_file()
    epochs = int(record.get("epochs") or 0) if has_checkpoint else 0
    resume = (
        f"the next run resumes from {LAST_CHECKPOINT} (after epoch {epochs})"
        if has_checkpoint
        else "before its first epoch ended: the next run starts it again"
    )
    record.update(status=STOPPED, checkpoint=LAST_CHECKPOINT if has_checkpoint else None, error=f"{why}; {resume}")
    job.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job.folder / RESULT, record)
    return record


def mark_ended(job: Job, code: int, console: Path) -> dict:
    """After a job's process ended by itself: its record, made failed if the process died without
    recording how it ended."""
    record = read_result(job.folder) or {"config": job.settings}
    if record.get("status") in (None, RUNNING, NOT_STARTED, STOPPED):
        record.update(status=FAILED, error=f"its process ended with exit code {code} unrecorded; see {console}")
        job.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job.folder / RESULT, record)
    return record
