"""The golden-vs-controls study (docs/study.md): its sizing, its results and the page they render."""
