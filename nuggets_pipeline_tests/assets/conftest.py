"""Fixtures for materialising the graph with the tiny model into a temporary home."""

import json
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.definitions import default_resources, defs
from nuggets_pipeline.resources import JudgeResource, ModelResource

ASSETS = [*defs.assets, *defs.asset_checks]


def resources() -> dict:
    found = default_resources()
    found["scoring_model"] = ModelResource(model="tiny-random-llama")
    found["training_model"] = ModelResource(model="tiny-random-llama")
    found["judge"] = JudgeResource(model="tiny-random-llama")
    return found


@pytest.fixture
def prepared(tmp_path: Path, isolated_home: Path) -> dg.DagsterInstance:
    """A pool of 30 examples, 4 random anchors, 2 shards: everything before one-shot scoring."""
    rows = [
        {"instruction": f"Write the number {i} in words.", "input": "", "output": f"It is number {i}."}
        for i in range(30)
    ]
    source = tmp_path / "pool.json"
    source.write_text(json.dumps(rows))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        ASSETS,
        selection=["instructions", "quarantined_instructions", "anchor_set", "candidates", "zero_shot_losses"],
        instance=instance,
        resources=resources(),
        run_config={
            "ops": {
                "ingest_instructions": {"config": {"sources": [str(source)]}},
                "anchor_set": {"config": {"method": "random", "n": 4}},
                "candidates": {"config": {"shards": 2, "limit": None}},
            }
        },
    )
    assert result.success
    return instance


def score(instance: dg.DagsterInstance, shard: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS, selection=["one_shot_scores"], instance=instance, resources=resources(), partition_key=shard
    )


def select(instance: dg.DagsterInstance, **config: object) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        selection=["golden_subset"],
        instance=instance,
        resources=resources(),
        run_config={"ops": {"golden_subset": {"config": config}}},
        raise_on_error=False,
    )
