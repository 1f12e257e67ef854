"""The ingestion invariant every ingestion test checks: each input row ends up ingested or quarantined, once."""

from __future__ import annotations

import pandas as pd


def assert_rows_accounted(ingested: pd.DataFrame, quarantined: pd.DataFrame, rows_in: int) -> None:
    """rows in = ingested + quarantined, and no input row (source, row_number) is counted twice."""
    assert len(ingested) + len(quarantined) == rows_in, (
        f"{rows_in} rows in, {len(ingested)} ingested + {len(quarantined)} quarantined"
    )
    keys = pd.concat([ingested[["source", "row_number"]], quarantined[["source", "row_number"]]], ignore_index=True)
    assert not keys.duplicated().any(), keys[keys.duplicated(keep=False)]
