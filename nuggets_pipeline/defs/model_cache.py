"""What the model resources of one process share: the loaded models, and the one device they compute on.

Process-wide on purpose, and free of Dagster: a run executed in one process (the in-process executor,
``dg.materialize``) builds several resources that name the same model and device, and they must share one copy
of the weights and one claimed GPU. The multiprocess executor runs each step in its own process, with its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nuggets_pipeline.core.devices import DeviceClaim
from nuggets_pipeline.core.devices import claim as claim_device
from nuggets_pipeline.core.modeling import LoadedModel, load_model, resolve_device, resolve_dtype

Log = Callable[[str], None]

_LOADED: dict[tuple[str, str, str], LoadedModel] = {}


def load_shared(model: str, dtype: str, device: str) -> LoadedModel:
    """Loaded once per process, keyed by the resolved dtype and device, so "auto" and the dtype it resolves to
    share one copy (the demo's scoring model and judge are the same SmolLM2)."""
    torch_device = resolve_device(device)
    key = (model, str(resolve_dtype(dtype, torch_device)), str(torch_device))
    if key not in _LOADED:
        _LOADED[key] = load_model(model, dtype=dtype, device=device)
    return _LOADED[key]


@dataclass
class _ProcessClaim:
    held: DeviceClaim | None = None
    users: int = 0


# One claim per process, shared by its model resources: a run in one process that scores and trains uses one GPU,
# as before, instead of waiting for a second one it may never get (a 1-GPU machine would wait on itself).
_PROCESS = _ProcessClaim()


def claim_for_process(device: str, model: str, log: Log | None) -> None:
    """Join this process's claim of ``device``, claiming it (waiting for a free GPU) when no resource holds it."""
    if _PROCESS.users == 0:
        held = claim_device(device, label=f"{model} pid {os.getpid()}", log=log)
        if held is not None:
            if log is not None:
                log(f"claimed device {held.name} (waited {held.waited_s:.1f} s)")
            if held.torch_device.startswith("cuda"):
                torch.cuda.set_device(torch.device(held.torch_device))  # for code that just says "cuda"
        _PROCESS.held = held
    _PROCESS.users += 1


def release_for_process(log: Log) -> None:
    """Leave this process's claim; the last resource to leave releases the device."""
    _PROCESS.users -= 1
    held = _PROCESS.held
    if _PROCESS.users == 0 and held is not None:
        # Logged before the lock is dropped, so logged holding intervals never overlap when the locks do not.
        log(f"releasing device {held.name}")
        held.release()
        _PROCESS.held = None


def process_claim() -> DeviceClaim | None:
    """The device this process holds for its model resources (None: nothing claimed, e.g. on the CPU)."""
    return _PROCESS.held
