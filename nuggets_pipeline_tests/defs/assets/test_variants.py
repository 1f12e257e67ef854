"""The training variants' examples: golden, bottom and every random seed the same size, bottom the worst scored,
and every control drawn from the pool golden was selected from (the base candidates and every incoming batch)."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from nuggets_pipeline.core.incoming import INCREMENTS_TABLE
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.core.versions import ScoringVersion, anchor_set_hash, current_pool
from nuggets_pipeline.defs.assets.training import TrainingAssetConfig, training_examples, variant_examples
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


BATCH = "inc0000abcd"


def pool_with_a_batch(store: Warehouse) -> tuple[pd.DataFrame, ScoringVersion, pd.DataFrame, pd.DataFrame]:
    """The base `candidates` (12 of POOL), an incoming batch (the other 8) stored as the increments asset stores
    it, every candidate scored at one version (the batch's the worst), and that version's inputs."""
    rows = POOL.assign(source="pool.json", row_number=range(len(POOL)))
    base = rows.head(12).assign(shard="base-000")
    batch = rows.tail(8).assign(shard=f"{BATCH}-000").reset_index(drop=True)
    store.write(INCREMENTS_TABLE, batch, partition=BATCH)
    anchors = pd.DataFrame({"id": ["a" * 16, "b" * 16]})
    zero_shot = pd.DataFrame({"model_fingerprint": ["m", "m"], "anchor_set_hash": anchor_set_hash(anchors)})
    version = ScoringVersion("m", anchor_set_hash(anchors))
    scores = SCORES.assign(
        golden_score=[(19 - i) / 20 for i in range(20)],  # best first: the base pool's; worst: the batch's
        wins=[19 - i for i in range(20)],
        anchors_scored=20,
        n_anchors=20,
        median_delta=0.0,
        anchor_set_hash=version.anchor_set_hash,
        shard=[*base["shard"], *batch["shard"]],
    )
    for shard, rows_of_shard in scores.groupby("shard"):
        store.write("one_shot_scores", rows_of_shard.reset_index(drop=True), partition=str(shard))
    return base, version, anchors, zero_shot


def test_every_control_draws_from_the_pool_golden_selected_from_once_a_batch_has_arrived(tmp_path: Path) -> None:
    """Issue 22: random, full and bottom drew from the base candidates only while golden selected from the base
    pool and every incoming batch; after new data arrived the controls came from another pool than golden."""
    store = Warehouse(tmp_path / "warehouse")
    base, version, anchors, zero_shot = pool_with_a_batch(store)
    golden = version.stamp(POOL.head(5).assign(golden_score=[(19 - i) / 20 for i in range(5)]))
    pool = current_pool(base, store)
    assert len(pool) == 20 and set(pool["id"]) == set(POOL["id"])
    batch_ids = set(POOL["id"].tail(8))
    config = TrainingAssetConfig()

    def examples(variant: str) -> pd.DataFrame:
        return training_examples(variant, golden, base, anchors, zero_shot, store, config)

    assert set(examples("full")["id"]) == set(POOL["id"])  # the whole pool: the batch too
    assert list(examples("bottom")["id"]) == list(POOL["id"].iloc[::-1].head(5))  # the batch's worst five
    for variant in ("random", "random-1"):
        drawn = examples(variant)
        assert len(drawn) == len(golden) and set(drawn["id"]) <= set(POOL["id"])
        expected = variant_examples(variant, golden, pool, config)  # drawn from the same 20 golden saw
        assert list(drawn["id"]) == list(expected["id"])
    drawn_from_the_batch = set().union(*(set(examples(v)["id"]) for v in ("random", "random-1"))) & batch_ids
    assert drawn_from_the_batch, "the seeded draws never reach the batch: the test cannot tell the pools apart"
    assert list(examples("golden")["id"]) == list(golden["id"])


def test_a_control_refuses_a_subset_selected_at_another_version(tmp_path: Path) -> None:
    store = Warehouse(tmp_path / "warehouse")
    base, version, anchors, zero_shot = pool_with_a_batch(store)
    stale = ScoringVersion("an older model", version.anchor_set_hash).stamp(GOLDEN)
    for variant in ("golden", "random", "bottom"):
        with pytest.raises(dg.Failure, match="selected from stale scores"):
            training_examples(variant, stale, base, anchors, zero_shot, store, TrainingAssetConfig())
    # `full` is the whole pool: not sized by the subset, so a stale subset does not stop it.
    assert len(training_examples("full", stale, base, anchors, zero_shot, store, TrainingAssetConfig())) == 20


# Response lengths 10, 20, ..., 200 characters: the longest are the last ids.
LENGTHS = POOL.assign(output=["x" * (10 * (i + 1)) for i in range(20)])
IFD = pd.DataFrame(
    {
        "candidate_id": POOL["id"],
        # Highest IFD first among those below 1: ids 9, 8, ..., the ones at or above 1 (10..19) never count.
        "ifd": [0.5 + i / 20 for i in range(20)],
        "model_fingerprint": "m",
    }
)


def test_the_baselines_have_golden_s_size_and_pick_what_they_say() -> None:
    config = TrainingAssetConfig()
    golden = LENGTHS.iloc[[0, 1, 2, 18, 19]]  # two long responses, three short
    longest = variant_examples("longest", golden, LENGTHS, config)
    assert list(longest["id"]) == list(LENGTHS["id"].iloc[::-1].head(5))
    matched = variant_examples("length-matched", golden, LENGTHS, config)
    assert len(matched) == 5 and set(matched["id"]) <= set(LENGTHS["id"])
    # Ten length strata of two: golden holds two of the shortest stratum, one of the second, two of the longest.
    strata = sorted(LENGTHS.set_index("id").loc[matched["id"], "output"].str.len() // 21)
    assert strata == sorted(LENGTHS.set_index("id").loc[golden["id"], "output"].str.len() // 21)
    assert list(matched["id"]) != list(variant_examples("random", golden, LENGTHS, config)["id"])
    ifd = variant_examples("ifd", golden, LENGTHS, config, ifd=IFD)
    assert list(ifd["id"]) == [f"{i:016x}" for i in (9, 8, 7, 6, 5)]


def test_the_ifd_variant_refuses_missing_or_too_few_scores() -> None:
    config = TrainingAssetConfig()
    with pytest.raises(dg.Failure, match="needs ifd_scores"):
        variant_examples("ifd", GOLDEN, POOL, config)
    with pytest.raises(dg.Failure, match="lacks 1 candidates"):
        variant_examples("ifd", GOLDEN, POOL, config, ifd=IFD.head(19))
    with pytest.raises(dg.Failure, match=r"only 2 candidates have an IFD below 1\.0"):
        variant_examples("ifd", GOLDEN, POOL, config, ifd=IFD.assign(ifd=[0.9, 0.8] + [1.5] * 18))
    with pytest.raises(dg.Failure, match="golden subset is empty"):
        variant_examples("longest", GOLDEN.head(0), POOL, config)


def test_the_new_variants_are_partitions_and_base_trains_nothing() -> None:
    assert {"longest", "length-matched", "ifd", "base"} <= set(TRAINING_VARIANTS)
    assert TRAINING_VARIANTS[:5] == ("golden", "random", "full", "bottom", "random-1")  # stored keys keep
