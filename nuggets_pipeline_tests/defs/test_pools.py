"""defs/pools.py is kept only while Dagster needs it: these tests reproduce, on Dagster's own (unpatched) code,
the two gaps it closes, and fail saying "upstream fixed: delete defs/pools.py" once Dagster has closed them.

What the fix does with the gaps is tested in defs/operations/test_faults.py (a killed run's slot is reclaimed, a
waiting step sleeps and stops on SIGTERM)."""

import time

import dagster as dg
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

from nuggets_pipeline.defs import pools

UPSTREAM_FIXED = "upstream fixed: delete defs/pools.py"
POOL = "model"


def holder_and_waiter(instance: dg.DagsterInstance) -> tuple[dg.DagsterRun, dg.DagsterRun]:
    """Two started runs of a one-slot pool: the first holds the slot, the second is about to ask for it."""
    assert instance.event_log_storage.supports_global_concurrency_limits
    instance.event_log_storage.set_concurrency_slots(POOL, 1)
    job = dg.GraphDefinition("pool_user").to_job()
    started = dg.DagsterRunStatus.STARTED
    holder, waiter = (instance.create_run_for_job(job, status=started) for _ in range(2))
    assert instance.event_log_storage.claim_concurrency_slot(POOL, holder.run_id, "step").is_claimed
    return holder, waiter


def test_dagster_still_computes_a_zero_wait_for_a_pending_claim(instance: dg.DagsterInstance) -> None:
    """Gap 2: with a claim pending, Dagster's wait until the next check is min([0, ...]), never above 0, so its
    in-process executor spins a core while a step waits for a slot (pools.install makes the wait sleep)."""
    _, waiter = holder_and_waiter(instance)
    waiting = InstanceConcurrencyContext(instance, waiter)
    with pools.DAGSTER_ENTER(waiting):  # Dagster's own __enter__, whether or not build_defs patched the class
        assert not waiting.claim(POOL, "step"), "the one slot is held: the claim must wait"
        assert waiting.has_pending_claims()
        interval = waiting.interval_to_next_pending_claim_check()
    assert interval <= 0, (
        f"{UPSTREAM_FIXED} (its busy wait half, at least): Dagster {dg.__version__} now waits {interval:.2f} s "
        "between checks of a pending pool claim. Delete sleep_between_checks from defs/pools.py, and the whole "
        "module once test_dagster_still_never_frees_the_slot_of_a_run_whose_process_is_gone fails too."
    )


def test_dagster_still_never_frees_the_slot_of_a_run_whose_process_is_gone(instance: dg.DagsterInstance) -> None:
    """Gap 1: a run that holds a slot and whose process is gone (killed; it never ran here at all) keeps the slot:
    without a daemon nothing marks it failed, and a run waiting for the slot waits for ever."""
    holder, waiter = holder_and_waiter(instance)  # the holder stays as a killed run leaves it: started, not ended
    waiting = InstanceConcurrencyContext(instance, waiter)
    with pools.DAGSTER_ENTER(waiting):
        claimed = waiting.claim(POOL, "step")
        for _ in range(3):  # ask again, as the executor does, each time its wait has passed
            waiting._pending_timeouts["step"] = time.time() - 1  # the wait is Dagster's; it is not what is tested
            claimed = claimed or waiting.claim(POOL, "step")
    holder_now = instance.get_run_by_id(holder.run_id)
    recorded = holder_now.tags if holder_now is not None else {}
    assert not claimed and holder_now is not None and not holder_now.is_finished, (
        f"{UPSTREAM_FIXED} (its reclaim half, at least): Dagster {dg.__version__} freed the slot of a run that was "
        "started and never ended. Delete reclaim_dead_slots and enter_and_record from defs/pools.py, and the whole "
        "module once test_dagster_still_computes_a_zero_wait_for_a_pending_claim fails too."
    )
    assert pools.WORKER_TAG not in recorded  # nothing but pools.install records the process that holds a slot
