"""Which placement wins, and how sure: the across-seed t interval, the paired bootstrap over test sentences,
and what is paired with what."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from zr_ablate.analysis import compare


def runs(rows) -> pd.DataFrame:
    """(placement, seed, test_ppl[, setup]) -> the columns compare reads of a runs frame."""
    frame = pd.DataFrame(rows, columns=["placement", "seed", "test_ppl", "setup"][: len(rows[0])])
    frame = frame if "setup" in frame else frame.assign(setup="s1")
    return frame.assign(size="demo", job=[f"{p},{s},{u}" for p, s, u in zip(frame.placement, frame.seed, frame.setup)])


def test_across_seed_interval_is_the_paired_t_interval_on_a_hand_example():
    # naive - zaremba per seed: 3, 5, 4, 8 -> mean 5, sd sqrt(14/3), t(0.975, 3 dof) = 3.182446305284263
    zaremba = [270.0, 268.0, 269.0, 265.0]
    naive = [z + d for z, d in zip(zaremba, [3.0, 5.0, 4.0, 8.0])]
    # rows in another order per placement: the pairing is by seed, not by position
    frame = runs(
        [("naive", s, v) for s, v in zip([1, 2, 3, 4], naive)]
        + [("zaremba", s, v) for s, v in reversed(list(zip([1, 2, 3, 4], zaremba)))]
    )
    [row] = compare.seed_pairs(frame, "test_ppl", ["size", "setup"]).to_dict("records")
    half = 3.182446305284263 * math.sqrt(14 / 3) / 2
    assert (row["a"], row["b"], row["seeds"]) == ("naive", "zaremba", 4)
    assert row["estimate"] == pytest.approx(5.0) and (row["low"], row["high"]) == pytest.approx((5 - half, 5 + half))
    expected = stats.t.interval(0.95, 3, loc=5.0, scale=stats.sem([3.0, 5.0, 4.0, 8.0]))
    assert (row["low"], row["high"]) == pytest.approx(expected) and row["verdict"] == compare.RESOLVED


def test_not_resolved_when_the_interval_holds_zero_and_no_interval_from_one_seed():
    frame = runs([("naive", 1, 272.0), ("naive", 2, 268.0), ("zaremba", 1, 270.0), ("zaremba", 2, 271.0)])
    [row] = compare.seed_pairs(frame, "test_ppl", ["size", "setup"]).to_dict("records")
    assert row["low"] < 0 < row["high"] and row["verdict"] == compare.NOT_RESOLVED
    one = compare.seed_pairs(frame[frame.seed == 1], "test_ppl", ["size", "setup"]).iloc[0]
    assert one["estimate"] == 2.0 and math.isnan(one["low"]) and one["verdict"] == compare.NO_INTERVAL


def test_runs_of_different_setups_or_seeds_are_never_paired():
    frame = runs([("naive", 1, 272.0, "a"), ("zaremba", 1, 270.0, "b"), ("zaremba", 2, 270.0, "a")])
    assert compare.seed_pairs(frame, "test_ppl", ["size", "setup"]).empty
    frame.loc[1, "setup"] = "a"  # now naive and zaremba share setup a and seed 1
    assert compare.seed_pairs(frame, "test_ppl", ["size", "setup"])["seeds"].tolist() == [1]


def sentences(n: int = 3000, seed: int = 0):
    """Per-sentence token counts and NLL sums, each token's NLL drawn from Gamma(2, 2.5): mean 5 nats."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 40, n)
    nll = np.array([rng.gamma(2.0, 2.5, t).sum() for t in tokens])
    return nll, tokens


def test_bootstrap_of_identical_sentence_losses_is_zero_with_a_zero_width_interval():
    nll, tokens = sentences(500)
    assert compare.sentence_interval(nll, nll.copy(), tokens) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_covers_a_known_shift():
    """A pays 0.1 nats more than B on every token: the population difference is e^5.1 - e^5 (~15.6), which
    the interval must hold, and resolve; the relative change is 1 - e^-0.1 in every resample."""
    nll_b, tokens = sentences()
    nll_a = nll_b + 0.1 * tokens
    estimate, low, high = compare.sentence_interval(nll_a, nll_b, tokens)
    truth = math.exp(5.1) - math.exp(5.0)
    assert low < truth < high and low > 0 and high - low < 0.5 * truth
    assert estimate == pytest.approx(compare.perplexity(nll_a, tokens) - compare.perplexity(nll_b, tokens))
    rel = compare.sentence_interval(nll_a, nll_b, tokens, statistic=compare.relative)
    assert rel == pytest.approx((1 - math.exp(-0.1),) * 3)


