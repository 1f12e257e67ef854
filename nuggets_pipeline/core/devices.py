"""A distinct GPU per model step on one machine: each step claims devices with an OS-held lock per device.

Why a lock file per device: ``fcntl.flock`` locks belong to the open file, so the kernel releases them when the
process ends in any way, SIGKILL and OOM kill included. A claim can therefore never outlive its step, and no
clean-up service is needed. The lock files live under ``<home>/locks/devices/<hostname>/``: the hostname keeps
machines (and Kubernetes pods, which each see only their own GPU) that share one home on a network volume apart.

A GPU is identified by its UUID where torch reports one, so two processes with different ``CUDA_VISIBLE_DEVICES``
orders still agree on which physical card a lock stands for; otherwise by its index.

Simulation: ``NUGGETS_SIMULATED_DEVICES=N`` (or ``devices=[...]``) replaces the GPU list by N named devices
``sim:0`` ... that compute on the CPU, so CPU-only machines (and tests) exercise the claims exactly. With no GPU and
no simulation nothing is claimed and ``auto`` means the CPU, as before.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nuggets_pipeline.core.env import env_name
from nuggets_pipeline.core.paths import nuggets_home

SIMULATED_ENV = env_name("simulated_devices")
WAIT_ENV = env_name("device_wait_s")
POLL_S = 0.5

Log = Callable[[str], None]


def cpu_name() -> str:
    """The CPU model (Linux's /proc/cpuinfo), else what the platform says: recorded beside every figure, because
    the project's machines vary (AVX2-only or with native bfloat16)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _settings() -> Any:
    from nuggets_pipeline.core.settings import get_settings  # late: the core imports without pydantic-settings

    return get_settings()


class DeviceUnavailableError(RuntimeError):
    """No device could be claimed in time; the message names the devices and who holds them."""


@dataclass(frozen=True)
class Device:
    """One claimable device: ``name`` is what metadata shows (cuda:1, sim:0), ``torch_device`` where tensors go,
    ``lock_id`` what the lock file is named after (a GPU's UUID where known), ``visible_id`` the entry of
    CUDA_VISIBLE_DEVICES that selects it for a child process (None for simulated devices)."""

    name: str
    torch_device: str
    lock_id: str
    visible_id: str | None = None


def simulated_devices(count: int) -> list[Device]:
    return [Device(f"sim:{i}", "cpu", f"sim-{i}") for i in range(count)]


def cuda_devices() -> list[Device]:
    """The GPUs this process sees. Not run on a real GPU in this project yet (no GPU machine was available)."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    found = []
    for index in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        lock_id = f"gpu-{uuid}" if uuid else f"cuda-{index}"
        visible_id = visible[index] if index < len(visible) else str(index)
        found.append(Device(f"cuda:{index}", f"cuda:{index}", lock_id, visible_id))
    return found


def available_devices() -> list[Device]:
    """Simulated devices when NUGGETS_SIMULATED_DEVICES is set, else the CUDA GPUs (maybe none)."""
    count = _settings().simulated_devices
    return simulated_devices(count) if count is not None else cuda_devices()


def candidates_for(requested: str, devices: Sequence[Device]) -> list[Device]:
    """Which devices may serve ``requested`` (cpu, auto, cuda, cuda:N). Empty: nothing to claim (the CPU)."""
    if requested == "cpu" or not devices:
        return []
    if requested in ("auto", "cuda"):
        return list(devices)
    if requested.startswith("cuda:"):
        try:
            index = int(requested.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"unknown device {requested!r}; use cpu, cuda, cuda:N or auto") from None
        if not 0 <= index < len(devices):
            names = [d.name for d in devices]
            raise DeviceUnavailableError(f"device {requested!r} requested but this machine has {names}")
        return [devices[index]]
    return []


@dataclass
class DeviceClaim:
    """Devices held by this process until ``release()`` or the process's end, whichever comes first."""

    devices: list[Device]
    waited_s: float
    _files: list[int] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return ",".join(d.name for d in self.devices)

    @property
    def torch_device(self) -> str:
        return self.devices[0].torch_device

    def child_environment(self) -> dict[str, str]:
        """CUDA_VISIBLE_DEVICES for a launched process that should use exactly the claimed GPUs."""
        visible = [d.visible_id for d in self.devices if d.visible_id is not None]
        return {"CUDA_VISIBLE_DEVICES": ",".join(visible)} if visible else {}

    def release(self) -> None:
        for descriptor in self._files:
            # Closing the file drops the flock; the file itself stays (deleting it would race a new claimant).
            os.close(descriptor)
        self._files.clear()

    def __enter__(self) -> DeviceClaim:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def lock_dir(home: Path | None = None) -> Path:
    folder = (home or nuggets_home()) / "locks" / "devices" / socket.gethostname()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _try_lock(path: Path) -> int | None:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _note_holder(descriptor: int, device: Device, label: str) -> None:
    """Who holds the device, for the error message of a step that could not get one (informative only)."""
    note = json.dumps({"device": device.name, "pid": os.getpid(), "label": label, "since": time.time()})
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, note.encode(), 0)


