"""The end of a budgeted run: where every job of the sweep stands, what the next run of the same command does
with it, and the exit code (0: all finished; 75, EX_TEMPFAIL: some are left, run it again; 1: a job failed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from zr_ablate.records import (
    FAILED,
    FINAL_STATUSES,
    LAST_CHECKPOINT,
    NOT_STARTED,
    STATUSES,
    STOPPED,
    RecordError,
    read_result,
)

EXIT_DONE, EXIT_FAILED, EXIT_LEFT = 0, 1, 75


def _record(folder: Path) -> dict:
    try:
        return read_result(folder) or {"status": NOT_STARTED}
    except RecordError as e:
        return {"status": "unreadable", "error": str(e)}


def _next(record: dict, checkpoint: bool) -> str:
    """What the next run of the same command does with a job in this state (and with a checkpoint or not)."""
    status = record.get("status")
    if status in FINAL_STATUSES:
        return "nothing (skips it)"
    if checkpoint and record.get("epochs"):
        return f"resumes it after epoch {record.get('epochs')}"
    return "starts it again" if status in (FAILED, STOPPED) else "starts it"


def _number(value, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else ""


def table(jobs) -> str:
    """One row per job, in Markdown: status, epochs done of all, best validation and test perplexity, and
    what the next run does. Plain strings: a bare GPU node may lack pandas."""
    rows = [["job", "status", "epochs", "best val ppl", "test ppl", "next run"], ["---"] * 6]
    for job in jobs:
        r = _record(job.folder)
        epochs = f"{r.get('epochs') or 0}/{job.cfg.trainer.get('max_epochs')}"
        rows.append(
            [
                job.name,
                r.get("status"),
                epochs,
                _number(r.get("best_val_ppl")),
                _number(r.get("test_ppl")),
                _next(r, (job.folder / LAST_CHECKPOINT).is_file()),
            ]
        )
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)


def closing_lines(jobs, command: str, folder: str, nothing_fits: bool = False) -> tuple[list[str], int]:
    """The counts by status, what to run next, and the exit code. `nothing_fits`: no job could start in
    this budget, so running the same command again would not help."""
    counts = Counter(_record(job.folder).get("status") for job in jobs)
    order = [*FINAL_STATUSES, FAILED, STOPPED, NOT_STARTED, *STATUSES]
    said = ", ".join(f"{counts[s]} {s}" for s in dict.fromkeys([*order, *sorted(counts)]) if counts[s])
    lines = [f"{len(jobs)} jobs: {said}"]
    if counts[FAILED]:
        code = EXIT_FAILED
        lines.append(f"a job failed: its run.log and console.log in {folder} say why; {command} retries it")
    elif nothing_fits:
        code = EXIT_FAILED
        lines.append(
            "no job could start in this budget (each one's estimate is in its result.json): raise --budget, "
            "or, if the estimates are too high, lower --job-start or --margin"
        )
    elif sum(n for s, n in counts.items() if s not in FINAL_STATUSES):
        code = EXIT_LEFT
        lines.append(f"the rest: run the same command again (it resumes where this one stopped): {command}")
    else:
        code = EXIT_DONE
    lines.append(f"the report: python -m zr_ablate.report {folder}")
    return lines, code
