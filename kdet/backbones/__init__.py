"""Backbones: Keras models mapping normalised images to pyramid features {"P2".."P7"}."""

from kdet.backbones.tiny import tiny_backbone
from kdet.backbones.darknet import darknet53, darknet_tiny
from kdet.backbones.vgg import vgg16_ssd
from kdet.backbones.mobilenet import mobilenet_v2
from kdet.backbones.mobilenet_v3 import mobilenet_v3_large
from kdet.backbones.efficientnet import efficientnet_backbone
from kdet.backbones.resnet import resnet_backbone
