"""The report's "Which placement wins, and how sure": analysis/compare.py's paired differences as tables, a
forest plot and their text; with a second sweep at tuned rates (report --tuned), its own section and a
table of each placement at its tuned rates beside the same placement at the paper's rate.

Pairs are made within a model size, a setup (the same recipe but for dropout) and, where a sweep varies a
rate, that rate's value; a placement is the run's variant (zaremba+tied), as in the other tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from zr_ablate.analysis import compare
from zr_ablate.analysis.published import published
from zr_ablate.analysis.report.figures import plt, save_figure
from zr_ablate.analysis.report.output import write_table
from zr_ablate.analysis.report.tables import mean_sd, rate_label, sorted_rows, swept
from zr_ablate.analysis.runs import RATES
from zr_ablate.records import COMPLETED

CI = f"{compare.LEVEL:.0%} interval"


def numbers(view: pd.DataFrame, sentences: dict, probe: dict | None) -> dict[str, pd.DataFrame]:
    """name -> statistics: test ppl across seeds (wins) and per seed over sentences (wins_sentences), memory
    gain across seeds where the probe ran (wins_memory), Zaremba's headline where its runs exist."""
    done = sorted_rows(view[view["status"] == COMPLETED])
    keys = ["size", *swept(view), "setup"]
    if len(twins := compare.ambiguous(done, keys)):
        print(
            f"warning: {', '.join(twins['job'])} share a placement and seed in one setup (they differ in settings "
            "the pairing does not tell apart); they stay out of the pairwise comparisons",
            file=sys.stderr,
        )
    out = {
        "wins": compare.seed_pairs(done, "test_ppl", keys),
        "wins_sentences": compare.sentence_pairs(done, sentences, keys),
    }
    if probe is not None:
        gain = probe["memory"][probe["memory"]["split"] == "test"][["job", "memory_gain"]]
        out["wins_memory"] = compare.seed_pairs(done.merge(gain, on="job"), "memory_gain", keys)
    across, per_seed = compare.headline(done, sentences)
    if len(per_seed):
        out |= {"headline": across, "headline_seeds": per_seed}
    return out


def _interval(estimate: float, low: float, high: float, fmt: str = "+.1f") -> str:
    if pd.isna(estimate):
        return ""
    return f"{estimate:{fmt}}" + ("" if pd.isna(low) else f" [{low:{fmt}}, {high:{fmt}}]")


def _winner(row, larger: bool = False) -> str:
    """The placement with the lower (larger) value, where the interval resolves the difference."""
    if row.verdict != compare.RESOLVED:
        return ""
    return row.a if (row.estimate > 0) == larger else row.b


def shown(stats: dict[str, pd.DataFrame], what: str = "test ppl") -> dict[str, pd.DataFrame]:
    """The same tables for readers: one row per comparison, "a - b", the difference with its interval."""
    out = {}
    for name, frame in stats.items():
        if name.startswith("headline"):
            cells = {"placement (large)": frame["placement"]}
            cells |= {"setup": frame["setup"]} if frame["setup"].nunique() > 1 else {}
            cells |= {"seed": frame["seed"]} if "seed" in frame else {"seeds": frame["seeds"]}
            cells["improvement over small none"] = [
                _interval(*(100 * v for v in vs), fmt=".1f") + " %" for vs in frame[["estimate", "low", "high"]].values
            ]
            out[name] = pd.DataFrame(cells | {"verdict": frame["verdict"]})
            continue
        keys = [k for k in frame.columns if k not in ("a", "b", "seed", "seeds", *compare.INTERVAL)]
        if frame["setup"].nunique() <= 1:
            keys.remove("setup")  # one setup: nothing to tell apart
        memory = name.endswith("memory")
        unit = "memory gain" if memory else what
        table = frame[keys].rename(columns={k: rate_label(k) for k in keys if k in ["p", *RATES]}).astype(str)
        table["comparison (a - b)"] = frame["a"] + " - " + frame["b"]
        table["seed" if "seed" in frame else "seeds"] = frame["seed" if "seed" in frame else "seeds"]
        table[f"Δ {unit} ({CI})"] = [_interval(*v) for v in frame[["estimate", "low", "high"]].values]
        table["verdict"] = frame["verdict"]
        table["larger gain" if memory else "lower ppl"] = [_winner(r, larger=memory) for r in frame.itertuples()]
        if name == "wins" and "wins_sentences" in stats:
            table["seeds resolved over sentences"] = _per_seed_summary(frame, stats["wins_sentences"], keys)
        out[name] = table
    return out


