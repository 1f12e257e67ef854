"""Read checkpoints safely: one that cannot be read is set aside (renamed, logged) and its work is redone.

A checkpoint is a convenience, never the only copy of anything: a torn or corrupt file must cost the work it
held, not block the step that wrote it until someone deletes it by hand. Setting it aside (instead of deleting
it) keeps the bytes for a post-mortem.
"""

from __future__ import annotations

import json
import re
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

Log = Callable[[str], None]
CORRUPT_MARK = ".corrupt-"
_CHUNK = re.compile(r"(?P<kind>[a-z_]+)-(?P<index>\d+)\.parquet")


def set_aside(path: Path, reason: str, log: Log, prefix: str = "") -> Path:
    """Rename ``path`` to ``[prefix]<name>.corrupt-<ns>`` (matched by no checkpoint glob) and say so.

    ``prefix`` keeps a renamed folder out of globs anchored at the start of the name (``checkpoint-*``)."""
    target = path.with_name(f"{prefix}{path.name}{CORRUPT_MARK}{time.time_ns()}")
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


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unusable (a torn header or tensors past the end of the file), else None."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "shorter than its header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "header runs past the end of the file"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "header is not JSON"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    return "tensors run past the end of the file (cut short)" if 8 + length + max(ends, default=0) > size else None


def trainer_checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from, else None: its state must be JSON with a step,
    its weights complete safetensors and its ``torch.save`` archives (optimizer, scheduler, RNG) intact zips."""
    try:
        step = json.loads((folder / "trainer_state.json").read_text())["global_step"]
        if not isinstance(step, int):
            return "trainer_state.json: global_step is not a number"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"trainer_state.json: {type(error).__name__}: {error}"
    for path in sorted(folder.glob("*.safetensors")):
        if problem := _safetensors_problem(path):
            return f"{path.name}: {problem}"
    for path in sorted([*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile) as error:
            return f"{path.name}: {error}"
        if bad is not None:
            return f"{path.name}: member {bad} fails its checksum"
    return None
