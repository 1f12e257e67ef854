"""The side-by-side report, and the whole evaluation end to end with the tiny model as candidate and judge."""

from __future__ import annotations

import copy
import dataclasses
import math

import pandas as pd
import pytest
import torch

from nuggets_pipeline.core import alpaca_eval, mt_bench
from nuggets_pipeline.core.alpaca_eval import AlpacaEvalSummary
from nuggets_pipeline.core.judging import JudgmentCache, LocalJudge, calibrate_judge
from nuggets_pipeline.core.modeling import LoadedModel
from nuggets_pipeline.core.mt_bench import MTBenchSummary
from nuggets_pipeline.core.reference_likelihood import LikelihoodSummary, score_references
from nuggets_pipeline.core.report import (
    JudgeInfo,
    VariantResults,
    build_report,
    comparison_table,
    render_markdown,
)


def _mt(score: float, se: float = 0.05) -> MTBenchSummary:
    return MTBenchSummary(
        judge="small-judge",
        score=score,
        turn_1=score + 0.01,
        turn_2=score - 0.01,
        standard_error=se,
        per_category={"writing": score + 0.2, "math": score - 0.2},
        n_questions=80,
        n_graded=158,
        n_unparseable=2,
        n_failed=0,
    )


def _ae(win_rate: float, se: float = 1.5) -> AlpacaEvalSummary:
    return AlpacaEvalSummary(
        generator="g",
        reference="text_davinci_003",
        judge="small-judge",
        protocol="pairwise",
        win_rate=win_rate,
        standard_error=se,
        discrete_win_rate=win_rate,
        length_controlled_win_rate=win_rate - 1,
        lc_standard_error=math.nan,
        lc_glm="length_controlled_minimal",
        n_wins=1,
        n_wins_base=1,
        n_draws=0,
        n_total=805,
        n_instructions=805,
        n_unparseable=0,
        n_failed=0,
        avg_length=400.0,
        reference_avg_length=300.0,
    )


def _ll(mean: float, se: float = 0.01) -> dict[str, LikelihoodSummary]:
    return {"alpaca_eval": LikelihoodSummary("alpaca_eval", "gpt4_1106_preview", 805, mean, se, mean, 1000, 0)}


RESULTS = [
    VariantResults("random", _mt(5.10), _ae(30.0), _ll(-1.50)),
    VariantResults("golden", _mt(5.1234), _ae(36.0), _ll(-1.40)),
    VariantResults("full", _mt(5.30), _ae(33.0), _ll(-1.45)),
]
TRUSTED = JudgeInfo("small-judge", "local", "probabilities", agreement=0.7, ci_low=0.6, ci_high=0.8, near_chance=False)
AT_CHANCE = dataclasses.replace(TRUSTED, agreement=0.52, ci_low=0.41, ci_high=0.63, near_chance=True)


def test_table_has_variants_side_by_side_with_deltas() -> None:
    table = comparison_table(RESULTS, TRUSTED).set_index("metric")
    assert [c for c in table.columns if c in ("golden", "random", "full")] == ["golden", "random", "full"]
    score = table.loc["MT-Bench score (1-10, judge small-judge)"]
    assert (score["golden"], score["random"], score["full"]) == (5.1234, 5.10, 5.30)
    assert score["golden − random"] == pytest.approx(0.0234)
    assert score["golden − full"] == pytest.approx(5.1234 - 5.30)
    assert score["noise golden − random"] == pytest.approx(2 * math.hypot(0.05, 0.05))
    win = table.loc["AlpacaEval win rate % vs text_davinci_003 (judge small-judge)"]
    assert win["golden − random"] == pytest.approx(6.0)
    assert win["kind"] == "judge"
    likelihood = table.loc["Reference log-likelihood, alpaca_eval (gpt4_1106_preview; nats/token)"]
    assert likelihood["kind"] == "judge-free"
    assert likelihood["golden − random"] == pytest.approx(0.10)
    assert table.loc["MT-Bench writing", "golden"] == pytest.approx(5.3234)
    with pytest.raises(ValueError, match="once"):
        comparison_table([RESULTS[0], RESULTS[0]], TRUSTED)


