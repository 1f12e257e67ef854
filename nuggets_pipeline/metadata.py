"""Turn tables and distributions into metadata the Dagster UI shows: Markdown tables, bar charts, PNG plots."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

PREVIEW_CHARS = 80


def clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preview(frame: pd.DataFrame, columns: Sequence[str], rows: int = 5) -> dg.MetadataValue:
    shown = frame[list(columns)].head(rows).copy()
    for column in shown.columns:
        if shown[column].dtype == object:
            shown[column] = shown[column].map(clip)
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_(empty)_")


def table(frame: pd.DataFrame, floatfmt: str = ".4f") -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=floatfmt) if len(frame) else "_(empty)_")


def histogram_md(values: Sequence[float], bins: int | Sequence[float] = 10, label: str = "value") -> dg.MetadataValue:
    """A text bar chart: renders everywhere Markdown does, no image support needed."""
    data = np.asarray([v for v in values if v == v], dtype=float)  # drop NaN
    if data.size == 0:
        return dg.MetadataValue.md("_(no values)_")
    counts, edges = np.histogram(data, bins=bins)
    peak = max(int(counts.max()), 1)
    lines = [f"| {label} | count | |", "|---|---:|---|"]
    for count, low, high in zip(counts, edges[:-1], edges[1:], strict=True):
        lines.append(f"| {low:.3g} – {high:.3g} | {count} | {'█' * max(int(30 * count / peak), 1 if count else 0)} |")
    return dg.MetadataValue.md("\n".join(lines))


def save_plot(figure, path: Path) -> dg.MetadataValue:  # type: ignore[no-untyped-def]
    """Save a matplotlib figure under the home and return Markdown that embeds it, plus the file stays on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    path.write_bytes(buffer.getvalue())
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{path.stem}](data:image/png;base64,{encoded})\n\n`{path}`")


def histogram_plot(values: Sequence[float], path: Path, title: str, xlabel: str, bins: int = 30) -> dg.MetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3))
    axis.hist([v for v in values if v == v], bins=bins, color="#4f6bed")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("count")
    value = save_plot(figure, path)
    plt.close(figure)
    return value
