"""Report figures (seaborn), each saved as PNG and PDF: validation per epoch, train vs validation, test
perplexity beside the published value, and, where a sweep varies a rate, perplexity against it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402

from zr_ablate.analysis.report.tables import KEYS, ordered, rate_label  # noqa: E402

PPL = "perplexity (lower is better)"
RATE_AXIS = "dropout probability p"
PUBLISHED = dict(color="crimson", linestyle="--", linewidth=2.5, zorder=4)


def colours(placements) -> dict:
    """A colour per placement, the same in every figure of a report (the probe's too)."""
    names = ordered(placements)
    return dict(zip(names, sns.color_palette("colorblind", len(names))))


def log_if_wide(axes, values: pd.Series) -> None:
    # Early-epoch perplexities can be 10x the final ones; a log axis keeps the end of training readable.
    if values.max() > 5 * values.min():
        for ax in axes:
            ax.set_yscale("log")
            # Plain numbers (600, not 6x10^2) on the labelled major and minor ticks.
            ax.yaxis.set_major_formatter(LogFormatter())
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def save_figure(fig, out: Path, name: str, title: str) -> Path:
    fig.suptitle(title, y=1.02)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{name}.{ext}", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out / f"{name}.png"


def _curve_grid(data: pd.DataFrame, y: str, palette: dict, rate_axis: str | None, per_placement: bool = False, **kw):
    """One panel per model size, one colour per placement, bands of +-1 sd over seeds. Where a sweep varies
    p (rate_axis, and a `rate` column: see with_rate): one panel per size and placement, a colour per p.
    per_placement (one size only): one panel per placement on a shared y axis, for curves that would
    tangle if overlaid."""
    sharey = False
    if per_placement and not rate_axis:
        size = ordered(data["size"])[0]
        kw |= dict(
            hue="placement", col="placement", col_wrap=4, col_order=[p for p in palette if p in set(data["placement"])]
        )
        titles = dict(col_template=f"model size: {size}, placement: {{col_name}}")
        sharey = True
    elif rate_axis:
        rates = sorted(data["rate"].unique())
        data = data.assign(**{rate_axis: data["rate"].map("{:g}".format)})  # its name titles the legend
        palette = dict(zip(map("{:g}".format, rates), sns.color_palette("viridis", len(rates))))
        sizes = ordered(data["size"])
        kw |= dict(
            hue=rate_axis,
            col="placement",
            col_order=ordered(data["placement"]),
            row="size" if len(sizes) > 1 else None,
            row_order=sizes if len(sizes) > 1 else None,
        )
        titles = (
            dict(template="model size: {row_name}, placement: {col_name}")
            if len(sizes) > 1
            else dict(col_template=f"model size: {sizes[0]}, placement: {{col_name}}")
        )
    else:
        kw |= dict(hue="placement", col="size", col_order=ordered(data["size"]))
        titles = dict(template="model size: {col_name}")
    grid = sns.relplot(
        data,
        kind="line",
        x="epoch",
        y=y,
        hue_order=list(palette),
        palette=palette,
        errorbar="sd",
        marker="o",
        height=4,
        aspect=1.3,
        facet_kws={"sharey": sharey},
        **kw,
    )
    grid.set_titles(**titles)
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return grid


def plot_val(
    curves: pd.DataFrame, palette: dict, band: str, out: Path, rate_axis: str | None = None
) -> tuple[Path, str]:
    grid = _curve_grid(curves, "val_ppl", palette, rate_axis)
    grid.set_axis_labels("epoch", f"validation {PPL}")
    log_if_wide(grid.axes.flat, curves["val_ppl"])
    return (
        save_figure(grid.figure, out, "val_curves", f"Validation perplexity per epoch ({band})"),
        "Validation perplexity per epoch, dropout off (the model selection signal).",
    )


def plot_gap(
    curves: pd.DataFrame, palette: dict, band: str, out: Path, rate_axis: str | None = None
) -> tuple[Path, str]:
    both = curves.melt(
        id_vars=[c for c in ["size", "placement", "rate", "job", "epoch"] if c in curves],
        value_vars=["train_ppl", "val_ppl"],
        var_name="split",
        value_name="ppl",
    )
    both["split"] = both["split"].map({"train_ppl": "train", "val_ppl": "validation"})
    # Train and validation of more than three placements tangle when overlaid: a panel each instead.
    per_placement = both["size"].nunique() == 1 and both["placement"].nunique() > 3
    grid = _curve_grid(
        both,
        "ppl",
        palette,
        rate_axis,
        per_placement,
        style="split",
        style_order=["validation", "train"],
        dashes={"validation": "", "train": (4, 2)},
    )
    grid.set_axis_labels("epoch", PPL)
    log_if_wide(grid.axes.flat, both["ppl"])
    title = f"Train (dashed) vs validation (solid) perplexity ({band})"
    return (
        save_figure(grid.figure, out, "train_vs_val", title),
        "Train perplexity is averaged over each epoch with the placement's dropout on; validation is "
        "measured after it with dropout off. A widening gap is overfitting.",
    )


def _run_legend(published: bool, mean: bool = True) -> list[Line2D]:
    """Legend entries: the mean +- sd marker (where the placements' colours do not stand for it), one run's
    dot, and the published line."""
    dot = dict(marker="o", linestyle="")
    legend = [Line2D([], [], color="black", markersize=4, label="one run", **dot)]
    if mean:
        legend.insert(0, Line2D([], [], color="grey", markersize=9, label="mean ± 1 sd over seeds", **dot))
    if published:
        legend.append(Line2D([], [], label="published (see results table)", **PUBLISHED))
    return legend


def _size_panels(done: pd.DataFrame, palette: dict, panel_width: float, legend_width: float = 0.0):
    """A figure of one panel per model size -> fig, axes, and per panel (ax, size, that size's runs, their
    placements in palette order)."""
    sizes = ordered(done["size"])
    figsize = (legend_width + panel_width * len(sizes), 4.5)
    fig, axes = plt.subplots(1, len(sizes), figsize=figsize, squeeze=False)
    panels = []
    for ax, size in zip(axes.flat, sizes):
        runs = done[done["size"] == size]
        panels.append((ax, size, runs, [p for p in palette if p in set(runs["placement"])]))
    return fig, axes, panels


def _title(size: str, ppl: pd.DataFrame, published: str | None) -> str:
    """A size panel's title; where the panel shows published values and none matches its runs' recipe
    (the results table decides, by recipe), it says so."""
    if published is None or ppl.loc[ppl["size"] == size, published].notna().any():
        return f"model size: {size}"
    return f"model size: {size}\n(no published run with this recipe)"


def plot_test(done: pd.DataFrame, ppl: pd.DataFrame, palette: dict, out: Path) -> tuple[Path, str]:
    """One panel per size: each run, mean +- sd per placement, and the published value where there is one."""
    width = 1.5 + max(4.5, 0.8 * len(palette))  # room for every placement's label
    fig, axes, panels = _size_panels(done, palette, width)
    for ax, size, runs, order in panels:
        sns.pointplot(
            runs,
            x="placement",
            y="test_ppl",
            order=order,
            hue="placement",
            palette=palette,
            errorbar="sd",
            linestyle="none",
            markersize=9,
            legend=False,
            ax=ax,
        )
        sns.stripplot(runs, x="placement", y="test_ppl", order=order, color="black", size=4, alpha=0.6, ax=ax)
        published = ppl[ppl["size"] == size].set_index("placement")["published_test_ppl"]
        for x, placement in enumerate(order):
            ax.hlines(published.get(placement, float("nan")), x - 0.3, x + 0.3, **PUBLISHED)
        ax.set(title=_title(size, ppl, "published_test_ppl"), xlabel="dropout placement", ylabel=f"test {PPL}")
        # zaremba+tied+word0.1 on 3 lines; names tilted so seven placements do not overlap.
        ax.set_xticks(range(len(order)), [p.replace("+", "\n+") for p in order], rotation=30, ha="right")
    log_if_wide(axes.flat, pd.concat([done["test_ppl"], ppl["published_test_ppl"].dropna()]))
    legend = _run_legend(ppl["published_test_ppl"].notna().any())
    axes.flat[-1].legend(handles=legend, loc="upper left", bbox_to_anchor=(1.02, 1))
    return (
        save_figure(fig, out, "test_ppl", "Test perplexity per dropout placement"),
        "Test perplexity of the final weights; red dashed lines mark the published value where one "
        "exists for this size and placement.",
    )


def _against_rate(
    done: pd.DataFrame, y: str, ppl: pd.DataFrame, published: str | None, palette: dict, rate_axis: str, ylabel: str
):
    """One panel per size: y against the swept p, one line per placement (mean +- sd over seeds, each run a
    dot), and the published value as a dashed line in the placement's colour where there is one."""
    fig, axes, panels = _size_panels(done, palette, 5.5, legend_width=1.5)
    for ax, size, runs, order in panels:
        sns.lineplot(
            runs,
            x="rate",
            y=y,
            hue="placement",
            hue_order=order,
            palette=palette,
            errorbar="sd",
            marker="o",
            markersize=8,
            ax=ax,
        )
        sns.scatterplot(runs, x="rate", y=y, color="black", s=12, alpha=0.6, legend=False, ax=ax)
        values = ppl[ppl["size"] == size].drop_duplicates(KEYS).set_index("placement")
        for placement in order if published else []:
            if pd.notna(values[published].get(placement)):
                ax.axhline(values[published][placement], color=palette[placement], linestyle="--", linewidth=2)
        ax.set(title=_title(size, ppl, published), xlabel=rate_axis, ylabel=ylabel)
        ax.set_xticks(sorted(runs["rate"].unique()))  # the probabilities run, not a grid of round numbers
        ax.get_legend().remove()
    log_if_wide(axes.flat, done[y])
    handles = [Line2D([], [], marker="o", color=palette[p], label=p) for p in ordered(done["placement"])]
    handles += _run_legend(False, mean=False)
    if published and ppl[published].notna().any():
        label = "published, in the placement's colour\n(see results table)"
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=2, label=label))
    axes.flat[-1].legend(handles=handles, title="placement", loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def plot_test_against_rate(
    done: pd.DataFrame, ppl: pd.DataFrame, palette: dict, band: str, rate_axis: str, out: Path
) -> tuple[Path, str]:
    fig = _against_rate(done, "test_ppl", ppl, "published_test_ppl", palette, rate_axis, f"test {PPL}")
    return (
        save_figure(fig, out, "test_ppl", f"Test perplexity against dropout probability ({band})"),
        "Test perplexity of the final weights for each swept dropout probability; dashed lines mark the "
        "published value (at the paper's own p) where one exists for this size and placement.",
    )


def plot_sensitivity(
    done: pd.DataFrame, ppl: pd.DataFrame, palette: dict, band: str, rate_axis: str, out: Path
) -> tuple[Path, str]:
    fig = _against_rate(done, "final_val_ppl", ppl, None, palette, rate_axis, f"validation {PPL}")
    return (
        save_figure(
            fig, out, "sensitivity", f"Sensitivity: final validation perplexity against dropout probability ({band})"
        ),
        "Validation perplexity of the last epoch (dropout off) for each swept dropout probability, one line "
        "per placement: where the method is best, and how sharply it worsens away from there.",
    )


def with_rate(done: pd.DataFrame, rates: list[str]) -> tuple[pd.DataFrame, str]:
    """done plus `rate`: the value of the probability its size and placement sweep (the first of `rates` that
    varies there; p where none does), and the axis label that says which one each placement sweeps."""
    column = {key: next((c for c in rates if g[c].nunique() > 1), rates[0]) for key, g in done.groupby(KEYS)}
    rate = [row[column[(row["size"], row["placement"])]] for _, row in done.iterrows()]
    others = sorted({f"{placement}: p is dropout.{rate_label(c)}" for (_, placement), c in column.items() if c != "p"})
    return done.assign(rate=rate), RATE_AXIS + (f"\n({'; '.join(others)})" if others else "")


def figures(
    done: pd.DataFrame, curves: pd.DataFrame, ppl: pd.DataFrame, out: Path, rates: list[str] = ()
) -> list[tuple[Path, str]]:
    """The figures of completed runs, saved as PNG and PDF; (PNG path, caption) for each. Three; where a
    sweep varies a probability (`rates`, see swept), curves per value of it and a fourth, sensitivity."""
    placements = ordered(done["placement"])
    palette = colours(placements)
    seeds = done.groupby(KEYS + list(rates))["seed"].nunique().max()
    band = (
        f"line: mean over {seeds} seeds, band: ±1 sd"
        if seeds > 1
        else "one seed per placement" + (" and p" if rates else "")
    )
    if not rates:
        return [
            plot_val(curves, palette, band, out),
            plot_gap(curves, palette, band, out),
            plot_test(done, ppl, palette, out),
        ]
    done, rate_axis = with_rate(done, list(rates))
    curves = curves.merge(done[["job", "rate"]].drop_duplicates("job"), on="job")
    return [
        plot_val(curves, palette, band, out, rate_axis),
        plot_gap(curves, palette, band, out, rate_axis),
        plot_test_against_rate(done, ppl, palette, band, rate_axis, out),
        plot_sensitivity(done, ppl, palette, band, rate_axis, out),
    ]
