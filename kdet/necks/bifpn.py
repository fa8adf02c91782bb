"""BiFPN: the weighted bidirectional feature pyramid of EfficientDet (Tan et al. 2020, section 3).

The topology is data: a list of fusion nodes, each with its pyramid level and
the offsets of its inputs in the running list ``[P3, ..., P7, node0, node1,
...]`` (automl's ``fpn_config.nodes``). A cell applies every node once; the
cell's output at a level is the last node of that level. Each node:

1. resamples every input to the node's level and width: a 1x1 conv + batch
   norm when the channel count differs (only backbone features, first cell),
   max-pooling 3x3 / stride 2 ("same") to go down a level, nearest-neighbour
   upsampling to go up;
2. fuses them with learned non-negative weights (:class:`WeightedFusion`);
3. applies activation -> 3x3 depthwise-separable conv (with bias) -> batch
   norm (automl's ``OpAfterCombine`` with ``conv_bn_act_pattern=False``).

Levels above the backbone's are made the same way as in automl
(``resample_p6``): 1x1 conv + BN when needed, then max-pooling.

Layer names say what they are, for checkpoint converters:
``{name}_p6_resample_conv``, ``{name}_cell{c}_node{i}_in{offset}_conv`` /
``_bn`` (automl ``fpn_cells/cell_c/fnode{i}/resample_0_{offset}_{5+i}``),
``{name}_cell{c}_node{i}_fuse`` (one weight per input: automl ``WSM``,
``WSM_1``, ...), ``{name}_cell{c}_node{i}_conv`` / ``_bn``
(``op_after_combine{5+i}``).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from kdet.layers.batch_normalization import BatchNormalization

FUSION_METHODS = ("fastattn", "attn", "sum")
# Fast normalised fusion epsilon, Tan et al. 2020, eq. (3) / automl's 0.0001.
FUSION_EPSILON = 1e-4


def bifpn_topology(min_level: int = 3, max_level: int = 7) -> list[dict]:
    """The BiFPN node list (automl ``efficientdet/keras/fpn_configs.py``, ``bifpn_config``).

    A top-down pass (each level fuses itself with the level above), then a
    bottom-up pass (each level fuses every node it has so far with the
    level below).

    Returns:
        list of ``{"level": int, "inputs": tuple[int, ...]}``; offsets index
        ``[P{min_level} .. P{max_level}, node0, node1, ...]``.

    Example:
        >>> bifpn_topology(3, 7)[:2]
        [{'level': 6, 'inputs': (3, 4)}, {'level': 5, 'inputs': (2, 5)}]
    """
    if not 1 <= min_level < max_level:
        raise ValueError(f"need 1 <= min_level < max_level; received {min_level}, {max_level}.")
    node_ids = {lvl: [lvl - min_level] for lvl in range(min_level, max_level + 1)}
    next_id = max_level - min_level + 1
    nodes = []
    for lvl in range(max_level - 1, min_level - 1, -1):  # top-down
        nodes.append({"level": lvl, "inputs": (node_ids[lvl][-1], node_ids[lvl + 1][-1])})
        node_ids[lvl].append(next_id)
        next_id += 1
    for lvl in range(min_level + 1, max_level + 1):  # bottom-up
        nodes.append({"level": lvl, "inputs": (*node_ids[lvl], node_ids[lvl - 1][-1])})
        node_ids[lvl].append(next_id)
        next_id += 1
    return nodes


@keras.saving.register_keras_serializable(package="kdet")
class WeightedFusion(keras.layers.Layer):
    """Fuses same-shaped feature maps with one learned scalar weight per input.

    * "fastattn": ``sum_i relu(w_i) x_i / (sum_j relu(w_j) + 1e-4)``, the
      "fast normalised fusion" of Tan et al. 2020, eq. (3) (D0-D5);
    * "attn": softmax-normalised weights (eq. (2));
    * "sum": plain sum, no weights (automl's D6/D7 setting).

    Weights start at 1 (automl initialises ``WSM`` to ones) and stay float32
    under mixed precision.

    Call:
        a list of N tensors of one shape (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, method: str = "fastattn", epsilon: float = FUSION_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if method not in FUSION_METHODS:
            raise ValueError(f"method must be one of {FUSION_METHODS}; received {method!r}.")
        self.method = method
        self.epsilon = float(epsilon)

    def build(self, input_shapes):
        if not isinstance(input_shapes, (list, tuple)) or len(input_shapes) < 2:
            raise ValueError(f"WeightedFusion needs a list of at least 2 inputs; received {input_shapes}.")
        if self.method != "sum":
            self.fusion_weights = self.add_weight(
                name="fusion_weights", shape=(len(input_shapes),), initializer="ones", dtype="float32")
        self.built = True

    def call(self, inputs):
        if self.method == "sum":
            return tf.add_n(list(inputs))
        w = self.fusion_weights
        w = tf.nn.relu(w) / (tf.reduce_sum(tf.nn.relu(w)) + self.epsilon) if self.method == "fastattn" \
            else tf.nn.softmax(w)
        w = tf.cast(w, inputs[0].dtype)
        return tf.add_n([w[i] * x for i, x in enumerate(inputs)])

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])

    def get_config(self):
        config = super().get_config()
        config.update(method=self.method, epsilon=self.epsilon)
        return config


