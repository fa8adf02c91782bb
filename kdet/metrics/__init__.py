"""kdet.metrics: COCO and Pascal VOC detection metrics (NumPy, pycocotools-exact)."""

from kdet.metrics.coco import COCO_METRIC_NAMES, coco_map
from kdet.metrics.keras_metric import COCOEvaluationCallback, COCOMeanAveragePrecision, evaluate_coco
from kdet.metrics.voc import average_precision, pr_curve, voc_ap

__all__ = [
    "COCO_METRIC_NAMES", "COCOEvaluationCallback", "COCOMeanAveragePrecision", "average_precision",
    "coco_map", "evaluate_coco", "pr_curve", "voc_ap",
]
