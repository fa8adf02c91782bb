"""Mask R-CNN: learning (boxes and masks), detect() masks, save/load, XLA, mixed precision, bad input."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.data import synthetic_arrays
from kdet.layers.image_preprocessing import boxes_to_network
from kdet.metrics import coco_map
from kdet.models import MaskRCNN
from kdet.ops import paste_masks
from kdet.optimizers import Adam
from tests.helpers import coco_ap50, fit_one_batch
from tests.ops.test_roi import ref_roi_align

# Steps of the memorisation test (8 images, one batch per epoch) at a constant Adam 1e-3: box and mask
# AP50 reach 1.0 by 60 steps (0.97 at 50); compile()'s default warm-up needs about 80.
LEARNING_EPOCHS = 60


def mask_ap50(y, out) -> float:
    """Mask AP@0.5 (kdet.metrics.coco_map(iou_type="segm"), equal to pycocotools' segm evaluation)."""
    return coco_map(y, out, iou_type="segm")["AP50"]


@pytest.fixture(scope="module")
def trained():
    """The tiny configuration overfitted on 8 synthetic images with masks (shared by the tests below)."""
    keras.utils.set_random_seed(0)
    x, y = synthetic_arrays(8, 128, seed=0, masks=True)
    model = MaskRCNN(3, backbone="tiny", image_size=128, seed=1)
    model.compile(optimizer=Adam(1e-3, global_clipnorm=10.0), evaluate_coco=False, augment=None)
    history = fit_one_batch(model, x, y, LEARNING_EPOCHS)
    return model, x, y, history.history


@pytest.fixture(scope="module")
def fresh():
    """An untrained tiny model compiled with the defaults, run eagerly: one-step checks skip tracing."""
    keras.utils.set_random_seed(0)
    model = MaskRCNN(3, backbone="tiny", seed=0)
    model.compile(evaluate_coco=False, run_eagerly=True)
    return model


def _detect(model, images):
    """Eager inference (no predict-function tracing)."""
    return {k: v.numpy() for k, v in model(tf.constant(images, tf.float32), training=False).items()}


def test_learning_overfits_8_images_with_masks(trained):
    model, x, y, history = trained
    for name in ("rpn_cls", "rpn_box", "roi_cls", "roi_box", "roi_mask"):
        assert name in history and np.isfinite(history[name]).all()
    assert history["roi_mask"][-1] < 0.5 * history["roi_mask"][0]
    out = model.predict(x, verbose=0)
    assert out["masks"].shape == (8, 100, 28, 28) and out["masks"].dtype == np.float32
    valid = np.arange(100)[None] < out["num_detections"][:, None]
    assert (out["masks"][~valid] == 0).all() and 0 <= out["masks"].min() and out["masks"].max() <= 1
    box, mask = coco_ap50(y, out), mask_ap50(y, out)
    print(f"tiny Mask R-CNN after {LEARNING_EPOCHS} epochs on 8 images: box AP50 {box:.3f}, mask AP50 {mask:.3f}")
    assert box >= 0.9 and mask >= 0.8


def test_detect_pastes_masks_into_the_images_pixels(trained):
    model, x, y, _ = trained
    out = _detect(model, x[:1])
    n = int(out["num_detections"][0])
    want = paste_masks(out["masks"][:, :n], out["boxes"][:, :n], 128, 128, threshold=0.5).numpy()[0]
    det = model.detect(x[0])
    assert det["masks"].shape == (n, 128, 128) and det["masks"].dtype == np.uint8
    np.testing.assert_array_equal(det["masks"], want)
    # The best detection of each object covers its ground-truth mask.
    for gt_box, gt_mask in zip(y["boxes"][0][y["labels"][0] >= 0], y["masks"][0]):
        j = int(np.argmax(np.abs(det["boxes"] - gt_box).sum(-1) < 4))
        overlap = (det["masks"][j] & gt_mask).sum() / (det["masks"][j] | gt_mask).sum()
        assert overlap > 0.7
    # Another image size (stretched to the canvas and back): masks in that image's pixels.
    wide = np.concatenate([x[0], x[0][:, :64]], axis=1)
    assert model.detect(wide, score_threshold=0.5)["masks"].shape[1:] == (128, 192)


def test_save_load_xla_and_any_batch_size(trained, tmp_path):
    model, x, _, _ = trained
    want = _detect(model, x[:3])
    path = str(tmp_path / "maskrcnn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is MaskRCNN and loaded.get_config() == model.get_config()
    got = _detect(loaded, x[:3])
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-4, err_msg=key)
    xla = tf.function(lambda images: loaded(images, training=False), jit_compile=True)
    for batch in (1, 3):
        out = {k: v.numpy() for k, v in xla(tf.constant(x[:batch], tf.float32)).items()}
        n = out["num_detections"]
        np.testing.assert_array_equal(n, want["num_detections"][:batch])
        for i in range(batch):
            np.testing.assert_allclose(out["boxes"][i, :n[i]], want["boxes"][i, :n[i]], atol=1e-3)
            np.testing.assert_allclose(out["masks"][i, :n[i]], want["masks"][i, :n[i]], atol=1e-3)


def test_mask_targets_follow_the_frame():
    """Letterboxed input: RoIs in network pixels crop the input-pixel GT masks at the mapped-back boxes."""
    model = MaskRCNN(2, backbone="tiny", image_size=128, resize="letterbox")
    x, y = synthetic_arrays(1, (64, 96), num_classes=2, max_objects=2, seed=3, masks=True)
    frame = model.frame_of(x.astype(np.float32))
    rows = int((y["labels"][0] >= 0).sum())
    rois = boxes_to_network(y["boxes"][:, :rows], frame)   # the GT boxes as RoIs on the canvas
    got = model.roi_mask_targets(y["masks"][:, :rows], [list(range(rows))], rois, frame).numpy()[0]
    for r in range(rows):
        want = ref_roi_align(y["masks"][0, r, :, :, None].astype(np.float64), y["boxes"][0, r], 28, 1.0, 2, False)
        np.testing.assert_allclose(got[r], want[..., 0], atol=1e-4)


def test_images_without_objects_give_zero_mask_loss(fresh):
    x, _ = synthetic_arrays(2, 128, seed=3)
    empty = {"boxes": np.zeros((2, 3, 4), np.float32), "labels": np.full((2, 3), -1, np.int32),
             "masks": np.zeros((2, 3, 128, 128), np.uint8)}
    with tf.GradientTape() as tape:
        raw, frame = fresh.forward(x.astype(np.float32), training=True)
        losses = fresh.compute_losses(fresh.targets_to_network(empty, frame), raw, frame)
        total = tf.add_n(list(losses.values()))
    grads = tape.gradient(total, fresh.trainable_weights)
    assert float(losses["roi_mask"]) == 0.0 and float(losses["roi_cls"]) > 0
    assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)


