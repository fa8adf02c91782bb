"""Batch norms folded into their convolutions for inference: same outputs, shared variables, safe pairs only."""

import keras
import numpy as np
import pytest

from kdet.layers.folded_batch_norm import FoldedAway, FoldedConvBatchNorm, fold_batch_norms


def _randomise_norms(model, rng):
    """Non-trivial moving statistics, scale and shift (fresh norms are the identity)."""
    for layer in model._flatten_layers(recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, c), rng.normal(0, 0.5, c), rng.normal(0, 0.5, c),
                               rng.uniform(0.2, 3.0, c)])


def _network():
    """A nested backbone, a conv with a bias, a conv with two consumers and a shared conv (not foldable)."""
    inputs = keras.Input((32, 48, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.LeakyReLU(0.1)(x)
    backbone = keras.Model(inputs, x, name="backbone")
    head_in = keras.Input((32, 48, 3))
    y = backbone(head_in)
    y = keras.layers.Conv2D(64, 3, strides=8, padding="same", use_bias=True, name="late")(y)  # kernel > output
    y = keras.layers.BatchNormalization(name="late_bn")(y)
    branch = keras.layers.Conv2D(4, 1, name="two_consumers")(y)
    a = keras.layers.BatchNormalization(name="after_branch")(branch)
    shared = keras.layers.Conv2D(4, 1, name="shared")
    s1 = keras.layers.BatchNormalization(name="s1_bn")(shared(y))
    s2 = shared(keras.layers.ReLU()(y))
    out = keras.layers.Concatenate()([a, branch, s1, s2])
    return keras.Model(head_in, out, name="network")


@pytest.mark.parametrize("policy, atol", [("float32", 1e-4), ("mixed_bfloat16", 0.15)])
def test_folded_network_matches_and_shares_variables(policy, atol):
    rng = np.random.default_rng(0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = _network()
    finally:
        keras.config.set_dtype_policy(previous)
    _randomise_norms(model, rng)
    folded = fold_batch_norms(model)
    kinds = {type(layer).__name__ for layer in folded._flatten_layers(recursive=True)}
    names = [layer.name for layer in folded._flatten_layers(recursive=True)
             if isinstance(layer, (FoldedConvBatchNorm, FoldedAway))]
    # The stem (kernel into the fold) and "late" (scaled output) fold; the pairs whose conv has two
    # consumers or is shared do not.
    assert sorted(names) == ["late_bn_folded", "late_folded", "stem_bn_folded", "stem_folded"], names
    assert "BatchNormalization" in kinds
    late = next(layer for layer in folded._flatten_layers(recursive=True) if layer.name == "late_folded")
    stem = next(layer for layer in folded._flatten_layers(recursive=True) if layer.name == "stem_folded")
    assert stem.fold_kernel and not late.fold_kernel
    assert not folded.weights or {id(w) for w in folded.weights} <= {id(w) for w in model.weights}
    x = rng.uniform(0, 1, (2, 32, 48, 3)).astype(np.float32)
    want = np.asarray(model(x, training=False), np.float32)
    np.testing.assert_allclose(np.asarray(folded(x, training=False), np.float32), want, atol=atol, rtol=0.02)
    # Shared variables: new statistics in the original reach the folded copy.
    _randomise_norms(model, rng)
    want = np.asarray(model(x, training=False), np.float32)
    np.testing.assert_allclose(np.asarray(folded(x, training=False), np.float32), want, atol=atol, rtol=0.02)


def test_nothing_to_fold_returns_the_model():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, activation="relu")(inputs))
    assert fold_batch_norms(model) is model
