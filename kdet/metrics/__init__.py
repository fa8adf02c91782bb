"""kdet.metrics."""
