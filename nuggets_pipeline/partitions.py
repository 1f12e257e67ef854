"""Partitions: candidate shards for scoring (grow as data arrives), incoming files, and training variants."""

from __future__ import annotations

import os

import dagster as dg

CANDIDATE_SHARDS = "candidate_shards"
candidate_shards = dg.DynamicPartitionsDefinition(name=CANDIDATE_SHARDS)

# One partition per incoming data file, keyed by its content (core.incoming.batch_key): the same bytes map to
# the same partition, so a file seen before is recognised whatever its name.
INCOMING_FILES = "incoming_files"
incoming_files = dg.DynamicPartitionsDefinition(name=INCOMING_FILES)

TRAINING_VARIANTS = ("golden", "random", "full")
training_variants = dg.StaticPartitionsDefinition(list(TRAINING_VARIANTS))

SHARDS_PER_RUN_ENV = "NUGGETS_SHARDS_PER_RUN"


def shards_per_run() -> int:
    """Shards one backfill run scores: 1 fans a backfill out (a pod per shard); a large value keeps it in one run.

    Read when the definitions load, so a code location (or a cluster profile) chooses it by environment.
    """
    raw = os.environ.get(SHARDS_PER_RUN_ENV, "1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{SHARDS_PER_RUN_ENV} must be a positive integer (shards per backfill run), got {raw!r}")
    return value
