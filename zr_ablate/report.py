"""A sweep -> tables and figures, beside the published numbers.

    python -m zr_ablate.report outputs/demo                          # -> reports/demo/
    python -m zr_ablate.report wandb:ENTITY/PROJECT/GROUP --out reports/medium
    python -m zr_ablate.report outputs/demo --wandb                  # also log them to a W&B run
    python -m zr_ablate.report outputs/demo --keep-runs              # + each job's records in runs/

Writes results.md (every table, every figure, and what was left out), each table as CSV (numbers) and
LaTeX (formatted, booktabs), each figure as PNG and PDF. Only completed runs enter means and figures; the
status table and the text account for the others. Files already in --out are left alone unless rewritten.

Rows are a model size and a variant (the placement, plus +tied / +word<p> where the run changed the method
beyond its preset), and, where a sweep varies a dropout probability within one, each value of it: a
sensitivity sweep is never averaged across p. Such a sweep also gets a figure of perplexity against p.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator

from .reference import PAPER_SIZES, beside, mc_beside
from .results import RATES, NoRunsError, job_folders, load_sweep, load_wandb

# Paper sizes, then our CPU profiles; placements in the README's order, then the later methods. Anything
# else sorts after; a variant (zaremba+tied) right after its placement.
ORDER = {v: i for i, v in enumerate(["small", "medium", "large", "demo", "tiny", "none", "naive", "zaremba",
                                     "variational", "semeniuta", "weight_drop", "zoneout"])}
KEYS = ["size", "placement"]  # in the report, placement holds the run's variant
STATUSES = ["completed", "diverged", "failed", "running", "missing"]
PPL = "perplexity (lower is better)"
RATE_AXIS = "dropout probability p"
PUBLISHED = dict(color="crimson", linestyle="--", linewidth=2.5, zorder=4)
PROTOCOLS = {"paper": "batch 1, state carried over the whole test stream, as Zaremba et al. test",
             "fast": "batch 20 x unroll, like validation; not the paper's protocol, so published test "
                     "numbers are not like for like"}


def _rank(value) -> tuple:
    return ORDER.get(str(value).split("+")[0], len(ORDER)), str(value)


def _sorted(df: pd.DataFrame, keys: list[str] = KEYS) -> pd.DataFrame:
    """By size and placement in ORDER, then by any swept probability."""
    return df.sort_values(keys, key=lambda col: col.map(_rank) if col.name in KEYS else col).reset_index(drop=True)


def _ordered(values) -> list:
    return sorted(set(values), key=_rank)


def as_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """The report's view of runs or curves: `placement` names the variant (e.g. zaremba+tied)."""
    return frame.assign(placement=frame["variant"])


def swept(runs: pd.DataFrame) -> list[str]:
    """The probabilities a sweep varies within one size and placement: dropout.p first, then any connection's
    own rate that varies at a fixed p (those that follow p through ${dropout.p} do not count twice)."""
    keys = list(KEYS)
    for col in ["p", *RATES]:
        if runs.groupby(keys, dropna=False)[col].nunique().gt(1).any():
            keys.append(col)
    return keys[len(KEYS):]


def rate_label(col: str) -> str:
    """p (dropout.p) or a connection's own, e.g. cell_update.p, as the override names it under dropout."""
    return col if col == "p" else f"{col.removesuffix('_p')}.p"


# ---- tables: numbers (CSV) and their formatted versions (Markdown, LaTeX) ----

def _passes(samples: pd.Series) -> str:
    """The MC passes of a cell's runs: "100", or "100/1000" where they differ."""
    return "/".join(f"{v:g}" for v in sorted(samples.dropna().unique()))


def perplexity_table(done: pd.DataFrame, keys: list[str] = KEYS, mc: bool = False) -> pd.DataFrame:
    """Per size x placement (x swept p): final val and test ppl, mean and sd over seeds, beside the published
    row; with mc, also the MC-dropout test ppl and its passes, beside Gal & Ghahramani's MC row."""
    mc_columns = dict(mc_test_ppl_mean=("mc_test_ppl", "mean"), mc_test_ppl_sd=("mc_test_ppl", "std"),
                      mc_samples=("mc_samples", _passes))
    table = done.groupby(keys).agg(
        runs=("job", "size"), val_ppl_mean=("final_val_ppl", "mean"), val_ppl_sd=("final_val_ppl", "std"),
        test_ppl_mean=("test_ppl", "mean"), test_ppl_sd=("test_ppl", "std"),
        **(mc_columns if mc else {})).reset_index()
    table = beside(table)
    table["test_minus_published"] = table["test_ppl_mean"] - table["published_test_ppl"]
    return _sorted(mc_beside(table) if mc else table, keys)


