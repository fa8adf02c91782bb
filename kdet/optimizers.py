"""Keras' Adam and SGD, with each variable's update as one fused TensorFlow kernel.

Keras 3 writes an Adam step as about a dozen ops per variable (and SGD with
momentum as about five), traced one variable at a time. For a detector of 200
variables that is ~2 s of tracing before the first step and ~2 s more of graph
optimisation, and every step makes a dozen passes over the weights. TensorFlow's
own kernels do the same arithmetic in one op: ``ResourceApplyAdam`` (Kingma & Ba
2015, with Keras' bias-corrected rate ``lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``)
and ``ResourceApplyKerasMomentum`` (Keras' momentum and Nesterov rules). The
step-dependent scalars are computed once per step, not once per variable.

These classes are drop-in subclasses: same arguments, same config, same
results to float rounding (``tests/test_optimizers.py`` compares them with
Keras' own). ``global_clipnorm`` computes the norm in one read of each
gradient and rescales only when the norm is over the bound. AMSGrad, and
backends other than TensorFlow, take Keras' path.
"""

from __future__ import annotations

import keras
from keras import ops


def _on_tensorflow() -> bool:
    return keras.backend.backend() == "tensorflow"


def _handle(variable):
    """The resource handle of a Keras or tf.Variable (the local copy inside a distribution strategy's update)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


class _FusedSteps:
    """Shared plumbing: the step's scalars travel to ``update_step`` in place of the learning rate.

    Keras' TensorFlow optimizer passes ``learning_rate`` unchanged from
    ``_backend_update_step`` (replica context) through the strategy's
    ``merge_call`` and ``extended.update`` to each ``update_step``, so a dict of
    scalars computed once per replica arrives, per device, at every variable.
    """

    def _step_scalars(self, learning_rate) -> dict:
        raise NotImplementedError

    def _fused_update(self, gradient, variable, scalars: dict) -> None:
        raise NotImplementedError

    def _clip_gradients(self, grads):
        """Keras' global-norm clipping, in fewer passes over the gradients: the norm from ``l2_loss`` (one
        read of each gradient; Keras squares into a temporary), and the scaling only when the norm is over the
        bound or not finite (Keras multiplies every gradient by a scale of 1.0 otherwise). Same results."""
        if not (_on_tensorflow() and self.global_clipnorm and self.global_clipnorm > 0 and not self.clipnorm):
            return super()._clip_gradients(grads)
        import tensorflow as tf

        present = [g for g in grads if g is not None]
        if not present:
            return grads
        norm = tf.linalg.global_norm(present)
        bound = float(self.global_clipnorm)

        def scaled():
            # Keras' rule: clip * min(1 / norm, 1 / clip), NaN for an inf / NaN norm.
            scale = bound * tf.minimum(1.0 / norm, 1.0 / bound) + (norm - norm)
            return [g * tf.cast(scale, g.dtype) for g in present]

        within = tf.math.is_finite(norm) & (norm <= bound)
        clipped = iter(tf.cond(within, lambda: [tf.identity(g) for g in present], scaled))
        return [next(clipped) if g is not None else None for g in grads]

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self._uses_fused_kernels():
            learning_rate = self._step_scalars(learning_rate)
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(learning_rate, dict):
            return super().update_step(gradient, variable, learning_rate)
        if variable.dtype != "float32":  # the fused kernels would do all of their arithmetic in float16 / bfloat16
            return super().update_step(gradient, variable, learning_rate["lr"])
        self._fused_update(ops.cast(gradient, "float32"), variable, learning_rate)


@keras.saving.register_keras_serializable(package="kdet")
class FusedAdam(_FusedSteps, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose per-variable update is TensorFlow's fused ``ResourceApplyAdam``.

    Takes exactly ``keras.optimizers.Adam``'s arguments.

    Example:
        >>> optimizer = FusedAdam(learning_rate=1e-3, global_clipnorm=10.0)
    """

    def _uses_fused_kernels(self) -> bool:
        return _on_tensorflow() and not self.amsgrad

    def _step_scalars(self, learning_rate) -> dict:
        step = ops.cast(self.iterations + 1, "float32")
        return {"beta1_power": ops.power(ops.cast(self.beta_1, "float32"), step),
                "beta2_power": ops.power(ops.cast(self.beta_2, "float32"), step),
                "lr": ops.cast(learning_rate, "float32"),
                "beta1": ops.cast(self.beta_1, "float32"), "beta2": ops.cast(self.beta_2, "float32"),
                "epsilon": ops.cast(self.epsilon, "float32")}

    def _fused_update(self, gradient, variable, scalars: dict) -> None:
        import tensorflow as tf

        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(var=_handle(variable), m=_handle(self._momentums[index]),
                                     v=_handle(self._velocities[index]), grad=gradient, **scalars)


@keras.saving.register_keras_serializable(package="kdet")
class FusedSGD(_FusedSteps, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` whose momentum update is TensorFlow's fused ``ResourceApplyKerasMomentum``.

    Takes exactly ``keras.optimizers.SGD``'s arguments; without momentum it is
    Keras' own one-op update.

    Example:
        >>> optimizer = FusedSGD(learning_rate=0.02, momentum=0.9, weight_decay=1e-4)
    """

    def _uses_fused_kernels(self) -> bool:
        return _on_tensorflow() and self.momentum != 0

    def _step_scalars(self, learning_rate) -> dict:
        return {"lr": ops.cast(learning_rate, "float32"), "momentum": ops.cast(self.momentum, "float32")}

    def _fused_update(self, gradient, variable, scalars: dict) -> None:
        import tensorflow as tf

        accumulator = self.momentums[self._get_variable_index(variable)]
        tf.raw_ops.ResourceApplyKerasMomentum(var=_handle(variable), accum=_handle(accumulator), grad=gradient,
                                              use_nesterov=bool(self.nesterov), **scalars)
