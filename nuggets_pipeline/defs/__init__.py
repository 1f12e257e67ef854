"""The Dagster layer: assets by stage, their resources, checks, sensors, schedules and jobs, and the one
``definitions.py`` that puts them together. Everything numerical lives in ``nuggets_pipeline.core``."""
