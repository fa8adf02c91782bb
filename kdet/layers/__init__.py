"""Public Keras layers, one per file, built on kdet.ops."""

from kdet.layers.anchor_decoder import AnchorDecoder
from kdet.layers.anchor_generator import AnchorGenerator, ssd_anchor_shapes
from kdet.layers.batch_normalization import BatchNormalization
from kdet.layers.image_preprocessing import ImagePreprocessing
from kdet.layers.combined_nms import CombinedNMS
from kdet.layers.roi_align import MultiLevelRoIAlign
