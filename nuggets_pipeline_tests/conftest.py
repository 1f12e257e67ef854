"""Shared fixtures: an isolated home per test session and models loaded once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nuggets_pipeline.core.paths import REPO_ROOT

if TYPE_CHECKING:
    import dagster as dg

# Converted model caches survive between sessions (the GGUF conversion costs ~30 s on 2 cores);
# everything else a test writes goes to a fresh temporary home.
os.environ.setdefault("NUGGETS_MODEL_CACHE", str(REPO_ROOT / ".nuggets_home" / "models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: a second torch thread in each would only spin against the other
    # worker (and the subprocesses the tests start inherit the limit).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# The end-to-end tests that take a minute or more go first, so the two workers run them side by side and the
# short tests fill in around them instead of one long test finishing alone at the end.


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("browser"):
            return 0
        return 1 if "/study/" in str(item.path) else 2

    items.sort(key=rank)  # stable: collection order within each rank


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("NUGGETS_HOME", str(home))
    yield home


@pytest.fixture(scope="session")
def tiny_model():
    from nuggets_pipeline.core.modeling import TINY_RANDOM_LLAMA, load_model

    return load_model(TINY_RANDOM_LLAMA, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    from nuggets_pipeline.core.modeling import SMOLLM2, load_model

    return load_model(SMOLLM2, dtype="float32", device="cpu")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    import dagster as dg

    # A persistent (SQLite) instance, as in production: sensors resolve dynamic partitions through its ref.
    (tmp_path / "dagster").mkdir()
    overrides = {"telemetry": {"enabled": False}}
    with dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"), overrides=overrides) as created:
        yield created


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """On a shared 2-core machine torch's second intra-op thread spins against other work: scoring the tiny model
    measured 10 s with 2 threads and 0.5 s with 1 under a load of 6. Restored afterwards for other tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
