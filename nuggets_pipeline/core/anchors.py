"""Choose the anchor set (random sample, KMeans centroids of embeddings, or a user file) and the candidates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

ANCHOR_COLUMNS = ["id", "instruction", "input", "output", "source", "cluster", "cluster_size"]


@dataclass
class AnchorChoice:
    anchors: pd.DataFrame
    method: str
    cluster_sizes: list[int]


def random_anchors(pool: pd.DataFrame, n: int, seed: int) -> AnchorChoice:
    if n <= 0 or n >= len(pool):
        raise ValueError(f"random anchors: n must be in 1..{len(pool) - 1} for a pool of {len(pool)}, got {n}")
    chosen = pool.sample(n=n, random_state=seed).copy()
    chosen["cluster"] = -1
    chosen["cluster_size"] = 0
    return AnchorChoice(chosen[ANCHOR_COLUMNS].reset_index(drop=True), "random", [])


def kmeans_anchors(pool: pd.DataFrame, embeddings: np.ndarray, k: int, seed: int) -> AnchorChoice:
    """The anchor for each cluster is the real example nearest its centroid (as the paper does)."""
    if k <= 0 or k >= len(pool):
        raise ValueError(f"kmeans anchors: k must be in 1..{len(pool) - 1} for a pool of {len(pool)}, got {k}")
    if len(embeddings) != len(pool):
        raise ValueError("kmeans anchors: one embedding per pool row is required")
    kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(embeddings)
    distances = kmeans.transform(embeddings)  # (rows, k)
    sizes = np.bincount(kmeans.labels_, minlength=k)
    nearest: list[int] = []
    taken: set[int] = set()
    for cluster in range(k):
        # Members first; a tie of two centroids on one example takes the next nearest so anchors stay distinct.
        order = np.argsort(distances[:, cluster], kind="stable")
        members = [i for i in order if kmeans.labels_[i] == cluster] or list(order)
        choice = next(i for i in members + list(order) if i not in taken)
        taken.add(choice)
        nearest.append(choice)
    chosen = pool.iloc[nearest].copy()
    chosen["cluster"] = np.arange(k)
    chosen["cluster_size"] = sizes
    return AnchorChoice(chosen[ANCHOR_COLUMNS].reset_index(drop=True), "kmeans", sizes.tolist())


def file_anchors(frame: pd.DataFrame, n: int | None = None, seed: int = 0) -> AnchorChoice:
    """The rows of an anchor file: all of them, or a seeded sample of ``n`` kept in file order (the same ``n``
    and seed give the same anchors); ``n`` above the rows the file holds is an error, never a silent shortfall."""
    if n is not None and n > len(frame):
        raise ValueError(f"n={n} anchors asked for, but the file holds {len(frame)} usable rows; lower n")
    chosen = frame if n is None else frame.sample(n=n, random_state=seed).sort_index()
    chosen = chosen.copy()
    chosen["cluster"] = -1
    chosen["cluster_size"] = 0
    return AnchorChoice(chosen[ANCHOR_COLUMNS].reset_index(drop=True), "file", [])


def shard_of(example_id: str, batch: str, shards_per_batch: int) -> str:
    """Shard key of a candidate: a pure function of its id and the ingestion batch it arrived in.

    New data arrives as new batches with their own shards, so it never moves an existing candidate.
    """
    bucket = int(example_id[:12], 16) % shards_per_batch
    return f"{batch}-{bucket:03d}"


def candidate_pool(
    instructions: pd.DataFrame, anchors: pd.DataFrame, batch: str, shards_per_batch: int, limit: int | None = None
) -> pd.DataFrame:
    """Everything that is not an anchor, with its shard. ``limit`` takes a stable pseudo-random slice (by id)."""
    pool = instructions[~instructions["id"].isin(set(anchors["id"]))]
    if limit is not None:
        pool = pool.sort_values("id").head(limit)
    pool = pool.sort_values(["source", "row_number"]).reset_index(drop=True)
    pool = pool.assign(shard=[shard_of(i, batch, shards_per_batch) for i in pool["id"]])
    return pool
