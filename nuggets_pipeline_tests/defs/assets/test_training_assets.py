"""finetuned_model for the golden and random variants, for real with the tiny model."""

from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.modeling import load_model
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources

TINY_TRAINING = {"max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 64}


def train(instance: dg.DagsterInstance, variant: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        selection=["finetuned_model"],
        instance=instance,
        resources=tiny_resources(),
        partition_key=variant,
        raise_on_error=False,
        run_config={"ops": {"finetuned_model": {"config": TINY_TRAINING}}},
    )


@pytest.mark.slow
def test_golden_and_random_variants_train_same_size_subsets(prepared: dg.DagsterInstance, isolated_home: Path) -> None:
    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    assert select(prepared, threshold=None, top_k=4).success
    sizes = {}
    for variant in ("golden", "random"):
        result = train(prepared, variant)
        assert result.success
        meta = result.get_asset_materialization_events()[0].materialization.metadata
        sizes[variant] = meta["examples"].value
        assert meta["steps"].value == 2
        checkpoint = Path(meta["checkpoint"].value)
        assert checkpoint.is_relative_to(isolated_home)
        reloaded = load_model(str(checkpoint))
        assert reloaded.model.config.num_hidden_layers == 2
    assert sizes == {"golden": 4, "random": 4}


def test_an_empty_selection_fails_before_anything_reaches_training(
    prepared: dg.DagsterInstance, isolated_home: Path
) -> None:
    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    selected = select(prepared, top_fraction=0.01)  # floor(0.01 x 26) = 0 (a threshold of 1 is refused as config)
    assert not selected.success
    failure = selected.get_step_failure_events()[0].step_failure_data.error
    assert "keeps none of the 26 scored candidates" in failure.message and "subset_size" in failure.message
    assert not (isolated_home / "warehouse" / "golden_subset").exists()


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
