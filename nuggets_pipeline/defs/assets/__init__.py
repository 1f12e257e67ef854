"""Assets grouped by stage: ingestion, anchors, scoring (and the IFD selector beside it), training, evaluation."""
