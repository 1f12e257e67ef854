"""NUGGETS instruction-data selection as a Dagster asset graph."""
