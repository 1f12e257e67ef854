"""Assets grouped by stage: ingestion, anchors, scoring, training, evaluation."""
