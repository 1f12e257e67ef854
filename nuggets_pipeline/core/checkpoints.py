"""Read checkpoints safely: one that cannot be read is set aside (renamed, logged) and its work is redone.

A checkpoint is a convenience, never the only copy of anything: a torn or corrupt file must cost the work it
held, not block the step that wrote it until someone deletes it by hand. Setting it aside (instead of deleting
it) keeps the bytes for a post-mortem.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

Log = Callable[[str], None]
CORRUPT_MARK = ".corrupt-"
_CHUNK = re.compile(r"(?P<kind>[a-z_]+)-(?P<index>\d+)\.parquet")


def set_aside(path: Path, reason: str, log: Log) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<unix time>`` (no longer matched by any checkpoint glob) and say so."""
    target = path.with_name(f"{path.name}{CORRUPT_MARK}{time.time_ns()}")
    path.rename(target)
    log(f"checkpoint {path} cannot be read ({reason}); set aside as {target.name}, its work will be redone")
    return target


def read_parquet_checkpoint(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A checkpoint's frame; raises ``ValueError`` naming the file when it is unreadable or lacks a column."""
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow's ArrowInvalid, OSError on a torn file: all mean "unreadable"
        raise ValueError(f"{type(error).__name__}: {str(error)[:200]}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"missing columns {missing}")
    return frame


def read_chunk_checkpoints(
    folder: Path, kinds: tuple[str, ...], required: tuple[str, ...], log: Log
) -> tuple[dict[int, dict[str, pd.DataFrame]], int]:
    """Chunks checkpointed as one Parquet file per kind (``scores-00003.parquet``, ``pairs-00003.parquet``).

    A chunk counts only when the file of its first kind exists and every file of the chunk reads; a chunk with
    an unreadable file has all its files set aside, so the whole chunk is redone. Returns the readable chunks by
    index and the next free index (past every chunk still on disk, so no new chunk overwrites a kept one).
    """
    by_index: dict[int, dict[str, Path]] = {}
    for path in folder.glob("*.parquet") if folder.is_dir() else []:
        match = _CHUNK.fullmatch(path.name)
        if match and match["kind"] in kinds:
            by_index.setdefault(int(match["index"]), {})[match["kind"]] = path
    chunks: dict[int, dict[str, pd.DataFrame]] = {}
    for index, files in sorted(by_index.items()):
        frames, problem = {}, None
        for kind, path in files.items():
            try:
                frames[kind] = read_parquet_checkpoint(path, required)
            except ValueError as error:
                problem = f"{path.name}: {error}"
        if problem is not None:
            for path in files.values():
                set_aside(path, problem, log)
        elif kinds[0] in frames:
            chunks[index] = frames
    remaining = [i for i, files in by_index.items() if all(p.exists() for p in files.values())]
    return chunks, max(remaining, default=-1) + 1
