"""A distinct device per model step: shard runs in separate processes on simulated devices (no GPU needed).

Each worker is a real process that opens the shared instance (the repository's dagster.yaml), loads the tiny model
with ``device="auto"`` and materialises one shard of one_shot_scores, exactly as a run launcher's process would.
``NUGGETS_SIMULATED_DEVICES=N`` makes the machine look like it has N devices (computing on the CPU).
"""

import itertools
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from nuggets_pipeline.core.devices import DeviceUnavailableError, claim, simulated_devices
from nuggets_pipeline.core.paths import REPO_ROOT
from nuggets_pipeline.defs.resources import ModelResource
from nuggets_pipeline_tests.defs.operations.workers import context
from nuggets_pipeline_tests.materialize import ASSETS, prepare, tiny_resources

HANG_GUARD_S = 300  # only stops a hung test; nothing here asserts on durations
HOLDING = "holding"


class Setup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.dagster_home = root / "dagster_home"

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("NUGGETS_DAGSTER_STORAGE", str(self.dagster_home / "storage"))
            with dg.DagsterInstance.from_config(str(self.dagster_home)) as created:
                yield created


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """20 examples: 4 anchors, 16 candidates in 6 shards, zero-shot scored; the model pool allows 6 steps at once
    (a misconfigured pool: only the device claims keep steps apart)."""
    found = Setup(tmp_path_factory.mktemp("gpus"))
    found.home.mkdir()
    found.dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", found.dagster_home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUGGETS_HOME", str(found.home))
        with found.instance() as instance:
            prepare(instance, found.root / "pool.json", rows=20, shards=6)
            instance.event_log_storage.set_concurrency_slots("model", 6)
        yield found


def score_on_simulated_devices(
    home: str, dagster_home: str, shard: str, devices: int, barrier=None, hold_s: float = 0.0, freeze: bool = False
) -> None:
    """One shard run in this process on ``devices`` simulated devices. ``hold_s``: stay on the device that long
    inside scoring, so the four runs overlap in time; ``freeze``: stop there (drop a marker) until killed."""
    os.environ.update(
        {
            "NUGGETS_HOME": home,
            "DAGSTER_HOME": dagster_home,
            "NUGGETS_DAGSTER_STORAGE": str(Path(dagster_home) / "storage"),
            "NUGGETS_SIMULATED_DEVICES": str(devices),
        }
    )
    import torch

    from nuggets_pipeline.core import shard_scoring as scoring

    torch.set_num_threads(1)
    score = scoring.score_one_shot

    def holding(*args, **kwargs):  # type: ignore[no-untyped-def]
        if freeze:
            (Path(home).parent / HOLDING).write_text(str(os.getpid()))
            threading.Event().wait()  # until the test kills this process
        time.sleep(hold_s)
        yield from score(*args, **kwargs)

    scoring.score_one_shot = holding
    resources = tiny_resources()
    resources["scoring_model"] = ModelResource(model="tiny-random-llama", device="auto")
    if barrier is not None:
        barrier.wait()
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            ASSETS,
            selection=["one_shot_scores"],
            partition_key=shard,
            instance=instance,
            resources=resources,
            tags={"nuggets/worker_pid": str(os.getpid())},
        )
    if not result.success:
        raise SystemExit(1)


def start(setup: Setup, shard: str, devices: int, **options: object):  # type: ignore[no-untyped-def]
    process = context().Process(
        target=score_on_simulated_devices,
        args=(str(setup.home), str(setup.dagster_home), shard, devices),
        kwargs=options,
    )
    process.start()
    return process


def claims_of(instance: dg.DagsterInstance, run_id: str) -> tuple[str, float, float]:
    """(device, claimed at, released at) from the run's own log: the resource logs both moments."""
    claimed = released = None
    device = ""
    for entry in instance.all_logs(run_id):
        message = entry.user_message
        if message.startswith("claimed device "):
            device, claimed = message.split()[2], entry.timestamp
        elif message.startswith("releasing device "):
            assert message.split()[2] == device
            released = entry.timestamp
    assert claimed is not None and released is not None, f"run {run_id} logged no claim and release"
    return device, claimed, released


def materialized_device(instance: dg.DagsterInstance, run_id: str) -> str:
    [event] = [e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.is_step_materialization]
    return event.dagster_event.step_materialization_data.materialization.metadata["device"].value


@pytest.mark.slow
def test_four_runs_on_two_simulated_devices_never_share_one(setup: Setup) -> None:
    shards = [f"base-00{i}" for i in range(4)]
    barrier = context().Barrier(len(shards))
    workers = [start(setup, shard, 2, barrier=barrier, hold_s=1.0) for shard in shards]
    for worker in workers:
        worker.join(HANG_GUARD_S)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]

    with setup.instance() as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": shards}))
        assert len(runs) == 4 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        held: dict[str, list[tuple[float, float]]] = {}
        for run in runs:
            device, claimed, released = claims_of(instance, run.run_id)
            assert device in ("sim:0", "sim:1")
            # The metadata names the device the run claimed.
            assert materialized_device(instance, run.run_id) == device
            held.setdefault(device, []).append((claimed, released))
    for device, spans in held.items():
        spans.sort()
        for (_, previous_end), (next_start, _) in itertools.pairwise(spans):
            assert next_start >= previous_end, f"{device} held by two runs at once: {spans}"
    assert sum(len(spans) for spans in held.values()) == 4


@pytest.mark.slow
def test_a_sigkilled_runs_device_is_free_again_for_the_next(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = start(setup, "base-004", 1, freeze=True)
    marker = setup.root / HOLDING
    while not marker.exists():
        worker.join(0.2)
        assert worker.exitcode is None, "the run ended before it claimed the device"
    # Held: a claim that may not wait fails at once, naming the holder.
    with pytest.raises(DeviceUnavailableError, match=f"sim:0 by pid {worker.pid}"):
        claim("auto", devices=simulated_devices(1), timeout_s=0, home=setup.home)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(HANG_GUARD_S)
    assert worker.exitcode == -signal.SIGKILL
    marker.unlink()

    # The next run gets the only device: the kernel dropped the killed process's lock. It may not wait for it.
    monkeypatch.setenv("NUGGETS_HOME", str(setup.home))
    monkeypatch.setenv("NUGGETS_SIMULATED_DEVICES", "1")
    monkeypatch.setenv("NUGGETS_DEVICE_WAIT_S", "0")
    resources = tiny_resources()
    resources["scoring_model"] = ModelResource(model="tiny-random-llama", device="auto")
    with setup.instance() as instance:
        result = dg.materialize(
            ASSETS, selection=["one_shot_scores"], partition_key="base-005", instance=instance, resources=resources
        )
        assert result.success
        assert materialized_device(instance, result.run_id) == "sim:0"
    with claim("auto", devices=simulated_devices(1), timeout_s=0, home=setup.home) as after:
        assert after.name == "sim:0"  # and released again at the end of that run
