"""The numerical core: plain Python and PyTorch, no Dagster imports."""
