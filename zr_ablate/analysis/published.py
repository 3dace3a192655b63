"""Published PTB word-level perplexities, to set beside our own runs.

published_ptb.csv holds numbers transcribed from the papers named in its `source`, `table` and `row`
columns (Gal's rows include the tied MC rows of his Table 1 and the January 2017 re-run from his code's
README), an `mc_samples` column (an MC-dropout row's samples per token), a `caveat` column (what a reader
must know beside the number, e.g. which word dropout made it) and a `recipe` column naming each row's
training recipe in published_recipes.yaml. Its `placement` column uses this project's names (none, naive,
zaremba, variational, ...) but only the recipe decides what is set beside a run: a run at another rate,
size, schedule or epoch count gets no published number, nor an MC run that drew fewer samples per token.
"""

from __future__ import annotations

from importlib.resources import files

import pandas as pd

from zr_ablate.analysis.recipes import recipes

RECIPE = ["recipe", "recipe_note"]  # what beside() needs of a cell besides size and placement


def published() -> pd.DataFrame:
    """Every published row: source, table, row, size, placement, val_ppl, test_ppl, eval, mc_samples, notes,
    caveat, recipe (the id in published_recipes.yaml of the recipe that produced it; empty where we cannot
    express it)."""
    with files(__package__).joinpath("published_ptb.csv").open() as f:
        return pd.read_csv(f)


def _source(ref: pd.DataFrame) -> pd.Series:
    """Each row as `source, table: row`, and its caveat in brackets where it has one."""
    caveat = ref["caveat"].map(lambda c: f" [{c}]" if isinstance(c, str) else "")
    return ref["source"] + ", " + ref["table"] + ": " + ref["row"] + caveat


def _rows(evaluation: str) -> pd.DataFrame:
    """The published rows of one evaluation (standard or mc_dropout) that have a recipe, one per recipe."""
    table = published()
    return table[(table["eval"] == evaluation) & table["recipe"].notna()].drop_duplicates("recipe")


def cell_recipe(recipes: pd.Series) -> str | None:
    """The recipe of a cell's runs: theirs if they all follow the same one, else None."""
    values = recipes.unique()
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def cell_note(notes: pd.Series) -> str:
    """Why a cell has no recipe: its runs' note if they agree, else that they follow different settings."""
    values = notes.dropna().unique()
    return values[0] if len(values) == 1 else "its runs differ in their settings"


def _other_recipes(cells: pd.DataFrame) -> pd.Series:
    """Per cell, the published rows for its size and placement whose recipe we cannot express (e.g. Wen et
    al.'s Flipout table: SGD lr 30, batch 40, 100 epochs), named, so that a reader knows they exist."""
    table = published()
    other = table[table["recipe"].isna()]
    other = other.assign(other=other["source"].str.split(" \\(").str[0] + " " + other["table"])
    named = other.groupby(["size", "placement"])["other"].agg(lambda v: ", ".join(dict.fromkeys(v))).reset_index()
    return cells[["size", "placement"]].merge(named, how="left")["other"]


def _source_and_assumptions(ref: pd.DataFrame) -> pd.Series:
    """Each published row's source, with the settings its recipe had to assume where the source is silent."""
    assumed = ref["recipe"].map(lambda r: ", ".join(recipes()[r]["assumed"]))
    see = "see docs/methods-and-recipes.md, Recipes"
    return _source(ref) + assumed.map(lambda a: f" (recipe assumes {a}: {see})" if a else "")


def beside(cells: pd.DataFrame) -> pd.DataFrame:
    """Add published_val_ppl, published_test_ppl and published_source to a frame of cells (size, placement,
    recipe, recipe_note): a published row is set beside a cell only when the cell's runs follow that row's
    recipe exactly (zr_ablate/analysis/recipes.py). An empty cell's published_source says why: the nearest recipe and
    what differs, and any published row for the placement that came from a recipe we cannot express."""
    ref = _rows("standard")
    ref = ref.assign(published_source=_source_and_assumptions(ref)).rename(
        columns={"val_ppl": "published_val_ppl", "test_ppl": "published_test_ppl"}
    )
    out = cells.merge(
        ref[["recipe", "published_val_ppl", "published_test_ppl", "published_source"]], on="recipe", how="left"
    )
    other = _other_recipes(out)
    why = out["recipe_note"].fillna("no recorded config") + other.map(
        lambda o: f"; published under another training recipe: {o}" if isinstance(o, str) else ""
    )
    out["published_source"] = out["published_source"].fillna(why)
    return out


def mc_beside(cells: pd.DataFrame) -> pd.DataFrame:
    """Add published_mc_test_ppl, published_mc_samples and published_mc_source (Gal's MC-dropout rows, the
    only published MC numbers) to cells (recipe, mc_samples_min: the fewest MC samples per token among the
    cell's runs) whose runs follow those rows' recipe. A number averaged over more samples than some run drew
    is not like for like (Gal: 100 -> 2000 samples was worth ~0.25 ppl): it is left out, and
    published_mc_source names the row, its samples and how many fewer the runs drew."""
    ref = _rows("mc_dropout")
    ref = ref.assign(
        published_mc_test_ppl=ref["test_ppl"],
        published_mc_source=_source_and_assumptions(ref),
        published_mc_samples=ref["mc_samples"],
    )
    out = cells.merge(
        ref[["recipe", "published_mc_test_ppl", "published_mc_samples", "published_mc_source"]],
        on="recipe",
        how="left",
    )
    # Short where a published count exists and some run drew fewer samples, or drew none (no MC evaluation).
    short = out["published_mc_samples"].notna() & ~(out["mc_samples_min"] >= out["published_mc_samples"])
    lacking = out.loc[short, ["published_mc_source", "published_mc_samples", "mc_samples_min"]].values
    out.loc[short, "published_mc_source"] = [
        f"not like for like: {source} averaged {need:g} samples per token, "
        + (f"these runs {had:g} ({need - had:g} fewer)" if pd.notna(had) else "these runs none (no eval.mc_samples)")
        for source, need, had in lacking
    ]
    out.loc[short, "published_mc_test_ppl"] = float("nan")
    return out