def _per_seed_summary(pairs: pd.DataFrame, per_seed: pd.DataFrame, keys: list[str]) -> list[str]:
    """Per comparison, how many seeds' sentence bootstraps resolve it: "2 of 3"; blank where none ran."""
    on = [*keys, "a", "b"]
    ok = per_seed.assign(ok=per_seed["verdict"] == compare.RESOLVED).groupby(on, dropna=False)["ok"]
    merged = pairs[on].merge(ok.agg(resolved="sum", seeds="size").reset_index(), on=on, how="left")
    return ["" if pd.isna(n) else f"{int(k)} of {int(n)}" for k, n in zip(merged["resolved"], merged["seeds"])]


def forest(stats: dict[str, pd.DataFrame], out: Path, name: str, title: str, what: str = "test ppl"):
    """The differences as a forest plot: per comparison, the across-seed interval (black) and each seed's
    sentence-bootstrap interval (grey, below it); a panel for test perplexity and one for memory gain."""
    panels = [(n, u) for n, u in (("wins", what), ("wins_memory", "memory gain")) if n in stats and len(stats[n])]
    if not panels:
        return None
    rows = max(len(stats[n]) for n, _ in panels)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(7 * len(panels), 1.5 + 0.5 * rows), squeeze=False, layout="constrained"
    )
    per_seed = stats.get("wins_sentences")
    for ax, (panel, unit) in zip(axes[0], panels):
        pairs = stats[panel].reset_index(drop=True)
        for i, row in pairs.iterrows():
            _bar(ax, row, -i, "black", "o", 6)
            if panel == "wins" and per_seed is not None:
                on = [c for c in pairs.columns if c not in ("seeds", *compare.INTERVAL)]  # keys, a, b
                same = (per_seed[on] == row[on].values).all(axis=1)
                mine = per_seed[same]
                for j, (_, seed) in enumerate(mine.iterrows()):
                    _bar(ax, seed, -i - 0.15 * (j + 1), "grey", ".", 4)
        ax.axvline(0, color="crimson", linewidth=1)
        rates = [c for c in pairs.columns if c in ["p", *RATES]]
        labels = [
            f"{r['size']}{''.join(f', {rate_label(c)} {r[c]:g}' for c in rates)}: {r['a']} - {r['b']}"
            for _, r in pairs.iterrows()
        ]
        ax.set_yticks([-i for i in range(len(pairs))], labels)
        ax.set_xlabel(f"Δ {unit} (a - b)")
    handles = [plt.Line2D([], [], color="black", marker="o", label=f"across seeds, paired by seed ({CI})")]
    if per_seed is not None and len(per_seed):
        label = f"one seed, paired bootstrap over test sentences ({CI})"
        handles.append(plt.Line2D([], [], color="grey", marker=".", label=label))
    axes[0][0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.02), fontsize="small")
    return save_figure(fig, out, name, title)


def _bar(ax, row, y: float, colour: str, marker: str, size: float) -> None:
    known = pd.notna(row["low"])
    err = [[row["estimate"] - row["low"]], [row["high"] - row["estimate"]]] if known else None
    ax.errorbar(row["estimate"], y, xerr=err, fmt=marker, color=colour, markersize=size, capsize=3)


