"""Necks: feature-pyramid builders on backbone feature dicts."""

from kdet.necks.fpn import fpn
