"""Incoming batches: data files dropped into a folder become new candidates in shards of their own.

A batch is named by the content of its file (``inc`` + the first 8 hex digits of its SHA-256), so the same bytes
are never ingested twice, whatever the file is called, and its shards (``inc1a2b3c4d-000`` ...) never collide
with the base pool's or another batch's. Rows go through the same checks as the base pool (``core.data``);
rows already stored elsewhere (the base pool, the anchors, earlier batches) are quarantined as duplicates.
"""

from __future__ import annotations

import hashlib
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nuggets_pipeline.core.anchors import candidate_pool
from nuggets_pipeline.core.data import (
    FieldMap,
    SourceError,
    check_path,
    ingest,
    normalise,
    quarantine_known,
    read_source,
)
from nuggets_pipeline.core.paths import nuggets_home
from nuggets_pipeline.core.settings import get_settings
from nuggets_pipeline.core.storage import Warehouse

INCREMENTS_TABLE = "candidate_increments"
QUARANTINED_INCREMENTS_TABLE = "quarantined_increments"
BATCH_PREFIX = "inc"
MAX_SHARDS = 999  # the shard key has three digits
# Names a writer uses while a file is still being written (write under one of these, then rename into place).
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


def incoming_dir() -> Path:
    """The folder watched for new data files: $NUGGETS_INCOMING_DIR, else <home>/incoming."""
    configured = get_settings().incoming_dir
    folder = Path(configured).expanduser() if configured else nuggets_home() / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def file_digest(path: Path, block: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes, read in blocks so a large file never sits in memory at once."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def batch_key(digest: str) -> str:
    return f"{BATCH_PREFIX}{digest[:8]}"


def batch_of(shard: str) -> str:
    """``inc1a2b3c4d-007`` -> ``inc1a2b3c4d``; ``base-000`` -> ``base``."""
    return shard.rsplit("-", 1)[0]


def _listed(path: Path) -> bool:
    return not path.name.startswith((".", "~")) and not path.name.lower().endswith(PARTIAL_SUFFIXES)


def waiting_files(folder: Path) -> list[Path]:
    """Files that look complete: not hidden, not named like a partial download, regular files only.

    Files of an unknown type are listed too, so that dropping one fails a run with a message naming the file
    instead of being ignored without a word. Symbolic links, FIFOs and devices are not: see ``refused_files``.
    """
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _listed(p) and stat.S_ISREG(p.lstat().st_mode))


def refused_files(folder: Path) -> dict[str, str]:
    """Entries of the folder that are never read (links, FIFOs, devices, sockets), by name, with the reason.

    A link is refused whatever it points to: it could be a process's environment or the password file, and
    reading it would copy secrets into quarantine rows, the run database and the event log.
    """
    if not folder.is_dir():
        return {}
    refused = {}
    for path in sorted(folder.iterdir()):
        if not _listed(path) or (path.is_dir() and not path.is_symlink()):
            continue
        try:
            check_path(path)
        except SourceError as error:
            refused[path.name] = str(error)
    return refused


@dataclass
class Increment:
    candidates: pd.DataFrame  # the candidates schema: instruction columns plus ``shard``
    quarantined: pd.DataFrame
    reasons: dict[str, int]
    already_stored: int = 0  # rows skipped because they are stored already (skip_known)

    @property
    def shards(self) -> list[str]:
        return sorted(self.candidates["shard"].unique())


