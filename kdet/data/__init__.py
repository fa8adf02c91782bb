"""Data: image loading, the synthetic dataset, dataset readers and augmentation."""

from kdet.data.images import load_image
from kdet.data.synthetic import synthetic, synthetic_arrays