def gap_table(done: pd.DataFrame, keys: list[str] = KEYS) -> pd.DataFrame:
    table = done.groupby(keys).agg(
        runs=("job", "size"), final_train_ppl=("final_train_ppl", "mean"),
        final_val_ppl=("final_val_ppl", "mean")).reset_index()
    table["gap"] = table["final_val_ppl"] - table["final_train_ppl"]
    return _sorted(table, keys)


def status_table(runs: pd.DataFrame, keys: list[str] = KEYS) -> pd.DataFrame:
    counts = (runs.fillna({"size": "?", "placement": "?", "status": "?"})
              .groupby(keys, dropna=False)["status"].value_counts().unstack(fill_value=0))
    counts = counts.reindex(columns=STATUSES + [s for s in counts.columns if s not in STATUSES], fill_value=0)
    counts["total"] = counts.sum(axis=1)
    return _sorted(counts.reset_index().rename_axis(columns=None), keys)


def _cell(v) -> str:
    return "" if pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v)


def _mean_sd(mean: pd.Series, sd: pd.Series) -> list[str]:
    return [_cell(m) + ("" if pd.isna(s) else f" ± {s:.1f}") for m, s in zip(mean, sd)]


def shown(table: pd.DataFrame, names: dict) -> pd.DataFrame:
    """The columns in `names`, renamed for readers, numbers to one decimal, blanks for missing values."""
    return table[list(names)].rename(columns=names).map(_cell)


def _rates_as_given(table: pd.DataFrame, rates: list[str]) -> pd.DataFrame:
    """Probabilities as given (0.025, not 0.0); blank where a job recorded none."""
    return table.assign(**{c: table[c].map(lambda v: "" if pd.isna(v) else f"{v:g}") for c in rates})


def markdown_table(df: pd.DataFrame) -> str:
    rows = [list(df.columns), ["---"] * len(df.columns), *df.astype(str).values.tolist()]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def has_mc(runs: pd.DataFrame) -> bool:
    """Whether any completed run has an MC-dropout test perplexity."""
    return runs.loc[runs["status"] == "completed", "mc_test_ppl"].notna().any()


