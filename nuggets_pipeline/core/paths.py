"""Where the project reads shipped data from and writes everything it produces."""

from __future__ import annotations

from pathlib import Path

from nuggets_pipeline.core.env import env_name

DATA_ENV = env_name("data_dir")

REPO_ROOT = Path(__file__).resolve().parents[2]


def nuggets_home() -> Path:
    """Root of every output: warehouse, DuckDB catalog, model caches, checkpoints, Dagster storage."""
    from nuggets_pipeline.core.settings import get_settings  # late: the core imports without pydantic-settings

    configured = get_settings().home
    home = Path(configured).expanduser() if configured else REPO_ROOT / ".nuggets_home"
    home.mkdir(parents=True, exist_ok=True)
    return home.resolve()


def data_dir() -> Path:
    """The shipped `data/` folder (overridable for installs outside the repository)."""
    from nuggets_pipeline.core.settings import get_settings

    configured = get_settings().data_dir
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / "data"


def shipped(relative: str) -> Path:
    path = data_dir() / relative
    if not path.exists():
        raise FileNotFoundError(f"shipped data file {path} is missing; set {DATA_ENV} to the data/ folder")
    return path


ALPACA_CLEANED = "alpaca/alpaca_data_cleaned_c05f226.jsonl.gz"
KMEANS_100_ANCHORS = "nuggets/alpaca_gpt4_kmeans_100.json"
