"""Necks: feature-pyramid builders on backbone feature dicts."""

from kdet.necks.fpn import fpn
from kdet.necks.yolo_fpn import yolo_fpn
from kdet.necks.ssd_extra import L2Normalization, ssd_extra_layers
from kdet.necks.bifpn import WeightedFusion, bifpn, bifpn_topology
