"""BatchNormalization: Keras' layer, whose training steps run TensorFlow's fused kernel.

Keras 3 normalises a training batch in separate operations: ``tf.nn.moments``
(a mean, then a mean of squared differences), ``tf.nn.batch_normalization``,
and the gradient of each of them. TensorFlow's ``FusedBatchNormV3`` kernel
(oneDNN on CPU) does the forward pass in one operation and the backward pass
in one more. On a 2-core CPU a (8, 64, 64, 256) batch norm's forward plus
backward went from 31.8 ms to 14.6 ms, and ResNet-50-FPN RetinaNet's training
gradients at 256 px, batch 8, from 2.00 s to 1.75 s (53 batch norms). Under
a ``mixed_bfloat16`` policy the kernel takes the bfloat16 input as it is
(Keras casts it to float32 and back): 41.5 ms for that batch norm with Keras,
16.0 ms here.

The layer computes the same function as Keras' (equal up to float rounding):
normalisation by the batch's biased variance, Keras' momentum update of the
moving statistics, float32 statistics under a float16 / bfloat16 policy.
Every other case runs Keras' own code unchanged: inference (also what LiteRT
export and :mod:`kdet.layers.folded_batch_norm` see), frozen layers, masks,
renorm, synchronised statistics, float64 inputs, and inputs that are not 4-D
channels-last.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Input dtypes of FusedBatchNormV3 (float64, which Keras normalises in float64, is not one).
_KERNEL_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


@keras.saving.register_keras_serializable(package="kdet")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused training step (same arguments).

    Example:
        >>> bn = BatchNormalization(epsilon=1e-5, momentum=0.9)
        >>> bn(tf.ones([2, 4, 4, 3]), training=True).shape
        TensorShape([2, 4, 4, 3])
    """

    def call(self, inputs, training=None, mask=None):
        if not (training is True and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        # float16 / bfloat16 go in as they are: the kernel keeps its statistics
        # in float32, as Keras does after casting the input up (and back).
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # The kernel returns the unbiased (Bessel-corrected) variance; Keras
        # averages the biased one into moving_variance.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = variance * ((count - 1.0) / count)
        momentum = self.momentum
        self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            tf.cast(self.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum))
        return tf.cast(y, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        """Whether the fused kernel computes what Keras' layer would for this training call."""
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and inputs.shape[-1] is not None and inputs.dtype in _KERNEL_DTYPES)
