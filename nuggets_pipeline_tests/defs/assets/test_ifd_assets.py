"""The IFD selector through the graph with the tiny model: ifd_scores and ifd_subset, the `ifd` and `base`
training variants, and the stage that runs IFD only for plans that train it."""

import math

import dagster as dg
import pytest

from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline.defs.jobs import STAGES
from nuggets_pipeline.defs.schemas import IFDScoresSchema, IFDSubsetSchema
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources

# The tiny random model's prompts rarely help (IFD >= 1): rank every candidate, as a real model's IFD < 1 would.
TINY_TRAINING = {
    "max_ifd": 100.0,
    "max_steps": 1,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_length": 64,
}


def materialize(instance: dg.DagsterInstance, selection: list[str], **kwargs: object) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=selection, instance=instance, resources=tiny_resources(), **kwargs)


def test_ifd_scores_every_candidate_and_the_subset_keeps_the_top_below_one(
    prepared: dg.DagsterInstance, isolated_home
) -> None:
    result = materialize(
        prepared, ["ifd_scores", "ifd_subset"], run_config={"ops": {"ifd_subset": {"config": {"max_ifd": 100.0}}}}
    )
    assert result.success
    store = Warehouse(isolated_home / "warehouse")
    scores = store.read("ifd_scores", schema=IFDScoresSchema)
    candidates = store.read("candidates")
    assert set(scores["candidate_id"]) == set(candidates["id"])  # every candidate, no anchor
    assert (scores["ifd"] > 0).all() and scores["ifd"].map(math.isfinite).all()
    subset = store.read("ifd_subset", schema=IFDSubsetSchema)
    below = scores[scores["ifd"] < 100].sort_values(["ifd", "candidate_id"], ascending=[False, True])
    assert len(subset) == math.floor(0.25 * len(scores)) > 0
    assert list(subset["id"]) == list(below["candidate_id"].head(len(subset)))
    meta = {
        e.materialization.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["ifd_scores"]["dagster/row_count"].value == len(candidates)
    assert meta["ifd_subset"]["dagster/row_count"].value == len(subset)


def test_the_ifd_and_base_variants_train_and_load_through_the_graph(
    prepared: dg.DagsterInstance, isolated_home
) -> None:
    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    assert select(prepared, threshold=None, top_k=4).success
    config = {"ops": {"finetuned_model": {"config": TINY_TRAINING}}}
    missing = materialize(prepared, ["finetuned_model"], partition_key="ifd", run_config=config, raise_on_error=False)
    assert not missing.success  # no IFD scores yet: a clear failure, not a silent fallback
    assert "materialise ifd_scores" in missing.get_step_failure_events()[0].step_failure_data.error.message
    assert materialize(prepared, ["ifd_scores"]).success
    trained = materialize(prepared, ["finetuned_model"], partition_key="ifd", run_config=config)
    meta = trained.get_asset_materialization_events()[0].materialization.metadata
    assert meta["examples"].value == 4 and meta["steps"].value == 1
    base = materialize(
        prepared,
        ["finetuned_model", "reference_likelihood"],
        partition_key="base",
        run_config={"ops": {"reference_likelihood": {"config": {"alpaca_eval_items": 2, "mt_bench_items": 1}}}},
    )
    assert base.success
    events = {
        e.materialization.asset_key.to_user_string(): e.materialization for e in base.get_asset_materialization_events()
    }
    assert events["finetuned_model"].metadata["trained"].value is False
    likelihood = Warehouse(isolated_home / "warehouse").read("reference_likelihood")
    assert set(likelihood["variant"]) == {"base"}


def test_the_ifd_stage_runs_only_for_plans_that_train_the_ifd_variant() -> None:
    ifd_stage = next(spec for spec in STAGES if spec.name == "ifd")
    assert ifd_stage.assets == ("ifd_scores", "ifd_subset")
    assert ifd_stage.needed(("golden", "ifd")) and not ifd_stage.needed(("golden", "random", "full"))
    assert all(spec.needed(("golden",)) for spec in STAGES if spec.name != "ifd")


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
