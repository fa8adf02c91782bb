"""kdet.heads."""
