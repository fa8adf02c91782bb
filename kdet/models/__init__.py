"""kdet.models: the detector builders, one import per architecture."""

from kdet.models.retinanet import RetinaNet
from kdet.models.efficientdet import EfficientDet
from kdet.models.yolov3 import YOLOV3
from kdet.models.ssd import SSD
from kdet.models.faster_rcnn import FasterRCNN
from kdet.models.mtcnn import MTCNN
from kdet.models.fcos import FCOS
from kdet.models.mask_rcnn import MaskRCNN
