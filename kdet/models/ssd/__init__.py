"""SSD (Liu et al. 2016) and SSDLite: ``kdet.models.SSD``."""

from kdet.models.ssd.head import ssd_head
from kdet.models.ssd.model import SSD, SSDConfig, default_box_shapes
from kdet.models.ssd.presets import PRESETS

__all__ = ["SSD", "SSDConfig", "default_box_shapes", "ssd_head", "PRESETS"]
