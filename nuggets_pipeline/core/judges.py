"""The judge layer's public API; the implementation lives in ``nuggets_pipeline.core.judging``."""

from nuggets_pipeline.core.judging import *  # noqa: F403
from nuggets_pipeline.core.judging import __all__  # noqa: F401
