"""finetuned_model's multi-process launcher, for real on CPU: `accelerate launch` with the paper's FSDP config,
2 processes of the tiny model, started and watched through Dagster Pipes.

On a machine without CUDA, accelerate runs that config as plain data parallelism (DDP over gloo): FSDP sharding is
not applied (checkpoints come out unsharded). What is tested is the launch path the paper run takes (command, Pipes
logs and summary, checkpoint as the asset's value) and that two processes train the same model as one: the same
4 examples in one global batch of 4, one process with 4 per device against two with 2 each.
"""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.modeling import load_model
from nuggets_pipeline.core.storage import Warehouse
from nuggets_pipeline_tests.materialize import ASSETS, score, select, tiny_resources

# Both runs see every example of the 4-example golden subset in step 1, whatever order the samplers draw.
COMMON = {"max_steps": 2, "gradient_accumulation_steps": 1, "max_length": 64}
SINGLE = {**COMMON, "launcher": "single", "per_device_train_batch_size": 4}
LAUNCHED = {**COMMON, "launcher": "accelerate", "num_processes": 2, "per_device_train_batch_size": 2}
# Measured: the two runs' losses agreed to 1e-4 at both steps (10.8853, 10.8608 on a similar subset); the difference
# is float32 summation order across two processes.
LOSS_TOLERANCE = 1e-3


def train(instance: dg.DagsterInstance, config: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        selection=["finetuned_model"],
        instance=instance,
        resources=tiny_resources(),
        partition_key="golden",
        raise_on_error=False,
        run_config={"ops": {"finetuned_model": {"config": config}}},
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    assert result.success
    return {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}


def losses(meta: dict) -> list[float]:
    """Every logged step's loss from the Markdown table (4 decimals), the first at full precision."""
    rows = [line.split("|") for line in meta["losses"].splitlines()[2:]]
    table = [float(row[2]) for row in rows]
    assert table[0] == pytest.approx(meta["first_loss"], abs=1e-4)
    return [meta["first_loss"], *table[1:]]


@pytest.mark.slow
def test_a_two_process_launch_trains_like_one_process(prepared: dg.DagsterInstance, isolated_home: Path) -> None:
    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    assert select(prepared, threshold=None, top_k=4).success

    single = metadata(train(prepared, SINGLE))
    assert (single["launcher"], single["processes"], single["device"]) == ("single", 1, "cpu")
    shutil.rmtree(Warehouse.of_home(isolated_home).finetuned_dir("golden"))  # a fresh run, not a resume of this one

    result = train(prepared, LAUNCHED)
    launched = metadata(result)
    assert (launched["launcher"], launched["processes"]) == ("accelerate", 2)
    assert launched["steps"] == 2 and launched["examples_seen"] == single["examples_seen"] == 8
    assert launched["tokens_per_s"] > 0
    first, second = losses(single), losses(launched)
    assert len(first) == len(second) == 2
    # Step 1: the same forward pass split over two processes. Step 2: also the same update, so gradients were
    # averaged across the processes (two processes training alone would each have stepped on half the batch).
    assert first == pytest.approx(second, abs=LOSS_TOLERANCE)

    # The checkpoint is the asset's value: a loadable model folder under the home.
    checkpoint = Path(launched["checkpoint"])
    assert checkpoint == Warehouse.of_home(isolated_home).finetuned_model_dir("golden")
    assert load_model(str(checkpoint)).model.config.num_hidden_layers == 2
    # The launched run's progress lines arrived through Pipes as this run's log events.
    logged = [entry.user_message for entry in prepared.all_logs(result.run_id)]
    assert any(m.startswith("step 1/2 loss") for m in logged), logged
    assert any("launching accelerate" in m and "fsdp_8gpu.yaml" in m for m in logged)

    # torchrun, the other launcher, through the same path.
    shutil.rmtree(Warehouse.of_home(isolated_home).finetuned_dir("golden"))
    torchrun = metadata(train(prepared, {**LAUNCHED, "launcher": "torchrun"}))
    assert (torchrun["launcher"], torchrun["processes"]) == ("torchrun", 2)
    assert losses(torchrun) == pytest.approx(first, abs=LOSS_TOLERANCE)


def test_a_launch_that_fails_fails_the_step_with_its_reason(prepared: dg.DagsterInstance) -> None:
    for shard in prepared.get_dynamic_partitions("candidate_shards"):
        assert score(prepared, shard).success
    assert select(prepared, threshold=None, top_k=4).success
    result = train(prepared, {**LAUNCHED, "accelerate_config": "deploy/accelerate/missing.yaml"})
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "accelerate_config 'deploy/accelerate/missing.yaml': no such file" in error.message


def test_the_paper_profile_launches_by_default() -> None:
    from nuggets_pipeline.defs.assets.training import TrainingAssetConfig

    assert TrainingAssetConfig(profile="paper").resolved_launcher() == "accelerate"
    assert TrainingAssetConfig().resolved_launcher() == "single"
    with pytest.raises(ValueError, match="launcher must be one of"):
        TrainingAssetConfig(launcher="mpirun")
