"""Argument types the benchmark scripts share, so a bad count is refused with a clear message up front instead
of failing (or measuring nothing) minutes into a run."""

import argparse


def positive_int(text: str) -> int:
    """An ``int`` of at least 1: ``--anchors 0`` would score nothing and divide by zero in every figure."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