def test_training_logs_leave_coco_keys_out_and_evaluate_reports_mask_ap(fresh):
    x, y = synthetic_arrays(2, 128, seed=3, masks=True)
    fresh.compile(run_eagerly=True)  # evaluate_coco=True, flip augmentation moving the masks
    history = fresh.fit(x, y, epochs=1, verbose=0).history
    assert set(history) == {"loss", "rpn_cls", "rpn_box", "roi_cls", "roi_box", "roi_mask"}
    logs = fresh.evaluate(x, y, verbose=0, return_dict=True)
    assert {"coco_map", "mask_AP", "roi_mask"} <= set(logs) and -1 <= logs["mask_AP"] <= 1
    fresh.compile(evaluate_coco=False, run_eagerly=True)


def test_mixed_precision_train_step_and_predict():
    keras.mixed_precision.set_global_policy("mixed_float16")  # conftest resets the policy
    x, y = synthetic_arrays(2, 128, seed=3, masks=True)
    mixed = MaskRCNN(3, backbone="tiny", seed=0)
    assert mixed.mask_head.layers[-1].compute_dtype == "float16"
    mixed.compile(evaluate_coco=False, run_eagerly=True)
    history = mixed.fit(x, y, epochs=1, verbose=0).history
    assert all(np.isfinite(v[0]) for v in history.values())
    out = _detect(mixed, x)
    assert out["masks"].dtype == np.float32 and np.isfinite(out["masks"]).all()


