"""ModelResource's device claim inside Dagster runs, on simulated devices."""

from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.devices import claim, simulated_devices
from nuggets_pipeline.defs.resources import ModelResource

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


def test_evaluation_steps_run_on_the_device_their_step_claims(
    isolated_home: Path, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variant's evaluation step claims a device like every other model step (it used to resolve "auto" to the
    first GPU for itself), and releases it when the step ends."""
    from nuggets_pipeline.core.storage import Warehouse
    from nuggets_pipeline.defs.assets.evaluation import reference_likelihood
    from nuggets_pipeline.defs.resources import WarehouseIOManagerFactory, WarehouseResource

    checkpoint = Warehouse.of_home(isolated_home).finetuned_model_dir("golden")
    tiny_model.model.save_pretrained(checkpoint)
    tiny_model.tokenizer.save_pretrained(checkpoint)
    monkeypatch.setenv("NUGGETS_SIMULATED_DEVICES", "1")
    monkeypatch.setenv("NUGGETS_DEVICE_WAIT_S", "0")
    warehouse = WarehouseResource()

    def evaluate() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [reference_likelihood],
            partition_key="golden",
            resources={
                "training_model": ModelResource(model="tiny-random-llama", device="auto"),
                "warehouse": warehouse,
                "io_manager": WarehouseIOManagerFactory(warehouse=warehouse),
            },
            run_config={"ops": {"reference_likelihood": {"config": {"alpaca_eval_items": 2, "mt_bench_items": 1}}}},
        )

    # The only device is taken: the step must not run on it regardless (the wait is 0 s, so it fails naming it).
    with claim("auto", devices=simulated_devices(1), timeout_s=0), pytest.raises(Exception, match="sim:0"):
        evaluate()
    result = evaluate()
    assert result.success
    (materialization,) = result.asset_materializations_for_node("reference_likelihood")
    assert materialization.metadata["device"].value == "sim:0"
    with claim("auto", devices=simulated_devices(1), timeout_s=0) as after:  # released when the step ended
        assert after.name == "sim:0"
