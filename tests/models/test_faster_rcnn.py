"""Faster R-CNN: learning, Fast R-CNN mode, save/load, XLA, mixed precision, SVD head, bad input."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.data import synthetic_arrays
from kdet.models import FasterRCNN
from kdet.models.faster_rcnn import compress_box_head
from kdet.targets.samplers import RoITargetSampler, balanced_sample
from tests.helpers import coco_ap50

LEARNING_EPOCHS = 70


@pytest.fixture(scope="module")
def trained():
    """The tiny configuration overfitted on 8 synthetic images (shared by the tests below)."""
    keras.utils.set_random_seed(0)
    x, y = synthetic_arrays(8, 128, seed=0)
    model = FasterRCNN(3, backbone="tiny", image_size=128, seed=1)
    model.compile(evaluate_coco=False)
    history = model.fit(x, y, batch_size=8, epochs=LEARNING_EPOCHS, verbose=0)
    return model, x, y, history.history


def test_learning_overfits_8_images(trained):
    model, x, y, history = trained
    for name in ("rpn_cls", "rpn_box", "roi_cls", "roi_box"):
        assert name in history and np.isfinite(history[name]).all()
    assert history["rpn_cls"][-1] < 0.5 * history["rpn_cls"][0]
    assert history["roi_cls"][-1] < 0.5 * history["roi_cls"][0]
    ap50 = coco_ap50(y, model.predict(x, verbose=0))
    print(f"tiny Faster R-CNN AP50 after {LEARNING_EPOCHS} epochs on 8 images: {ap50:.3f}")
    assert ap50 >= 0.9


def test_fast_rcnn_mode_with_external_proposals(trained):
    model, x, y, _ = trained
    # Ground-truth boxes (jittered by 1 px) plus padding rows as external proposals.
    proposals = np.concatenate([y["boxes"] + 1.0, np.zeros((8, 5, 4), np.float32)], axis=1)
    out = model.predict({"images": x, "proposals": proposals}, verbose=0)
    assert out["boxes"].shape == (8, 100, 4)
    assert coco_ap50(y, out) >= 0.9
    with pytest.raises(ValueError, match="proposals must have shape"):
        model.predict({"images": x, "proposals": proposals[..., :3]}, verbose=0)
    with pytest.raises(ValueError, match="Dict inputs"):
        model({"images": x, "boxes": proposals})


def test_save_load_xla_and_any_batch_size(trained, tmp_path):
    model, x, _, _ = trained
    want = model.predict(x[:3], verbose=0)
    one = model.predict(x[:1], verbose=0)
    np.testing.assert_allclose(one["boxes"][0], want["boxes"][0], atol=1e-4)
    path = str(tmp_path / "frcnn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    got = loaded.predict(x[:3], verbose=0)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-4)
    xla = tf.function(lambda images: loaded(images, training=False), jit_compile=True)
    for batch in (3,):  # one XLA compilation (~30 s on 2 CPU cores); other batch sizes: predict above
        out = {k: v.numpy() for k, v in xla(tf.constant(x[:batch], tf.float32)).items()}
        n = out["num_detections"]
        np.testing.assert_array_equal(n, want["num_detections"][:batch])
        for i in range(batch):
            np.testing.assert_allclose(out["boxes"][i, :n[i]], want["boxes"][i, :n[i]], atol=1e-3)


def test_compress_box_head(trained):
    model, x, y, _ = trained
    exact = compress_box_head(model, (256, None))  # full rank of fc6's 256 outputs: same function
    want, got = model.predict(x, verbose=0), exact.predict(x, verbose=0)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-3)
    small = compress_box_head(model, 32)
    assert small.box_head.count_params() < 0.2 * model.box_head.count_params()
    assert coco_ap50(y, small.predict(x, verbose=0)) >= 0.5
    with pytest.raises(ValueError, match="exceeds"):
        compress_box_head(model, 10_000)


def _one_batch(num_images=2, size=128, seed=3):
    return synthetic_arrays(num_images, size, seed=seed)


def test_images_without_objects_give_finite_loss_and_only_negatives():
    # Built under mixed precision, which this test covers too (conftest resets the policy).
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = FasterRCNN(3, backbone="tiny", seed=0)
    model.compile(evaluate_coco=False)
    x, _ = _one_batch()
    empty = {"boxes": np.zeros((2, 3, 4), np.float32), "labels": np.full((2, 3), -1, np.int32)}
    raw = model(x.astype(np.float32), training=True)
    losses = model.compute_losses(x, model.targets_to_network(x, empty), raw)
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert float(losses["rpn_box"]) == 0.0 and float(losses["roi_box"]) == 0.0
    proposals = model.propose(raw, training=True)
    sample = model.roi_sampler(proposals["boxes"], proposals["valid"], empty["boxes"], empty["labels"])
    assert not sample["positive"].numpy().any() and sample["valid"].numpy().any()
    history = model.fit(x, empty, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    out = model.predict(x, verbose=0)
    assert np.isfinite(out["boxes"]).all() and np.isfinite(out["scores"]).all()


def test_many_ground_truth_boxes_are_all_used_without_truncation():
    # There is no GT padding limit: M is whatever the batch has. Positives stay capped at 25%.
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (1, 300, 2)).astype(np.float32)
    gt = np.concatenate([xy, xy + 20], axis=-1)
    labels = rng.integers(0, 3, (1, 300)).astype(np.int32)
    sampler = RoITargetSampler(num_samples=128, seed=0)
    sample = sampler(np.zeros((1, 10, 4), np.float32), np.zeros((1, 10), bool), gt, labels)
    assert sample["positive"].numpy().sum() == 32
    model = FasterRCNN(3, backbone="tiny", seed=0)
    model.compile(evaluate_coco=False)
    x = np.zeros((1, 128, 128, 3), np.uint8)
    history = model.fit(x, {"boxes": gt, "labels": labels}, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_fast_rcnn_training_step(trained):
    model, x, y, _ = trained
    history = model.fit({"images": x[:2], "proposals": y["boxes"][:2]},
                        {k: v[:2] for k, v in y.items()}, epochs=1, verbose=0).history
    assert history["rpn_cls"][0] == 0.0 and np.isfinite(history["roi_cls"][0])


@pytest.mark.slow
def test_mixed_precision_train_and_predict():
    x, y = _one_batch()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = FasterRCNN(3, backbone="tiny", seed=0)
        mixed.compile(evaluate_coco=False)
        history = mixed.fit(x, y, epochs=1, verbose=0).history
        assert all(np.isfinite(v[0]) for v in history.values())
        out = mixed.predict(x, verbose=0)
        assert np.isfinite(out["boxes"]).all() and np.isfinite(out["scores"]).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_balanced_sampler_is_seeded_and_respects_quotas():
    rng = np.random.default_rng(0)
    states = rng.choice([1, -1, -2], size=(3, 500), p=[0.1, 0.6, 0.3]).astype(np.int32)
    a = balanced_sample(states, 64, 0.25, seed=7)
    b = balanced_sample(states, 64, 0.25, seed=7)
    c = balanced_sample(states, 64, 0.25, seed=8)
    np.testing.assert_array_equal(a["indices"].numpy(), b["indices"].numpy())
    assert not np.array_equal(a["indices"].numpy(), c["indices"].numpy())
    idx, valid, pos = (a[k].numpy() for k in ("indices", "valid", "positive"))
    for i in range(3):
        chosen = states[i][idx[i][valid[i]]]
        assert (chosen != -2).all()
        assert len(set(idx[i][valid[i]])) == valid[i].sum()  # no duplicates
        np.testing.assert_array_equal(chosen == 1, pos[i][valid[i]])
        assert pos[i].sum() == min(16, (states[i] == 1).sum())
        assert valid[i].sum() == 64


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="Unknown FasterRCNN options"):
        FasterRCNN(3, backbone="tiny", rpn_topk=5)
    with pytest.raises(ValueError, match="roi_pooling"):
        FasterRCNN(3, backbone="tiny", roi_pooling="warp")
    with pytest.raises(ValueError, match="divisible by 32"):
        FasterRCNN(3, backbone="tiny", image_size=100)
    model = FasterRCNN(3, backbone="tiny")
    with pytest.raises(ValueError, match="classification_loss"):
        model.compile(classification_loss=keras.losses.BinaryCrossentropy())
    with pytest.raises(ValueError, match="deltas"):
        model.compile(box_loss="giou")


@pytest.mark.slow
def test_roi_pool_mode_trains():
    model = FasterRCNN(3, backbone="tiny", roi_pooling="pool", seed=0)
    model.compile(evaluate_coco=False)
    x, y = _one_batch()
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"]).all()
    assert model.predict(x, verbose=0)["boxes"].shape == (2, 100, 4)


def test_full_size_resnet50_fpn_builds_with_torchvision_parameter_count():
    model = FasterRCNN(90, backbone="resnet50_fpn", image_size=512)  # 91 outputs = torchvision COCO
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    print(f"FasterRCNN resnet50_fpn: {model.count_params():,} weights, {trainable:,} trainable")
    # torchvision fasterrcnn_resnet50_fpn: 41,755,286 parameters (its frozen BN statistics are buffers;
    # Keras counts BN gamma/beta as trainable and the moving statistics as non-trainable weights).
    assert 41_600_000 < trainable < 41_900_000
    names = {w.path.split("/")[-2] for w in model.box_head.weights}
    assert {"roi_heads_box_head_fc6", "roi_heads_box_predictor_bbox_pred"} <= names


@pytest.mark.slow
def test_full_size_one_training_step_512():
    x, y = _one_batch(2, 512)
    model = FasterRCNN(3, backbone="resnet50_fpn", image_size=512, seed=0)
    model.compile(evaluate_coco=False)
    history = model.fit(x, y, epochs=1, verbose=0).history
    assert all(np.isfinite(v[0]) for v in history.values())


@pytest.mark.slow
def test_generalisation_bar_and_svd_speedup():
    """The issue's bar: 200 images, defaults, 30 epochs -> held-out AP50 >= 0.5; SVD head timing."""
    x, y = synthetic_arrays(200, 128, seed=11)
    xt, yt = synthetic_arrays(100, 128, seed=11, split="test")
    model = FasterRCNN(3, backbone="tiny", image_size=128)
    model.compile()
    model.fit(x, y, batch_size=8, epochs=30, verbose=0)
    ap50 = coco_ap50(yt, model.predict(xt, verbose=0))
    print(f"held-out AP50: {ap50:.3f}")
    assert ap50 >= 0.5
    small = compress_box_head(model, 32)
    feats = tf.random.normal((1000, 7, 7, 64))
    timings = {}
    for name, m in (("full", model), ("svd32", small)):
        fn = tf.function(lambda f, m=m: m.box_head(f))
        fn(feats)
        start = time.perf_counter()
        for _ in range(20):
            fn(feats)
        timings[name] = (time.perf_counter() - start) / 20
    print(f"box head on 1000 RoIs: {timings}; AP50 svd32: {coco_ap50(yt, small.predict(xt, verbose=0)):.3f}")
