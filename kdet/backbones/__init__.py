"""kdet.backbones."""
