"""Shared fixtures: an isolated home per test session and models loaded once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nuggets_pipeline.core.paths import REPO_ROOT

# Converted model caches survive between sessions (the GGUF conversion costs ~30 s on 2 cores);
# everything else a test writes goes to a fresh temporary home.
os.environ.setdefault("NUGGETS_MODEL_CACHE", str(REPO_ROOT / ".nuggets_home" / "models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
