"""Concurrency pools for runs without a daemon: a dead holder's slot is reclaimed, a waiting step sleeps.

Runs started with `dg.materialize`, the CLI or the demo execute in the calling process, and no daemon watches
them. Dagster 1.13 leaves two gaps there, both closed here (applied once, by `install()`, which
`definitions.build_defs` calls: importing a module never patches Dagster):

- A run killed while it holds a pool slot (SIGKILL, OOM) stays STARTED and keeps the slot for ever: nothing
  marks it failed. Every run now records which process claims its slots (tag ``nuggets/worker`` =
  ``host:pid:start time``, set when the run's concurrency context opens, in the process that claims). A run
  that waits for a slot checks the holders: one recorded on this host whose process is gone (or whose pid now
  belongs to another process) is marked failed and its slots freed. A holder on another host, or one with no
  tag (a run launched by a launcher, watched by run monitoring), is left alone.
- The in-process executor's wait for a slot spins: Dagster's ``interval_to_next_pending_claim_check`` returns
  ``min([0, ...])``, never more than 0, so the loop never sleeps (about 100% of a core). The wait now sleeps
  between checks, and SIGTERM or Ctrl-C stops it: the run ends as interrupted and gives back its pending claim.

Kept only while Dagster needs it: nuggets_pipeline_tests/defs/test_pools.py reproduces both gaps on Dagster's own
(unpatched) classes and fails, saying "upstream fixed: delete defs/pools.py", once they are gone.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import dagster as dg
import psutil
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._utils.interrupts import check_captured_interrupt

log = logging.getLogger(__name__)

WORKER_TAG = "nuggets/worker"
WAIT_POLL_S = 1.0  # between two looks at the pool while a step waits for a slot
RECLAIM_EVERY_S = 10.0  # between two looks for dead holders while waiting


def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def worker_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of a process: the start time tells a reused pid from the process that had it."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid) or 0:.2f}"


def holder_is_dead(identity: str) -> bool:
    """True only when sure: same host, and the pid is gone, a zombie, or a different process now."""
    host, _, rest = identity.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        process = psutil.Process(int(pid_text))
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return abs(process.create_time() - float(start_text or 0)) > 1.0
    except psutil.NoSuchProcess:
        return True
    except (psutil.AccessDenied, ValueError):
        return False


def reclaim_dead_slots(instance: dg.DagsterInstance, report: Callable[[str], None] = log.warning) -> list[str]:
    """Mark failed every unfinished run whose recorded worker process is dead, and free its pool slots.

    Returns the run ids reclaimed. What Dagster's daemon and run monitoring do for launched runs, for the runs
    that have neither."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders: set[str] = set()
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        holders |= info.active_run_ids | info.pending_run_ids | info.assigned_run_ids
    reclaimed = []
    for run_id in sorted(holders):
        run = instance.get_run_by_id(run_id)
        identity = run.tags.get(WORKER_TAG) if run is not None else None
        if run is None or identity is None or not holder_is_dead(identity):
            continue
        if not run.is_finished:
            instance.report_run_failed(run, f"run worker {identity} is gone (killed?); its pool slots were freed")
        storage.free_concurrency_slots_for_run(run_id)
        report(f"freed the pool slots of run {run_id}: its worker process {identity} is gone")
        reclaimed.append(run_id)
    return reclaimed


class _Stop(DagsterExecutionInterruptedError):
    pass


def _interruptible_sleep(seconds: float) -> None:
    """Sleep, but let SIGTERM (and a Ctrl-C Dagster captured) end the wait by raising an interrupt."""
    if check_captured_interrupt():
        raise _Stop("interrupted while waiting for a pool slot")
    if threading.current_thread() is not threading.main_thread():
        time.sleep(seconds)
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise _Stop(f"stopped by signal {signal.Signals(signum).name} while waiting for a pool slot")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        time.sleep(seconds)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if check_captured_interrupt():
        raise _Stop("interrupted while waiting for a pool slot")


# Dagster's own methods, taken before any patch (this module is the only one that patches them): what install()
# wraps, and what the upstream test runs to see whether Dagster still has the gaps.
DAGSTER_ENTER = getattr(InstanceConcurrencyContext, "__enter__", None)
DAGSTER_SLEEP_TIL_READY = getattr(ActiveExecution, "sleep_til_ready", None)
_installed = False


def installed() -> bool:
    return _installed


def install() -> None:
    """Apply both fixes to Dagster's classes (idempotent; version-checked so a Dagster that changed is left
    as it is, with a warning, instead of being patched blindly)."""
    global _installed
    if _installed:
        return
    enter, sleep_til_ready = DAGSTER_ENTER, DAGSTER_SLEEP_TIL_READY
    if enter is None or sleep_til_ready is None or not hasattr(ActiveExecution, "sleep_interval"):
        log.warning("dagster %s: pool helpers not installed (internals changed)", dg.__version__)
        return

    def enter_and_record(self: InstanceConcurrencyContext) -> Any:
        entered = enter(self)
        # This process claims the run's slots: record it, so a later run can tell when it is gone.
        self._instance.add_run_tags(self._run_id, {WORKER_TAG: worker_identity()})
        self._nuggets_reclaimed_at = 0.0
        return entered

    def sleep_between_checks(self: ActiveExecution) -> None:
        concurrency = self._instance_concurrency_context
        if concurrency is None or not concurrency.has_pending_claims():
            sleep_til_ready(self)
            return
        if time.monotonic() - getattr(concurrency, "_nuggets_reclaimed_at", 0.0) > RECLAIM_EVERY_S:
            concurrency._nuggets_reclaimed_at = time.monotonic()
            reclaim_dead_slots(concurrency._instance)
        retry = self.sleep_interval()  # a step waiting to retry may be due sooner
        _interruptible_sleep(min(WAIT_POLL_S, retry) if retry > 0 else WAIT_POLL_S)

    InstanceConcurrencyContext.__enter__ = enter_and_record  # type: ignore[method-assign]
    ActiveExecution.sleep_til_ready = sleep_between_checks  # type: ignore[method-assign]
    _installed = True
