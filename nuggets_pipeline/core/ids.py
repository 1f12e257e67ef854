"""The one hash of a list of example ids: what anchor sets, training subsets and training runs are named by.

Stored values depend on it (``anchor_set_hash`` on every score and subset row, ``subset_hash`` in training
metadata and checkpoint claims, ``example_ids_sha256`` in ``run.json``), so its output must never change: the
ids as text, one a line, sha256, the first 16 hex digits. ``nuggets_pipeline_tests/core/test_ids.py`` pins the values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def ids_hash(ids: Iterable[object], *, ordered: bool = False) -> str:
    """Names a collection of ids. By default a set (sorted first, so any order gives the same hash: anchor sets,
    training subsets); ``ordered=True`` names the sequence itself (a training run's examples, whose order the
    run depends on)."""
    texts = [str(i) for i in ids]
    if not ordered:
        texts.sort()
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
