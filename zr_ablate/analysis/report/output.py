"""Report output: the tables as CSV and LaTeX, results.md, the W&B aggregate run, and each job's records
copied beside the report (--keep-runs) so that it regenerates from the repository alone."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from zr_ablate.analysis.report.tables import has_mc, markdown_table, rate_label, swept
from zr_ablate.analysis.runs import job_folders, load_sweep, load_wandb
from zr_ablate.records import COMPLETED, EPOCHS, HYDRA_CONFIG, RESULT, RUNNING, SENTENCES, RecordError, read_result

PROTOCOLS = {
    "paper": "batch 1, state carried over the whole test stream, as Zaremba et al. test",
    "fast": "batch 20 x unroll, like validation; not the paper's protocol, so published test "
    "numbers are not like for like",
}


def write_table(out: Path, name: str, numbers: pd.DataFrame, formatted: pd.DataFrame) -> str:
    """name.csv (numbers) and name.tex (formatted); returns the Markdown version."""
    numbers.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(markdown_table(formatted) + "\n")  # e.g. for the W&B Report (dashboard.py)
    tex = formatted.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    (out / f"{name}.tex").write_text(
        "% needs \\usepackage{booktabs}\n" + tex.to_latex(hrules=True).replace("±", r"$\pm$")
    )
    return markdown_table(formatted)


def _not_finished(runs: pd.DataFrame) -> list[str]:
    """One line per kind of unfinished run, naming the jobs and, where recorded, why they stopped."""
    why = {RUNNING: ", or killed before it could record how it ended"}  # the others carry an error
    lines = []
    for status, jobs in runs[runs["status"] != COMPLETED].groupby("status", dropna=False):
        names = ", ".join(
            f"`{j.job}`" + (f" ({j.error.splitlines()[0]})" if isinstance(j.error, str) else "")
            for j in jobs.itertuples()
        )
        lines.append(f"- {status}{why.get(status, '')} ({len(jobs)}): {names}")
    return lines


def _notes(runs: pd.DataFrame) -> list[str]:
    """What the perplexity table needs said beyond the usual: variants, swept probabilities, MC columns."""
    notes = []
    if runs["placement"].str.contains("+", regex=False, na=False).any():
        notes.append(
            "A placement with `+tied` ties the input and output embeddings (model.tie_weights; published: "
            "Press & Wolf 2016), `+word<p>` adds word-type dropout at rate p (dropout.word.p)."
        )
    rates = swept(runs)
    if rates:
        notes.append(
            f"The sweep varies {' and '.join(f'`{rate_label(c)}`' for c in rates)} within a placement: one "
            f"row per value, never a mean across them (`p` is dropout.p, the presets' shared rate; "
            f"`<connection>.p` is that connection's own, dropout.<connection>.p)."
        )
    if has_mc(runs):
        notes.append(
            "MC test: the test split under MC-dropout evaluation (every dropout mask on, the softmax "
            "averaged over 'MC passes' stochastic passes, each holding one draw of the sequence masks over the "
            "whole test stream, word dropout off; Gal & Ghahramani 2016). Published MC: Gal & Ghahramani "
            "2016 Table 1, Variational (untied weights, MC), the only published MC numbers, beside runs of "
            "that recipe."
        )
    return notes


def markdown(
    name: str, source: str, command: str, runs: pd.DataFrame, tables: dict[str, str], figs: list[tuple[Path, str]]
) -> str:
    done = runs[runs["status"] == COMPLETED]
    protocols = [f"`{p}` ({PROTOCOLS.get(p, 'unknown protocol')})" for p in sorted(done["test_protocol"].unique())]
    lines = [
        f"# Dropout placement on PTB: {name}",
        "",
        f"Source: `{source}` (jobs: {len(runs)}, completed: {len(done)}).  ",
        f"Test protocol: {', '.join(protocols) or 'none (no completed runs)'}.  ",
        f"Produced by: `{command}`",
        "",
    ]
    unfinished = _not_finished(runs)
    if unfinished:
        lines += [
            f"**Not every run completed.** Left out of every mean, table and figure below (jobs: "
            f"{len(runs) - len(done)} of {len(runs)}; the status table counts them):",
            "",
            *unfinished,
            "",
        ]
    lines += [
        "## Perplexity per placement",
        "",
        "Validation: the last epoch's; test: the final weights, with the protocol above. Mean ± sd over "
        "completed seeds. A published number (standard evaluation) stands beside a row only when its runs "
        "follow that number's training recipe on every setting (zr_ablate/analysis/published_recipes.yaml: size, "
        "init, unroll, batch, each dropout rate and mask, lr schedule, clip, weight decay, epochs, tying, "
        "test protocol); otherwise 'published source' names the nearest recipe and what differs. 'test - "
        "published' is our mean minus the published test value.",
        *_notes(runs),
        "",
        tables["perplexity"],
        "",
        "## Overfitting: train vs validation",
        "",
        "Final epoch, mean over seeds. Train perplexity is averaged over the epoch with the placement's "
        "dropout on, so heavy dropout can even make it exceed validation.",
        "",
        tables["gap"],
        "",
        "## Run status",
        "",
        tables["status"],
        "",
    ]
    if figs:
        lines += ["## Figures", ""]
        lines += [
            f"![{caption}]({png.name})\n\n{caption} ([PDF]({png.with_suffix('.pdf').name}))\n" for png, caption in figs
        ]
    return "\n".join(lines)


def log_to_wandb(name: str, tables: dict[str, pd.DataFrame], figs: list[tuple[Path, str]], out: Path) -> None:
    """Tables and figures to one W&B run (job_type "aggregate", grouped with the sweep's training runs)."""
    try:
        import wandb
    except ImportError:
        print("zr_ablate.report: wandb is not installed; --wandb ignored", file=sys.stderr)
        return
    from zr_ablate.experiment.wandb_run import resolve_mode  # WANDB_MODE wins; offline unless logged in

    mode, why = resolve_mode("auto")
    print(why, file=sys.stderr)
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "zr_ablate"),
        group=name,
        job_type="aggregate",
        name=f"report-{name}",
        mode=mode,
        dir=out,
    )
    run.log(
        {f"table/{k}": wandb.Table(dataframe=v) for k, v in tables.items()}
        | {f"figure/{png.stem}": wandb.Image(str(png), caption=caption) for png, caption in figs}
    )
    run.finish()


