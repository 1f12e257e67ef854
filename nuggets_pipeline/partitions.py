"""Partitions: candidate shards for scoring (grow as data arrives) and training variants."""

from __future__ import annotations

import dagster as dg

CANDIDATE_SHARDS = "candidate_shards"
candidate_shards = dg.DynamicPartitionsDefinition(name=CANDIDATE_SHARDS)

TRAINING_VARIANTS = ("golden", "random", "full")
training_variants = dg.StaticPartitionsDefinition(list(TRAINING_VARIANTS))
