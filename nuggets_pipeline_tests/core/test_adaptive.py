"""Adaptive anchor allocation: the pool model, its predictive interval, the rule's guarantee, and replay against
exact selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from nuggets_pipeline.core.adaptive import (
    AdaptiveConfig,
    AnchorModel,
    PoolCounts,
    SelectionRule,
    agreement,
    allocation_status,
    anchor_order,
    calibration_members,
    compare_with_exact,
    cut,
    needs_more,
    next_counts,
    quality,
    replay,
    replay_plain_rule,
    select,
    subsample_selection,
)
from nuggets_pipeline.core.reliability import PairMatrix
from nuggets_pipeline.core.selection import select_golden

RULES = [SelectionRule(top_fraction=0.25), SelectionRule(top_k=7), SelectionRule(threshold=0.6)]


def exact_scores(deltas: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    n = deltas.shape[1]
    wins = (deltas > 0).sum(axis=1)
    return pd.DataFrame(
        {
            "candidate_id": ids,
            "golden_score": wins / n,
            "wins": wins,
            "anchors_scored": n,
            "n_anchors": n,
            "verdict": "exact",
            "mean_delta": deltas.mean(axis=1),
        }
    )


def criterion(rule: SelectionRule) -> dict[str, float | int]:
    return {k: v for k, v in vars(rule).items() if v is not None}


def rasch_pool(seed: int, candidates: int = 400, anchors: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Wins drawn from a Rasch model with a third of the anchors nearly always won or lost, and the true easiness."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(0, 0.7, candidates)
    extreme = rng.random(anchors) < 1 / 3
    easiness = np.where(extreme, rng.choice([-3.5, 3.5], anchors), rng.normal(0, 0.8, anchors))
    wins = rng.random((candidates, anchors)) < special.expit(ability[:, None] + easiness[None, :])
    return wins, easiness


def screened_model(wins: np.ndarray, config: AdaptiveConfig, rule: SelectionRule) -> AnchorModel:
    """The pool model as the replay fits it (one shard), for tests of its parts."""
    return replay(wins, rule, config).model  # type: ignore[return-value]


def uniform_model(n: int, prior_sd: float = 1.0) -> AnchorModel:
    return AnchorModel(tuple(f"a{i:03d}" for i in range(n)), np.zeros(n), np.full(n, 0.01), 0.0, prior_sd)


def test_anchor_order_is_seeded_and_independent_of_input_order() -> None:
    ids = [f"a{i}" for i in range(30)]
    assert anchor_order(ids, 3) == anchor_order(list(reversed(ids)), 3)
    assert sorted(anchor_order(ids, 3)) == sorted(ids)
    assert anchor_order(ids, 3) != anchor_order(ids, 4)
    with pytest.raises(ValueError, match="unique"):
        anchor_order(["a", "a"], 0)


def test_the_calibration_sample_is_a_seeded_share_of_each_shard() -> None:
    ids = [f"c{i:03d}" for i in range(100)]
    members = calibration_members(ids, 0.05, 0)
    assert members.sum() == 5
    # Decided by id and seed alone: the order rows come in does not matter, another seed draws others.
    reordered = calibration_members(ids[::-1], 0.05, 0)[::-1]
    np.testing.assert_array_equal(members, reordered)
    assert (calibration_members(ids, 0.05, 1) != members).any()
    assert calibration_members(ids[:3], 0.05, 0).sum() == 1  # at least one in any shard when the share is > 0
    assert calibration_members(ids, 0.0, 0).sum() == 0


def test_the_prediction_is_the_poisson_binomial_of_the_anchors_left() -> None:
    n = 20
    easiness = np.linspace(-2, 2, n)
    # A prior this narrow pins theta at its mean: the prediction is then the plain Poisson-binomial at theta = 0.3.
    model = AnchorModel(tuple(f"a{i}" for i in range(n)), easiness, np.zeros(n), 0.3, 1e-6)
    counts = PoolCounts(np.array([3, 0]), np.array([8, 0]), model)
    p = special.expit(0.3 + easiness)
    np.testing.assert_allclose(counts.predicted_mean, [(3 + p[8:].sum()) / n, p.sum() / n], rtol=1e-6)
    mean, sd = counts._prediction
    np.testing.assert_allclose(sd, [np.sqrt((p[8:] * (1 - p[8:])).sum()) / n, np.sqrt((p * (1 - p)).sum()) / n])
    low, high = counts.interval(0.9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(low, np.maximum(mean - z * sd, [3 / n, 0]))
    np.testing.assert_allclose(high, mean + z * sd)


def test_the_interval_is_bounded_exact_when_full_and_shrinks_with_the_anchors_scored() -> None:
    rng = np.random.default_rng(0)
    n = 100
    model = uniform_model(n)
    scored = rng.integers(0, n + 1, 200)
    wins = rng.binomial(scored, rng.random(200))
    counts = PoolCounts(wins, scored, model)
    # Confidence 1 gives decision mode's bounds: every remaining anchor lost, or every one won.
    low, high = counts.interval(1.0)
    np.testing.assert_array_equal(low, wins / n)
    np.testing.assert_array_equal(high, (wins + n - scored) / n)
    low, high = counts.interval(0.9)
    assert (low >= wins / n).all() and (high <= (wins + n - scored) / n).all()
    assert ((counts.predicted_mean >= low) & (counts.predicted_mean <= high)).all()
    full = PoolCounts(np.array([37]), np.array([100]), model)
    assert full.interval(0.99)[0][0] == full.interval(0.99)[1][0] == full.predicted_mean[0] == 37 / 100
    widths = [
        np.subtract(*PoolCounts(np.array([m // 2]), np.array([m]), model).interval(0.9)[::-1])[0]
        for m in (20, 50, 80, 95)
    ]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 3
    with pytest.raises(ValueError):
        PoolCounts(np.array([5]), np.array([4]), uniform_model(10))


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.95])
def test_the_interval_covers_the_final_score_about_as_often_as_it_says(confidence: float) -> None:
    wins, _ = rasch_pool(1)
    config = AdaptiveConfig(confidence=confidence, first_anchors=8, calibration_share=0.05)
    model = screened_model(wins, config, SelectionRule(top_fraction=0.25))
    position = {a: i for i, a in enumerate(f"{i:06d}" for i in range(wins.shape[1]))}
    ordered = wins[:, [position[a] for a in model.order]]
    final = wins.mean(axis=1)
    for m in (8, 20, 40):
        low, high = PoolCounts(ordered[:, :m].sum(axis=1), np.full(len(wins), m), model).interval(confidence)
        covered = ((final >= low - 1e-12) & (final <= high + 1e-12)).mean()
        assert confidence - 0.08 <= covered <= confidence + 0.12, (m, covered)


def test_the_pool_model_recovers_the_anchors_and_puts_the_uninformative_ones_last() -> None:
    wins, easiness = rasch_pool(2)
    config = AdaptiveConfig(first_anchors=8, calibration_share=0.05)
    model = screened_model(wins, config, SelectionRule(top_fraction=0.25))
    position = np.array([int(a) for a in model.order])
    assert model.order[:8] == tuple(anchor_order([f"{i:06d}" for i in range(60)], 0)[:8])  # the screening anchors
    assert stats.spearmanr(model.easiness, easiness[position]).statistic > 0.8
    assert 0.3 < model.prior_sd < 1.2  # the pool's ability spread (0.7), from 400 x 8 screening counts
    refinement = position[8:]
    extreme = np.abs(easiness[refinement]) > 3
    # Refinement scores the informative anchors first: every nearly-always-won-or-lost anchor after most others.
    assert np.flatnonzero(extreme).min() > 0.5 * (len(refinement) - extreme.sum())


@pytest.mark.parametrize("rule", RULES, ids=str)
@pytest.mark.parametrize("confidence", [0.6, 0.95, 1.0])
def test_the_rule_never_drops_a_candidate_whose_interval_straddles_the_cut(
    rule: SelectionRule, confidence: float
) -> None:
    rng = np.random.default_rng(1)
    config = AdaptiveConfig(confidence=confidence, first_anchors=10, round_anchors=10)
    n = 40
    model = AnchorModel(tuple(f"a{i}" for i in range(n)), rng.normal(0, 1, n), np.full(n, 0.05), 0.1, 0.8)
    for _ in range(20):
        scored = rng.integers(10, n + 1, 60)
        counts = PoolCounts(rng.binomial(scored, rng.random(60)), scored, model)
        low, high = counts.interval(confidence)
        values = counts.predicted_mean
        # The cut computed here, independently: the threshold, or halfway between the k-th and (k+1)-th estimate.
        if rule.threshold is not None:
            at = rule.threshold
            straddling = (low <= at) & (at < high)
        else:
            k = rule.k(60)
            ranked = np.sort(values)[::-1]
            at = (ranked[k - 1] + ranked[k]) / 2
            straddling = (low <= at) & (at <= high)
        assert cut(values, rule) == pytest.approx(at)
        more = needs_more(counts, rule, config)
        np.testing.assert_array_equal(more, straddling & (scored < n))
        np.testing.assert_array_equal(
            next_counts(counts, rule, config), np.where(more, np.minimum(scored + 10, n), scored)
        )
        status = allocation_status(counts, rule, config)
        np.testing.assert_array_equal(status["settled_early"], ~more & (scored < n))
    assert cut(np.array([0.1, 0.2]), SelectionRule(top_k=2)) is None  # all kept: nothing to decide
    assert cut(np.array([0.1, 0.2]), SelectionRule(top_k=0)) is None


def test_a_threshold_at_confidence_one_is_decision_mode() -> None:
    config = AdaptiveConfig(confidence=1.0)
    wins, scored = np.array([9, 8, 2, 1, 5]), np.array([10, 12, 12, 19, 20])
    n, t = 20, 0.4
    more = needs_more(PoolCounts(wins, scored, uniform_model(n)), SelectionRule(threshold=t), config)
    decided = (wins / n > t) | ((wins + n - scored) / n <= t)
    np.testing.assert_array_equal(more, ~decided)


@pytest.mark.parametrize("rule", RULES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_at_confidence_one_is_exact_selection(rule: SelectionRule, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ability = rng.normal(0, 1, 48)
    deltas = ability[:, None] + rng.normal(0, 1.5, (48, 20))  # 20 anchors: many ties in golden score
    ids = np.array([f"c{i:03d}" for i in rng.permutation(48)])
    config = AdaptiveConfig(confidence=1.0, first_anchors=4, round_anchors=3, seed=seed)
    result = replay(deltas > 0, rule, config, deltas=deltas, candidate_ids=ids)
    expected = select_golden(exact_scores(deltas, ids), **criterion(rule))["candidate_id"]
    assert sorted(result.selected_ids) == sorted(expected)
    assert result.passes < result.passes_exact and result.settled_early.any()  # it saved something
    assert result.passes == int(result.anchors_scored.sum())
    np.testing.assert_array_equal(result.settled_early, result.anchors_scored < 20)


def test_replay_settles_a_clearly_separated_pool_after_screening() -> None:
    deltas = np.where(np.arange(40)[:, None] < 10, 1.0, -1.0) * np.ones((40, 100))
    config = AdaptiveConfig(0.95, 10, 10, calibration_share=0.05)
    result = replay(deltas > 0, SelectionRule(top_fraction=0.25), config, deltas=deltas)
    # Screening only: 2 calibration candidates on all 100 anchors, the other 38 on the first 10.
    assert result.rounds == 1 and result.passes == 2 * 100 + 38 * 10
    assert result.selected[:10].all() and not result.selected[10:].any()


def test_a_sharded_replay_refines_each_shard_against_the_others_screening() -> None:
    wins, _ = rasch_pool(3, candidates=120, anchors=30)
    rule, config = SelectionRule(top_fraction=0.25), AdaptiveConfig(0.8, 6, 4, calibration_share=0.05)
    pooled = replay(wins, rule, config)
    one_shard = replay(wins, rule, config, shards=["s"] * 120)
    np.testing.assert_array_equal(pooled.anchors_scored, one_shard.anchors_scored)
    sharded = replay(wins, rule, config, shards=["a", "b"] * 60)
    assert sharded.selected.sum() == pooled.selected.sum() == 30
    # Each shard's calibration sample is its own: ceil(5% of 60) = 3 per shard, against 6 of the pooled 120.
    assert (sharded.anchors_scored == 30).sum() >= 6 and (sharded.anchors_scored != pooled.anchors_scored).any()


def test_select_applies_the_rule_to_estimates_with_select_goldens_ties() -> None:
    counts = PoolCounts(np.array([5, 5, 5, 1]), np.array([10, 10, 10, 10]), uniform_model(10))
    chosen = select(counts, SelectionRule(top_k=2), [0.1, 0.3, 0.3, 0.9], ["c", "b", "a", "d"])
    np.testing.assert_array_equal(chosen, [False, True, True, False])  # mean delta, then id
    assert select(counts, SelectionRule(threshold=0.5)).sum() == 0  # 0.5 is not > 0.5


def test_agreement_quality_and_the_fixed_subsample() -> None:
    golden = np.array([0.9, 0.8, 0.5, 0.4, 0.1, 0.3])
    exact = np.array([True, True, False, False, False, False])
    assert agreement(exact, exact) == 1.0 and quality(exact, exact, golden) == 1.0
    other = np.array([True, False, True, False, False, False])
    assert agreement(other, exact) == 0.5
    assert quality(other, exact, golden) == pytest.approx((0.7 - 0.5) / (0.85 - 0.5))
    rng = np.random.default_rng(3)
    deltas = rng.normal(0, 1, 80)[:, None] + rng.normal(size=(80, 30))
    m = PairMatrix(np.array([f"c{i}" for i in range(80)]), np.array([f"a{j}" for j in range(30)]), deltas)
    rule = SelectionRule(top_fraction=0.25)
    full = subsample_selection(m, rule, 30, 0)
    assert full.sum() == 20 and agreement(full, full) == 1.0
    figures = compare_with_exact(m, rule, [0.8, 1.0], AdaptiveConfig(first_anchors=5, round_anchors=5), seeds=(0, 1))
    exact_entry = figures["adaptive"][1]
    assert exact_entry["confidence"] == 1.0 and exact_entry["agreement"] == 1.0 and exact_entry["quality"] == 1.0
    assert 0 < figures["adaptive"][0]["passes_fraction"] <= exact_entry["passes_fraction"] <= 1
    for adaptive, fixed in zip(figures["adaptive"], figures["fixed_subsample"], strict=True):
        assert fixed["anchors"] == round(adaptive["passes_fraction"] * 30)
        assert fixed["passes_fraction"] == pytest.approx(fixed["anchors"] / 30, abs=1e-4)  # rounded to 4 places
    assert [entry["confidence"] for entry in figures["plain_rule"]] == [0.8, 1.0]


def test_the_plain_baseline_rule_settles_for_good_and_is_exhaustive_at_confidence_one() -> None:
    rng = np.random.default_rng(4)
    deltas = rng.normal(0, 1, 60)[:, None] + rng.normal(size=(60, 30))
    rule = SelectionRule(top_fraction=0.25)
    pool = PairMatrix(np.arange(60).astype(str), np.array([f"a{j:02d}" for j in range(30)]), deltas)
    full = replay_plain_rule(pool, rule, AdaptiveConfig(1.0, 10, 10))
    assert full.passes == full.passes_exact  # an infinite z never clears the cut: everyone gets every anchor
    expected = select_golden(exact_scores(deltas, np.arange(60).astype(str)), top_fraction=0.25)["candidate_id"]
    assert sorted(full.selected_ids) == sorted(expected)
    cheap = replay_plain_rule(pool, rule, AdaptiveConfig(0.5, 10, 10))
    assert cheap.passes < full.passes and cheap.selected.sum() == 15
    # All losses give p (1 - p) = 0: the normal interval has no width and settles at once. The best ten tie at
    # the cut (the k-th p), so unlike the adaptive rule's halfway cut, they are scored to the last anchor.
    separated = np.where(np.arange(40)[:, None] < 10, 1.0, -1.0) * np.ones((40, 100))
    separated_pool = PairMatrix(np.arange(40).astype(str), np.array([f"a{j:03d}" for j in range(100)]), separated)
    settled = replay_plain_rule(separated_pool, rule, AdaptiveConfig(0.99, 10, 10))
    assert (settled.anchors_scored[10:] == 10).all() and (settled.anchors_scored[:10] == 100).all()
    assert settled.selected[:10].all() and not settled.selected[10:].any()