def ingest_increment(
    path: Path,
    batch: str,
    known_ids: set[str],
    anchors: pd.DataFrame,
    shard_size: int,
    fields: FieldMap | None = None,
    max_chars: int = 16_384,
    skip_known: bool = False,
    known_raw: set[str] | None = None,
) -> Increment:
    """Ingest one file as a batch of new candidates, split into shards of about ``shard_size`` candidates.

    A file that is unreadable as a whole (missing, empty, unknown type, not JSON) raises ``SourceError``. A file
    that parses but holds no new valid row is not an error here (a re-sent file with reordered rows, say): it
    becomes an increment with no candidates and every row in quarantine with its reason.
    """
    fields = fields or FieldMap()
    if skip_known:
        return _new_rows_only(path, batch, known_ids, anchors, shard_size, fields, max_chars, known_raw or set())
    try:
        result = ingest([path], fields, max_chars, known_ids=known_ids)
    except SourceError:
        # ingest refuses a source without a new valid row; read it again to keep the reasons row by row.
        records = list(read_source(path))  # a whole-file problem raises again here, with its own message
        if not records:
            raise
        result = normalise(records, fields, max_chars)
        # Every valid row was refused as known already: quarantine them as ``ingest`` does.
        quarantine_known(result, np.ones(len(result.instructions), dtype=bool))
    rows = result.instructions
    shards = min(MAX_SHARDS, max(1, math.ceil(len(rows) / shard_size)))
    # An empty batch would get a float ``shard`` column from pandas; the schema wants strings either way.
    candidates = candidate_pool(rows, anchors, batch, shards).astype({"shard": "object"})
    return Increment(candidates=candidates, quarantined=result.quarantined, reasons=dict(result.reasons))


def _new_rows_only(
    path: Path,
    batch: str,
    known_ids: set[str],
    anchors: pd.DataFrame,
    shard_size: int,
    fields: FieldMap,
    max_chars: int,
    known_raw: set[str],
) -> Increment:
    """A source that grows where it lives (re-read by the schedule): only rows not seen before form the batch.

    Valid rows already stored and bad rows already quarantined (same raw text) are skipped and counted, not
    quarantined again; every other row goes through the same checks as any ingested row.
    """
    records = list(read_source(path))  # a whole-file problem raises SourceError here, naming the file
    if not records:
        raise SourceError(f"{path}: source holds no rows")
    result = normalise(records, fields, max_chars)
    known = result.instructions["id"].isin(known_ids)
    # A repeat of a stored row ("duplicate: same content as id X", X stored) is not new either.
    repeated_of = result.quarantined["reason"].str.extract(r"^duplicate: same content as id ([0-9a-f]{16})$")[0]
    seen_bad = result.quarantined["raw"].isin(known_raw) | repeated_of.isin(known_ids)
    rows = result.instructions[~known].reset_index(drop=True)
    quarantined = result.quarantined[~seen_bad].reset_index(drop=True)
    reasons: dict[str, int] = {}
    for reason in quarantined["reason"]:
        reasons[reason.split(":")[0]] = reasons.get(reason.split(":")[0], 0) + 1
    shards = min(MAX_SHARDS, max(1, math.ceil(len(rows) / shard_size)))
    candidates = candidate_pool(rows, anchors, batch, shards).astype({"shard": "object"})
    return Increment(candidates, quarantined, reasons, already_stored=int(known.sum() + seen_bad.sum()))


def read_increments(
    warehouse: Warehouse, batch: str | None = None, exclude: str | None = None, schema: Any | None = None
) -> pd.DataFrame:
    """Candidates of every stored batch (or of one), as written by the increments asset; empty when none.

    Read through the warehouse, file by file, each checked against ``schema`` (the candidates schema) when given.
    """
    stored = warehouse.partitions(INCREMENTS_TABLE)
    keys = [k for k in stored if (batch is None or k == batch) and k != exclude]
    if not keys:
        return pd.DataFrame()
    return warehouse.read(INCREMENTS_TABLE, keys, schema=schema)


def shard_candidates(candidates: pd.DataFrame, shard: str, warehouse: Warehouse) -> pd.DataFrame:
    """Candidates of one shard: from the base pool, or from the stored file of the batch the shard belongs to."""
    found = candidates[candidates["shard"] == shard]
    if len(found) or not shard.startswith(BATCH_PREFIX):
        return found
    increment = read_increments(warehouse, batch_of(shard))
    return increment[increment["shard"] == shard].reset_index(drop=True) if len(increment) else increment
