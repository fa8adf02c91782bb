"""MTCNN training pipeline: sample generation, OHEM stages, WIDER FACE reader, learning bar."""

import numpy as np
import pytest

from kdet.models.mtcnn.training import (
    StageTrainer, generate_samples, synthetic_faces, train_cascade, wider_face_samples,
)
from kdet.models.mtcnn.networks import build_pnet

TINY = dict(min_face_size=14, thresholds=(0.5, 0.6, 0.6), pnet_top_k=200, rnet_candidates=64,
            onet_candidates=16, max_detections=8)


def _ground_truth(data, max_boxes=2):
    boxes = np.zeros((len(data), max_boxes, 4), np.float32)
    labels = -np.ones((len(data), max_boxes), np.int32)
    for i, (_, b, _) in enumerate(data):
        boxes[i, :len(b)] = b
        labels[i, :len(b)] = 0
    return {"boxes": boxes, "labels": labels}


def test_generated_samples_follow_the_iou_bands():
    data = synthetic_faces(4, seed=3)
    samples = generate_samples(data, "onet", per_face=10, negatives_per_image=10)
    assert samples["images"].shape[1:] == (48, 48, 3)
    labels = samples["label"]
    assert {0, 1, -1} <= set(labels.tolist())
    # positives have landmark targets inside the crop, negatives have none
    assert np.all(samples["landmark_mask"][labels == 1] == 1)
    assert np.all(samples["landmark_mask"][labels != 1] == 0)
    pos_marks = samples["landmarks"][labels == 1]
    assert pos_marks.min() > -0.3 and pos_marks.max() < 1.3
    assert np.all(samples["box"][labels == 0] == 0)
    with pytest.raises(ValueError):
        generate_samples(data, "xnet")


def test_ohem_keeps_the_hardest_seventy_percent():
    trainer = StageTrainer(build_pnet(0.25), "pnet")
    y = {"label": np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, -1]), "box": np.zeros((10, 4), np.float32),
         "landmarks": np.zeros((10, 10), np.float32), "landmark_mask": np.zeros(10, np.float32)}
    logits = np.zeros((10, 2), np.float32)
    logits[:5, 1] = np.arange(5)            # increasingly confident on five samples
    pred = {"logits": logits, "box": np.zeros((10, 4), np.float32), "landmarks": np.zeros((10, 10), np.float32)}
    loss = float(trainer.compute_loss(y=y, y_pred=pred))
    ce = np.log1p(np.exp(-np.where(y["label"][:9] == 1, 1, -1) * logits[:9, 1]))
    expected = np.sort(ce)[::-1][:7].mean()  # ceil(0.7 * 9) = 7 hardest
    assert loss == pytest.approx(expected, rel=1e-5)


def test_wider_face_reader_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        data = list(wider_face_samples(max_images=2))
    assert len(data) == 2
    image, boxes, marks = data[0]
    assert image.ndim == 3 and boxes.shape[1] == 4 and marks is None
    assert np.all(boxes[:, 2] <= image.shape[1]) and np.all(boxes[:, 3] <= image.shape[0])
    samples = generate_samples(data, "pnet", per_face=2, negatives_per_image=2)
    assert samples["images"].shape[1:] == (12, 12, 3)


def _learning_run(num_train, epochs):
    from kdet.metrics import coco_map

    train = synthetic_faces(num_train, seed=0)
    test = synthetic_faces(10, seed=1)
    detector, history = train_cascade(train, width=0.5, epochs=epochs, **TINY)
    for stage, h in history.items():
        losses = h.history["loss"]
        assert losses[-1] < 0.7 * losses[0], (stage, losses)
    out = detector.predict(np.stack([t[0] for t in test]).astype(np.float32))
    return coco_map(_ground_truth(test), out)["AP50"], out


def test_tiny_cascade_learns_synthetic_faces():
    ap50, out = _learning_run(num_train=32, epochs=(12, 10, 10))
    assert out["landmarks"].shape[-2:] == (5, 2)
    assert ap50 >= 0.9


@pytest.mark.slow
def test_tiny_cascade_learning_bar_more_data():
    ap50, _ = _learning_run(num_train=96, epochs=(20, 20, 20))
    assert ap50 >= 0.95
