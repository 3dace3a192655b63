"""Report tables: per size x placement (x swept rate), numbers and the same formatted for readers.

Rows are a model size and a variant (the placement, plus +tied / +word<p> where the run changed the method
beyond its preset), and, where a sweep varies a dropout probability within one, each value of it: a
sensitivity sweep is never averaged across p. Pandas only (no plotting), so the bench can print with it.
"""

from __future__ import annotations

import pandas as pd

from zr_ablate.analysis.published import RECIPE, beside, cell_note, cell_recipe, mc_beside
from zr_ablate.analysis.runs import RATES
from zr_ablate.records import COMPLETED, STATUSES

# Paper sizes, then our CPU profiles; the paper's four placements, then the later methods. Anything
# else sorts after; a variant (zaremba+tied) right after its placement.
ORDER = {
    v: i
    for i, v in enumerate(
        [
            "small",
            "medium",
            "large",
            "demo",
            "tiny",
            "none",
            "naive",
            "zaremba",
            "variational",
            "semeniuta",
            "weight_drop",
            "zoneout",
        ]
    )
}


KEYS = ["size", "placement"]  # in the report, placement holds the run's variant


def _rank(value) -> tuple:
    return ORDER.get(str(value).split("+")[0], len(ORDER)), str(value)


def sorted_rows(df: pd.DataFrame, keys: list[str] = KEYS) -> pd.DataFrame:
    """By size and placement in ORDER, then by any swept probability."""
    return df.sort_values(keys, key=lambda col: col.map(_rank) if col.name in KEYS else col).reset_index(drop=True)


def ordered(values) -> list:
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
    return keys[len(KEYS) :]


def rate_label(col: str) -> str:
    """p (dropout.p) or a connection's own, e.g. cell_update.p, as the override names it under dropout."""
    return col if col == "p" else f"{col.removesuffix('_p')}.p"


def _passes(samples: pd.Series) -> str:
    """The MC passes of a cell's runs: "100", or "100/1000" where they differ."""
    return "/".join(f"{v:g}" for v in sorted(samples.dropna().unique()))


def perplexity_table(done: pd.DataFrame, keys: list[str] = KEYS, mc: bool = False) -> pd.DataFrame:
    """Per size x placement (x swept p): final val and test ppl, mean and sd over seeds, beside the published
    row; with mc, also the MC-dropout test ppl and its passes, beside Gal & Ghahramani's MC row."""
    mc_columns = dict(
        mc_test_ppl_mean=("mc_test_ppl", "mean"),
        mc_test_ppl_sd=("mc_test_ppl", "std"),
        mc_samples=("mc_samples", _passes),
        mc_samples_min=("mc_samples", "min"),
    )
    table = (
        done.groupby(keys)
        .agg(
            runs=("job", "size"),
            val_ppl_mean=("final_val_ppl", "mean"),
            val_ppl_sd=("final_val_ppl", "std"),
            test_ppl_mean=("test_ppl", "mean"),
            test_ppl_sd=("test_ppl", "std"),
            recipe=("recipe", cell_recipe),
            recipe_note=("recipe_note", cell_note),
            **(mc_columns if mc else {}),
        )
        .reset_index()
    )
    table = beside(table)
    table["test_minus_published"] = table["test_ppl_mean"] - table["published_test_ppl"]
    return sorted_rows(mc_beside(table) if mc else table, keys)


def gap_table(done: pd.DataFrame, keys: list[str] = KEYS) -> pd.DataFrame:
    table = (
        done.groupby(keys)
        .agg(runs=("job", "size"), final_train_ppl=("final_train_ppl", "mean"), final_val_ppl=("final_val_ppl", "mean"))
        .reset_index()
    )
    table["gap"] = table["final_val_ppl"] - table["final_train_ppl"]
    return sorted_rows(table, keys)


def status_table(runs: pd.DataFrame, keys: list[str] = KEYS) -> pd.DataFrame:
    counts = (
        runs.fillna({"size": "?", "placement": "?", "status": "?"})
        .groupby(keys, dropna=False)["status"]
        .value_counts()
        .unstack(fill_value=0)
    )
    counts = counts.reindex(columns=[*STATUSES, *(s for s in counts.columns if s not in STATUSES)], fill_value=0)
    counts["total"] = counts.sum(axis=1)
    return sorted_rows(counts.reset_index().rename_axis(columns=None), keys)


def _cell(v) -> str:
    return "" if pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v)


def mean_sd(mean: pd.Series, sd: pd.Series) -> list[str]:
    return [_cell(m) + ("" if pd.isna(s) else f" ± {s:.1f}") for m, s in zip(mean, sd)]


