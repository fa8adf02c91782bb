"""The 20 Pascal VOC object classes in kdet's label order (0..19).

Copied from Darknet's ``data/voc.names`` (public domain): the alphabetical order
that the VOC development kit uses.
"""

from __future__ import annotations

VOC_CLASSES: tuple[str, ...] = (
    'aeroplane',
    'bicycle',
    'bird',
    'boat',
    'bottle',
    'bus',
    'car',
    'cat',
    'chair',
    'cow',
    'diningtable',
    'dog',
    'horse',
    'motorbike',
    'person',
    'pottedplant',
    'sheep',
    'sofa',
    'train',
    'tvmonitor',
)
