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
import tensorflow as tf
from keras import layers

#: Input side of RNet and ONet crops (paper, Sec. II-A).
RNET_SIZE = 24
ONET_SIZE = 48
#: PNet's receptive field (cell) and stride in pixels of the scaled image.
PNET_CELL = 12
PNET_STRIDE = 2


@keras.saving.register_keras_serializable(package="kdet", name="MTCNNPReLU")
class PReLU(layers.PReLU):
    """``keras.layers.PReLU`` with the same weights, config and results, in fewer memory passes.

    Keras computes ``relu(x) - alpha * relu(-x)``: four passes over the tensor,
    one a multiply that broadcasts a short channel vector, which Eigen does
    slowly. PReLU outputs are the largest tensors of the MTCNN cascade (PNet's
    first pyramid level, RNet on hundreds of crops), and on CPU these passes
    cost the networks about as much as their convolutions. This layer computes

    * ``max(x, alpha * x)`` (two passes) when every slope is < 1: then
      ``alpha * x <= x`` for x > 0 and ``>= x`` for x < 0, rounding included
      (a slope of exactly 1 would tie for every x, and the max would give it
      no gradient);
    * ``x * where(x > 0, 1, alpha)`` (three passes) otherwise (the original
      PNet and RNet have slopes up to 1.3 in their first layer),

    chosen at run time, so that any weights stay exact. Per-channel slopes on
    (B, H, W, C) inputs with static W and C are applied to a (B * H, W * C)
    view with the slope row tiled W times: a long, vectorisable broadcast.

    Every output equals Keras' float for float (``x * 1 = x``, and ``alpha * x``
    is the product Keras forms as ``-alpha * -x``), up to the sign of zeros;
    the gradients are the same except at x = 0 exactly.

    Example:
        >>> layer = PReLU(shared_axes=[1, 2])                     # doctest: +SKIP
    """

    def call(self, inputs):
        alpha = tf.cast(self.alpha, inputs.dtype)
        shape = inputs.shape
        x, slope = inputs, alpha
        rows = (self.shared_axes is not None and sorted(self.shared_axes) == [1, 2]
                and shape.rank == 4 and shape[2] is not None and shape[3] is not None)
        if rows:
            # (B, H, W, C) -> (B * H, W * C) rows; the slope row is alpha tiled W times.
            x = tf.reshape(inputs, (-1, shape[2] * shape[3]))
            slope = tf.tile(tf.reshape(alpha, (-1,)), [shape[2]])

        out = tf.cond(tf.reduce_all(slope < 1.0),
                      lambda: tf.maximum(x, x * slope),
                      lambda: x * tf.where(x > 0, tf.ones_like(slope), slope))
        return tf.reshape(out, tf.shape(inputs)) if rows else out


def _conv_prelu(x, filters: int, kernel: int, index: int, width: float = 1.0):
    """Conv (valid padding) + PReLU with one slope per channel, as in Caffe."""
    x = layers.Conv2D(max(1, int(round(filters * width))), kernel, padding="valid",
                      name=f"conv{index}")(x)
    return PReLU(shared_axes=[1, 2], name=f"prelu{index}")(x)


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


# Conv stages of RNet and ONet: (filters, kernel, max-pooling after the conv as
# (size, stride, padding) or None), as in the mtcnn package; "same" pooling
# stands for Caffe's ceil-mode pooling of the original.
RNET_CONVS = ((28, 3, (3, 2, "same")), (48, 3, (3, 2, "valid")), (64, 2, None))
ONET_CONVS = ((32, 3, (3, 2, "same")), (64, 3, (3, 2, "valid")), (64, 3, (2, 2, "same")), (128, 2, None))


def _dense_head(x, units: int, index: int, width: float):
    # Permute (H, W) -> (W, H): the original Caffe flatten is channel-major on
    # a transposed image; the mtcnn package's weights expect this order.
    x = layers.Permute((2, 1, 3), name="permute")(x)
    x = layers.Flatten(name=f"flatten{index - 1}")(x)
    x = layers.Dense(max(1, int(round(units * width))), name=f"fc{index}")(x)
    return PReLU(name=f"prelu{index}")(x)


def _crop_network(size: int, convs, dense_units: int, output_units, width: float, name: str) -> keras.Model:
    """RNet / ONet: conv stages, a dense layer, then one Dense per output (Softmax on the last, ``prob``).

    Layer names follow the mtcnn package (``conv{i}``, ``prelu{i}``,
    ``maxpooling{i}``, ``fc{n}``, ``fc{n+1}-{k}``): the packaged weights and
    ``convert.py`` address layers by these names.
    """
    inputs = keras.Input((size, size, 3), name="crop")
    x = inputs
    for index, (filters, kernel, pooling) in enumerate(convs, start=1):
        x = _conv_prelu(x, filters, kernel, index, width)
        if pooling is not None:
            pool_size, stride, padding = pooling
            x = layers.MaxPooling2D(pool_size, stride, padding=padding, name=f"maxpooling{index}")(x)
    fc = len(convs) + 1
    x = _dense_head(x, dense_units, fc, width)
    outputs = [layers.Dense(units, name=f"fc{fc + 1}-{k}")(x) for k, units in enumerate(output_units, start=1)]
    outputs[-1] = layers.Softmax(name="prob")(outputs[-1])
    return keras.Model(inputs, outputs, name=name)


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
    return _crop_network(RNET_SIZE, RNET_CONVS, 128, (4, 2), width, name)


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
    return _crop_network(ONET_SIZE, ONET_CONVS, 256, (4, 10, 2), width, name)


def logits_model(net: keras.Model) -> keras.Model:
    """The same network (shared weights) with class logits instead of probabilities.

    Training uses logits for a numerically stable cross-entropy.
    """
    prob_layer = net.get_layer("prob")
    logits = prob_layer.input
    outputs = [logits if t is net.outputs[-1] else t for t in net.outputs]
    return keras.Model(net.inputs, outputs, name=f"{net.name}_logits")
