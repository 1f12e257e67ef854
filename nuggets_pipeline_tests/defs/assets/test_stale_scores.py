"""A selection is never built from stale scores, and training never uses a stale selection (issues 12 and 13).

With the tiny model: scores against anchors of seed 0, then anchors of seed 1 with nothing re-scored; and a
candidate pool re-sharded from 3 shards to 2.
"""

import json
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources

TINY_TRAINING = {"max_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 48}
GOLDEN = dg.AssetKey("golden_subset")


def rebuild(instance: dg.DagsterInstance, seed: int = 0, shards: int = 2) -> None:
    """anchor_set (random, 4, seed), candidates and zero_shot_losses again, as a user would after a change."""
    result = dg.materialize(
        ASSETS,
        selection=["anchor_set", "candidates", "zero_shot_losses"],
        instance=instance,
        resources=tiny_resources(),
        run_config={
            "ops": {
                "anchor_set": {"config": {"method": "random", "n": 4, "seed": seed}},
                "candidates": {"config": {"shards": shards, "limit": None}},
            }
        },
    )
    assert result.success


def train(instance: dg.DagsterInstance, variant: str = "golden") -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        selection=["finetuned_model"],
        instance=instance,
        resources=tiny_resources(),
        partition_key=variant,
        raise_on_error=False,
        run_config={"ops": {"finetuned_model": {"config": TINY_TRAINING}}},
    )


