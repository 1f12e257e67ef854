"""Shared setup of the operations tests: a small base pool scored with the tiny model, in a temporary home."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from nuggets_pipeline.definitions import default_resources, defs
from nuggets_pipeline.resources import ModelResource, ScoringResource

ASSETS = [*defs.assets, *defs.asset_checks]
PREPARE = ["instructions", "quarantined_instructions", "anchor_set", "candidates", "zero_shot_losses"]


def tiny_resources() -> dict[str, Any]:
    found = default_resources()
    found["scoring_model"] = ModelResource(model="tiny-random-llama")
    found["training_model"] = ModelResource(model="tiny-random-llama")
    return found


def example(i: int, topic: str = "number") -> dict[str, str]:
    return {"instruction": f"Write the {topic} {i} in words.", "input": "", "output": f"It is {topic} {i}."}


def prepare(instance: dg.DagsterInstance, source: Path, rows: int = 16, shards: int = 2) -> None:
    """Ingest ``rows`` examples, pick 4 random anchors, split the rest into ``shards`` and score zero-shot."""
    source.write_text(json.dumps([example(i) for i in range(rows)]))
    result = dg.materialize(
        ASSETS,
        selection=PREPARE,
        instance=instance,
        resources=tiny_resources(),
        run_config={
            "ops": {
                "ingest_instructions": {"config": {"sources": [str(source)]}},
                "anchor_set": {"config": {"method": "random", "n": 4}},
                "candidates": {"config": {"shards": shards, "limit": None}},
            }
        },
    )
    assert result.success


def score(
    instance: dg.DagsterInstance, shard: str, last: str | None = None, **scoring: Any
) -> dg.ExecuteInProcessResult:
    """Score one shard, or every shard from ``shard`` to ``last`` in one run (a single-run backfill)."""
    resources = tiny_resources()
    if scoring:
        resources["scoring"] = ScoringResource(**scoring)
    if last is None:
        return dg.materialize(
            ASSETS, selection=["one_shot_scores"], instance=instance, resources=resources, partition_key=shard
        )
    tags = {"dagster/asset_partition_range_start": shard, "dagster/asset_partition_range_end": last}
    return dg.materialize(ASSETS, selection=["one_shot_scores"], instance=instance, resources=resources, tags=tags)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    # A persistent (SQLite) instance, as in production: sensors resolve dynamic partitions through its ref.
    (tmp_path / "dagster").mkdir()
    overrides = {"telemetry": {"enabled": False}}
    with dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"), overrides=overrides) as created:
        yield created


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """On a shared 2-core machine torch's second intra-op thread spins against other work: scoring the tiny model
    measured 10 s with 2 threads and 0.5 s with 1 under a load of 6. Restored afterwards for other tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def prepared(tmp_path: Path, isolated_home: Path, instance: dg.DagsterInstance) -> dg.DagsterInstance:
    prepare(instance, tmp_path / "pool.json")
    return instance