def test_bad_inputs_say_what_was_received_and_expected(fresh):
    x, y = synthetic_arrays(2, 128, seed=3, masks=True)
    with pytest.raises(ValueError, match=r"expected height x width \(128, 128\); received masks of \(64, 64\)"):
        fresh.fit(x, {**y, "masks": y["masks"][:, :, :64, :64]}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"one mask per box row: expected shape \(2, 3, H, W\).*received \(2, 2"):
        fresh.fit(x, {**y, "masks": y["masks"][:, :2]}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="MaskRCNN trains on instance masks: y needs 'masks'"):
        fresh.fit(x, {"boxes": y["boxes"], "labels": y["labels"]}, epochs=1, verbose=0)
    # A dataset is checked where the loss is traced, with the same messages.
    small = tf.data.Dataset.from_tensor_slices((x, {**y, "masks": y["masks"][:, :, :64, :64]})).batch(2)
    with pytest.raises(ValueError, match=r"expected height x width \(128, 128\); received masks of shape"):
        fresh.fit(small, epochs=1, verbose=0)
    few = tf.data.Dataset.from_tensor_slices((x, {**y, "masks": y["masks"][:, :2]})).batch(2)
    with pytest.raises(ValueError, match=r"expected 3 masks per image.*received masks of shape \(2, 2, 128, 128\)"):
        fresh.fit(few, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="mask_threshold"):
        MaskRCNN(3, backbone="tiny", mask_threshold=1.5)
    with pytest.raises(ValueError, match="mask_head_widths must list at least one"):
        MaskRCNN(3, backbone="tiny", mask_head_widths=())
    with pytest.raises(ValueError, match="Unknown MaskRCNN setting.*mask_head_widths"):
        MaskRCNN(3, backbone="tiny", mask_head_width=(8,))


def test_new_classes_keep_every_weight_but_the_classifiers():
    from kdet.zoo.loader import _rebuilt_with_classes, change_num_classes

    source = MaskRCNN(3, backbone="tiny", image_size=128, seed=0)
    target = change_num_classes(source, 5, lambda n: _rebuilt_with_classes(source, n), MaskRCNN.classifier_layers)
    assert target.num_classes == 5 and target.mask_head.output.shape[-1] == 6
    np.testing.assert_array_equal(np.asarray(target.mask_head.layers[1].kernel),
                                  np.asarray(source.mask_head.layers[1].kernel))


def test_full_size_resnet50_fpn_builds_with_torchvision_parameter_count():
    model = MaskRCNN(90, backbone="resnet50_fpn", image_size=512)  # 91 outputs = torchvision COCO
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    print(f"MaskRCNN resnet50_fpn: {model.count_params():,} weights, {trainable:,} trainable")
    # torchvision maskrcnn_resnet50_fpn: 44,401,393 parameters (frozen BN statistics are buffers there;
    # Keras counts BN gamma / beta as trainable and the moving statistics as non-trainable weights).
    assert 44_250_000 < trainable < 44_550_000
    assert model.mask_head.output.shape[1:] == (28, 28, 91)


@pytest.mark.slow
def test_full_size_one_training_step_512():
    x, y = synthetic_arrays(2, 512, seed=3, masks=True)
    model = MaskRCNN(3, backbone="resnet50_fpn", image_size=512, seed=0)
    model.compile(evaluate_coco=False)
    history = model.fit(x, y, epochs=1, verbose=0).history
    assert all(np.isfinite(v[0]) for v in history.values())


@pytest.mark.slow
def test_generalisation_bar():
    """The issue's bar: 200 images, compile() defaults, 30 epochs -> held-out mask AP50 >= 0.6."""
    x, y = synthetic_arrays(200, 128, seed=0, masks=True)
    xv, yv = synthetic_arrays(64, 128, seed=0, split="validation", masks=True)
    model = MaskRCNN(3, backbone="tiny", image_size=128)
    model.compile()
    start = time.perf_counter()
    model.fit(x, y, batch_size=8, epochs=30, verbose=0)
    seconds = time.perf_counter() - start
    held_out = model.predict(xv, verbose=0)
    box, mask = coco_ap50(yv, held_out), mask_ap50(yv, held_out)
    train = model.predict(x, verbose=0)
    print(f"training {seconds:.0f} s; train box / mask AP50 {coco_ap50(y, train):.3f} / {mask_ap50(y, train):.3f}; "
          f"held-out box / mask AP50 {box:.3f} / {mask:.3f}")
    assert mask >= 0.6