def failure(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    return result.get_step_failure_events()[0].step_failure_data.error.message


def stored_subset(home: Path) -> bytes:
    return (home / "warehouse" / "golden_subset" / "all.parquet").read_bytes()


def golden_materialisations(instance: dg.DagsterInstance) -> int:
    return len(instance.fetch_materializations(GOLDEN, limit=100).records)


@pytest.mark.slow
def test_new_anchors_without_rescoring_store_nothing_and_train_nothing(
    prepared: dg.DagsterInstance, isolated_home: Path
) -> None:
    for shard in ("base-000", "base-001"):
        assert score(prepared, shard).success
    assert select(prepared, top_fraction=1.0).success
    before, built = stored_subset(isolated_home), golden_materialisations(prepared)

    rebuild(prepared, seed=1)  # new anchors, zero-shot again, nothing re-scored
    refused = select(prepared, top_fraction=1.0)
    message = failure(refused)
    assert "stale: base-000, base-001" in message
    assert "backfill one_shot_scores for partitions base-000, base-001" in message
    assert refused.get_asset_materialization_events() == []  # refused before anything was stored
    assert stored_subset(isolated_home) == before and golden_materialisations(prepared) == built

    # The subset stored before the change (seed-0 scores) is refused by training: nothing is trained on it.
    trained = train(prepared)
    assert "selected from stale scores" in failure(trained)
    assert not (isolated_home / "finetuned" / "golden").exists()

    # allow_partial selects from current rows only, and says so; with one shard re-scored that is base-000.
    assert "no current one_shot_scores" in failure(select(prepared, top_fraction=1.0, allow_partial=True))
    assert score(prepared, "base-000").success
    partial = select(prepared, top_fraction=1.0, allow_partial=True)
    assert partial.success
    meta = partial.get_asset_materialization_events()[0].materialization.metadata
    assert meta["partial"].value is True and "stale: base-001" in meta["partial_note"].value
    subset = partial.output_for_node("golden_subset")
    candidates = Warehouse(isolated_home / "warehouse").read("candidates")
    assert set(subset["id"]) == set(candidates.loc[candidates["shard"] == "base-000", "id"])
    zero_shot = Warehouse(isolated_home / "warehouse").read("zero_shot_losses")
    assert set(subset["anchor_set_hash"]) == set(zero_shot["anchor_set_hash"])
    assert set(subset["scores_fingerprint"]) == set(zero_shot["model_fingerprint"])

    # Everything re-scored: the default selection succeeds and its blocking check passes.
    assert score(prepared, "base-001").success
    full = select(prepared, top_fraction=1.0)
    assert full.success and full.get_asset_check_evaluations()[0].passed
    assert len(full.output_for_node("golden_subset")) == len(candidates)


def test_anchors_changed_but_zero_shot_not_rerun_is_refused(prepared: dg.DagsterInstance) -> None:
    for shard in ("base-000", "base-001"):
        assert score(prepared, shard).success
    moved = dg.materialize(
        ASSETS,
        selection=["anchor_set"],
        instance=prepared,
        resources=tiny_resources(),
        run_config={"ops": {"anchor_set": {"config": {"method": "random", "n": 4, "seed": 1}}}},
    )
    assert moved.success
    assert "materialise zero_shot_losses" in failure(select(prepared, top_fraction=1.0))


@pytest.mark.slow
def test_a_reshard_never_reads_scores_of_shards_that_left_the_pool(
    prepared: dg.DagsterInstance, isolated_home: Path
) -> None:
    rebuild(prepared, seed=0, shards=3)
    for shard in ("base-000", "base-001", "base-002"):
        assert score(prepared, shard).success
    rebuild(prepared, seed=0, shards=2)  # same anchors and model: only the shards moved

    message = failure(select(prepared, top_fraction=1.0))
    assert "incomplete" in message and "base-002" not in message.split("Fix:")[1]
    # Prove base-002 is never opened: make its file unreadable; the selection still works once 000/001 are current.
    (isolated_home / "warehouse" / "one_shot_scores" / "base-002.parquet").write_bytes(b"not parquet")
    for shard in ("base-000", "base-001"):
        assert score(prepared, shard).success
    result = select(prepared, top_fraction=1.0)
    assert result.success
    candidates = Warehouse(isolated_home / "warehouse").read("candidates")
    subset = result.output_for_node("golden_subset")
    assert set(subset["id"]) == set(candidates["id"]) and subset["id"].is_unique
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.metadata["shards_not_in_pool"].value == "base-002"


@pytest.mark.slow
def test_selection_and_training_defaults_run_and_an_empty_selection_shows_the_threshold_table(
    prepared: dg.DagsterInstance,
) -> None:
    for shard in ("base-000", "base-001"):
        assert score(prepared, shard).success
    from nuggets_pipeline.defs.assets.scoring import GoldenSelectionConfig

    with pytest.raises(ValueError, match=r"threshold 1\.0 can never select anything"):
        GoldenSelectionConfig(threshold=1.0)  # refused as config, before any score is read
    empty = failure(select(prepared, top_fraction=0.01))  # floor(0.01 * 26) = 0 candidates
    assert "keeps none of the 26 scored candidates" in empty
    assert "threshold |   subset_size |   fraction" in empty and "|        0.80 |" in empty
    default = select(prepared)  # no field set: the paper's golden share as top_fraction
    assert default.success
    meta = default.get_asset_materialization_events()[0].materialization.metadata
    assert meta["criterion"].value == '{"top_fraction": 0.1447}'
    assert len(default.output_for_node("golden_subset")) == 3  # floor(0.1447 * 26)
    assert train(prepared).success


@pytest.mark.parametrize("fields", [{"threshold": 0.8, "top_fraction": 0.2}, {"threshold": 0.5, "top_k": 3}])
def test_a_threshold_with_another_criterion_is_refused(fields: dict) -> None:
    from nuggets_pipeline.defs.assets.scoring import GoldenSelectionConfig

    with pytest.raises(ValueError, match="are both set; they select differently"):
        GoldenSelectionConfig(**fields)


def test_candidates_default_to_the_whole_pool() -> None:
    from nuggets_pipeline.defs.assets.anchors import CandidatesConfig

    assert CandidatesConfig().limit is None


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.slow
def test_a_home_copied_elsewhere_keeps_every_score_current(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model lives under the home (as the converted SmolLM2 cache does); the home is copied to another path,
    as a user moving it or a pod mounting it elsewhere would: zero-shot is re-run there, nothing is re-scored, and
    the selection finds every score current."""
    import shutil

    from nuggets_pipeline.core.modeling import load_model
    from nuggets_pipeline.defs.resources import ModelResource
    from nuggets_pipeline_tests.materialize import PREPARE, example

    tiny = load_model("tiny-random-llama")
    tiny.model.save_pretrained(isolated_home / "models" / "tiny")
    tiny.tokenizer.save_pretrained(isolated_home / "models" / "tiny")

    def resources(home: Path) -> dict[str, object]:
        found = tiny_resources()
        found["scoring_model"] = ModelResource(model=str(home / "models" / "tiny"))
        return found

    source = tmp_path / "pool.json"
    source.write_text(json.dumps([example(i) for i in range(12)]))
    instance = dg.DagsterInstance.ephemeral()
    prepared = dg.materialize(
        ASSETS,
        selection=PREPARE,
        instance=instance,
        resources=resources(isolated_home),
        run_config={
            "ops": {
                "ingest_instructions": {"config": {"sources": [str(source)]}},
                "anchor_set": {"config": {"method": "random", "n": 4}},
                "candidates": {"config": {"shards": 1, "limit": None}},
            }
        },
    )
    assert prepared.success
    scored = dg.materialize(
        ASSETS,
        selection=["one_shot_scores"],
        instance=instance,
        resources=resources(isolated_home),
        partition_key="base-000",
    )
    assert scored.success
    before = Warehouse(isolated_home / "warehouse").read("zero_shot_losses")["model_fingerprint"].iloc[0]

    moved = shutil.copytree(isolated_home, tmp_path / "mounted" / "elsewhere")
    monkeypatch.setenv("NUGGETS_HOME", str(moved))
    again = dg.materialize(ASSETS, selection=["zero_shot_losses"], instance=instance, resources=resources(moved))
    assert again.success
    assert Warehouse(moved / "warehouse").read("zero_shot_losses")["model_fingerprint"].iloc[0] == before
    selected = dg.materialize(
        ASSETS,
        selection=["golden_subset"],
        instance=instance,
        resources=resources(moved),
        run_config={"ops": {"golden_subset": {"config": {"top_fraction": 0.5}}}},
        raise_on_error=False,
    )
    assert selected.success, failure(selected)
    assert set(selected.output_for_node("golden_subset")["scores_fingerprint"]) == {before}
