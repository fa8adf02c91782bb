"""kdet.models."""
