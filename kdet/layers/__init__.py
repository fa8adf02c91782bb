"""kdet.layers."""
