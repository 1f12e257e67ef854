"""The report with any number of variants: golden, two random seeds, bottom and full, paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from nuggets_pipeline.core.reference_likelihood import LikelihoodSummary
from nuggets_pipeline.core.report import VariantResults, build_report, comparison_rows, likelihood_comparisons
from nuggets_pipeline.core.report import comparison_table as table_of
from nuggets_pipeline_tests.core.test_report import AT_CHANCE, TRUSTED, _ae, _mt

N = 200
DIFFICULTY = np.random.default_rng(0).normal(-2.0, 1.0, size=N)
# Per-answer shifts, known in advance: golden +0.05, random seeds ±0 (independent small noise), bottom -0.05,
# full +0.05 (the same as golden: a tie).
SHIFT = {"golden": 0.05, "random": 0.0, "random-1": 0.0, "bottom": -0.05, "full": 0.05}


def _likelihood(variant: str, seed: int) -> dict[str, LikelihoodSummary]:
    values = DIFFICULTY + SHIFT[variant] + np.random.default_rng(seed).normal(0, 0.01, size=N)
    items = tuple((f"alpaca_eval:{i}", float(v)) for i, v in enumerate(values))
    summary = LikelihoodSummary(
        "alpaca_eval", "gpt4_1106_preview", N, float(values.mean()), 0.07, float(values.mean()), 1000, 0, items
    )
    return {"alpaca_eval": summary}


RESULTS = [
    VariantResults(v, _mt(5.0 + SHIFT[v]), _ae(30.0 + 100 * SHIFT[v]), _likelihood(v, seed))
    for seed, v in enumerate(["full", "bottom", "random-1", "random", "golden"])
]


def test_every_variant_gets_a_column_in_a_stable_order() -> None:
    table = table_of(RESULTS, TRUSTED)
    assert [c for c in table.columns if c in SHIFT] == ["golden", "random", "random-1", "bottom", "full"]
    assert {c for c in table.columns if c.startswith("golden −")} == {
        "golden − random",
        "golden − random-1",
        "golden − bottom",
        "golden − full",
    }


def test_paired_comparisons_find_the_known_differences() -> None:
    found = {f"{d.first} vs {d.second}": d for d in likelihood_comparisons(RESULTS, resamples=2000)}
    assert found["golden vs random"].verdict == "ahead"
    assert found["golden vs random"].difference == pytest.approx(0.05, abs=0.005)
    assert found["golden vs random (pooled random+random-1)"].verdict == "ahead"
    assert found["golden vs bottom"].difference == pytest.approx(0.10, abs=0.005)
    assert found["random (pooled random+random-1) vs bottom"].verdict == "ahead"
    assert found["golden vs full"].verdict == "within noise"
    assert found["random vs random-1"].verdict == "within noise"


def test_judge_numbers_sit_beside_each_comparison_and_are_flagged_at_chance() -> None:
    table = table_of(RESULTS, AT_CHANCE)
    rows = comparison_rows(likelihood_comparisons(RESULTS, resamples=500), table, AT_CHANCE).set_index("comparison")
    assert rows.loc["golden vs bottom", "mt_bench_score_delta"] == pytest.approx(0.10)
    assert rows.loc["golden vs random (pooled random+random-1)", "alpaca_eval_win_rate_delta"] == pytest.approx(5.0)
    assert not rows["judge_counted"].any()
    _, _, markdown = build_report(RESULTS, AT_CHANCE)
    assert "## Paired differences (judge-free)" in markdown
    assert "judge at chance: not evidence" in markdown
    assert "| golden vs bottom | alpaca_eval | 200 | +0.10" in markdown
    for other in ("random", "random-1", "bottom", "full"):
        assert f"**golden vs {other}:" in markdown