def test_markdown_answers_the_question_with_enough_digits() -> None:
    text = render_markdown(comparison_table(RESULTS, TRUSTED), TRUSTED)
    assert "**small-judge** (local, probabilities)" in text
    assert "Warning" not in text
    # AlpacaEval +6.0 beyond ±4.24, log-likelihood +0.10 beyond ±0.028, MT-Bench +0.023 within ±0.141;
    # LC +6.0 has no standard error and is listed but not counted.
    assert "golden vs random: Yes: golden beats random on 2 of 3 counted headline metrics.**" in text
    assert "+6.000 — golden ahead — not counted: no standard error" in text
    assert "+0.023 — within noise (±0.141)\n" in text
    assert "5.123 | 5.100 | 5.300" in text  # three decimals, not one
    assert "+0.023 (±0.141)" in text
    # Against full: behind on MT-Bench (-0.177 beyond ±0.141), level on the win rate, ahead on likelihood.
    assert "golden vs full: Mixed: golden ahead of full on 1, behind on 1, level on 1.**" in text
    assert "-0.177 — golden behind beyond noise (±0.141)" in text


def test_judge_at_chance_is_flagged_and_not_counted() -> None:
    worse_likelihood = [
        dataclasses.replace(r, likelihood=_ll(-1.40 if r.variant == "random" else -1.41)) for r in RESULTS
    ]
    text = render_markdown(comparison_table(worse_likelihood, AT_CHANCE), AT_CHANCE)
    assert "Warning: the judge is near chance" in text
    assert "not counted: judge at chance" in text
    # The judge says golden wins big, but only the judge-free row counts, and it is within noise.
    assert (
        "golden vs random: Not measurably: every counted headline difference from random is within noise "
        "(judge-free only: the judge is at chance)." in text
    )


def test_uncalibrated_judge_is_labelled() -> None:
    judge = JudgeInfo("small-judge")
    text = render_markdown(comparison_table(RESULTS[:2], judge), judge)
    assert "not calibrated against GPT-4" in text
    assert "golden vs full" not in text


def _chatty(tiny_model: LoadedModel) -> LoadedModel:
    """The tiny model with its own random output head, so it writes varied text instead of newlines."""
    model = copy.deepcopy(tiny_model.model)
    generator = torch.Generator().manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator))
    return dataclasses.replace(tiny_model, name="tiny-chatty", model=model)


@pytest.mark.slow
def test_end_to_end_with_the_tiny_model_as_candidate_and_judge(tiny_model: LoadedModel, tmp_path) -> None:
    judge = LocalJudge(tiny_model, "probabilities", name="tiny-judge")
    cache = JudgmentCache(tmp_path / "judgments.sqlite")
    results = []
    for variant, candidate in (("golden", _chatty(tiny_model)), ("random", tiny_model)):
        rows, mt_summary = mt_bench.evaluate(candidate, judge, limit=2, max_new_tokens=6, cache=cache)
        assert rows["question_id"].tolist() == [81, 81, 82, 82] and rows["turn"].tolist() == [1, 2, 1, 2]
        assert rows["parsed"].all() and rows["score"].between(1, 10).all()
        annotations, ae_summary = alpaca_eval.evaluate(
            candidate, judge, limit=3, generator=variant, max_new_tokens=6, cache=cache
        )
        assert annotations["preference"].between(1, 2).all()
        _, likelihood = score_references(candidate, "mt_bench", limit=2)
        results.append(VariantResults(variant, mt_summary, ae_summary, {"mt_bench": likelihood}))

    golden, random = results
    assert golden.mt_bench.n_graded == 4 and golden.mt_bench.judge == "tiny-judge"
    assert golden.alpaca_eval.n_total == 3 and golden.alpaca_eval.generator == "golden"
    # The two candidates wrote different things, so the judge saw different inputs.
    assert golden.alpaca_eval.avg_length != random.alpaca_eval.avg_length

    calibration = calibrate_judge(judge, n=4, seed=0, cache=cache)
    info = JudgeInfo(
        name=calibration.judge,
        backend=calibration.backend,
        mode=calibration.mode,
        agreement=calibration.agreement,
        ci_low=calibration.ci_low,
        ci_high=calibration.ci_high,
        near_chance=calibration.near_chance or calibration.agreement is None,
    )
    table, _, text = build_report(results, info)
    assert list(table.columns[5:8]) == ["golden", "random", "golden − random"]
    assert "tiny-judge" in text and "golden vs random:" in text
    assert "MT-Bench score" in text and "AlpacaEval win rate" in text and "Reference log-likelihood" in text
    if info.near_chance:
        assert "Warning: the judge is near chance" in text
    # A rerun is served from the judgment cache.
    again, _ = alpaca_eval.evaluate(tiny_model, judge, limit=3, generator="random", max_new_tokens=6, cache=cache)
    assert again["cached"].all()
    assert again["preference"].tolist() == annotations["preference"].tolist()
    cache.close()