def _bn(x, name, momentum, epsilon):
    return BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)(x)


def _resample(x, from_level, to_level, width, name, bn_momentum, bn_epsilon):
    """Input of a node: 1x1 conv + BN if the width differs, then pool or upsample to ``to_level``."""
    if x.shape[-1] != width:
        x = keras.layers.Conv2D(width, 1, padding="same", name=f"{name}_conv")(x)
        x = _bn(x, f"{name}_bn", bn_momentum, bn_epsilon)
    if to_level > from_level:
        stride = 2 ** (to_level - from_level)
        x = keras.layers.MaxPooling2D(stride + 1, strides=stride, padding="same", name=f"{name}_pool")(x)
    elif to_level < from_level:
        x = keras.layers.UpSampling2D(2 ** (from_level - to_level), interpolation="nearest",
                                      name=f"{name}_up")(x)
    return x


def bifpn(features: dict, min_level: int = 3, max_level: int = 7, width: int = 64, depth: int = 3,
          topology: Sequence[dict] | None = None, weight_method: str = "fastattn", activation: str = "swish",
          bn_momentum: float = 0.99, bn_epsilon: float = 1e-3, name: str = "bifpn") -> dict:
    """Builds ``depth`` stacked BiFPN cells on backbone features.

    Args:
        features: backbone features {"P3": ..., "P5": ...} (levels above the
            coarsest given are derived by 1x1 conv + max-pooling).
        min_level, max_level: pyramid levels of the output (3 and 7 in EfficientDet).
        width: channels of every BiFPN feature (64 for D0 .. 384 for D6).
        depth: number of cells (3 for D0 .. 8 for D6).
        topology: node list (default :func:`bifpn_topology`).
        weight_method: "fastattn", "attn" or "sum" (see :class:`WeightedFusion`).
        activation: applied before each node's separable conv (swish).
        bn_momentum, bn_epsilon: batch-norm settings (automl: 0.99, 1e-3).

    Returns:
        {"P{min_level}": (B, H/2^min, W/2^min, width), ..., "P{max_level}": ...}.

    Example:
        >>> import keras
        >>> feats = {f"P{l}": keras.Input((128 // 2**l, 128 // 2**l, 8)) for l in (3, 4, 5)}
        >>> out = bifpn(feats, width=16, depth=1)
        >>> sorted(out), tuple(out["P7"].shape[1:])
        (['P3', 'P4', 'P5', 'P6', 'P7'], (1, 1, 16))
    """
    if weight_method not in FUSION_METHODS:
        raise ValueError(f"weight_method must be one of {FUSION_METHODS}; received {weight_method!r}.")
    if int(depth) < 1 or int(width) < 1:
        raise ValueError(f"depth and width must be positive; received depth={depth}, width={width}.")
    given = sorted(int(k[1:]) for k in features)
    missing = [lvl for lvl in range(min_level, min(max_level, given[-1]) + 1) if lvl not in given]
    if missing or given[-1] < min_level:
        raise ValueError(f"BiFPN P{min_level}-P{max_level} needs backbone levels from P{min_level}; "
                         f"received {sorted(features)}.")
    top = min(given[-1], max_level)
    coarsest = tuple(features[f"P{top}"].shape[1:3])
    factor = 2 ** (max_level - top)
    if any(d is not None and d % factor for d in coarsest):
        raise ValueError(f"P{top} is {coarsest[0]}x{coarsest[1]}: P{top + 1}-P{max_level} need it divisible by "
                         f"{factor} (the input by {2 ** max_level}); pad or resize the image.")
    feats = [features[f"P{lvl}"] for lvl in range(min_level, top + 1)]
    for lvl in range(top + 1, max_level + 1):  # P6, P7 from the coarsest map
        feats.append(_resample(feats[-1], lvl - 1, lvl, width, f"{name}_p{lvl}_resample", bn_momentum, bn_epsilon))
    topology = list(topology) if topology is not None else bifpn_topology(min_level, max_level)
    for cell in range(int(depth)):
        levels = list(range(min_level, max_level + 1))
        for i, node in enumerate(topology):
            prefix = f"{name}_cell{cell}_node{i}"
            inputs = [_resample(feats[off], levels[off], node["level"], width, f"{prefix}_in{off}",
                                bn_momentum, bn_epsilon) for off in node["inputs"]]
            x = WeightedFusion(weight_method, name=f"{prefix}_fuse")(inputs)
            x = keras.layers.Activation(activation, name=f"{prefix}_act")(x)
            x = keras.layers.SeparableConv2D(width, 3, padding="same", name=f"{prefix}_conv")(x)
            feats.append(_bn(x, f"{prefix}_bn", bn_momentum, bn_epsilon))
            levels.append(node["level"])
        # The cell's output at a level is the last node computed at that level.
        last = {lvl: feats[max(j for j, l in enumerate(levels) if l == lvl)] for lvl in range(min_level, max_level + 1)}
        feats = [last[lvl] for lvl in range(min_level, max_level + 1)]
    return {f"P{lvl}": feats[lvl - min_level] for lvl in range(min_level, max_level + 1)}
