"""Partitions: candidate shards for scoring (grow as data arrives), incoming files, and training variants."""

from __future__ import annotations

import dagster as dg

CANDIDATE_SHARDS = "candidate_shards"
candidate_shards = dg.DynamicPartitionsDefinition(name=CANDIDATE_SHARDS)

# One partition per incoming data file, keyed by its content (core.incoming.batch_key): the same bytes map to
# the same partition, so a file seen before is recognised whatever its name.
INCOMING_FILES = "incoming_files"
incoming_files = dg.DynamicPartitionsDefinition(name=INCOMING_FILES)

# golden: the selected subset; bottom: the same number of the lowest-scored candidates; random / random-1: seeded
# same-size controls (the seed offset is the key's suffix: their spread is the noise floor); full: the pool;
# longest / length-matched / ifd: the cheap baselines at golden's size (the longest responses, a random sample
# with golden's response lengths, the top by IFD); base: the untouched training model, evaluated like the others.
TRAINING_VARIANTS = ("golden", "random", "full", "bottom", "random-1", "longest", "length-matched", "ifd", "base")
# Variants sized by the golden subset (every one but full and base).
SIZED_BY_GOLDEN = ("golden", "bottom", "longest", "length-matched", "ifd")
UNTRAINED = "base"
training_variants = dg.StaticPartitionsDefinition(list(TRAINING_VARIANTS))


def random_seed_offset(variant: str) -> int | None:
    """0 for `random`, N for `random-N`, None for a variant that is not a random control."""
    if variant == "random":
        return 0
    prefix, _, suffix = variant.partition("-")
    return int(suffix) if prefix == "random" and suffix.isdigit() else None
