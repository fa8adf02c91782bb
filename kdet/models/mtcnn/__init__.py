"""MTCNN face detection with landmarks (Zhang et al. 2016): pretrained, batched, trainable.

``MTCNN()`` loads the original authors' weights packaged with kdet (offline);
``kdet.models.mtcnn.training`` trains the cascade from scratch.
"""

from kdet.models.mtcnn.model import MTCNN, load_pretrained, pretrained_dir
from kdet.models.mtcnn.networks import build_onet, build_pnet, build_rnet

__all__ = ["MTCNN", "load_pretrained", "pretrained_dir", "build_pnet", "build_rnet", "build_onet"]
