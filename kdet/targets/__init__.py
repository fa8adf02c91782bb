"""kdet.targets."""
