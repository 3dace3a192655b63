"""The context-length probe in the report: how much context each placement's model uses.

`python -m zr_ablate.probe SWEEP` writes SWEEP/probe/{probe,memory,positions}.csv (perplexity with the
state reset every k tokens, the memory gain ppl(k=1) - ppl(whole) and k90, the loss at each position of a
chunk). Where a source holds them, the report adds per size and split: a table of perplexity per
placement and k, a table of the memory gain and k90 (mean +- sd over seeds), and two figures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.ticker import ScalarFormatter

from zr_ablate.analysis.report.figures import log_if_wide, plt, save_figure
from zr_ablate.analysis.report.tables import mean_sd, ordered, sorted_rows

PROBE = "probe"  # the probe's folder beside the job folders
FILES = ("probe", "memory", "positions")


def load(source: Path) -> dict[str, pd.DataFrame] | None:
    folder = source / PROBE
    if not all((folder / f"{name}.csv").is_file() for name in FILES):
        return None
    return {name: pd.read_csv(folder / f"{name}.csv", dtype={"k": str, "k90": str}) for name in FILES}


def keep(source: Path, runs: Path) -> None:
    """--keep-runs: the probe's tables travel with the job records, so a kept report regenerates whole."""
    if (source / PROBE).is_dir() and (runs / PROBE).resolve() != (source / PROBE).resolve():
        shutil.copytree(source / PROBE, runs / PROBE, dirs_exist_ok=True)


def _by_k(ks) -> list[str]:
    """Reset intervals in order, "whole" (the state never reset) last."""
    return sorted(set(ks), key=lambda k: float("inf") if k == "whole" else int(k))


def _ks(frame: pd.DataFrame) -> list[str]:
    return _by_k(frame["k"])


def tables(frames: dict[str, pd.DataFrame], split: str) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """memory_<split>: gain and k90 per size x placement; reset_<split>: perplexity per placement and k."""
    memory = frames["memory"][frames["memory"]["split"] == split]
    gain = memory.groupby(["size", "placement"]).agg(
        runs=("job", "size"),
        ppl_k1_mean=("ppl_k1", "mean"),
        ppl_k1_sd=("ppl_k1", "std"),
        ppl_whole_mean=("ppl_whole", "mean"),
        ppl_whole_sd=("ppl_whole", "std"),
        gain_mean=("memory_gain", "mean"),
        gain_sd=("memory_gain", "std"),
        k90=("k90", lambda ks: "/".join(_by_k(ks))),
    )
    gain = sorted_rows(gain.reset_index())
    gain_shown = pd.DataFrame(
        {
            "size": gain["size"],
            "placement": gain["placement"],
            "seeds": gain["runs"],
            "ppl, 1 token of context": mean_sd(gain["ppl_k1_mean"], gain["ppl_k1_sd"]),
            "ppl, whole stream": mean_sd(gain["ppl_whole_mean"], gain["ppl_whole_sd"]),
            "memory gain": mean_sd(gain["gain_mean"], gain["gain_sd"]),
            "k for 90% of it": gain["k90"],
        }
    )
    probe = frames["probe"][frames["probe"]["split"] == split]
    ks = _ks(probe)
    stats = probe.groupby(["size", "placement", "k"])["ppl"].agg(["mean", "std"])
    mean = sorted_rows(stats["mean"].unstack("k")[ks].reset_index())
    sd = stats["std"].unstack("k")[ks].reindex(pd.MultiIndex.from_frame(mean[["size", "placement"]]))
    shown = mean[["size", "placement"]].copy()
    for k in ks:
        shown[f"k={k}"] = mean_sd(mean[k], sd[k].reset_index(drop=True))
    return {f"memory_{split}": (gain, gain_shown), f"reset_{split}": (mean, shown)}


def figures(frames: dict[str, pd.DataFrame], split: str, palette: dict, out: Path) -> list[tuple[Path, str]]:
    """Perplexity against k (log x) and the loss at each position of a chunk, a colour per placement."""
    probe = frames["probe"][(frames["probe"]["split"] == split) & (frames["probe"]["k"] != "whole")]
    probe = probe.assign(k=probe["k"].astype(int))
    sizes = ordered(probe["size"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        data = probe[probe["size"] == size]
        sns.lineplot(data, x="k", y="ppl", hue="placement", palette=palette, errorbar="sd", marker="o", ax=ax)
        whole = frames["probe"].query("split == @split and k == 'whole' and size == @size")
        for placement, value in whole.groupby("placement")["ppl"].mean().items():
            ax.axhline(value, color=palette.get(placement), linestyle=":", linewidth=1)
        ax.set(
            xscale="log",
            xlabel="context: state reset every k tokens",
            title=f"model size: {size}",
            ylabel=f"{split} perplexity",
        )
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 1, 10, 100 rather than 10^0, 10^1, 10^2
        log_if_wide([ax], data["ppl"])
    ppl = save_figure(fig, out, f"memory_{split}", f"Perplexity against the context the model may use ({split})")
    positions = frames["positions"][frames["positions"]["split"] == split]
    grid = sns.relplot(
        positions,
        x="position",
        y="nll",
        hue="placement",
        col="size",
        kind="line",
        palette=palette,
        errorbar="sd",
        height=3.5,
        aspect=1.4,
        facet_kws={"sharey": False},
    )
    grid.set(xscale="log").set_axis_labels("position in a chunk (tokens of context so far)", "mean NLL (nats)")
    pos = save_figure(grid.figure, out, f"positions_{split}", f"Loss at each position of a chunk ({split})")
    return [
        (
            ppl,
            f"{split.capitalize()} perplexity with the state reset every k tokens (dotted: the whole stream, "
            f"state carried). Bands: ±1 sd over seeds. A placement whose curve keeps falling with k uses long "
            f"context.",
        ),
        (
            pos,
            f"Mean {split} loss at each position of the longest chunks: how fast the prediction improves as "
            f"context accumulates.",
        ),
    ]


def markdown(tables_md: dict[str, str], figs: list[tuple[Path, str]], split: str) -> str:
    lines = [
        "## Memory: how much context each placement uses",
        "",
        "`python -m zr_ablate.probe` on the final weights, dropout off: the split is cut into k-token chunks "
        "that each start from the zero state, so no prediction sees more than k tokens (`whole`: the state "
        "carried over the stream, the test protocol). Memory gain = perplexity with 1 token of context "
        "minus with the whole stream; k90 = the smallest k that earns 90% of it (per seed).",
        "",
        tables_md[f"memory_{split}"],
        "",
        tables_md[f"reset_{split}"],
        "",
    ]
    lines += [
        f"![{caption}]({png.name})\n\n{caption} ([PDF]({png.with_suffix('.pdf').name}))\n" for png, caption in figs
    ]
    return "\n".join(lines)
