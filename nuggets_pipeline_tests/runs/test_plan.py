"""`nuggets plan` with the tiny model: exact token counts, a real measurement, and the arithmetic that follows."""

import json
import math
from pathlib import Path

import pytest

from nuggets_pipeline import cli
from nuggets_pipeline.core.modeling import TINY_RANDOM_LLAMA, load_model
from nuggets_pipeline.core.scoring import ScoringConfig, score_zero_shot
from nuggets_pipeline.runs.plan import choose_anchors, format_plan, load_pool, make_plan


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    rows = [
        {"instruction": f"Write the number {i} in words{'!' * (i % 5)}.", "input": "", "output": f"It is {i}."}
        for i in range(30)
    ]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(rows))
    return path


def plan_args(pool: Path, *extra: str) -> list[str]:
    return ["plan", "--pool", str(pool), "--model", TINY_RANDOM_LLAMA, "--dtype", "float32", "--threads", "1", *extra]


def test_the_plan_counts_what_the_engine_scores_and_does_the_arithmetic(pool: Path) -> None:
    plan = make_plan(
        [str(pool)], "4", TINY_RANDOM_LLAMA, device="cpu", dtype="float32", sample_candidates=2, sample_anchors=2,
        gpu_tokens_per_s=1000.0, gpus=2, shard_size=8, threads=1,
    )  # fmt: skip
    assert (plan.pool_rows, plan.anchor_count, plan.candidates) == (30, 4, 26)
    # The anchor tokens per candidate are the engine's own count: prompt + response tokens of every anchor.
    anchors, _ = choose_anchors(load_pool([str(pool)]), "4", 0)
    engine = score_zero_shot(load_model(TINY_RANDOM_LLAMA), anchors, ScoringConfig())
    assert plan.anchor_tokens_per_candidate == int((engine["prompt_tokens"] + engine["response_tokens"]).sum())
    assert plan.tokens_to_score == 26 * plan.anchor_tokens_per_candidate
    assert plan.prefix_tokens > 26  # BOS plus a whole rendered example per candidate
    # Measured on a real sample through the scoring core: 2 candidates x 2 anchors.
    assert (plan.sample_candidates, plan.sample_anchors) == (2, 2)
    assert plan.sample_anchor_tokens > 0 and plan.tokens_per_s_here > 0
    assert plan.hours_here == pytest.approx(plan.tokens_to_score / plan.tokens_per_s_here / 3600)
    assert plan.shards == math.ceil(26 / 8) == 4
    assert plan.gpu_hours == pytest.approx(plan.tokens_to_score / 1000 / 3600)
    assert plan.wall_hours_on_gpus == pytest.approx(plan.gpu_hours / 2)
    assert plan.device == "cpu" and plan.threads == 1


def test_the_cli_prints_the_plan_and_claims_a_device_like_a_step(
    pool: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(plan_args(pool, "--anchors", "3", "--gpu-tokens-per-s", "500")) == 0
    out = capsys.readouterr().out
    for line in ("tokens to score", "anchor tokens/s on this machine", "this machine", "shards", "GPU-hours"):
        assert line in out
    # Two sample candidates are too few for a reliability figure: the plan says so and how to get one.
    assert "reliability     cannot say: only 2 candidates" in out
    assert "--sample-candidates 30 --sample-anchors 16" in out
    monkeypatch.setenv("NUGGETS_SIMULATED_DEVICES", "2")
    assert cli.main(plan_args(pool, "--anchors", "3", "--device", "auto", "--json")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["device"] == "sim:0" and plan["gpu_hours"] is None and plan["anchor_count"] == 3


def test_an_anchor_file_is_read_and_bad_anchors_are_named(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anchors = tmp_path / "anchors.json"
    anchors.write_text(json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Blue."}]))
    assert cli.main(plan_args(pool, "--anchors", str(anchors), "--json")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["anchor_count"], plan["candidates"]) == (1, 30)
    assert cli.main(plan_args(pool, "--anchors", "30")) == 2
    assert "random anchors: n must be in 1..29" in capsys.readouterr().err
    assert cli.main(plan_args(pool, "--anchors", str(tmp_path / "missing.json"))) == 2
    assert "neither a count nor an existing file" in capsys.readouterr().err
    assert cli.main(plan_args(pool, "--gpu-tokens-per-s", "0")) == 2


def test_a_pilot_sample_reads_the_reliability_stepped_up_to_every_anchor(pool: Path) -> None:
    plan = make_plan(
        [str(pool)], "8", TINY_RANDOM_LLAMA, device="cpu", dtype="float32", sample_candidates=12, sample_anchors=4,
        threads=1,
    )  # fmt: skip
    assert (plan.sample_candidates, plan.sample_anchors, plan.anchor_count) == (12, 4, 8)
    # The pilot's 4 anchors are split in halves of 2, stepped up to all 8 (Spearman–Brown).
    assert "at 8 anchors, measured on 4 (12 candidates" in plan.reliability_line
    if plan.reliability is not None:
        assert 0 <= plan.reliability <= 1
        assert plan.anchors_for_reliability_0_8 is None or plan.anchors_for_reliability_0_8 >= 1
    assert "reliability     " + plan.reliability_line in format_plan(plan)


def test_the_plan_compares_exact_adaptive_and_weak_to_strong(pool: Path) -> None:
    plan = make_plan(
        [str(pool)], "12", TINY_RANDOM_LLAMA, device="cpu", dtype="float32", sample_candidates=12,
        sample_anchors=12, threads=1, gpu_tokens_per_s=1000.0, trainee_parameters=50 * 10**9,
    )  # fmt: skip
    exact, adaptive, weak = plan.strategies
    assert exact["strategy"] == "exact" and exact["tokens"] == plan.tokens_to_score + plan.prefix_tokens
    assert exact["gpu_hours"] == pytest.approx(exact["tokens"] / 1000 / 3600)
    # Same model: scoring FLOPs over three epochs of training on the pool's examples.
    assert exact["selection_to_tuning_ratio"] == pytest.approx(2 * exact["tokens"] / (6 * plan.pool_tokens * 3))
    assert adaptive["strategy"] == "adaptive" and 0 < adaptive["tokens"] <= exact["tokens"]
    assert "replayed on the pilot's 12 x 12" in adaptive["basis"]
    # A 50B trainee: the same scoring, a ratio smaller by the size ratio.
    size = plan.scoring_parameters / (50 * 10**9)
    assert weak["selection_to_tuning_ratio"] == pytest.approx(exact["selection_to_tuning_ratio"] * size)
    text = format_plan(plan)
    assert "weak-to-strong (exact)" in text and "STR" in text
