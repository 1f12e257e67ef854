import numpy as np
import pandas as pd
import pytest

from nuggets_pipeline.core.anchors import (
    candidate_pool,
    kmeans_anchors,
    random_anchors,
    shard_of,
)
from nuggets_pipeline.core.data import example_id
from nuggets_pipeline.core.embedding import embed_texts
from nuggets_pipeline.core.ids import ids_hash


def pool(n: int) -> pd.DataFrame:
    rows = [(f"Task {i}: say {i}.", "", f"Answer {i}.") for i in range(n)]
    return pd.DataFrame(
        {
            "id": [example_id(*r) for r in rows],
            "instruction": [r[0] for r in rows],
            "input": "",
            "output": [r[2] for r in rows],
            "source": "t.json",
            "row_number": range(n),
        }
    )


def test_random_anchors_are_deterministic_for_a_seed_and_disjoint_from_candidates() -> None:
    data = pool(50)
    first, again, other = (random_anchors(data, 5, s).anchors for s in (1, 1, 2))
    assert first["id"].tolist() == again["id"].tolist()
    assert first["id"].tolist() != other["id"].tolist()
    candidates = candidate_pool(data, first, "base", 4)
    assert not set(candidates["id"]) & set(first["id"])
    assert len(candidates) == 45


def test_kmeans_picks_the_member_nearest_each_centroid() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    points = np.concatenate([c + rng.normal(scale=0.5, size=(10, 2)) for c in centres])
    data = pool(30)
    choice = kmeans_anchors(data, points, 3, seed=0)
    assert sorted(choice.cluster_sizes) == [10, 10, 10]
    for row in choice.anchors.itertuples():
        index = data.index[data["id"] == row.id][0]
        members = [i for i in range(30) if np.linalg.norm(points[i] - points[index]) < 5]
        centroid = points[members].mean(0)
        assert np.linalg.norm(points[index] - centroid) == pytest.approx(
            min(np.linalg.norm(points[m] - centroid) for m in members)
        )
    assert kmeans_anchors(data, points, 3, seed=0).anchors["id"].tolist() == choice.anchors["id"].tolist()


def test_kmeans_on_real_embeddings_is_deterministic(tiny_model) -> None:
    data = pool(40)
    texts = [f"{r.instruction}\n{r.output}" for r in data.itertuples()]
    embeddings = embed_texts(tiny_model, texts)
    again = embed_texts(tiny_model, list(reversed(texts)))[::-1]
    np.testing.assert_allclose(embeddings, again, atol=1e-5)
    first = kmeans_anchors(data, embeddings, 4, seed=3).anchors
    second = kmeans_anchors(data, again, 4, seed=3).anchors
    assert first["id"].tolist() == second["id"].tolist()
    assert ids_hash(first["id"]) == ids_hash(second.iloc[::-1]["id"])


def test_embedding_pools_over_real_tokens_only(tiny_model) -> None:
    short, long = "Hi.", "A much longer text that forces padding of the short one in the same batch. " * 4
    together = embed_texts(tiny_model, [short, long])
    alone = embed_texts(tiny_model, [short])
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)


def test_shards_are_stable_when_data_is_added() -> None:
    small, large = pool(40), pool(80)
    anchors = random_anchors(small, 4, 0).anchors
    before = candidate_pool(small, anchors, "base", 4).set_index("id")["shard"]
    after = candidate_pool(large, anchors, "base", 4).set_index("id")["shard"]
    assert (after.loc[before.index] == before).all()
    assert shard_of("00000000000f0000", "inc1a2b", 8) == "inc1a2b-007"  # 0xf % 8


def test_bad_anchor_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="n must be"):
        random_anchors(pool(5), 5, 0)
    with pytest.raises(ValueError, match="k must be"):
        kmeans_anchors(pool(5), np.zeros((5, 2)), 0, 0)
