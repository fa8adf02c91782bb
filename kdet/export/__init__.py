"""kdet.export."""