def load(source: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """SOURCE -> (runs, curves, report name): a sweep folder, or wandb:ENTITY/PROJECT/GROUP."""
    if source.startswith("wandb:"):
        runs, curves = load_wandb(source.removeprefix("wandb:"))
        return runs, curves, source.rsplit("/", 1)[-1]
    runs, curves = load_sweep(source)
    return runs, curves, _sweep_name(Path(source).resolve())


def _sweep_name(folder: Path) -> str:
    """The folder's name, except for a report's kept records (OUT/runs, --keep-runs): there the `sweep`
    setting the jobs recorded, so that a report regenerated from them keeps its name."""
    if folder.name != "runs":
        return folder.name
    names = set()
    for job in job_folders(folder):
        try:
            names.add(((read_result(job) or {}).get("config") or {}).get("sweep"))
        except RecordError:
            continue  # load_sweep has warned about it
    names.discard(None)
    return names.pop() if len(names) == 1 else folder.name


RECORDS = (RESULT, EPOCHS, HYDRA_CONFIG, SENTENCES)  # all the report reads of a job


def keep_runs(sweep: Path, out: Path) -> int:
    """Copy each job's records into OUT/runs/<job>/, so that `python -m zr_ablate.report OUT/runs` can
    regenerate the report without the sweep folder (which holds checkpoints and is not committed).
    Returns the number of jobs copied; none when the source already is OUT/runs."""
    target = out / "runs"
    if target.resolve() == sweep.resolve():
        return 0
    jobs = job_folders(sweep)
    for job in jobs:
        for record in RECORDS:
            if (job / record).is_file():
                (target / job.name / record).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(job / record, target / job.name / record)
    return len(jobs)
