"""Fixtures of the operations tests: a persistent instance and a small base pool prepared in a temporary home
(helpers: ``materialize``)."""

from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline_tests.materialize import prepare


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every operations test runs torch on one thread (the root conftest says why)."""


@pytest.fixture
def prepared(tmp_path: Path, isolated_home: Path, instance: dg.DagsterInstance) -> dg.DagsterInstance:
    prepare(instance, tmp_path / "pool.json")
    return instance