@pytest.mark.slow
def test_smollm2_as_candidate_and_judge(smollm2: LoadedModel, tmp_path) -> None:
    judge = LocalJudge(smollm2, "probabilities", name="smollm2-judge")
    with JudgmentCache(tmp_path / "judgments.sqlite") as cache:
        rows, mt_summary = mt_bench.evaluate(smollm2, judge, limit=1, max_new_tokens=32, cache=cache)
        annotations, ae_summary = alpaca_eval.evaluate(smollm2, judge, limit=2, max_new_tokens=32, cache=cache)
    assert rows["answer"].str.len().gt(0).all()
    assert 1 <= mt_summary.score <= 10 and mt_summary.n_graded == 2
    assert annotations["output_2"].str.len().gt(0).all()
    assert ae_summary.n_total == 2
    print(
        f"SmolLM2 on SmolLM2: MT-Bench {mt_summary.score:.3f} (turns {mt_summary.turn_1:.3f}/"
        f"{mt_summary.turn_2:.3f}); AlpacaEval preferences {annotations['preference'].round(4).tolist()}"
    )


def test_likelihood_noise_is_paired_answer_by_answer() -> None:
    # Answer difficulty varies far more than the variants differ: independent standard errors hide a lead that
    # every single answer shows.
    difficulty = [-0.8, -2.4, -1.1, -3.0, -1.7, -0.5]

    def variant(name: str, lead: float, jitter: tuple[float, ...]) -> VariantResults:
        items = tuple((f"a{i}", d + lead + j) for i, (d, j) in enumerate(zip(difficulty, jitter, strict=True)))
        values = pd.Series([v for _, v in items])
        summary = LikelihoodSummary(
            "alpaca_eval", "gpt4_1106_preview", len(items), values.mean(), values.sem(), values.mean(), 600, 0, items
        )
        return VariantResults(name, likelihood={"alpaca_eval": summary})

    golden = variant("golden", 0.05, (0.01, -0.01, 0.0, 0.01, -0.01, 0.0))
    random = variant("random", 0.0, (0.0, 0.01, -0.01, 0.0, 0.01, -0.01))
    row = comparison_table([golden, random], TRUSTED).set_index("metric").iloc[0]
    paired = pd.Series(
        [
            g - r
            for (_, g), (_, r) in zip(
                golden.likelihood["alpaca_eval"].per_item, random.likelihood["alpaca_eval"].per_item, strict=True
            )
        ]
    )
    assert row["golden − random"] == pytest.approx(0.05)
    assert row["noise golden − random"] == pytest.approx(2 * paired.sem())
    independent = 2 * math.hypot(
        golden.likelihood["alpaca_eval"].standard_error, random.likelihood["alpaca_eval"].standard_error
    )
    assert row["noise golden − random"] < 0.05 < independent
    assert "golden vs random: Yes" in render_markdown(comparison_table([golden, random], TRUSTED), TRUSTED)
    # Without per-answer values (older results) the independent band is used.
    bare = [
        dataclasses.replace(
            v, likelihood={"alpaca_eval": dataclasses.replace(v.likelihood["alpaca_eval"], per_item=())}
        )
        for v in (golden, random)
    ]
    assert comparison_table(bare, TRUSTED).iloc[0]["noise golden − random"] == pytest.approx(independent)


def test_the_report_says_how_far_the_golden_ranking_can_be_trusted() -> None:
    table = comparison_table(RESULTS, TRUSTED)
    assert "How much to trust the ranking" not in render_markdown(table, TRUSTED)
    figures = {
        "verdict": "mostly anchor noise",
        "line": "mostly anchor noise: add anchors (about 240 for 0.8) — split-half reliability 0.42 at 16 anchors",
        "reliability": 0.42,
        "anchors": 16,
        "anchors_measured": 16,
        "anchors_for_reliability_0_8": 240,
        "criterion": "top 25%",
        "selection_overlap": 0.43,
        "selection_overlap_chance": 0.25,
        "observed_sd": 0.158,
        "binomial_sd": 0.124,
        "uninformative_anchors": 5,
        "candidates": 600,
        "candidates_incomplete": 0,
    }
    text = render_markdown(table, TRUSTED, comparisons=None, reliability=figures)
    assert "## How much to trust the ranking" in text and figures["line"] in text
    assert "| anchors for a reliability of 0.8 | 240 |" in text
    assert text.index("How much to trust") < text.index("## All metrics")
