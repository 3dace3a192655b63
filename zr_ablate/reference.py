"""Published PTB word-level perplexities, to set beside our own runs.

published_ptb.csv is a copy of the project's shared/reference/published_ptb.csv (numbers transcribed from
the papers named in its `source`, `table` and `row` columns; see shared/reference/README.md). Its
`placement` column uses this project's names (none, naive, zaremba, variational, ...).
"""

from __future__ import annotations

import re
from importlib.resources import files

import pandas as pd

PAPER_SIZES = ("small", "medium", "large")
# Published rows trained with another recipe than Zaremba's (optimiser, batch, epochs): never set beside
# ours as like for like; a cell that only they fill says so instead. source prefix -> short name.
OTHER_RECIPES = {"Wen et al. 2018 Flipout": "Flipout"}  # SGD lr 30, batch 40, 100 epochs for every row


def published() -> pd.DataFrame:
    """Every published row: source, table, row, size, placement, val_ppl, test_ppl, eval, notes."""
    with files(__package__).joinpath("published_ptb.csv").open() as f:
        return pd.read_csv(f)


def _from(table: pd.DataFrame, source: str) -> pd.DataFrame:
    return table[table["source"].str.startswith(source)]


def comparable() -> pd.DataFrame:
    """One published row per (size, placement) that our runs reproduce.

    Zaremba 2014 Table 1 first; else Gal & Ghahramani 2016 with standard (dropout-off) evaluation, their
    "tied weights" row, since our `variational` shares one h_{t-1} mask across the four gates as theirs does;
    else Press & Wolf 2016's tied embeddings, whose `<placement>+tied_embeddings` is our variant
    `<placement>+tied` (model.tie_weights=true).
    """
    table = published()
    zaremba = _from(table, "Zaremba 2014")
    gal = _from(table, "Gal & Ghahramani 2016")
    press = _from(table, "Press & Wolf 2016")
    return pd.concat(
        [
            zaremba[zaremba["table"] == "Table 1"],
            gal[(gal["eval"] == "standard") & (gal["row"] == "Variational (tied weights)")],
            press.assign(placement=press["placement"].str.replace("+tied_embeddings", "+tied", regex=False)),
        ]
    ).drop_duplicates(["size", "placement"])


def _source(ref: pd.DataFrame) -> pd.Series:
    return ref["source"] + ", " + ref["table"] + ": " + ref["row"]


def beside(cells: pd.DataFrame) -> pd.DataFrame:
    """Add published_val_ppl, published_test_ppl and published_source to a frame keyed by size, placement."""
    ref = comparable().rename(columns={"val_ppl": "published_val_ppl", "test_ppl": "published_test_ppl"})
    ref["published_source"] = _source(ref)
    out = cells.merge(
        ref[["size", "placement", "published_val_ppl", "published_test_ppl", "published_source"]],
        on=["size", "placement"],
        how="left",
    )
    # Say why a cell is empty: a row from another recipe, no row for this placement, or (our demo/tiny
    # profiles: smaller models, less data) none at this size.
    table = published()
    recipe = table["source"].map(lambda s: next((n for k, n in OTHER_RECIPES.items() if s.startswith(k)), None))
    other = table[recipe.notna()].assign(
        note="published values use a different training recipe (" + recipe + " " + table["table"] + ")"
    )
    other = other[["size", "placement", "note"]].drop_duplicates(["size", "placement"])
    why = out[["size", "placement"]].merge(other, how="left")["note"]
    why = why.fillna(
        out["size"]
        .isin(PAPER_SIZES)
        .map({True: "no published value for this placement", False: "no published value at this size"})
    )
    out["published_source"] = out["published_source"].fillna(why)
    return out


def mc_beside(cells: pd.DataFrame) -> pd.DataFrame:
    """Add published_mc_test_ppl, published_mc_samples and published_mc_source (Gal & Ghahramani 2016's
    MC-dropout rows, the only published MC numbers; for `variational`) to a frame keyed by size, placement."""
    gal = _from(published(), "Gal & Ghahramani 2016")
    ref = gal[gal["eval"] == "mc_dropout"].drop_duplicates(["size", "placement"])
    ref = ref.assign(
        published_mc_test_ppl=ref["test_ppl"],
        published_mc_source=_source(ref),
        published_mc_samples=[int(re.search(r"(\d+) stochastic passes", n).group(1)) for n in ref["notes"]],
    )
    return cells.merge(
        ref[["size", "placement", "published_mc_test_ppl", "published_mc_samples", "published_mc_source"]],
        on=["size", "placement"],
        how="left",
    )
