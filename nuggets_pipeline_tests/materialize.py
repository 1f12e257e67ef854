"""Materialising the graph with the tiny model, shared by the asset and operations tests: the resources, a
small pool prepared up to zero-shot scoring, one-shot scoring of shards and the golden selection."""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from nuggets_pipeline.defs.definitions import default_resources, defs
from nuggets_pipeline.defs.resources import JudgeResource, ModelResource, ScoringResource
from nuggets_pipeline.defs.sensors import INGEST_JOB, SCORE_JOB

ASSETS = [*defs.assets, *defs.asset_checks]
PREPARE = ["instructions", "quarantined_instructions", "anchor_set", "candidates", "zero_shot_losses"]
# What each job of a sensor's run request materialises.
SELECTION = {
    INGEST_JOB: ["candidate_increments", "quarantined_increments"],
    SCORE_JOB: ["one_shot_screening", "one_shot_scores"],
}


def tiny_resources() -> dict[str, Any]:
    """The defaults, with the tiny random model for scoring, training and judging (seconds, not minutes)."""
    found = default_resources()
    found["scoring_model"] = ModelResource(model="tiny-random-llama")
    found["training_model"] = ModelResource(model="tiny-random-llama")
    found["judge"] = JudgeResource(model="tiny-random-llama")
    return found


def example(i: int, topic: str = "number") -> dict[str, str]:
    return {"instruction": f"Write the {topic} {i} in words.", "input": "", "output": f"It is {topic} {i}."}


def materialize_pool(instance: dg.DagsterInstance, source: Path, shards: int = 2) -> dg.ExecuteInProcessResult:
    """Ingest ``source``, pick 4 random anchors, split the rest into ``shards`` and score zero-shot."""
    return dg.materialize(
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


def prepare(instance: dg.DagsterInstance, source: Path, rows: int = 16, shards: int = 2) -> None:
    """Write ``rows`` examples to ``source`` and materialise everything before one-shot scoring."""
    source.write_text(json.dumps([example(i) for i in range(rows)]))
    assert materialize_pool(instance, source, shards).success


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


def select(instance: dg.DagsterInstance, **config: object) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        selection=["golden_subset"],
        instance=instance,
        resources=tiny_resources(),
        run_config={"ops": {"golden_subset": {"config": config}}},
        raise_on_error=False,
    )


def execute(
    instance: dg.DagsterInstance, request: dg.RunRequest, raise_on_error: bool = True, **increment: Any
) -> dg.ExecuteInProcessResult:
    """Run a sensor's (or schedule's) run request in process, as the daemon would; ``increment`` overrides the
    incoming batch's config."""
    run_config = json.loads(json.dumps(request.run_config or {}))
    if increment:
        run_config["ops"]["ingest_increment_file"]["config"].update(increment)
    return dg.materialize(
        ASSETS,
        selection=SELECTION[request.job_name],
        instance=instance,
        resources=tiny_resources(),
        partition_key=request.partition_key,
        run_config=run_config,
        tags=request.tags,
        raise_on_error=raise_on_error,
    )
