"""Shard runs in separate processes, the way a run launcher starts them: each opens the instance from
DAGSTER_HOME, loads the tiny model and materialises one partition of one_shot_scores.

The processes come from a forkserver whose only work is importing these modules once; every run then starts
in well under a second instead of re-importing torch (about 25 s on a loaded 2-core machine). The server has
never run torch, so forking it is safe.
"""

import multiprocessing
import os
import threading
from multiprocessing.context import BaseContext
from pathlib import Path

PRELOAD = [
    "nuggets_pipeline.defs.definitions",
    "nuggets_pipeline_tests.materialize",
    "nuggets_pipeline_tests.defs.operations.workers",
]
PAUSED = "paused"


def context() -> BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def score_shard(
    home: str,
    dagster_home: str,
    shard: str,
    barrier=None,  # a multiprocessing.Barrier: every worker starts its run at the same moment
    pause_after: str | None = None,
    checkpoint_every: int = 16,
    environment: dict[str, str] | None = None,
) -> None:
    """Materialise one shard. ``pause_after``: freeze the run right after it writes that checkpoint file (so a
    test can SIGKILL it at a known point) and drop a ``paused`` marker next to the home."""
    # The forkserver's environment is the one it was started with: set this run's explicitly.
    os.environ.update({"NUGGETS_HOME": home, "DAGSTER_HOME": dagster_home, **(environment or {})})
    os.environ["NUGGETS_DAGSTER_STORAGE"] = str(Path(dagster_home) / "storage")
    import dagster as dg
    import torch

    from nuggets_pipeline.core import shard_scoring as scoring
    from nuggets_pipeline.defs.resources import ScoringResource
    from nuggets_pipeline_tests.materialize import ASSETS, tiny_resources

    torch.set_num_threads(1)
    if pause_after:
        write = scoring.write_parquet_atomic

        def write_then_freeze(frame, path: Path) -> None:
            write(frame, path)
            if path.name == pause_after:
                (Path(home).parent / PAUSED).write_text(str(os.getpid()))
                threading.Event().wait()  # until the test kills this process

        scoring.write_parquet_atomic = write_then_freeze
    resources = tiny_resources()
    resources["scoring"] = ScoringResource(checkpoint_every=checkpoint_every)
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
