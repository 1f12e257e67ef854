"""What the Dagster UI shows of a step: Markdown tables, bar charts, PNG plots, file paths, progress lines for its
log, and the core's errors as the step's failure."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from nuggets_pipeline.core.storage import write_atomic

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


def table_output(frame: pd.DataFrame, metadata: Mapping[str, Any], **options: Any) -> dg.Output[pd.DataFrame]:
    """A table asset's output (``options``: ``dg.Output``'s output_name, data_version): ``metadata`` after the row
    count, which every table reports the same way so that the UI shows it for each."""
    return dg.Output(frame, metadata={"dagster/row_count": len(frame), **metadata}, **options)


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


def progress_logger(log: Callable[[str], None], message: str, parts: int) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that logs ``message`` (formatted with ``done`` and ``total``) about
    ``parts`` times and at the end: the step's log shows progress without flooding it."""
    logged = [0]

    def report(done: int, total: int) -> None:
        if done - logged[0] >= max(total // parts, 1) or done == total:
            logged[0] = done
            log(message.format(done=done, total=total))

    return report


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib's pyplot on the Agg backend: files only, no display (servers, run workers, threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(figure, path: Path) -> dg.MetadataValue:  # type: ignore[no-untyped-def]
    """Save a matplotlib figure at ``path`` (a ``Warehouse.plot_path``) and return Markdown that embeds it; the
    file stays on disk. The figure is closed: pyplot keeps every open figure alive until then."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    pyplot().close(figure)
    write_atomic(path, lambda temporary: temporary.write_bytes(buffer.getvalue()))
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{path.stem}](data:image/png;base64,{encoded})\n\n`{path}`")


def histogram_plot(values: Sequence[float], path: Path, title: str, xlabel: str, bins: int = 30) -> dg.MetadataValue:
    figure, axis = pyplot().subplots(figsize=(6, 3))
    axis.hist([v for v in values if v == v], bins=bins, color="#4f6bed")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("count")
    return save_plot(figure, path)


def latest_value(instance: dg.DagsterInstance, asset: str, key: str) -> object | None:
    """One metadata value of an asset's latest materialization (None when there is none, or it lacks the key)."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    entry = event.asset_materialization.metadata.get(key) if event and event.asset_materialization else None
    return entry.value if entry is not None else None


def paths_metadata(written: Mapping[str, Path]) -> dict[str, dg.MetadataValue]:
    """Every exported file as a path entry of the asset's metadata (shown, and copyable, in the UI)."""
    return {f"export_{name}": dg.MetadataValue.path(str(path)) for name, path in written.items()}


@contextmanager
def failure_on(*errors: type[Exception]) -> Iterator[None]:
    """A core error of these types, whose message already says what to do, fails the step as a ``dg.Failure``
    with that message (and the error's ``metadata``, where it has one) instead of a traceback."""
    try:
        yield
    except errors as error:
        raise dg.Failure(str(error), metadata=getattr(error, "metadata", None)) from None
