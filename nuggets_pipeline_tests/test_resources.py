"""Resource settings that act on the process: torch threads."""

import pytest
import torch

from nuggets_pipeline.resources import ModelResource


def test_threads_sets_torch_intra_op_threads() -> None:
    before = torch.get_num_threads()
    try:
        loaded = ModelResource(model="tiny-random-llama", threads=1).load()
        assert torch.get_num_threads() == 1
        assert loaded.model is not None
        ModelResource(model="tiny-random-llama").load()  # None leaves the setting alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_must_be_positive() -> None:
    with pytest.raises(Exception, match="greater than 0"):
        ModelResource(model="tiny-random-llama", threads=0)
