"""Fixtures of the operations tests: a persistent instance and a small base pool prepared in a temporary home
(helpers: ``materialize``)."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline_tests.materialize import prepare


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