def test_sentence_pairs_and_headline_pair_each_seeds_runs_over_the_same_sentences():
    nll, tokens = sentences(400)
    frame = pd.DataFrame(
        {
            "job": ["small-none", "large-zaremba", "large-naive"],
            "size": ["small", "large", "large"],
            "placement": ["none", "zaremba", "naive"],
            "seed": [1, 1, 1],
            "setup": ["s", "l", "l"],
        }
    )
    losses = {
        "small-none": pd.DataFrame({"tokens": tokens, "nll": nll + 0.4 * tokens}),
        "large-zaremba": pd.DataFrame({"tokens": tokens, "nll": nll}),
        "large-naive": pd.DataFrame({"tokens": tokens, "nll": nll + 0.02 * tokens}),
    }
    frame["test_ppl"] = [compare.perplexity(losses[j]["nll"].to_numpy(), tokens) for j in frame["job"]]
    pairs = compare.sentence_pairs(frame, losses, ["size", "setup"])
    [row] = pairs.to_dict("records")  # small and large are never paired with each other
    assert (row["a"], row["b"], row["seed"]) == ("zaremba", "naive", 1) and row["verdict"] == compare.RESOLVED
    across, per_seed = compare.headline(frame, losses)
    assert per_seed.set_index("placement").loc["zaremba", "estimate"] == pytest.approx(1 - math.exp(-0.4))
    assert list(across["seeds"]) == [1, 1] and (across["verdict"] == compare.NO_INTERVAL).all()
    losses["large-naive"] = losses["large-naive"].iloc[1:]  # other sentences: no bootstrap for that pair
    assert compare.sentence_pairs(frame, losses, ["size", "setup"]).empty


def test_two_runs_of_one_placement_and_seed_in_a_setup_are_left_out_not_picked():
    """Two zaremba seed-1 runs the setup does not tell apart (say fused and loop LSTM): which one to pair with
    naive is not defined, so zaremba seed 1 pairs with nothing; seed 2 still pairs."""
    frame = runs([("naive", 1, 272.0), ("zaremba", 1, 270.0), ("zaremba", 1, 260.0)])
    frame = pd.concat([frame, runs([("naive", 2, 273.0), ("zaremba", 2, 271.0)])], ignore_index=True)
    assert compare.ambiguous(frame, ["size", "setup"])["test_ppl"].tolist() == [270.0, 260.0]
    [row] = compare.seed_pairs(frame, "test_ppl", ["size", "setup"]).to_dict("records")
    assert (row["seeds"], row["estimate"]) == (1, 2.0)
    losses = {job: pd.DataFrame({"tokens": [10, 12], "nll": [50.0, 61.0]}) for job in frame["job"]}
    assert compare.sentence_pairs(frame, losses, ["size", "setup"])["seed"].tolist() == [2]


def test_the_headline_counts_seeds_per_large_setup_and_never_pools_two():
    """Seeds 1 and 2 of large zaremba in setup l1, seed 1 in setup l2: two rows (2 seeds with an interval,
    1 seed without), not one row of 3 "seeds"; a seed with two small baselines has none."""
    small = [("small-none-1", "small", "none", 1, "s"), ("small-none-2", "small", "none", 2, "s")]
    large = [("l1-1", "large", "zaremba", 1, "l1"), ("l1-2", "large", "zaremba", 2, "l1")]
    frame = pd.DataFrame(
        [*small, *large, ("l2-1", "large", "zaremba", 1, "l2")], columns=["job", "size", "placement", "seed", "setup"]
    )
    frame["test_ppl"] = [120.0, 121.0, 80.0, 82.0, 90.0]
    across, per_seed = compare.headline(frame, {})
    assert across[["setup", "seeds"]].values.tolist() == [["l1", 2], ["l2", 1]]
    assert across.loc[0, "estimate"] == pytest.approx((1 - 80 / 120 + 1 - 82 / 121) / 2)
    assert across.loc[0, "low"] < across.loc[0, "estimate"] and across.loc[1, "verdict"] == compare.NO_INTERVAL
    twice = pd.concat([frame, frame.iloc[[0]].assign(job="small-none-1b", test_ppl=119.0)], ignore_index=True)
    assert compare.headline(twice, {})[1]["seed"].tolist() == [2]  # seed 1's baseline is not defined
