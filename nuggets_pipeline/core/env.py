"""Names of the ``NUGGETS_*`` environment variables, apart from the settings class that reads them, so the
numerical core imports without pydantic-settings (a bare GPU machine holds only torch and transformers)."""

PREFIX = "NUGGETS_"


def env_name(field: str) -> str:
    """The environment variable behind a field: ``shards_per_run`` -> ``NUGGETS_SHARDS_PER_RUN``."""
    return PREFIX + field.upper()