def tuned_table(paper: pd.DataFrame, tuned: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per size and placement at tuned rates: the rates, seeds, val and test ppl (mean, sd), beside the same
    placement's test ppl at the paper's rate (the main sweep) in the same setup (recipe but for dropout; blank
    where the main sweep has none), and the change."""

    def cells(view):
        done = view[view["status"] == COMPLETED]
        return done.groupby(["size", "placement", "setup"], sort=False).agg(
            rates=("job", lambda jobs: _rates(done.loc[jobs.index].iloc[0])),
            seeds=("job", "size"),
            val_mean=("final_val_ppl", "mean"),
            val_sd=("final_val_ppl", "std"),
            test_mean=("test_ppl", "mean"),
            test_sd=("test_ppl", "std"),
        )

    table = cells(tuned).join(cells(paper), rsuffix="_paper", how="left")
    table = sorted_rows(table.reset_index())
    table["change"] = table["test_mean"] - table["test_mean_paper"]
    formatted = pd.DataFrame(
        {
            "size": table["size"],
            "placement": table["placement"],
            "tuned rates": table["rates"],
            "seeds": table["seeds"],
            "val ppl": mean_sd(table["val_mean"], table["val_sd"]),
            "test ppl": mean_sd(table["test_mean"], table["test_sd"]),
            "paper's rate": table["rates_paper"].fillna(""),
            "test ppl at the paper's rate": mean_sd(table["test_mean_paper"], table["test_sd_paper"]),
            "change": table["change"].map(lambda v: "" if pd.isna(v) else f"{v:+.1f}"),
        }
    )
    return table, formatted


def _rates(run) -> str:
    """A run's dropout rates in one cell: "p 0.35" where every connection on follows p, else each one's."""
    on = {c.removesuffix("_p"): run[c] for c in RATES if pd.notna(run[c]) and run[c] > 0}
    if not on:
        return "none"
    if pd.notna(run["p"]) and all(v == run["p"] for v in on.values()):
        return f"p {run['p']:g}"
    return ", ".join(f"{c} {v:g}" for c, v in on.items())


def section(
    view: pd.DataFrame, sentences: dict, probe: dict | None, out: Path, prefix: str, heading: str
) -> tuple[dict, list[tuple[Path, str]], str]:
    """Statistics, tables (files named prefix, prefix_sentences, ...), the forest plot and the section's
    Markdown for one sweep. Returns ({file name: (numbers, formatted)}, figures, text)."""
    stats = {name: frame for name, frame in numbers(view, sentences, probe).items() if len(frame)}
    if not stats:  # fewer than two placements with completed runs: nothing to compare
        return {}, [], ""
    formatted = shown(stats)
    files = {prefix + name.removeprefix("wins"): name for name in stats}
    tables = {file: (stats[name], formatted[name]) for file, name in files.items()}
    tables_md = {name: write_table(out, file, *tables[file]) for file, name in files.items()}
    png = forest(stats, out, prefix, f"{heading}: differences with their {CI}s")
    figs = [] if png is None else [(png, f"{heading}: each difference with its {CI}s (zero: the red line).")]
    return tables, figs, markdown(tables_md, figs[0] if figs else None, heading)


def _published_headline() -> str:
    """Zaremba et al.'s own: small unregularised against large regularised test perplexity."""
    ref = published().set_index("recipe")["test_ppl"]
    small, large = ref["zaremba_small"], ref["zaremba_large"]
    return f"published: {small:g} -> {large:g}, {100 * (1 - large / small):.1f} %"


def markdown(tables_md: dict[str, str], fig: tuple[Path, str] | None, heading: str) -> str:
    lines = [
        f"## {heading}",
        "",
        "Every pair of placements trained with the same recipe otherwise (size, schedule, data). 'Δ' is a's "
        "minus b's value: > 0 means b is lower. Across seeds: the mean of the per-seed differences, paired by "
        f"seed, with its t interval ({CI}, scipy). Over sentences: per seed, a paired bootstrap over test "
        f"sentences ({compare.RESAMPLES} resamples, the same sentences for both runs, perplexity recomputed "
        "from the resampled NLL and token sums): how much of the difference the test set itself resolves. "
        "Resolved: the interval excludes 0.",
        "",
    ]
    for name, caption in (
        ("wins", "Test perplexity, across seeds:"),
        ("wins_sentences", "Test perplexity, per seed, over test sentences:"),
        ("wins_memory", "Memory gain (the context probe), across seeds:"),
        (
            "headline",
            "Zaremba et al.'s headline, a large regularised model against the small unregularised one (relative "
            f"improvement in test perplexity; {_published_headline()}), across seeds:",
        ),
        ("headline_seeds", "The same per seed, over test sentences:"),
    ):
        if name in tables_md:
            lines += [caption, "", tables_md[name], ""]
    if fig is not None:
        png, caption = fig
        lines += [f"![{caption}]({png.name})\n\n{caption} ([PDF]({png.with_suffix('.pdf').name}))\n"]
    return "\n".join(lines)
