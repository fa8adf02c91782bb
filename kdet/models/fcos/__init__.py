"""FCOS (Tian et al. 2019): anchor-free one-stage detection with centre-ness."""

from kdet.models.fcos.model import FCOS, FCOSConfig

__all__ = ["FCOS", "FCOSConfig"]