def shown(table: pd.DataFrame, names: dict) -> pd.DataFrame:
    """The columns in `names`, renamed for readers, numbers to one decimal, blanks for missing values."""
    return table[list(names)].rename(columns=names).map(_cell)


def _rates_as_given(table: pd.DataFrame, rates: list[str]) -> pd.DataFrame:
    """Probabilities as given (0.025, not 0.0); blank where a job recorded none."""
    return table.assign(**{c: table[c].map(lambda v: "" if pd.isna(v) else f"{v:g}") for c in rates})


def markdown_table(df: pd.DataFrame) -> str:
    # Missing values as blanks (pandas 3's astype(str) keeps NaN as NaN, e.g. a record with no config).
    cells = [["" if pd.isna(v) else str(v) for v in row] for row in df.values.tolist()]
    rows = [list(map(str, df.columns)), ["---"] * len(df.columns), *cells]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _published_mc(value: float, samples: float, source: str) -> str:
    """The published MC number with its samples per token; where the runs drew fewer, the note that says so."""
    if pd.notna(value):
        return f"{value:.1f} ({samples:g} samples per token)"
    return source if isinstance(source, str) and pd.notna(samples) else ""


def has_mc(runs: pd.DataFrame) -> bool:
    """Whether any completed run has an MC-dropout test perplexity."""
    return runs.loc[runs["status"] == COMPLETED, "mc_test_ppl"].notna().any()


def tables(runs: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """name -> (numbers, the same formatted for readers). Means are over completed runs only. `runs` is the
    report's view (as_variants)."""
    done, rates, mc = runs[runs["status"] == COMPLETED], swept(runs), has_mc(runs)
    keys = KEYS + rates
    ppl, gap, status = perplexity_table(done, keys, mc), gap_table(done, keys), status_table(runs, keys)
    key_names = {"size": "size", "placement": "placement", **{c: rate_label(c) for c in rates}}

    def shown_keys(table: pd.DataFrame, names: dict) -> pd.DataFrame:
        return shown(_rates_as_given(table, rates), key_names | names)

    ppl_cells = ppl.assign(
        val=mean_sd(ppl["val_ppl_mean"], ppl["val_ppl_sd"]), test=mean_sd(ppl["test_ppl_mean"], ppl["test_ppl_sd"])
    )
    mc_names = {}
    if mc:
        ppl_cells = ppl_cells.assign(
            mc=mean_sd(ppl["mc_test_ppl_mean"], ppl["mc_test_ppl_sd"]),
            published_mc=[
                _published_mc(v, n, source)
                for v, n, source in zip(
                    ppl["published_mc_test_ppl"], ppl["published_mc_samples"], ppl["published_mc_source"]
                )
            ],
        )
        mc_names = {"mc": "MC test ppl", "mc_samples": "MC passes"}
    ppl_shown = shown_keys(
        ppl_cells,
        {
            "runs": "completed runs",
            "val": "val ppl",
            "test": "test ppl",
            **mc_names,
            "published_val_ppl": "published val",
            "published_test_ppl": "published test",
            "test_minus_published": "test - published",
            **({"published_mc": "published MC test"} if mc else {}),
            "published_source": "published source",
        },
    )
    gap_shown = shown_keys(
        gap,
        {
            "runs": "completed runs",
            "final_train_ppl": "train ppl",
            "final_val_ppl": "val ppl",
            "gap": "gap (val - train)",
        },
    )
    status_shown = _rates_as_given(status, rates).rename(columns=key_names).map(_cell)
    return {"perplexity": (ppl, ppl_shown), "gap": (gap, gap_shown), "status": (status, status_shown)}


def compact(runs: pd.DataFrame) -> str:
    """One row per job (size, placement, seed, status, best validation, test, the published test value where
    one is set beside it): what the end of a sweep and of a report print in the terminal."""
    view = sorted_rows(as_variants(runs), KEYS + ["seed"])
    rows = beside(view[["size", "placement", "seed", "status", "best_val_ppl", "test_ppl", *RECIPE]])
    return markdown_table(
        pd.DataFrame(
            {
                "size": rows["size"],
                "placement": rows["placement"],
                "seed": rows["seed"].map(lambda v: "" if pd.isna(v) else f"{v:g}"),
                "status": rows["status"],
                "best val": rows["best_val_ppl"].map(_cell),
                "test": rows["test_ppl"].map(_cell),
                "published test": rows["published_test_ppl"].map(_cell),
            }
        )
    )
