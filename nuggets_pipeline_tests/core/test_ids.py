"""The hash of a list of ids is stored (scores, subsets, training claims): its values are pinned."""

import hashlib

import pandas as pd

from nuggets_pipeline.core.ids import ids_hash

IDS = ["c3", "a1", "b2"]


def test_a_set_of_ids_hashes_to_the_value_stored_homes_carry_whatever_the_order() -> None:
    # The value anchor_set_hash, assets.training.subset_hash and sft_data.subset_fingerprint all gave before they
    # became this one function: a home scored before keeps its scores current.
    assert ids_hash(IDS) == "268e4b660aedd5bc"
    assert ids_hash(pd.Series(IDS[::-1])) == "268e4b660aedd5bc"
    assert ids_hash(pd.DataFrame({"id": IDS})["id"]) == "268e4b660aedd5bc"


def test_an_ordered_list_of_ids_hashes_to_the_value_training_runs_stored() -> None:
    # What training._run_identity wrote as example_ids_sha256: the order counts.
    assert ids_hash(IDS, ordered=True) == "d3cb385dc8363b42"
    assert ids_hash(IDS, ordered=True) == hashlib.sha256("\n".join(IDS).encode()).hexdigest()[:16]
    assert ids_hash(IDS[::-1], ordered=True) != ids_hash(IDS, ordered=True)
