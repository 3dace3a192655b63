"""Which placement wins, and how sure: paired differences between runs, each with a 95% interval.

Two placements are compared only between runs that follow the same recipe but for their dropout (the runs
frame's `setup`: size, init, unroll, schedule, epochs, data, test protocol; runs.py) and, in a sweep that
varies a rate, at the same rate. Three intervals, each from scipy:
- across seeds, paired by seed: d_s = value(A, s) - value(B, s) over the seeds both completed; the mean of d
  and its t interval (n - 1 degrees of freedom; `scipy.stats.ttest_1samp`). One seed gives no interval.
- per seed, over test sentences: a paired bootstrap (`scipy.stats.bootstrap`, paired=True, RESAMPLES
  resamples, percentile interval): each resample draws test sentences with replacement, the same sentences
  for both runs, and recomputes each run's perplexity from the resampled NLL and token sums
  (records.SENTENCES). It says how much of a difference the test set itself can resolve for that seed.
- a verdict: resolved where the interval excludes 0, else not resolved.
The headline of Zaremba et al. (a small unregularised model against a large regularised one) is the
relative improvement 1 - ppl(large) / ppl(small), per seed with its bootstrap interval, and across seeds.
Pandas, numpy and scipy only: the report's tables and figure are in report/wins.py.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from zr_ablate.records import SENTENCES

LEVEL = 0.95
RESAMPLES = 2000
RESOLVED, NOT_RESOLVED, NO_INTERVAL = "resolved", "not resolved", "one seed: no interval"
INTERVAL = ["estimate", "low", "high", "verdict"]


def verdict(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return NO_INTERVAL
    return RESOLVED if low > 0 or high < 0 else NOT_RESOLVED


def mean_interval(d) -> tuple[float, float, float]:
    """The mean of d (one value per seed) and its LEVEL t interval; (mean, nan, nan) for fewer than two."""
    d = np.asarray(d, dtype=float)
    mean = float(d.mean()) if len(d) else math.nan
    if len(d) < 2:
        return mean, math.nan, math.nan
    if np.ptp(d) == 0:  # no spread: the interval is the point (scipy's would be nan)
        return mean, mean, mean
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(LEVEL)
    return mean, float(ci.low), float(ci.high)


def perplexity(nll, tokens, axis=-1):
    return np.exp(np.sum(nll, axis=axis) / np.sum(tokens, axis=axis))


def difference(nll_a, nll_b, tokens, axis=-1):
    """ppl(A) - ppl(B) from per-sentence NLL sums over the same sentences."""
    return perplexity(nll_a, tokens, axis) - perplexity(nll_b, tokens, axis)


def relative(nll_a, nll_b, tokens, axis=-1):
    """1 - ppl(B) / ppl(A): how much lower B's perplexity is, as a fraction of A's."""
    return 1 - perplexity(nll_b, tokens, axis) / perplexity(nll_a, tokens, axis)


def sentence_interval(nll_a, nll_b, tokens, statistic=difference, seed: int = 0) -> tuple[float, float, float]:
    """(statistic on all sentences, LEVEL bootstrap interval): RESAMPLES paired resamples of the sentences."""
    data = tuple(np.asarray(v, dtype=float) for v in (nll_a, nll_b, tokens))
    result = stats.bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=RESAMPLES,
        confidence_level=LEVEL,
        method="percentile",
        batch=200,  # resamples per vectorised call: 200 x sentences floats at a time, not 2000 x
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return float(statistic(*data)), float(ci.low), float(ci.high)


def load_sentences(sweep: Path, jobs) -> dict[str, pd.DataFrame]:
    """job name -> its per-sentence test losses, for the jobs whose folder has them."""
    out = {}
    for job in jobs:
        path = Path(sweep) / job / SENTENCES
        if path.is_file():
            try:
                out[job] = pd.read_csv(path)
            except (ValueError, OSError) as e:  # one bad file leaves that job out of the bootstrap only
                print(
                    f"warning: {path} is unreadable ({e}); its job stays out of the sentence bootstrap", file=sys.stderr
                )
    return out


def ambiguous(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Runs that share a group, placement and seed with another run: they differ only in settings the pairing
    does not tell apart (the LSTM implementation, MC samples, threads), so which one pairs is not defined."""
    return runs[runs.duplicated([*keys, "placement", "seed"], keep=False)]


