"""Published PTB word-level perplexities, to set beside our own runs.

published_ptb.csv is a copy of the project's shared/reference/published_ptb.csv (numbers transcribed from
the papers named in its `source`, `table` and `row` columns; see shared/reference/README.md). Its
`placement` column uses this project's names (none, naive, zaremba, variational, ...).
"""
from __future__ import annotations

from importlib.resources import files

import pandas as pd

PAPER_SIZES = ("small", "medium", "large")


def published() -> pd.DataFrame:
    """Every published row: source, table, row, size, placement, val_ppl, test_ppl, eval, notes."""
    with files(__package__).joinpath("published_ptb.csv").open() as f:
        return pd.read_csv(f)


def comparable() -> pd.DataFrame:
    """One published row per (size, placement) that our runs reproduce.

    Zaremba 2014 Table 1 first; else Gal & Ghahramani 2016 with standard (dropout-off) evaluation, their
    "tied weights" row, since our `variational` shares one h_{t-1} mask across the four gates as theirs does.
    """
    table = published()
    zaremba = table[table["source"].str.startswith("Zaremba 2014") & (table["table"] == "Table 1")]
    gal = table[table["source"].str.startswith("Gal & Ghahramani 2016") & (table["eval"] == "standard")
                & (table["row"] == "Variational (tied weights)")]
    return pd.concat([zaremba, gal]).drop_duplicates(["size", "placement"])


def beside(cells: pd.DataFrame) -> pd.DataFrame:
    """Add published_val_ppl, published_test_ppl and published_source to a frame keyed by size, placement."""
    ref = comparable().rename(columns={"val_ppl": "published_val_ppl", "test_ppl": "published_test_ppl"})
    ref["published_source"] = ref["source"] + ", " + ref["table"] + ": " + ref["row"]
    out = cells.merge(ref[["size", "placement", "published_val_ppl", "published_test_ppl", "published_source"]],
                      on=["size", "placement"], how="left")
    # Our demo/tiny profiles (smaller models, less data) match no published row; say why the cell is empty.
    out["published_source"] = out["published_source"].fillna(out["size"].isin(PAPER_SIZES).map(
        {True: "no published value for this placement", False: "no published value at this size"}))
    return out
