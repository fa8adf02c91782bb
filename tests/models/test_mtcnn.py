"""MTCNN unit tests: XLA image ops, fast layers and graph-mode pieces, pyramid, networks vs the mtcnn
package, bad input. (Its suppression, kdet.ops.suppression, is tested in tests/ops/test_suppression.py.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdet.models.mtcnn import MTCNN, build_onet, build_pnet, build_rnet
from kdet.models.mtcnn import cascade
from kdet.models.mtcnn.cascade import pyramid_scales, square
from kdet.models.mtcnn.image_ops import area_resize, crop_and_resize
from kdet.models.mtcnn.networks import PReLU


@pytest.fixture(scope="module")
def pretrained():
    return MTCNN()


@pytest.mark.parametrize("size", [(336, 240), (119, 84), (17, 12), (60, 45)])
def test_area_resize_matches_tf_and_compiles(size):
    x = tf.random.stateless_uniform((2, 61, 45, 3), seed=(1, 2)) * 255
    expected = tf.image.resize(x, size, method="area")
    got = tf.function(lambda t: area_resize(t, size), jit_compile=True)(x) if size != (60, 45) else area_resize(x, size)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-2)


def test_crop_and_resize_matches_tf_and_compiles():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-1, 1, (2, 40, 30, 3)), tf.float32)
    boxes = tf.constant(rng.uniform(-0.3, 1.2, (20, 4)), tf.float32)
    index = tf.constant(rng.integers(0, 2, 20), tf.int32)
    expected = tf.image.crop_and_resize(x, boxes, index, (24, 24))
    got = tf.function(lambda *a: crop_and_resize(*a, (24, 24)), jit_compile=True)(x, boxes, index)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("slopes", [(0.99, -0.5), (1.0, 0.3), (1.3, 1.01)])  # below / at / above 1
@pytest.mark.parametrize("shape, shared_axes", [((3, 7, 5, 6), [1, 2]), ((4, 6), None)])
def test_prelu_equals_keras_prelu(slopes, shape, shared_axes):
    rng = np.random.default_rng(4)
    x = rng.normal(size=shape).astype(np.float32)
    x[0, 0] = 0.0  # zeros give zeros (Keras: 0 + -alpha * 0)
    ours, ref = PReLU(shared_axes=shared_axes), keras.layers.PReLU(shared_axes=shared_axes)
    ours.build(shape), ref.build(shape)
    alpha = rng.uniform(-1.0, 1.0, ours.alpha.shape).astype(np.float32)
    alpha.reshape(-1)[:2] = slopes  # max(x, alpha * x) only when every slope is below 1
    ours.alpha.assign(alpha), ref.alpha.assign(alpha)
    expected = ref(x).numpy()
    x_tf = tf.constant(x)
    for fn in (ours, tf.function(ours), tf.function(ours, jit_compile=True),
               tf.function(ours, input_signature=[tf.TensorSpec((None,) * len(shape))])):
        np.testing.assert_array_equal(fn(x_tf).numpy(), expected)  # float for float
    # Same gradients (away from x == 0, where ReLU's subgradient is a convention).
    x_tf = tf.constant(np.where(x == 0, 0.5, x))
    weight = tf.constant(rng.normal(size=shape).astype(np.float32))
    grads = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            tape.watch(x_tf)
            loss = tf.reduce_sum(layer(x_tf) * weight)
        grads.append(tape.gradient(loss, [x_tf, layer.alpha]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


def test_prelu_round_trips_and_is_every_network_prelu():
    layer = PReLU(shared_axes=[1, 2], name="prelu1")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is PReLU and clone.get_config() == layer.get_config()
    assert all(isinstance(l, PReLU) for l in build_onet().layers if "prelu" in l.name)


def _pnet_logits(model, image, scale):
    """Real PNet logits (1, N, 2) of one pyramid level of ``image``."""
    x = cascade.normalize(tf.constant(image[None], tf.float32))
    size = (int(image.shape[0] * scale), int(image.shape[1] * scale))
    head = cascade.split_pnet(model.pnet)
    _, logits = head.net(tf.image.resize(x, size, method="area"))
    return head, tf.reshape(logits, (1, -1, 2))


@pytest.mark.parametrize("threshold", [0.6, 0.05, 0.97])
def test_face_cells_equal_ranking_every_cell(pretrained, threshold):
    """Softmax only near the threshold: same scores (bit for bit), order and ties as on every cell."""
    image = __import__("kdet").data.images.load_image(
        __import__("kdet").models.mtcnn.pretrained_dir().parent / "images" / "ivan.jpg")
    rng = np.random.default_rng(5)
    head, real = _pnet_logits(pretrained, np.asarray(image), 0.3)
    # Random logits with exact duplicates (ties) and margins right at the threshold's logit.
    edge = np.log(threshold / (1 - threshold))
    fake = rng.normal(0, 3, (2, 400, 2)).astype(np.float32)
    jitter = rng.normal(0, 1e-6, (2, 40)).astype(np.float32)
    fake[:, 100:140, 1] = fake[:, 100:140, 0] + np.float32(edge) + jitter
    fake[:, 200:220] = fake[:, 100:120]
    for logits in (real, tf.constant(fake)):
        n = logits.shape[1]
        for k in (n, 7):
            scores = head.prob(logits)[..., 1]
            valid_counts = tf.reduce_sum(tf.cast(scores > threshold, tf.int32), axis=1).numpy()
            ref_top, ref_index = tf.math.top_k(scores, k=min(k, n))
            top, index = tf.function(lambda l: cascade.face_cells(head.prob, l, threshold, k))(logits)
            for b, count in enumerate(np.minimum(valid_counts, k)):
                np.testing.assert_array_equal(top.numpy()[b, :count], ref_top.numpy()[b, :count])
                np.testing.assert_array_equal(index.numpy()[b, :count], ref_index.numpy()[b, :count])
                assert np.all(top.numpy()[b, count:] <= threshold)
    assert int(valid_counts.max()) > 0


def test_run_in_chunks_equals_one_call_bit_for_bit(pretrained):
    crops = tf.constant(np.random.default_rng(6).uniform(-1, 1, (45, 24, 24, 3)), tf.float32)
    expected = tf.function(lambda c: pretrained.rnet(c, training=False))(crops)
    specs = cascade._output_specs(pretrained.rnet, (24, 24, 3))
    chunked = tf.function(lambda c: cascade.run_in_chunks(
        lambda part: pretrained.rnet(part, training=False), (c,), 16, specs),
        input_signature=[tf.TensorSpec((None, 24, 24, 3))])
    for a, b in zip(chunked(crops), expected):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_pnet_without_the_prob_softmax_still_runs():
    head = cascade.split_pnet(build_pnet(0.25))
    assert isinstance(head.prob, keras.layers.Softmax) and len(head.net.outputs) == 2
    # A custom PNet (outputs [box_reg, probabilities] without a final Softmax "prob"): every cell is scored.
    inputs = keras.Input((None, None, 3))
    features = keras.layers.MaxPooling2D(2, 2, padding="same")(keras.layers.Conv2D(8, 3)(inputs))
    features = keras.layers.Conv2D(8, 3)(keras.layers.Conv2D(8, 3)(features))  # PNet's 12 px cell
    custom = keras.Model(inputs, [keras.layers.Conv2D(4, 1)(features),
                                  keras.layers.Conv2D(2, 1, activation="softmax")(features)])
    assert cascade.split_pnet(custom) == (custom, None)
    model = MTCNN(pnet=custom, rnet=build_rnet(0.25), onet=build_onet(0.25), weights=None,
                  thresholds=(0.3, 0.3, 0.3))
    x = np.random.default_rng(8).uniform(0, 255, (2, 50, 40, 3)).astype(np.float32)
    graph = MTCNN(pnet=custom, rnet=model.rnet, onet=model.onet, weights=None, thresholds=(0.3, 0.3, 0.3),
                  jit_compile=False).predict(x)
    xla = MTCNN(pnet=custom, rnet=model.rnet, onet=model.onet, weights=None, thresholds=(0.3, 0.3, 0.3),
                jit_compile=True).predict(x)
    assert graph["num_detections"].tolist() == xla["num_detections"].tolist()
    np.testing.assert_allclose(graph["scores"], xla["scores"], atol=1e-4)


def test_pyramid_scales():
    scales = pyramid_scales(561, 561, 20, 0.709, 2048)
    assert len(scales) == 10 and scales[0] == pytest.approx(0.6)
    assert int(561 * scales[-1]) >= 12 and int(561 * scales[-1] * 0.709) < 12
    assert pyramid_scales(11, 500, 20, 0.709, 2048) == []
    huge = pyramid_scales(20000, 30000, 20, 0.709, 2048)
    assert 30000 * huge[0] == pytest.approx(2048)


def test_square_keeps_centre():
    out = square(tf.constant([[0., 0, 10, 20]])).numpy()[0]
    np.testing.assert_allclose(out, [-5, 0, 15, 20])


def test_networks_match_mtcnn_package_networks():
    pytest.importorskip("mtcnn")
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet
    from mtcnn.utils.tensorflow import load_weights

    model = MTCNN()
    rng = np.random.default_rng(3)
    for ours, ref_cls, file, shape in [(model.pnet, PNet, "pnet.lz4", (2, 31, 27, 3)),
                                       (model.rnet, RNet, "rnet.lz4", (3, 24, 24, 3)),
                                       (model.onet, ONet, "onet.lz4", (3, 48, 48, 3))]:
        ref = ref_cls()
        ref.build()
        ref.set_weights(load_weights(file))
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        for a, b in zip(ours(x), ref(x)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


@pytest.mark.parametrize("kwargs", [
    {"min_face_size": 0}, {"min_face_size": -3}, {"thresholds": (0.6, 0.7, 1.0)},
    {"thresholds": (0.0, 0.7, 0.7)}, {"thresholds": (0.6, 0.7)}, {"scale_factor": 1.0},
    {"width": 0.5},  # pretrained weights need width 1
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        MTCNN(**kwargs)


def test_bad_images_are_handled(pretrained):
    tiny = pretrained.detect(np.zeros((10, 30, 3), np.uint8))
    assert tiny["boxes"].shape == (0, 4) and tiny["landmarks"].shape == (0, 5, 2)
    image = np.asarray(tf.io.decode_jpeg(tf.io.read_file(
        str(__import__("kdet").models.mtcnn.model.pretrained_dir().parent / "images" / "ivan.jpg"))))
    small = tf.image.resize(image, (140, 140)).numpy().astype(np.uint8)
    rgb = pretrained.detect(small)
    gray = pretrained.detect(small.mean(-1).astype(np.uint8))
    rgba = pretrained.detect(np.concatenate([small, np.full((140, 140, 1), 255, np.uint8)], -1))
    assert len(rgb["boxes"]) >= 1 and len(gray["boxes"]) >= 1
    np.testing.assert_allclose(rgba["boxes"], rgb["boxes"])
    with pytest.raises(ValueError):
        pretrained.predict(np.zeros((2, 40, 40, 5)))


def test_batch_equals_single_images_and_output_contract(pretrained):
    image = __import__("kdet").data.images.load_image(
        pretrained_dir_image := (__import__("kdet").models.mtcnn.pretrained_dir().parent / "images" / "ivan.jpg"))
    small = tf.image.resize(image, (200, 200)).numpy()
    batch = np.stack([small, small[:, ::-1], np.zeros_like(small)])
    out = pretrained.predict(batch)
    k = pretrained.max_detections
    assert out["boxes"].shape == (3, k, 4) and out["landmarks"].shape == (3, k, 5, 2)
    assert out["labels"].dtype == np.int32 and out["num_detections"][2] == 0
    for i in range(3):
        one = pretrained.predict(batch[i:i + 1])
        n = one["num_detections"][0]
        assert n == out["num_detections"][i]
        np.testing.assert_allclose(one["boxes"][0, :n], out["boxes"][i, :n], atol=1e-3)
        assert np.all(out["labels"][i, n:] == -1) and np.all(out["labels"][i, :n] == 0)
        assert np.all(np.diff(out["scores"][i, :n]) <= 0)
    assert pretrained_dir_image.is_file()


def test_save_and_load_round_trip(tmp_path):
    import keras

    model = MTCNN(width=0.25, weights=None, max_detections=8, onet_candidates=8,
                  rnet_candidates=16, pnet_top_k=32, thresholds=(0.3, 0.3, 0.3))
    x = np.random.default_rng(0).uniform(0, 255, (1, 40, 40, 3)).astype(np.float32)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config()["pnet_top_k"] == 32
    for a, b in zip(model.pnet.weights + model.onet.weights, loaded.pnet.weights + loaded.onet.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(model.predict(x)["scores"], loaded.predict(x)["scores"], atol=1e-5)


def test_xla_and_graph_modes_agree_and_each_compiles_once(pretrained):
    """jit_compile=True (static XLA cascade) and False (trimmed graph) find the same faces."""
    image = __import__("kdet").data.images.load_image(
        __import__("kdet").models.mtcnn.pretrained_dir().parent / "images" / "ivan.jpg")
    small = tf.image.resize(image, (100, 100)).numpy()
    batch = np.stack([small, np.zeros_like(small)])
    xla_model = MTCNN(jit_compile=True)
    graph_model = MTCNN(jit_compile=False)
    assert xla_model.uses_xla() and not graph_model.uses_xla()
    assert MTCNN(jit_compile="auto", weights=None).uses_xla() == bool(tf.config.list_logical_devices("GPU"))
    fast, xla = graph_model.predict(batch), xla_model.predict(batch)
    assert fast["num_detections"].tolist() == xla["num_detections"].tolist()
    assert fast["num_detections"][0] >= 1 and fast["num_detections"][1] == 0
    for key in ("boxes", "scores", "landmarks"):
        np.testing.assert_allclose(fast[key], xla[key], atol=1e-2)
    for model in (graph_model, xla_model):
        model.detect(small)
        functions = list(model._inference_fns.values())
        traces = [fn.experimental_get_tracing_count() for fn in functions]
        model.detect(small[::-1].copy())  # same size: same function, no retrace
        assert list(model._inference_fns.values()) == functions
        assert [fn.experimental_get_tracing_count() for fn in functions] == traces
    with pytest.raises(ValueError):
        MTCNN(jit_compile="yes", weights=None)


def test_bfloat16_cascade_finds_the_float32_faces(pretrained):
    """precision="bfloat16" (which crashed: the cascade mixed its networks' bf16 outputs with float32 boxes)
    finds every float32 face of the sample photo, IoU >= 0.9, in graph mode (the CPU path; XLA casts alike)."""
    from kdet.ops import iou

    image = np.asarray(Image.open(
        __import__("kdet").models.mtcnn.pretrained_dir().parent / "images" / "ivan.jpg").convert("RGB"))
    fast = pretrained.with_settings(precision="bfloat16")
    reference = pretrained.detect(image)
    assert len(reference["scores"]) >= 1 and fast.config.precision == "bfloat16"
    boxes = fast.detect(image)["boxes"]
    assert len(boxes) == len(reference["boxes"])
    assert np.all(np.asarray(iou(reference["boxes"], boxes)).max(axis=1) >= 0.9)
