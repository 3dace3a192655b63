"""The tuning studies behind a --tuned sweep: what each tried, its best rates, and how flat its optimum is.

    python -m zr_ablate.report SOURCE --tuned TUNED --studies outputs/studies.db   # or a storage URL

--studies takes an Optuna storage (a URL, or the path of a SQLite file) and reads every study in it with
Optuna's trials_dataframe, or the trials.csv an earlier report wrote (so a committed report regenerates
without the storage). A trial that repeats a tried rate (user attribute repeat_of, experiment/optuna_sweeper.py)
trained nothing: it is counted, never shown as a result. Diverged trials (value inf) are counted too.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import seaborn as sns

from zr_ablate.analysis.report.figures import plt, save_figure
from zr_ablate.analysis.runs import NoRunsError
from zr_ablate.experiment.optuna_space import clean

PARAM = "params_"  # trials_dataframe's prefix of a searched key
REPEAT = "user_attrs_repeat_of"
NEAR = 0.01  # "near the best": within 1% of the best value


def load(source: str) -> pd.DataFrame:
    """Every trial of every study in `source`: study, number, state, value, params_<key>..., repeat_of."""
    if "://" not in source and not Path(source).is_file():
        raise NoRunsError(f"no study storage at {source}; pass a SQLite file, a storage URL or a trials.csv")
    if source.endswith(".csv"):
        return pd.read_csv(source)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = source if "://" in source else f"sqlite:///{source}"
    frames = []
    for name in optuna.get_all_study_names(storage):
        trials = optuna.load_study(study_name=name, storage=storage).trials_dataframe(
            attrs=("number", "value", "params", "state", "user_attrs")
        )
        frames.append(trials.assign(study=name))
    if not frames:
        raise NoRunsError(f"{source} holds no study; run a search first (python run.py -m hparams_search=...)")
    trials = pd.concat(frames, ignore_index=True)
    keys = [c for c in trials.columns if c.startswith(PARAM)]
    trials[keys] = trials[keys].map(clean)  # 0.15000000000000002 -> 0.15, as the sweeper names its jobs
    columns = ["study", "number", "state", "value", *keys] + ([REPEAT] if REPEAT in trials else [])
    return trials[columns]


def trained(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that trained and completed, one per study and rates: not failed, not marked repeats, and
    not a later completed trial at the same rates (a study from before repeats were marked was told the
    first one's value again)."""
    repeat = trials[REPEAT].notna() if REPEAT in trials else False
    keys = [c for c in trials.columns if c.startswith(PARAM)]
    return trials[(trials["state"] == "COMPLETE") & ~repeat].drop_duplicates(["study", *keys])


def _rates(row, keys: list[str]) -> str:
    return ", ".join(f"{k.removeprefix(PARAM).removeprefix('dropout.')} {row[k]:g}" for k in keys if pd.notna(row[k]))


def summary(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per study: rates trained, repeats, failed, diverged, the best value and rates, and the rates whose
    value lies within NEAR of the best (how flat the optimum is)."""
    keys = [c for c in trials.columns if c.startswith(PARAM)]
    rows = []
    for study, cell in trials.groupby("study", sort=False):
        done = trained(cell)
        finite = done[done["value"].map(math.isfinite)].sort_values("value")
        marked = int(cell[REPEAT].notna().sum()) if REPEAT in cell else 0  # failed trials, by the sweeper
        repeats = marked + int((cell["state"] == "COMPLETE").sum()) - len(done)
        best = finite.iloc[0] if len(finite) else None
        near = finite[finite["value"] <= (best["value"] * (1 + NEAR) if best is not None else 0)]
        rows.append(
            dict(
                study=study,
                trained=len(done),
                repeats=repeats,
                failed=int((cell["state"] == "FAIL").sum()) - marked,
                diverged=len(done) - len(finite),
                best_value=None if best is None else best["value"],
                best_rates="" if best is None else _rates(best, keys),
                near_best="; ".join(f"{_rates(r, keys)} ({r['value']:.1f})" for _, r in near.iloc[1:].iterrows()),
            )
        )
    numbers = pd.DataFrame(rows)
    formatted = numbers.rename(
        columns={
            "trained": "rates trained",
            "repeats": "repeats (not trained)",
            "best_value": "best val ppl",
            "best_rates": "best rates",
            "near_best": f"others within {NEAR:.0%} of the best (val ppl)",
        }
    ).assign(**{"best val ppl": numbers["best_value"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")})
    return numbers, formatted


def figure(trials: pd.DataFrame, out: Path) -> Path | None:
    """Validation perplexity against each searched rate, one panel per rate, a colour per study (joined by a
    line where the study searched that rate alone; points where it searched several at once)."""
    done = trained(trials)
    done = done[done["value"].map(math.isfinite)]
    keys = [c for c in done.columns if c.startswith(PARAM) and done[c].notna().any()]
    if done.empty or not keys:
        return None
    palette = dict(zip(done["study"].unique(), sns.color_palette("colorblind", done["study"].nunique())))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for study, cell in done[done[key].notna()].groupby("study", sort=False):
            alone = sum(cell[k].notna().any() for k in keys) == 1
            cell = cell.sort_values(key)
            style = dict(marker="o", linestyle="-" if alone else "none", color=palette[study])
            ax.plot(cell[key], cell["value"], label=study, **style)
        ax.set_xlabel(key.removeprefix(PARAM))
    axes[0][0].set_ylabel("best val ppl of the trial")
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="none", label=n) for n, c in palette.items()]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.98), ncol=len(palette), fontsize="small")
    return save_figure(fig, out, "studies", "Tuning studies: each trained rate's validation perplexity")


def markdown(table: str, fig: Path | None, source: str) -> str:
    text = (
        f"\n## The tuning studies\n\nSource: `{source}`. Each study's trials (one seed each, minimising "
        "validation perplexity); a repeat proposed a rate already tried and trained nothing.\n\n" + table + "\n"
    )
    return text + (f"\n![tuning studies]({fig.name})\n" if fig is not None else "")
