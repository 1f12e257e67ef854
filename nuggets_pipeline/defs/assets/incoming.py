"""Incoming batches: a data file dropped into the incoming folder becomes new candidates in new shards.

The `incoming_data` sensor (sensors.py) hashes the files and requests one run per new file; this asset ingests
the file, stores its candidates and quarantined rows as one partition each, and registers the new shards, which
the sensor then asks to score. Existing candidates, shards and scores are never touched.
"""

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from nuggets_pipeline.core.data import SourceError, check_path
from nuggets_pipeline.core.incoming import (
    INCREMENTS_TABLE,
    QUARANTINED_INCREMENTS_TABLE,
    batch_key,
    file_digest,
    incoming_dir,
    ingest_increment,
    read_increments,
    waiting_files,
)
from nuggets_pipeline.defs import metadata as md
from nuggets_pipeline.defs.partitions import CANDIDATE_SHARDS, incoming_files
from nuggets_pipeline.defs.resources import WarehouseResource
from nuggets_pipeline.defs.schemas import (
    CandidatesSchema,
    CandidatesType,
    FieldMapConfig,
    QuarantineSchema,
    QuarantineType,
)


class IncrementConfig(FieldMapConfig):
    path: str | None = Field(
        default=None, description="the file; by default the file in the incoming folder whose content hash matches"
    )
    shard_size: int = Field(default=64, gt=0, description="candidates per shard of this batch (about)")
    skip_known: bool = Field(
        default=False,
        description="skip (and count) rows already stored or quarantined instead of quarantining them as duplicates: "
        "set by the re-scoring schedule, which re-reads a whole source that grows in place",
    )


def _digest(path: Path) -> str | None:
    """The file's SHA-256, or None when it is gone (removed or renamed since someone listed it)."""
    try:
        check_path(path)  # before hashing: a link or a FIFO is refused unread
        return file_digest(path) if path.is_file() else None
    except FileNotFoundError:
        return None
    except SourceError as error:
        raise dg.Failure(str(error)) from None


def find_file(batch: str, configured: str | None) -> tuple[Path, str]:
    """The file of a batch and its full digest. The file the sensor named may have been renamed (or replaced)
    between its tick and this run: then the batch's content is looked for under any name in the incoming folder,
    and where it is nowhere the failure says so (the sensor requests the batch again once it reappears)."""
    named = Path(configured).expanduser() if configured else None
    if named is not None and (digest := _digest(named)) is not None and batch_key(digest) == batch:
        return named, digest
    folder = incoming_dir()
    for path in waiting_files(folder):
        if path != named and (digest := _digest(path)) is not None and batch_key(digest) == batch:
            return path, digest
    retry = (
        f"nothing was ingested. Put the file back (under any name) in {folder} and the incoming_data sensor "
        "requests this batch again on its next tick; a changed file is a new batch, picked up the same way"
    )
    if named is None:
        raise dg.Failure(
            f"no file in {folder} has content hash {batch} (removed or changed after it was seen): {retry}"
        )
    what = "holds other bytes now" if named.exists() else "was removed or renamed"
    raise dg.Failure(
        f"{named} {what} after batch {batch} was requested from it, and no file in {folder} has that content: {retry}"
    )


@dg.multi_asset(
    outs={
        INCREMENTS_TABLE: dg.AssetOut(
            dagster_type=CandidatesType,
            description="new candidates of one incoming file, in shards of their own (inc<hash>-NNN)",
            is_required=True,
        ),
        QUARANTINED_INCREMENTS_TABLE: dg.AssetOut(
            dagster_type=QuarantineType, description="rows of one incoming file that were rejected, with the reason"
        ),
    },
    partitions_def=incoming_files,
    group_name="incoming",
    code_version="increments-v1",
    # One batch at a time: two batches ingested at once could both claim a row that is new to each of them.
    pool="ingest",
)
def ingest_increment_file(
    context: dg.AssetExecutionContext,
    config: IncrementConfig,
    instructions: pd.DataFrame,
    anchor_set: pd.DataFrame,
    warehouse: WarehouseResource,
):
    batch = context.partition_key
    path, digest = find_file(batch, config.path)
    if config.path and path != Path(config.path).expanduser():
        context.log.warning(f"{config.path} is gone; batch {batch} is read from {path}, which holds its content")
    started = time.perf_counter()
    store = warehouse.warehouse()
    earlier = read_increments(store, exclude=batch, schema=CandidatesSchema)
    known = set(instructions["id"]) | set(anchor_set["id"]) | (set(earlier["id"]) if len(earlier) else set())
    known_raw: set[str] = set()
    if config.skip_known:
        for table in ("quarantined_instructions", QUARANTINED_INCREMENTS_TABLE):
            keys = [k for k in store.partitions(table) if k != batch]
            if keys:
                known_raw |= set(store.read(table, keys, schema=QuarantineSchema)["raw"])
    try:
        increment = ingest_increment(
            path,
            batch,
            known,
            anchor_set,
            config.shard_size,
            config.field_map(),
            config.max_chars,
            skip_known=config.skip_known,
            known_raw=known_raw,
        )
    except (SourceError, FileNotFoundError) as error:
        if path.exists():
            raise
        raise dg.Failure(
            f"{path} was removed or renamed while this run read it (batch {batch}): nothing was ingested; the "
            "incoming_data sensor requests the batch again once its content is back in the folder"
        ) from error
    seconds = time.perf_counter() - started
    candidates, quarantined = increment.candidates, increment.quarantined
    CandidatesSchema.validate(candidates)
    QuarantineSchema.validate(quarantined)
    shards = increment.shards
    registered = set(context.instance.get_dynamic_partitions(CANDIDATE_SHARDS))
    new = [s for s in shards if s not in registered]
    if new:
        context.instance.add_dynamic_partitions(CANDIDATE_SHARDS, new)
    rows = len(candidates) + len(quarantined)
    context.log.info(
        f"{path.name}: {len(candidates)} new candidates in {len(shards)} shards, {len(quarantined)} quarantined"
    )
    if candidates.empty:
        context.log.warning(f"{path.name}: no new candidate; every row was quarantined {increment.reasons}")
    reasons = pd.DataFrame(sorted(increment.reasons.items()), columns=["reason", "rows"])
    yield batch_output(
        candidates,
        INCREMENTS_TABLE,
        path,
        sha256=digest,
        rows_read=rows + increment.already_stored,
        rows_already_stored=increment.already_stored,
        quarantined=len(quarantined),
        # The sensor reads this list to request scoring runs for exactly these shards.
        new_shards=json.dumps(shards),
        shards=md.table(candidates.groupby("shard").size().rename("candidates").reset_index()),
        rows_per_s=rows / seconds if seconds else 0.0,
        wall_s=seconds,
        preview=md.preview(candidates, ["id", "shard", "instruction"]),
    )
    yield batch_output(
        quarantined,
        QUARANTINED_INCREMENTS_TABLE,
        path,
        by_reason=md.table(reasons),
        preview=md.preview(quarantined, ["row_number", "reason", "raw"]),
    )


def batch_output(frame: pd.DataFrame, table: str, path: Path, **metadata: Any) -> dg.Output[pd.DataFrame]:
    """One of a batch's two tables (its new candidates, its quarantined rows), with what both record: the row
    count (``md.table_output``) and the file the batch was read from."""
    return md.table_output(frame, {"source_file": str(path), **metadata}, output_name=table)
