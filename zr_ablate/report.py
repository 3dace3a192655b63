"""A sweep -> tables and figures, beside the published numbers.

    python -m zr_ablate.report outputs/demo                          # -> reports/demo/
    python -m zr_ablate.report wandb:ENTITY/PROJECT/GROUP --out reports/medium
    python -m zr_ablate.report outputs/demo --wandb                  # also log them to a W&B run

Writes results.md (every table, every figure, and what was left out), each table as CSV (numbers) and
LaTeX (formatted, booktabs), each figure as PNG and PDF. Only completed runs enter means and figures; the
status table and the text account for the others. Files already in --out are left alone unless rewritten.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator

from .reference import PAPER_SIZES, beside
from .results import NoRunsError, load_sweep, load_wandb

# Paper sizes, then our CPU profiles; placements in the README's order. Anything else sorts after.
ORDER = {v: i for i, v in enumerate(["small", "medium", "large", "demo", "tiny",
                                     "none", "naive", "zaremba", "variational"])}
STATUSES = ["completed", "diverged", "failed", "running", "missing"]
PPL = "perplexity (lower is better)"
PUBLISHED = dict(color="crimson", linestyle="--", linewidth=2.5, zorder=4)
PROTOCOLS = {"paper": "batch 1, state carried over the whole test stream, as Zaremba et al. test",
             "fast": "batch 20 x unroll, like validation; not the paper's protocol, so published test "
                     "numbers are not like for like"}


def _rank(value) -> tuple:
    return ORDER.get(value, len(ORDER)), str(value)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["size", "placement"], key=lambda col: col.map(_rank)).reset_index(drop=True)


def _ordered(values) -> list:
    return sorted(set(values), key=_rank)


# ---- tables: numbers (CSV) and their formatted versions (Markdown, LaTeX) ----

def perplexity_table(done: pd.DataFrame) -> pd.DataFrame:
    """Per size x placement: final val and test ppl, mean and sd over seeds, beside the published row."""
    table = done.groupby(["size", "placement"]).agg(
        runs=("job", "size"), val_ppl_mean=("final_val_ppl", "mean"), val_ppl_sd=("final_val_ppl", "std"),
        test_ppl_mean=("test_ppl", "mean"), test_ppl_sd=("test_ppl", "std")).reset_index()
    table = beside(table)
    table["test_minus_published"] = table["test_ppl_mean"] - table["published_test_ppl"]
    return _sorted(table)


def gap_table(done: pd.DataFrame) -> pd.DataFrame:
    table = done.groupby(["size", "placement"]).agg(
        runs=("job", "size"), final_train_ppl=("final_train_ppl", "mean"),
        final_val_ppl=("final_val_ppl", "mean")).reset_index()
    table["gap"] = table["final_val_ppl"] - table["final_train_ppl"]
    return _sorted(table)


def status_table(runs: pd.DataFrame) -> pd.DataFrame:
    counts = (runs.fillna({"size": "?", "placement": "?", "status": "?"})
              .groupby(["size", "placement"])["status"].value_counts().unstack(fill_value=0))
    counts = counts.reindex(columns=STATUSES + [s for s in counts.columns if s not in STATUSES], fill_value=0)
    counts["total"] = counts.sum(axis=1)
    return _sorted(counts.reset_index().rename_axis(columns=None))


def _cell(v) -> str:
    return "" if pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v)


def _mean_sd(mean: pd.Series, sd: pd.Series) -> list[str]:
    return [_cell(m) + ("" if pd.isna(s) else f" ± {s:.1f}") for m, s in zip(mean, sd)]


def shown(table: pd.DataFrame, names: dict) -> pd.DataFrame:
    """The columns in `names`, renamed for readers, numbers to one decimal, blanks for missing values."""
    return table[list(names)].rename(columns=names).map(_cell)


def markdown_table(df: pd.DataFrame) -> str:
    rows = [list(df.columns), ["---"] * len(df.columns), *df.astype(str).values.tolist()]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def tables(runs: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """name -> (numbers, the same formatted for readers). Means are over completed runs only."""
    done = runs[runs["status"] == "completed"]
    ppl, gap, status = perplexity_table(done), gap_table(done), status_table(runs)
    ppl_shown = shown(ppl.assign(val=_mean_sd(ppl["val_ppl_mean"], ppl["val_ppl_sd"]),
                                 test=_mean_sd(ppl["test_ppl_mean"], ppl["test_ppl_sd"])),
                      {"size": "size", "placement": "placement", "runs": "completed runs", "val": "val ppl",
                       "test": "test ppl", "published_val_ppl": "published val",
                       "published_test_ppl": "published test", "test_minus_published": "test - published",
                       "published_source": "published source"})
    gap_shown = shown(gap, {"size": "size", "placement": "placement", "runs": "completed runs",
                            "final_train_ppl": "train ppl", "final_val_ppl": "val ppl",
                            "gap": "gap (val - train)"})
    return {"perplexity": (ppl, ppl_shown), "gap": (gap, gap_shown), "status": (status, status.map(_cell))}


def write_table(out: Path, name: str, numbers: pd.DataFrame, formatted: pd.DataFrame) -> str:
    """name.csv (numbers) and name.tex (formatted); returns the Markdown version."""
    numbers.to_csv(out / f"{name}.csv", index=False)
    tex = formatted.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    (out / f"{name}.tex").write_text("% needs \\usepackage{booktabs}\n"
                                     + tex.to_latex(hrules=True).replace("±", r"$\pm$"))
    return markdown_table(formatted)


# ---- figures ----

def _log_if_wide(axes, values: pd.Series) -> None:
    # Early-epoch perplexities can be 10x the final ones; a log axis keeps the end of training readable.
    if values.max() > 5 * values.min():
        for ax in axes:
            ax.set_yscale("log")
            # Plain numbers (600, not 6x10^2) on the labelled major and minor ticks.
            ax.yaxis.set_major_formatter(LogFormatter())
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def _save(fig, out: Path, name: str, title: str) -> Path:
    fig.suptitle(title, y=1.02)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{name}.{ext}", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out / f"{name}.png"


def _curve_grid(data: pd.DataFrame, y: str, palette: dict, **kw):
    """One panel per model size, one colour per placement, bands of +-1 sd over seeds."""
    grid = sns.relplot(data, kind="line", x="epoch", y=y, hue="placement", hue_order=list(palette),
                       palette=palette, col="size", col_order=_ordered(data["size"]), errorbar="sd",
                       marker="o", height=4, aspect=1.3, facet_kws={"sharey": False}, **kw)
    grid.set_titles("model size: {col_name}")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return grid


def plot_val(curves: pd.DataFrame, palette: dict, band: str, out: Path) -> tuple[Path, str]:
    grid = _curve_grid(curves, "val_ppl", palette)
    grid.set_axis_labels("epoch", f"validation {PPL}")
    _log_if_wide(grid.axes.flat, curves["val_ppl"])
    return (_save(grid.figure, out, "val_curves", f"Validation perplexity per epoch ({band})"),
            "Validation perplexity per epoch, dropout off (the model selection signal).")


def plot_gap(curves: pd.DataFrame, palette: dict, band: str, out: Path) -> tuple[Path, str]:
    both = curves.melt(id_vars=["size", "placement", "job", "epoch"], value_vars=["train_ppl", "val_ppl"],
                       var_name="split", value_name="ppl")
    both["split"] = both["split"].map({"train_ppl": "train", "val_ppl": "validation"})
    grid = _curve_grid(both, "ppl", palette, style="split", style_order=["validation", "train"],
                       dashes={"validation": "", "train": (4, 2)})
    grid.set_axis_labels("epoch", PPL)
    _log_if_wide(grid.axes.flat, both["ppl"])
    title = f"Train (dashed) vs validation (solid) perplexity ({band})"
    return (_save(grid.figure, out, "train_vs_val", title),
            "Train perplexity is averaged over each epoch with the placement's dropout on; validation is "
            "measured after it with dropout off. A widening gap is overfitting.")


def plot_test(done: pd.DataFrame, ppl: pd.DataFrame, palette: dict, out: Path) -> tuple[Path, str]:
    """One panel per size: each run, mean +- sd per placement, and the published value where there is one."""
    sizes = _ordered(done["size"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(1.5 + 4.5 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes.flat, sizes):
        runs = done[done["size"] == size]
        order = [p for p in palette if p in set(runs["placement"])]
        sns.pointplot(runs, x="placement", y="test_ppl", order=order, hue="placement", palette=palette,
                      errorbar="sd", linestyle="none", markersize=9, legend=False, ax=ax)
        sns.stripplot(runs, x="placement", y="test_ppl", order=order, color="black", size=4, alpha=0.6, ax=ax)
        published = ppl[ppl["size"] == size].set_index("placement")["published_test_ppl"]
        for x, placement in enumerate(order):
            ax.hlines(published.get(placement, float("nan")), x - 0.3, x + 0.3, **PUBLISHED)
        note = "" if size in PAPER_SIZES else "\n(no published value at this size)"
        ax.set(title=f"model size: {size}{note}", xlabel="dropout placement", ylabel=f"test {PPL}")
    _log_if_wide(axes.flat, pd.concat([done["test_ppl"], ppl["published_test_ppl"].dropna()]))
    legend = [Line2D([], [], marker="o", color="grey", markersize=9, linestyle="", label="mean ± 1 sd over seeds"),
              Line2D([], [], marker="o", color="black", markersize=4, linestyle="", label="one run")]
    if ppl["published_test_ppl"].notna().any():
        legend.append(Line2D([], [], label="published (see results table)", **PUBLISHED))
    axes.flat[-1].legend(handles=legend, loc="upper left", bbox_to_anchor=(1.02, 1))
    return (_save(fig, out, "test_ppl", "Test perplexity per dropout placement"),
            "Test perplexity of the final weights; red dashed lines mark the published value where one "
            "exists for this size and placement.")


def figures(done: pd.DataFrame, curves: pd.DataFrame, ppl: pd.DataFrame, out: Path) -> list[tuple[Path, str]]:
    """The three figures of completed runs, saved as PNG and PDF; (PNG path, caption) for each."""
    placements = _ordered(done["placement"])
    palette = dict(zip(placements, sns.color_palette("colorblind", len(placements))))  # same in every figure
    seeds = done.groupby(["size", "placement"])["seed"].nunique().max()
    band = f"line: mean over {seeds} seeds, band: ±1 sd" if seeds > 1 else "one seed per placement"
    return [plot_val(curves, palette, band, out), plot_gap(curves, palette, band, out),
            plot_test(done, ppl, palette, out)]


# ---- the report ----

def _not_finished(runs: pd.DataFrame) -> list[str]:
    """One line per kind of unfinished run, naming the jobs and, where recorded, why they stopped."""
    why = {"running": ", or killed before it could record how it ended"}  # the others carry an error
    lines = []
    for status, jobs in runs[runs["status"] != "completed"].groupby("status", dropna=False):
        names = ", ".join(f"`{j.job}`" + (f" ({j.error.splitlines()[0]})" if isinstance(j.error, str) else "")
                          for j in jobs.itertuples())
        lines.append(f"- {status}{why.get(status, '')} ({len(jobs)}): {names}")
    return lines


def markdown(name: str, source: str, command: str, runs: pd.DataFrame, tables: dict[str, str],
             figs: list[tuple[Path, str]]) -> str:
    done = runs[runs["status"] == "completed"]
    protocols = [f"`{p}` ({PROTOCOLS.get(p, 'unknown protocol')})" for p in sorted(done["test_protocol"].unique())]
    lines = [f"# Dropout placement on PTB: {name}", "",
             f"Source: `{source}` (jobs: {len(runs)}, completed: {len(done)}).  ",
             f"Test protocol: {', '.join(protocols) or 'none (no completed runs)'}.  ",
             f"Produced by: `{command}`", ""]
    unfinished = _not_finished(runs)
    if unfinished:
        lines += [f"**Not every run completed.** Left out of every mean, table and figure below (jobs: "
                  f"{len(runs) - len(done)} of {len(runs)}; the status table counts them):", "", *unfinished, ""]
    lines += ["## Perplexity per placement", "",
              "Validation: the last epoch's; test: the final weights, with the protocol above. Mean ± sd over "
              "completed seeds. Published numbers: Zaremba et al. 2014 Table 1, else Gal & Ghahramani 2016 "
              "(standard evaluation); 'test - published' is our mean minus the published test value.", "",
              tables["perplexity"], "",
              "## Overfitting: train vs validation", "",
              "Final epoch, mean over seeds. Train perplexity is averaged over the epoch with the placement's "
              "dropout on, so heavy dropout can even make it exceed validation.", "",
              tables["gap"], "", "## Run status", "", tables["status"], ""]
    if figs:
        lines += ["## Figures", ""]
        lines += [f"![{caption}]({png.name})\n\n{caption} ([PDF]({png.with_suffix('.pdf').name}))\n"
                  for png, caption in figs]
    return "\n".join(lines)


def log_to_wandb(name: str, tables: dict[str, pd.DataFrame], figs: list[tuple[Path, str]], out: Path) -> None:
    """Tables and figures to one W&B run (job_type "aggregate", grouped with the sweep's training runs)."""
    try:
        import wandb
    except ImportError:
        print("zr_ablate.report: wandb is not installed; --wandb ignored", file=sys.stderr)
        return
    from .tracking import resolve_mode  # WANDB_MODE wins; offline unless logged in

    mode, why = resolve_mode("auto")
    print(why, file=sys.stderr)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "zr_ablate"), group=name, job_type="aggregate",
                     name=f"report-{name}", mode=mode, dir=out)
    run.log({f"table/{k}": wandb.Table(dataframe=v) for k, v in tables.items()}
            | {f"figure/{png.stem}": wandb.Image(str(png), caption=caption) for png, caption in figs})
    run.finish()


