"""EfficientDet D0-D7 (Tan et al. 2020): EfficientNet + BiFPN."""

from kdet.models.efficientdet.efficientdet import (EFFICIENTDET_VARIANTS, EfficientDet, EfficientDetConfig,
                                                   EfficientDetHuberLoss)

__all__ = ["EFFICIENTDET_VARIANTS", "EfficientDet", "EfficientDetConfig", "EfficientDetHuberLoss"]
