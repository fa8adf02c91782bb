"""PNet, RNet and ONet: the three MTCNN networks as Keras functional models.

Zhang, Zhang, Li, Qiao, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", IEEE SPL 2016 (arXiv:1604.02878).

The layer names, layer order, pooling paddings and the ``Permute((2, 1, 3))``
before the dense layers follow the ``mtcnn`` PyPI package (MIT, Ivan de Paz
Centeno), whose weight files hold the authors' original Caffe weights already
laid out for Keras (HWC kernels, the Caffe C-major flatten undone by the
permute). Keeping that exact structure is what lets ``convert.py`` copy the
arrays one-to-one.

Each network outputs probabilities (a final ``Softmax`` layer named ``prob``)
so the pretrained cascade matches the original numerically; training code
reads the logits through ``logits_model(net)``.
"""

from __future__ import annotations

import keras
from keras import layers

#: Input side of RNet and ONet crops (paper, Sec. II-A).
RNET_SIZE = 24
ONET_SIZE = 48
#: PNet's receptive field (cell) and stride in pixels of the scaled image.
PNET_CELL = 12
PNET_STRIDE = 2


def _conv_prelu(x, filters: int, kernel: int, index: int, width: float = 1.0):
    """Conv (valid padding) + PReLU with one slope per channel, as in Caffe."""
    x = layers.Conv2D(max(1, int(round(filters * width))), kernel, padding="valid",
                      name=f"conv{index}")(x)
    return layers.PReLU(shared_axes=[1, 2], name=f"prelu{index}")(x)


def build_pnet(width: float = 1.0, name: str = "pnet") -> keras.Model:
    """Builds the fully convolutional Proposal Network (12x12 cell, stride 2).

    Args:
        width: channel multiplier (1.0 = the original; smaller for tiny
            training tests).
        name: model name.

    Returns:
        ``keras.Model`` mapping (B, H, W, 3) normalised pixels
        (``(x - 127.5) / 128``) to ``[box_reg (B, h, w, 4), prob (B, h, w, 2)]``
        with ``h = ceil((H - 2) / 2) - 4``; channel 1 of ``prob`` is "face".

    Example:
        >>> pnet = build_pnet()
        >>> [t.shape for t in pnet(np.zeros((1, 12, 12, 3)))]   # doctest: +SKIP
        [(1, 1, 1, 4), (1, 1, 1, 2)]
    """
    inputs = keras.Input((None, None, 3), name="image")
    x = _conv_prelu(inputs, 10, 3, 1, width)
    # "same" 2x2/2 pooling = Caffe's ceil-mode pooling of the original.
    x = layers.MaxPooling2D(2, 2, padding="same", name="maxpooling1")(x)
    x = _conv_prelu(x, 16, 3, 2, width)
    x = _conv_prelu(x, 32, 3, 3, width)
    box = layers.Conv2D(4, 1, name="conv4-1")(x)
    logits = layers.Conv2D(2, 1, name="conv4-2")(x)
    prob = layers.Softmax(name="prob")(logits)
    return keras.Model(inputs, [box, prob], name=name)


def _dense_head(x, units: int, index: int, width: float):
    # Permute (H, W) -> (W, H): the original Caffe flatten is channel-major on
    # a transposed image; the mtcnn package's weights expect this order.
    x = layers.Permute((2, 1, 3), name="permute")(x)
    x = layers.Flatten(name=f"flatten{index - 1}")(x)
    x = layers.Dense(max(1, int(round(units * width))), name=f"fc{index}")(x)
    return layers.PReLU(name=f"prelu{index}")(x)


def build_rnet(width: float = 1.0, name: str = "rnet") -> keras.Model:
    """Builds the Refine Network (24x24 crops).

    Args:
        width: channel multiplier (1.0 = the original).
        name: model name.

    Returns:
        ``keras.Model`` mapping (N, 24, 24, 3) normalised crops to
        ``[box_reg (N, 4), prob (N, 2)]``.

    Example:
        >>> rnet = build_rnet()   # doctest: +SKIP
    """
    inputs = keras.Input((RNET_SIZE, RNET_SIZE, 3), name="crop")
    x = _conv_prelu(inputs, 28, 3, 1, width)
    x = layers.MaxPooling2D(3, 2, padding="same", name="maxpooling1")(x)
    x = _conv_prelu(x, 48, 3, 2, width)
    x = layers.MaxPooling2D(3, 2, padding="valid", name="maxpooling2")(x)
    x = _conv_prelu(x, 64, 2, 3, width)
    x = _dense_head(x, 128, 4, width)
    box = layers.Dense(4, name="fc5-1")(x)
    logits = layers.Dense(2, name="fc5-2")(x)
    prob = layers.Softmax(name="prob")(logits)
    return keras.Model(inputs, [box, prob], name=name)


def build_onet(width: float = 1.0, name: str = "onet") -> keras.Model:
    """Builds the Output Network (48x48 crops, 5 landmarks).

    Args:
        width: channel multiplier (1.0 = the original).
        name: model name.

    Returns:
        ``keras.Model`` mapping (N, 48, 48, 3) normalised crops to
        ``[box_reg (N, 4), landmarks (N, 10), prob (N, 2)]``; landmarks are
        ``(x1..x5, y1..y5)`` relative to the crop (0..1).

    Example:
        >>> onet = build_onet()   # doctest: +SKIP
    """
    inputs = keras.Input((ONET_SIZE, ONET_SIZE, 3), name="crop")
    x = _conv_prelu(inputs, 32, 3, 1, width)
    x = layers.MaxPooling2D(3, 2, padding="same", name="maxpooling1")(x)
    x = _conv_prelu(x, 64, 3, 2, width)
    x = layers.MaxPooling2D(3, 2, padding="valid", name="maxpooling2")(x)
    x = _conv_prelu(x, 64, 3, 3, width)
    x = layers.MaxPooling2D(2, 2, padding="same", name="maxpooling3")(x)
    x = _conv_prelu(x, 128, 2, 4, width)
    x = _dense_head(x, 256, 5, width)
    box = layers.Dense(4, name="fc6-1")(x)
    landmarks = layers.Dense(10, name="fc6-2")(x)
    logits = layers.Dense(2, name="fc6-3")(x)
    prob = layers.Softmax(name="prob")(logits)
    return keras.Model(inputs, [box, landmarks, prob], name=name)


def logits_model(net: keras.Model) -> keras.Model:
    """The same network (shared weights) with class logits instead of probabilities.

    Training uses logits for a numerically stable cross-entropy.
    """
    prob_layer = net.get_layer("prob")
    logits = prob_layer.input
    outputs = [logits if t is net.outputs[-1] else t for t in net.outputs]
    return keras.Model(net.inputs, outputs, name=f"{net.name}_logits")
