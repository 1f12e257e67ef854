"""Fixtures for materialising the graph with the tiny model into a temporary home (helpers: ``materialize``)."""

from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline_tests.materialize import prepare


@pytest.fixture
def prepared(tmp_path: Path, isolated_home: Path) -> dg.DagsterInstance:
    """A pool of 30 examples, 4 random anchors, 2 shards: everything before one-shot scoring."""
    instance = dg.DagsterInstance.ephemeral()
    prepare(instance, tmp_path / "pool.json", rows=30, shards=2)
    return instance