def _holders(folder: Path, devices: Sequence[Device]) -> str:
    notes = []
    for device in devices:
        try:
            notes.append(json.loads((folder / f"{device.lock_id}.lock").read_text() or "{}"))
        except (OSError, ValueError):
            continue
    return "; ".join(f"{n.get('device')} by pid {n.get('pid')} ({n.get('label')})" for n in notes if n) or "unknown"


def claim(
    requested: str = "auto",
    count: int = 1,
    devices: Sequence[Device] | None = None,
    timeout_s: float | None = None,
    poll_s: float = POLL_S,
    label: str = "",
    home: Path | None = None,
    log: Log | None = None,
) -> DeviceClaim | None:
    """Claim ``count`` distinct free devices that may serve ``requested``; None when there is nothing to claim
    (``cpu``, or no GPU and no simulation: today's behaviour).

    All or nothing: a claim for several devices holds none of them while it waits, so two multi-device claims
    cannot each hold half of what they need. Waits up to ``timeout_s`` (default NUGGETS_DEVICE_WAIT_S, 600 s;
    0 = fail at once) sleeping between attempts, so SIGTERM stops it at once; then raises
    DeviceUnavailableError naming the holders. Never hands out a device another live process holds.
    """
    pool = candidates_for(requested, available_devices() if devices is None else devices)
    if not pool:
        return None
    if count > len(pool):
        raise DeviceUnavailableError(
            f"{count} devices needed for {requested!r} but this machine has {len(pool)}: {[d.name for d in pool]}"
        )
    folder = lock_dir(home)
    limit = _settings().device_wait_s if timeout_s is None else timeout_s
    started = time.monotonic()
    announced = False
    while True:
        held: list[tuple[Device, int]] = []
        for device in pool:
            descriptor = _try_lock(folder / f"{device.lock_id}.lock")
            if descriptor is not None:
                held.append((device, descriptor))
                if len(held) == count:
                    break
        if len(held) == count:
            for device, descriptor in held:
                _note_holder(descriptor, device, label)
            return DeviceClaim([d for d, _ in held], time.monotonic() - started, [f for _, f in held])
        for _, descriptor in held:
            os.close(descriptor)
        waited = time.monotonic() - started
        if waited >= limit:
            raise DeviceUnavailableError(
                f"no {count} free device(s) among {[d.name for d in pool]} after {waited:.0f} s "
                f"({WAIT_ENV}={limit:g}); held: {_holders(folder, pool)}. Lower the 'model' pool limit to the "
                "number of devices (docs/gpus.md) or wait for those steps to end"
            )
        if log is not None and not announced:
            log(f"every device of {[d.name for d in pool]} is in use; waiting up to {limit:g} s for {count}")
            announced = True
        time.sleep(min(poll_s, max(limit - waited, 0.0)))


__all__ = [
    "SIMULATED_ENV",
    "WAIT_ENV",
    "Device",
    "DeviceClaim",
    "DeviceUnavailableError",
    "available_devices",
    "candidates_for",
    "claim",
    "cpu_name",
    "lock_dir",
    "simulated_devices",
]
