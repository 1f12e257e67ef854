"""The entry-point tests run torch on one thread, like the operations tests (the root conftest says why)."""

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    pass