def load(source: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """SOURCE -> (runs, curves, report name): a sweep folder, or wandb:ENTITY/PROJECT/GROUP."""
    if source.startswith("wandb:"):
        runs, curves = load_wandb(source.removeprefix("wandb:"))
        return runs, curves, source.rsplit("/", 1)[-1]
    runs, curves = load_sweep(source)
    return runs, curves, Path(source).resolve().name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zr_ablate.report", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a sweep folder (outputs/<sweep>) or wandb:ENTITY/PROJECT/GROUP")
    parser.add_argument("--out", help="report folder (default: reports/<sweep name>)")
    parser.add_argument("--wandb", action="store_true", help="also log tables and figures to a W&B run")
    args = parser.parse_args(argv)
    try:
        runs, curves, name = load(args.source)
    except NoRunsError as e:
        sys.exit(f"zr_ablate.report: error: {e}")
    out = Path(args.out or Path("reports") / name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        sys.exit(f"zr_ablate.report: error: cannot create {out} ({e.strerror}); "
                 "pass a writable folder with --out")

    numbers = tables(runs)
    markdown_tables = {key: write_table(out, key, *pair) for key, pair in numbers.items()}
    runs.to_csv(out / "runs.csv", index=False)
    done, done_curves = runs[runs["status"] == "completed"], curves[curves["status"] == "completed"]
    figs = figures(done, done_curves, numbers["perplexity"][0], out) if len(done) else []
    command = shlex.join(["python", "-m", "zr_ablate.report", *(sys.argv[1:] if argv is None else argv)])
    (out / "results.md").write_text(markdown(name, args.source, command, runs, markdown_tables, figs))
    if args.wandb:
        log_to_wandb(name, {k: pair[0] for k, pair in numbers.items()} | {"runs": runs}, figs, out)
    print(f"report: {out / 'results.md'}")


if __name__ == "__main__":
    main()
