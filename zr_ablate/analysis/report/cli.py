"""A sweep -> tables and figures, beside the published numbers.

    python -m zr_ablate.report outputs/demo                          # -> reports/demo/
    python -m zr_ablate.report wandb:ENTITY/PROJECT/GROUP --out reports/medium
    python -m zr_ablate.report outputs/demo --wandb                  # also log them to a W&B run
    python -m zr_ablate.report outputs/demo --keep-runs              # + each job's records in runs/
    python -m zr_ablate.report outputs/demo --tuned outputs/demo-tuned   # + the same placements at tuned rates
    python -m zr_ablate.report outputs/demo --tuned outputs/demo-tuned --studies outputs/studies.db  # + the studies

Writes results.md (every table, every figure, and what was left out), each table as CSV (numbers) and
LaTeX (formatted, booktabs), each figure as PNG and PDF. Only completed runs enter means and figures; the
status table and the text account for the others. Files already in --out are left alone unless rewritten.
Every pair of placements is compared with 95% intervals (wins.py, from analysis/compare.py); with --tuned, a
second sweep of the placements at their tuned rates (run.py -m tuned=...) is compared too and set
beside the first; with --studies, what the tuning studies tried. The pieces: tables.py (numbers), figures.py
(seaborn), wins.py (comparisons), memory.py (the context probe), studies.py (tuning studies), output.py
(files, results.md, W&B).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from zr_ablate.analysis.compare import load_sentences
from zr_ablate.analysis.report import memory, studies, wins
from zr_ablate.analysis.report.figures import colours, figures
from zr_ablate.analysis.report.output import keep_runs, load, log_to_wandb, markdown, write_table
from zr_ablate.analysis.report.tables import as_variants, compact, rate_label, swept, tables
from zr_ablate.analysis.runs import NoRunsError
from zr_ablate.records import COMPLETED


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zr_ablate.report", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a sweep folder (outputs/<sweep>) or wandb:ENTITY/PROJECT/GROUP")
    parser.add_argument("--out", help="report folder (default: reports/<sweep name>)")
    parser.add_argument("--wandb", action="store_true", help="also log tables and figures to a W&B run")
    parser.add_argument(
        "--keep-runs",
        action="store_true",
        help="copy each job's records (result.json, epochs.csv, .hydra/config.yaml, sentences_test.csv) into "
        "OUT/runs/ (and the --tuned sweep's into OUT/tuned/runs/)",
    )
    parser.add_argument(
        "--tuned",
        metavar="SWEEP",
        help="a sweep folder of the same placements at their tuned rates: compared too, and set beside the source",
    )
    parser.add_argument(
        "--studies",
        metavar="STORAGE",
        help="the Optuna storage of the tuning studies (a SQLite file or a URL), or a report's trials.csv: "
        "what each study tried, its best rates and how flat its optimum is",
    )
    args = parser.parse_args(argv)
    if args.keep_runs and args.source.startswith("wandb:"):
        sys.exit(
            "zr_ablate.report: error: --keep-runs copies a sweep folder's job records; a W&B source has "
            "none (drop --keep-runs)"
        )
    try:
        runs, curves, name = load(args.source)
        tuned = None if args.tuned is None else load(args.tuned)[0]
        trials = None if args.studies is None else studies.load(args.studies)
    except NoRunsError as e:
        sys.exit(f"zr_ablate.report: error: {e}")
    if tuned is not None:
        for source, frame in ((args.tuned, tuned), (args.source, runs)):
            if varied := ", ".join("dropout." + rate_label(c) for c in swept(as_variants(frame))):
                sys.exit(
                    f"zr_ablate.report: error: --tuned sets one rate per placement beside another, but {source} "
                    f"holds a placement at several rates ({varied}); give it the sweep of "
                    "python run.py -m tuned=... seed=..., not a study's trials"
                )
    out = Path(args.out or Path("reports") / name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        sys.exit(f"zr_ablate.report: error: cannot create {out} ({e.strerror}); pass a writable folder with --out")
    try:
        write(args, argv, out, name, runs, curves, tuned, trials)
    except OSError as e:  # a folder that exists but cannot be written, a full disk
        where = e.filename or out
        sys.exit(f"zr_ablate.report: error: cannot write {where} ({e.strerror}); pass a writable folder with --out")


def write(args: argparse.Namespace, argv: list[str] | None, out: Path, name: str, runs, curves, tuned, trials) -> None:
    """Every table, figure and results.md into `out`, and the W&B run with --wandb. `tuned`: the --tuned
    sweep's runs, or None; `trials`: the --studies trials, or None."""
    view, view_curves = as_variants(runs), as_variants(curves)
    numbers = tables(view)
    markdown_tables = {key: write_table(out, key, *pair) for key, pair in numbers.items()}
    runs.to_csv(out / "runs.csv", index=False)
    if args.keep_runs:
        keep_runs(Path(args.source), out)
    done, done_curves = view[view["status"] == COMPLETED], view_curves[view_curves["status"] == COMPLETED]
    figs = figures(done, done_curves, numbers["perplexity"][0], out, swept(view)) if len(done) else []
    command = shlex.join(["python", "-m", "zr_ablate.report", *(sys.argv[1:] if argv is None else argv)])
    text = markdown(name, args.source, command, view, markdown_tables, figs)
    probe = None if args.source.startswith("wandb:") else memory.load(Path(args.source))
    if probe is not None:  # python -m zr_ablate.probe ran on this sweep: how much context each placement uses
        probe_numbers = memory.tables(probe, "test")
        probe_tables = {key: write_table(out, key, *pair) for key, pair in probe_numbers.items()}
        probe_figs = memory.figures(probe, "test", colours(probe["memory"]["placement"]), out)
        text += "\n" + memory.markdown(probe_tables, probe_figs, "test")
        numbers |= probe_numbers
        figs = figs + probe_figs
        if args.keep_runs:
            memory.keep(Path(args.source), out / "runs")
    sentences = {} if args.source.startswith("wandb:") else load_sentences(Path(args.source), view["job"])
    heading = "Which placement wins, and how sure" + (" (at the paper's rate)" if tuned is not None else "")
    win_numbers, win_figs, win_text = wins.section(view, sentences, probe, out, "wins", heading)
    numbers, figs, text = numbers | win_numbers, figs + win_figs, text + "\n" + win_text
    if tuned is not None:
        tuned_view = as_variants(tuned)
        table = write_table(out, "tuned", *wins.tuned_table(view, tuned_view))
        text += f"\n## At tuned rates\n\nSource: `{args.tuned}`. Each placement at the rates its study found best, "
        text += "beside the same placement at the paper's rate (the source above).\n\n" + table + "\n"
        sentences = load_sentences(Path(args.tuned), tuned_view["job"])
        tuned_probe = None if args.tuned.startswith("wandb:") else memory.load(Path(args.tuned))
        heading = "Which placement wins at tuned rates, and how sure"
        win_numbers, win_figs, win_text = wins.section(tuned_view, sentences, tuned_probe, out, "wins_tuned", heading)
        numbers, figs, text = numbers | win_numbers, figs + win_figs, text + "\n" + win_text
        if args.keep_runs and not args.tuned.startswith("wandb:"):
            keep_runs(Path(args.tuned), out / "tuned")
            memory.keep(Path(args.tuned), out / "tuned" / "runs")
    if args.studies is not None:
        trials.to_csv(out / "trials.csv", index=False)
        table = write_table(out, "studies", *studies.summary(trials))
        fig = studies.figure(trials, out)
        text += studies.markdown(table, fig, args.studies)
        figs = figs + ([(fig, "tuning studies")] if fig is not None else [])
    (out / "results.md").write_text(text)
    if args.wandb:
        log_to_wandb(name, {k: pair[0] for k, pair in numbers.items()} | {"runs": runs}, figs, out)
    print(f"report: {out / 'results.md'}\n{compact(runs)}")
