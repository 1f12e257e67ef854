"""The training variants' examples: golden, bottom and every random seed the same size, bottom the worst scored."""

import dagster as dg
import pandas as pd
import pytest

from nuggets_pipeline.defs.assets.training import TrainingAssetConfig, variant_examples
from nuggets_pipeline.defs.partitions import TRAINING_VARIANTS, random_seed_offset

POOL = pd.DataFrame(
    {
        "id": [f"{i:016x}" for i in range(20)],
        "instruction": [f"task {i}" for i in range(20)],
        "input": "",
        "output": [f"answer {i}" for i in range(20)],
    }
)
# Candidate i scores i / 20: the best are 19, 18, ..., the worst 0, 1, ...
SCORES = pd.DataFrame(
    {
        "candidate_id": POOL["id"],
        "golden_score": [i / 20 for i in range(20)],
        "mean_delta": [0.0] * 20,
        "verdict": "exact",
        "model_fingerprint": "m",
        "anchor_set_hash": "a",
    }
)
GOLDEN = POOL.iloc[15:].assign(golden_score=[i / 20 for i in range(15, 20)])


def test_the_existing_keys_are_kept_and_the_new_ones_added() -> None:
    assert TRAINING_VARIANTS[:3] == ("golden", "random", "full")
    assert {"bottom", "random-1"} <= set(TRAINING_VARIANTS)
    assert [random_seed_offset(v) for v in ("random", "random-1", "random-12", "golden", "randomx", "random-")] == [
        0,
        1,
        12,
        None,
        None,
        None,
    ]


def test_golden_bottom_and_random_seeds_have_the_same_size() -> None:
    config = TrainingAssetConfig()
    sets = {v: variant_examples(v, GOLDEN, POOL, config, SCORES) for v in ("golden", "bottom", "random", "random-1")}
    assert {v: len(f) for v, f in sets.items()} == {"golden": 5, "bottom": 5, "random": 5, "random-1": 5}
    assert list(sets["bottom"]["id"]) == [f"{i:016x}" for i in range(5)]  # the five lowest scores, worst first
    assert set(sets["random"]["id"]) != set(sets["random-1"]["id"])  # another seed, another draw
    seeded = variant_examples("random-1", GOLDEN, POOL, TrainingAssetConfig(random_seed=1))
    assert set(seeded["id"]) != set(sets["random-1"]["id"])  # random-1 is the base seed + 1
    assert len(variant_examples("full", GOLDEN, POOL, config)) == 20


def test_bottom_refuses_missing_or_mixed_scores() -> None:
    config = TrainingAssetConfig()
    with pytest.raises(dg.Failure, match="needs one_shot_scores"):
        variant_examples("bottom", GOLDEN, POOL, config, None)
    mixed = SCORES.assign(model_fingerprint=["m"] * 19 + ["other"])
    with pytest.raises(dg.Failure, match="mixes scoring models"):
        variant_examples("bottom", GOLDEN, POOL, config, mixed)
    with pytest.raises(dg.Failure, match="golden subset is empty"):
        variant_examples("random-1", GOLDEN.head(0), POOL, config)
