"""Resource settings that act on the process: torch threads, and models shared within a process."""

import pytest
import torch

from nuggets_pipeline.core import modeling
from nuggets_pipeline.defs.resources import JudgeResource, ModelResource


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


def test_auto_and_the_dtype_it_resolves_to_share_one_loaded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modeling, "cpu_has_native_bfloat16", lambda: False)
    scoring = ModelResource(model="tiny-random-llama", dtype="auto", device="auto").load()
    assert scoring is ModelResource(model="tiny-random-llama", dtype="float32", device="cpu").load()
    assert scoring.model.dtype == torch.float32
    judge = JudgeResource(model="tiny-random-llama", device="auto").build()
    assert judge.loaded is scoring


def test_the_judge_settings_reach_the_judge_resource() -> None:
    """NUGGETS_JUDGE_TIMEOUT_S, _MAX_RETRIES and _MAX_FAILED_FRACTION configure the bound judge (the UI shows them)."""
    from nuggets_pipeline.core.settings import Settings
    from nuggets_pipeline.defs.definitions import default_resources

    judge = default_resources(Settings(judge_timeout_s=5, judge_max_retries=0, judge_max_failed_fraction=0.1))["judge"]
    assert (judge.timeout_s, judge.max_retries, judge.max_failed_fraction) == (5.0, 0, 0.1)
    with pytest.raises(Exception, match="greater than 0"):
        JudgeResource(timeout_s=0)