def tables(runs: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """name -> (numbers, the same formatted for readers). Means are over completed runs only. `runs` is the
    report's view (as_variants)."""
    done, rates, mc = runs[runs["status"] == "completed"], swept(runs), has_mc(runs)
    keys = KEYS + rates
    ppl, gap, status = perplexity_table(done, keys, mc), gap_table(done, keys), status_table(runs, keys)
    key_names = {"size": "size", "placement": "placement", **{c: rate_label(c) for c in rates}}

    def shown_keys(table: pd.DataFrame, names: dict) -> pd.DataFrame:
        return shown(_rates_as_given(table, rates), key_names | names)

    ppl_cells = ppl.assign(val=_mean_sd(ppl["val_ppl_mean"], ppl["val_ppl_sd"]),
                           test=_mean_sd(ppl["test_ppl_mean"], ppl["test_ppl_sd"]))
    mc_names = {}
    if mc:
        ppl_cells = ppl_cells.assign(
            mc=_mean_sd(ppl["mc_test_ppl_mean"], ppl["mc_test_ppl_sd"]),
            published_mc=[_cell(v) + ("" if pd.isna(v) else f" ({n:g} passes)")
                          for v, n in zip(ppl["published_mc_test_ppl"], ppl["published_mc_samples"])])
        mc_names = {"mc": "MC test ppl", "mc_samples": "MC passes"}
    ppl_shown = shown_keys(ppl_cells, {"runs": "completed runs", "val": "val ppl", "test": "test ppl", **mc_names,
                                       "published_val_ppl": "published val", "published_test_ppl": "published test",
                                       "test_minus_published": "test - published",
                                       **({"published_mc": "published MC test"} if mc else {}),
                                       "published_source": "published source"})
    gap_shown = shown_keys(gap, {"runs": "completed runs", "final_train_ppl": "train ppl",
                                 "final_val_ppl": "val ppl", "gap": "gap (val - train)"})
    status_shown = _rates_as_given(status, rates).rename(columns=key_names).map(_cell)
    return {"perplexity": (ppl, ppl_shown), "gap": (gap, gap_shown), "status": (status, status_shown)}


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


def _curve_grid(data: pd.DataFrame, y: str, palette: dict, rate_axis: str | None, per_placement: bool = False,
                **kw):
    """One panel per model size, one colour per placement, bands of +-1 sd over seeds. Where a sweep varies
    p (rate_axis, and a `rate` column: see with_rate): one panel per size and placement, a colour per p.
    per_placement (one size only): one panel per placement on a shared y axis, for curves that would
    tangle if overlaid."""
    sharey = False
    if per_placement and not rate_axis:
        size = _ordered(data["size"])[0]
        kw |= dict(hue="placement", col="placement", col_wrap=4,
                   col_order=[p for p in palette if p in set(data["placement"])])
        titles = dict(col_template=f"model size: {size}, placement: {{col_name}}")
        sharey = True
    elif rate_axis:
        rates = sorted(data["rate"].unique())
        data = data.assign(**{rate_axis: data["rate"].map("{:g}".format)})  # its name titles the legend
        palette = dict(zip(map("{:g}".format, rates), sns.color_palette("viridis", len(rates))))
        sizes = _ordered(data["size"])
        kw |= dict(hue=rate_axis, col="placement", col_order=_ordered(data["placement"]),
                   row="size" if len(sizes) > 1 else None, row_order=sizes if len(sizes) > 1 else None)
        titles = dict(template="model size: {row_name}, placement: {col_name}") if len(sizes) > 1 else dict(
            col_template=f"model size: {sizes[0]}, placement: {{col_name}}")
    else:
        kw |= dict(hue="placement", col="size", col_order=_ordered(data["size"]))
        titles = dict(template="model size: {col_name}")
    grid = sns.relplot(data, kind="line", x="epoch", y=y, hue_order=list(palette), palette=palette,
                       errorbar="sd", marker="o", height=4, aspect=1.3, facet_kws={"sharey": sharey}, **kw)
    grid.set_titles(**titles)
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return grid


def plot_val(curves: pd.DataFrame, palette: dict, band: str, out: Path,
             rate_axis: str | None = None) -> tuple[Path, str]:
    grid = _curve_grid(curves, "val_ppl", palette, rate_axis)
    grid.set_axis_labels("epoch", f"validation {PPL}")
    _log_if_wide(grid.axes.flat, curves["val_ppl"])
    return (_save(grid.figure, out, "val_curves", f"Validation perplexity per epoch ({band})"),
            "Validation perplexity per epoch, dropout off (the model selection signal).")


def plot_gap(curves: pd.DataFrame, palette: dict, band: str, out: Path,
             rate_axis: str | None = None) -> tuple[Path, str]:
    both = curves.melt(id_vars=[c for c in ["size", "placement", "rate", "job", "epoch"] if c in curves],
                       value_vars=["train_ppl", "val_ppl"], var_name="split", value_name="ppl")
    both["split"] = both["split"].map({"train_ppl": "train", "val_ppl": "validation"})
    # Train and validation of more than three placements tangle when overlaid: a panel each instead.
    per_placement = both["size"].nunique() == 1 and both["placement"].nunique() > 3
    grid = _curve_grid(both, "ppl", palette, rate_axis, per_placement, style="split",
                       style_order=["validation", "train"], dashes={"validation": "", "train": (4, 2)})
    grid.set_axis_labels("epoch", PPL)
    _log_if_wide(grid.axes.flat, both["ppl"])
    title = f"Train (dashed) vs validation (solid) perplexity ({band})"
    return (_save(grid.figure, out, "train_vs_val", title),
            "Train perplexity is averaged over each epoch with the placement's dropout on; validation is "
            "measured after it with dropout off. A widening gap is overfitting.")


def _run_legend(published: bool, mean: bool = True) -> list[Line2D]:
    """Legend entries: the mean +- sd marker (where the placements' colours do not stand for it), one run's
    dot, and the published line."""
    legend = [Line2D([], [], marker="o", color="black", markersize=4, linestyle="", label="one run")]
    if mean:
        legend.insert(0, Line2D([], [], marker="o", color="grey", markersize=9, linestyle="",
                                label="mean ± 1 sd over seeds"))
    if published:
        legend.append(Line2D([], [], label="published (see results table)", **PUBLISHED))
    return legend


def plot_test(done: pd.DataFrame, ppl: pd.DataFrame, palette: dict, out: Path) -> tuple[Path, str]:
    """One panel per size: each run, mean +- sd per placement, and the published value where there is one."""
    sizes = _ordered(done["size"])
    width = 1.5 + max(4.5, 0.8 * len(palette))  # room for every placement's label
    fig, axes = plt.subplots(1, len(sizes), figsize=(width * len(sizes), 4.5), squeeze=False)
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
        # zaremba+tied+word0.1 on 3 lines; names tilted so seven placements do not overlap.
        ax.set_xticks(range(len(order)), [p.replace("+", "\n+") for p in order], rotation=30, ha="right")
    _log_if_wide(axes.flat, pd.concat([done["test_ppl"], ppl["published_test_ppl"].dropna()]))
    legend = _run_legend(ppl["published_test_ppl"].notna().any())
    axes.flat[-1].legend(handles=legend, loc="upper left", bbox_to_anchor=(1.02, 1))
    return (_save(fig, out, "test_ppl", "Test perplexity per dropout placement"),
            "Test perplexity of the final weights; red dashed lines mark the published value where one "
            "exists for this size and placement.")


def _against_rate(done: pd.DataFrame, y: str, ppl: pd.DataFrame, published: str | None, palette: dict,
                  rate_axis: str, ylabel: str):
    """One panel per size: y against the swept p, one line per placement (mean +- sd over seeds, each run a
    dot), and the published value as a dashed line in the placement's colour where there is one."""
    sizes = _ordered(done["size"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(1.5 + 5.5 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes.flat, sizes):
        runs = done[done["size"] == size]
        order = [p for p in palette if p in set(runs["placement"])]
        sns.lineplot(runs, x="rate", y=y, hue="placement", hue_order=order, palette=palette, errorbar="sd",
                     marker="o", markersize=8, ax=ax)
        sns.scatterplot(runs, x="rate", y=y, color="black", s=12, alpha=0.6, legend=False, ax=ax)
        values = ppl[ppl["size"] == size].drop_duplicates(KEYS).set_index("placement")
        for placement in order if published else []:
            if pd.notna(values[published].get(placement)):
                ax.axhline(values[published][placement], color=palette[placement], linestyle="--", linewidth=2)
        note = "" if size in PAPER_SIZES or not published else "\n(no published value at this size)"
        ax.set(title=f"model size: {size}{note}", xlabel=rate_axis, ylabel=ylabel)
        ax.set_xticks(sorted(runs["rate"].unique()))  # the probabilities run, not a grid of round numbers
        ax.get_legend().remove()
    _log_if_wide(axes.flat, done[y])
    handles = [Line2D([], [], marker="o", color=palette[p], label=p) for p in _ordered(done["placement"])]
    handles += _run_legend(False, mean=False)
    if published and ppl[published].notna().any():
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=2,
                              label="published, in the placement's colour\n(see results table)"))
    axes.flat[-1].legend(handles=handles, title="placement", loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def plot_test_against_rate(done: pd.DataFrame, ppl: pd.DataFrame, palette: dict, band: str, rate_axis: str,
                           out: Path) -> tuple[Path, str]:
    fig = _against_rate(done, "test_ppl", ppl, "published_test_ppl", palette, rate_axis, f"test {PPL}")
    return (_save(fig, out, "test_ppl", f"Test perplexity against dropout probability ({band})"),
            "Test perplexity of the final weights for each swept dropout probability; dashed lines mark the "
            "published value (at the paper's own p) where one exists for this size and placement.")


def plot_sensitivity(done: pd.DataFrame, ppl: pd.DataFrame, palette: dict, band: str, rate_axis: str,
                     out: Path) -> tuple[Path, str]:
    fig = _against_rate(done, "final_val_ppl", ppl, None, palette, rate_axis, f"validation {PPL}")
    return (_save(fig, out, "sensitivity", f"Sensitivity: final validation perplexity against dropout "
                                           f"probability ({band})"),
            "Validation perplexity of the last epoch (dropout off) for each swept dropout probability, one line "
            "per placement: where the method is best, and how sharply it worsens away from there.")


def with_rate(done: pd.DataFrame, rates: list[str]) -> tuple[pd.DataFrame, str]:
    """done plus `rate`: the value of the probability its size and placement sweep (the first of `rates` that
    varies there; p where none does), and the axis label that says which one each placement sweeps."""
    column = {key: next((c for c in rates if g[c].nunique() > 1), rates[0]) for key, g in done.groupby(KEYS)}
    rate = [row[column[(row["size"], row["placement"])]] for _, row in done.iterrows()]
    others = sorted({f"{placement}: p is dropout.{rate_label(c)}" for (_, placement), c in column.items()
                     if c != "p"})
    return done.assign(rate=rate), RATE_AXIS + (f"\n({'; '.join(others)})" if others else "")


def figures(done: pd.DataFrame, curves: pd.DataFrame, ppl: pd.DataFrame, out: Path,
            rates: list[str] = ()) -> list[tuple[Path, str]]:
    """The figures of completed runs, saved as PNG and PDF; (PNG path, caption) for each. Three; where a
    sweep varies a probability (`rates`, see swept), curves per value of it and a fourth, sensitivity."""
    placements = _ordered(done["placement"])
    palette = dict(zip(placements, sns.color_palette("colorblind", len(placements))))  # same in every figure
    seeds = done.groupby(KEYS + list(rates))["seed"].nunique().max()
    band = (f"line: mean over {seeds} seeds, band: ±1 sd" if seeds > 1
            else "one seed per placement" + (" and p" if rates else ""))
    if not rates:
        return [plot_val(curves, palette, band, out), plot_gap(curves, palette, band, out),
                plot_test(done, ppl, palette, out)]
    done, rate_axis = with_rate(done, list(rates))
    curves = curves.merge(done[["job", "rate"]].drop_duplicates("job"), on="job")
    return [plot_val(curves, palette, band, out, rate_axis), plot_gap(curves, palette, band, out, rate_axis),
            plot_test_against_rate(done, ppl, palette, band, rate_axis, out),
            plot_sensitivity(done, ppl, palette, band, rate_axis, out)]


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


def _notes(runs: pd.DataFrame) -> list[str]:
    """What the perplexity table needs said beyond the usual: variants, swept probabilities, MC columns."""
    notes = []
    if runs["placement"].str.contains("+", regex=False, na=False).any():
        notes.append("A placement with `+tied` ties the input and output embeddings (model.tie_weights; published: "
                     "Press & Wolf 2016), `+word<p>` adds word-type dropout at rate p (dropout.word.p).")
    rates = swept(runs)
    if rates:
        notes.append(f"The sweep varies {' and '.join(f'`{rate_label(c)}`' for c in rates)} within a placement: one "
                     f"row per value, never a mean across them (`p` is dropout.p, the presets' shared rate; "
                     f"`<connection>.p` is that connection's own, dropout.<connection>.p).")
    if has_mc(runs):
        notes.append("MC test: the test split under MC-dropout evaluation (every dropout mask on, the softmax "
                     "averaged over 'MC passes' stochastic passes; Gal & Ghahramani 2016). Published MC: Gal & "
                     "Ghahramani 2016 Table 1, Variational (untied weights, MC), the only published MC numbers.")
    return notes


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
              "(standard evaluation); 'test - published' is our mean minus the published test value.",
              *_notes(runs), "",
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


RECORDS = ("result.json", "epochs.csv", ".hydra/config.yaml")  # all load_sweep reads of a job


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zr_ablate.report", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a sweep folder (outputs/<sweep>) or wandb:ENTITY/PROJECT/GROUP")
    parser.add_argument("--out", help="report folder (default: reports/<sweep name>)")
    parser.add_argument("--wandb", action="store_true", help="also log tables and figures to a W&B run")
    parser.add_argument("--keep-runs", action="store_true",
                        help="copy each job's result.json, epochs.csv and .hydra/config.yaml into OUT/runs/")
    args = parser.parse_args(argv)
    if args.keep_runs and args.source.startswith("wandb:"):
        sys.exit("zr_ablate.report: error: --keep-runs copies a sweep folder's job records; a W&B source has "
                 "none (drop --keep-runs)")
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

    view, view_curves = as_variants(runs), as_variants(curves)
    numbers = tables(view)
    markdown_tables = {key: write_table(out, key, *pair) for key, pair in numbers.items()}
    runs.to_csv(out / "runs.csv", index=False)
    if args.keep_runs:
        keep_runs(Path(args.source), out)
    done, done_curves = view[view["status"] == "completed"], view_curves[view_curves["status"] == "completed"]
    figs = figures(done, done_curves, numbers["perplexity"][0], out, swept(view)) if len(done) else []
    command = shlex.join(["python", "-m", "zr_ablate.report", *(sys.argv[1:] if argv is None else argv)])
    (out / "results.md").write_text(markdown(name, args.source, command, view, markdown_tables, figs))
    if args.wandb:
        log_to_wandb(name, {k: pair[0] for k, pair in numbers.items()} | {"runs": runs}, figs, out)
    print(f"report: {out / 'results.md'}")


if __name__ == "__main__":
    main()
