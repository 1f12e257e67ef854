"""The study's progress as small files committed after every sitting, so a fresh machine resumes where it stopped.

The study runs for more hours than one sitting, and only what is committed survives a change of machine. Its
home (warehouse, Dagster instance, checkpoints, fine-tuned models) is far too large to commit, so a sitting
commits what is expensive to redo and small to keep (``docs/study/progress/``):

- ``pairs.parquet``: every (candidate, anchor) pair the one-shot scoring has scored so far, screening and
  refinement alike, with its shard and scoring version (model fingerprint, anchor-set hash). Before one-shot
  scoring runs, each shard's pairs are added to its pair store (``core.adaptive_scoring.seed_pair_store``), so
  screening and refinement score only the pairs it lacks: an interrupted refinement continues from its last
  pair, and a finished one takes no forward pass. Pairs of another scoring version (another model, dtype or
  anchor set: an AVX2 machine scores in float32 where the study's first sittings used bfloat16) are refused with
  the reason, and scoring starts again.
- ``timings.json``: the runner's ledger of stage wall times, so the times the study reports add up across
  sittings. A unit killed mid-run is not in it; the pairs it scored are kept, its time before the kill is not
  counted.

``nuggets study --save-progress`` writes both from the home at any moment (even while a study runs: it only
reads); the study writes them itself when it stops, finished or not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from nuggets_pipeline.core.scoring import PAIR_COLUMNS
from nuggets_pipeline.study.scored_pool import base_shards, warehouse

PAIRS_FILE = "pairs.parquet"
LEDGER_FILE = "timings.json"
PROGRESS_PAIR_COLUMNS = [*PAIR_COLUMNS, "shard", "model_fingerprint", "anchor_set_hash"]


def scoring_version() -> tuple[str, str] | None:
    """(model fingerprint, anchor-set hash) of the home's current zero-shot losses, or None before they exist."""
    store = warehouse()
    if not store.partitions("zero_shot_losses"):
        return None
    zero_shot = store.read("zero_shot_losses")
    if not len(zero_shot):
        return None
    return str(zero_shot["model_fingerprint"].iloc[0]), str(zero_shot["anchor_set_hash"].iloc[0])


def save_progress(progress: Path, ledger: Path) -> str:
    """Write the scored pairs and the ledger of the home to ``progress``; returns what was written, in words."""
    from nuggets_pipeline.core.adaptive_scoring import stored_pairs

    progress.mkdir(parents=True, exist_ok=True)
    said = []
    version = scoring_version()
    if version is not None and warehouse().partitions("candidates"):
        store = warehouse()
        frames = [
            stored_pairs(store, shard, *version).assign(
                shard=shard, model_fingerprint=version[0], anchor_set_hash=version[1]
            )
            for shard in base_shards()
        ]
        pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PROGRESS_PAIR_COLUMNS)
        pairs = pairs[PROGRESS_PAIR_COLUMNS].sort_values(["shard", "candidate_id", "anchor_id"], ignore_index=True)
        if len(pairs):
            from nuggets_pipeline.core.storage import write_parquet_atomic

            write_parquet_atomic(pairs, progress / PAIRS_FILE)
            said.append(f"{len(pairs):,} scored pairs of {pairs['candidate_id'].nunique()} candidates")
    if ledger.exists():
        shutil.copyfile(ledger, progress / LEDGER_FILE)
        said.append(f"the times of {len(json.loads(ledger.read_text()))} stages")
    return (", ".join(said) or "nothing yet") + f" in {progress}"


def restore_ledger(progress: Path, ledger: Path) -> bool:
    """A fresh home takes the committed ledger, so a resumed stage adds to the time already spent on it."""
    committed = progress / LEDGER_FILE
    if ledger.exists() or not committed.exists():
        return False
    ledger.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(committed, ledger)
    return True


def seed_pairs(progress: Path) -> str:
    """Add the committed pairs to the home's pair stores (before one-shot scoring); returns what it did, in words.

    Refused, with the reason, when the file's scoring version is not the home's: those pairs are another
    computation (another model, dtype or anchor set), and scoring them again is the only honest resume."""
    from nuggets_pipeline.core.adaptive_scoring import seed_pair_store

    path = progress / PAIRS_FILE
    if not path.exists():
        return "no committed pairs: scoring starts from nothing"
    pairs = pd.read_parquet(path)
    missing = [c for c in PROGRESS_PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; delete it to score from nothing")
    version = scoring_version()
    found = set(zip(pairs["model_fingerprint"].astype(str), pairs["anchor_set_hash"].astype(str), strict=True))
    if version is None or found != {version}:
        return (
            f"committed pairs {path} were scored with (model fingerprint, anchor set) {sorted(found)}, this home "
            f"scores with {version} (another dtype on this CPU?): not used, scoring starts from nothing"
        )
    store = warehouse()
    pool = store.read("candidates")
    # The home's shard of each candidate (the same preset shards the same way; the file's column only records it).
    shard_of = pairs["candidate_id"].astype(str).map(dict(zip(pool["id"].astype(str), pool["shard"], strict=True)))
    in_pool = shard_of.notna()
    added = 0
    for shard, rows in pairs[in_pool].groupby(shard_of[in_pool]):
        added += seed_pair_store(store, str(shard), *version, rows, print)
    outside = int((~in_pool).sum())
    return f"{added:,} committed pairs added to the pair stores" + (
        f" ({outside:,} of candidates outside this pool left out)" if outside else ""
    )


__all__ = ["LEDGER_FILE", "PAIRS_FILE", "restore_ledger", "save_progress", "scoring_version", "seed_pairs"]