def _groups(runs: pd.DataFrame, keys: list[str]):
    """(key values, runs) per group of runs that may be paired, and the placements in the order given; the
    ambiguous runs left out."""
    runs = runs.drop(ambiguous(runs, keys).index)
    for group, cell in runs.groupby(keys, dropna=False, sort=False):
        where = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        yield where, cell, list(dict.fromkeys(cell["placement"]))


def seed_pairs(runs: pd.DataFrame, value: str, keys: list[str]) -> pd.DataFrame:
    """Per group and pair of placements (a before b in `runs`' order): the seeds both have, the mean of
    value(a) - value(b) over them with its interval, and the verdict."""
    rows = []
    for where, cell, placements in _groups(runs, keys):
        wide = cell.pivot_table(index="seed", columns="placement", values=value, aggfunc="first")
        for a, b in itertools.combinations(placements, 2):
            both = wide[[a, b]].dropna()
            if both.empty:  # no seed ran both
                continue
            estimate, low, high = mean_interval(both[a] - both[b])
            rows.append(where | dict(a=a, b=b, seeds=len(both), estimate=estimate, low=low, high=high))
    return _with_verdict(pd.DataFrame(rows, columns=[*keys, "a", "b", "seeds", "estimate", "low", "high"]))


def sentence_pairs(runs: pd.DataFrame, sentences: dict[str, pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """Per group, pair of placements and seed both ran with per-sentence losses on the same sentences: the
    test-perplexity difference a - b and its paired-bootstrap interval."""
    rows = []
    for where, cell, placements in _groups(runs, keys):
        jobs = cell.set_index(["placement", "seed"])["job"]
        seeds = cell.groupby("placement")["seed"].agg(set)
        for a, b in itertools.combinations(placements, 2):
            for seed in sorted(seeds[a] & seeds[b]):
                pair = _paired(sentences, jobs[(a, seed)], jobs[(b, seed)])
                if pair is not None:
                    estimate, low, high = sentence_interval(*pair)
                    rows.append(where | dict(a=a, b=b, seed=seed, estimate=estimate, low=low, high=high))
    return _with_verdict(pd.DataFrame(rows, columns=[*keys, "a", "b", "seed", "estimate", "low", "high"]))


def _paired(sentences: dict[str, pd.DataFrame], job_a: str, job_b: str):
    """(nll a, nll b, tokens) where both jobs have per-sentence losses over the same sentences, else None."""
    a, b = sentences.get(job_a), sentences.get(job_b)
    if a is None or b is None or not a["tokens"].equals(b["tokens"]):
        return None
    return a["nll"].to_numpy(), b["nll"].to_numpy(), a["tokens"].to_numpy()


def headline(runs: pd.DataFrame, sentences: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Zaremba et al.'s headline, a small unregularised model against a large regularised one: per large
    placement, setup and seed with both, 1 - ppl(large) / ppl(small) with its sentence-bootstrap interval
    (where both runs kept their sentences), and across seeds its mean with the t interval. A seed with more
    than one small unregularised run has no baseline (which one is not defined)."""
    small = runs[(runs["size"] == "small") & (runs["placement"] == "none")]
    small = small.drop_duplicates("seed", keep=False).set_index("seed")
    large = runs[(runs["size"] == "large") & (runs["placement"] != "none")]
    large = large.drop(ambiguous(large, ["setup"]).index)
    rows = []
    for row in large.itertuples():
        if row.seed not in small.index:
            continue
        base = small.loc[row.seed]
        estimate, low, high = 1 - row.test_ppl / base["test_ppl"], math.nan, math.nan
        pair = _paired(sentences, base["job"], row.job)
        if pair is not None:
            estimate, low, high = sentence_interval(*pair, statistic=relative)
        rows.append(
            dict(placement=row.placement, setup=row.setup, seed=row.seed, estimate=estimate, low=low, high=high)
        )
    per_seed = _with_verdict(pd.DataFrame(rows, columns=["placement", "setup", "seed", "estimate", "low", "high"]))
    across = []
    for (placement, setup), cell in per_seed.groupby(["placement", "setup"], sort=False, dropna=False):
        estimate, low, high = mean_interval(cell["estimate"])
        across.append(dict(placement=placement, setup=setup, seeds=len(cell), estimate=estimate, low=low, high=high))
    columns = ["placement", "setup", "seeds", "estimate", "low", "high"]
    return _with_verdict(pd.DataFrame(across, columns=columns)), per_seed


def _with_verdict(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(verdict=[verdict(lo, hi) for lo, hi in zip(frame["low"], frame["high"])])
