"""The ways in: the presets and the one runner behind ``nuggets demo``, ``nuggets run``, ``nuggets plan`` and
``nuggets study``."""
