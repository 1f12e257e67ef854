"""Device claims on simulated devices: distinct, all or nothing, waiting, and released by the kernel on SIGKILL."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nuggets_pipeline.core.devices import (
    SIMULATED_ENV,
    DeviceUnavailableError,
    available_devices,
    candidates_for,
    claim,
    simulated_devices,
)


def test_without_gpu_or_simulation_nothing_is_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIMULATED_ENV, raising=False)
    assert available_devices() == []  # this CPU-only machine
    assert claim("auto") is None and claim("cuda") is None and claim("cpu") is None
    monkeypatch.setenv(SIMULATED_ENV, "2")
    assert claim("cpu") is None  # an explicit cpu never claims a device


def test_claims_are_distinct_and_fail_clearly_when_none_is_free(isolated_home: Path) -> None:
    devices = simulated_devices(2)
    first = claim("auto", devices=devices, timeout_s=0, label="first")
    second = claim("auto", devices=devices, timeout_s=0, label="second")
    assert {first.name, second.name} == {"sim:0", "sim:1"}
    assert first.torch_device == "cpu" and first.child_environment() == {}
    with pytest.raises(DeviceUnavailableError, match=r"sim:0 by pid \d+ \(first\)"):
        claim("auto", devices=devices, timeout_s=0)
    first.release()
    with claim("auto", devices=devices, timeout_s=0) as third:
        assert third.name == first.name
    second.release()


def test_a_multi_device_claim_is_all_or_nothing(isolated_home: Path) -> None:
    devices = simulated_devices(3)
    one = claim("auto", devices=devices, timeout_s=0)
    with pytest.raises(DeviceUnavailableError, match="no 3 free"):
        claim("auto", count=3, devices=devices, timeout_s=0)
    # The failed attempt holds nothing: the two free devices are still claimable.
    with claim("auto", count=2, devices=devices, timeout_s=0) as two:
        assert sorted(d.name for d in two.devices) == sorted({"sim:0", "sim:1", "sim:2"} - {one.name})
    one.release()
    with pytest.raises(DeviceUnavailableError, match="4 devices needed"):
        claim("auto", count=4, devices=devices, timeout_s=0)


def test_a_waiting_claim_gets_the_device_once_released(isolated_home: Path) -> None:
    devices = simulated_devices(1)
    holder = claim("auto", devices=devices, timeout_s=0)
    waits: list[str] = []
    threading.Timer(0.3, holder.release).start()
    with claim("auto", devices=devices, timeout_s=60, poll_s=0.05, log=waits.append) as later:
        assert later.name == "sim:0"
    assert waits and "waiting up to 60 s" in waits[0]


def test_explicit_cuda_index_claims_that_device_only(isolated_home: Path) -> None:
    devices = simulated_devices(2)
    assert [d.name for d in candidates_for("cuda:1", devices)] == ["sim:1"]
    with pytest.raises(DeviceUnavailableError, match="cuda:5"):
        candidates_for("cuda:5", devices)


def test_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIMULATED_ENV, "two")
    with pytest.raises(ValueError, match=SIMULATED_ENV):
        available_devices()
    monkeypatch.setenv(SIMULATED_ENV, "1")
    monkeypatch.setenv("NUGGETS_DEVICE_WAIT_S", "-1")
    with pytest.raises(ValueError, match="NUGGETS_DEVICE_WAIT_S"):
        claim("auto")


HOLD = """
import sys, time
from nuggets_pipeline.core.devices import claim, simulated_devices
held = claim("auto", devices=simulated_devices(1), timeout_s=0, label="victim")
print(held.name, flush=True)
time.sleep(300)
"""


def test_the_kernel_frees_the_device_of_a_sigkilled_holder(isolated_home: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    victim = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert victim.stdout.readline().strip() == "sim:0"
        with pytest.raises(DeviceUnavailableError, match="victim"):
            claim("auto", devices=simulated_devices(1), timeout_s=0)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(60) == -signal.SIGKILL
        with claim("auto", devices=simulated_devices(1), timeout_s=0) as next_one:
            assert next_one.name == "sim:0"
    finally:
        if victim.poll() is None:
            victim.kill()
