"""ModelResource's device claim inside Dagster runs, on simulated devices."""

from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.devices import claim, simulated_devices
from nuggets_pipeline.resources import ModelResource

USED: dict[str, str] = {}


@dg.asset
def scores_something(scoring_model: ModelResource) -> None:
    USED["scoring"] = scoring_model.device_used()
    assert scoring_model.load().device.type == "cpu"  # a simulated device computes on the CPU


@dg.asset(deps=[scores_something])
def trains_something(training_model: ModelResource) -> None:
    USED["training"] = training_model.device_used()


def run(device: str) -> dg.ExecuteInProcessResult:
    USED.clear()
    resources = {
        "scoring_model": ModelResource(model="tiny-random-llama", device=device),
        "training_model": ModelResource(model="tiny-random-llama", device=device),
    }
    return dg.materialize([scores_something, trains_something], resources=resources)


def test_one_process_uses_one_claimed_device_for_all_its_models(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run executed in one process that scores and trains on a 1-device machine: one claim, shared, no wait on
    itself; released when the run ends."""
    monkeypatch.setenv("NUGGETS_SIMULATED_DEVICES", "1")
    monkeypatch.setenv("NUGGETS_DEVICE_WAIT_S", "0")
    result = run("auto")
    assert result.success
    assert USED == {"scoring": "sim:0", "training": "sim:0"}
    with claim("auto", devices=simulated_devices(1), timeout_s=0) as after:
        assert after.name == "sim:0"


def test_without_gpus_or_simulation_the_device_is_todays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUGGETS_SIMULATED_DEVICES", raising=False)
    assert run("auto").success and USED == {"scoring": "cpu", "training": "cpu"}
    monkeypatch.setenv("NUGGETS_SIMULATED_DEVICES", "2")
    assert run("cpu").success and USED == {"scoring": "cpu", "training": "cpu"}
