"""Training MTCNN from scratch: sample generation, OHEM, PNet -> RNet -> ONet.

Follows Zhang et al. 2016 (arXiv:1604.02878), Sec. II-C and III-A:

* crops around faces: IoU >= 0.65 with a face -> positive, 0.4..0.65 ->
  "part", < 0.3 -> negative (0.3..0.4 is discarded);
* classification on positives + negatives, box regression on positives +
  parts, landmark regression on positives that have landmarks;
* loss weights (det, box, landmark) = (1, 0.5, 0.5) for PNet/RNet and
  (1, 0.5, 1) for ONet (landmark weight 0 for PNet/RNet here: the released
  architectures have no landmark output);
* online hard example mining: per batch only the top 70% classification
  losses are back-propagated;
* RNet trains on PNet's proposals over the data (hard samples) plus random
  crops, ONet on PNet+RNet's proposals.

Data is any iterable of ``(image (H, W, 3) uint8, boxes (M, 4) xyxy pixels,
landmarks (M, 5, 2) or None)``; ``wider_face_samples`` reads WIDER FACE through
``tensorflow-datasets`` and ``synthetic_faces`` draws face-like test data.
Each stage trains with ``model.fit``.

Example:
    >>> data = synthetic_faces(64, seed=0)                       # doctest: +SKIP
    >>> detector, history = train_cascade(data, width=0.5)       # doctest: +SKIP
    >>> detector.detect(data[0][0])                              # doctest: +SKIP
"""

from __future__ import annotations

from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from kdet.models.mtcnn import cascade
from kdet.models.mtcnn.model import MTCNN
from kdet.models.mtcnn.networks import ONET_SIZE, PNET_CELL, RNET_SIZE, build_onet, build_pnet, build_rnet, logits_model
from kdet.ops.boxes import convert_format, iou_numpy
from kdet.optimizers import Adam

#: IoU bands of the paper (Sec. III-A).
POSITIVE_IOU, PART_IOU, NEGATIVE_IOU = 0.65, 0.4, 0.3
#: Loss weights (det, box, landmark) of the paper (Sec. II-C). The released PNet/RNet
#: (whose architecture kdet keeps for weight compatibility) have no landmark output,
#: so their landmark weight is 0 here instead of the paper's 0.5.
LOSS_WEIGHTS = {"pnet": (1.0, 0.5, 0.0), "rnet": (1.0, 0.5, 0.0), "onet": (1.0, 0.5, 1.0)}
#: Fraction of the classification losses kept by online hard example mining.
OHEM_RATIO = 0.7
STAGE_SIZES = {"pnet": PNET_CELL, "rnet": RNET_SIZE, "onet": ONET_SIZE}


# --------------------------------------------------------------------- data
def synthetic_faces(num_images: int, image_size: int = 64, max_faces: int = 2,
                    face_size: tuple[float, float] = (16, 30), seed: int = 0) -> list:
    """Draws face-like images with exact boxes and 5 landmarks.

    A face is a skin-toned ellipse with two dark eyes, a nose dot and a dark
    mouth, on a noisy background; landmarks are the eye centres, the nose and
    the mouth corners.

    Returns:
        list of (image (S, S, 3) uint8, boxes (M, 4) xyxy, landmarks (M, 5, 2)).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] + 0.5
    data = []
    for _ in range(num_images):
        image = rng.uniform(0, 255, 3) + rng.normal(0, 20, (image_size, image_size, 3))
        boxes, marks = [], []
        for _ in range(int(rng.integers(1, max_faces + 1))):
            for _attempt in range(20):
                s = rng.uniform(*face_size)
                x0, y0 = rng.uniform(0, image_size - s, 2)
                box = np.array([x0, y0, x0 + s, y0 + s], np.float32)
                if all(iou_numpy(box, b) == 0 for b in boxes):
                    break
            else:
                continue
            cx, cy, r = x0 + s / 2, y0 + s / 2, s / 2
            skin = np.array([225, 180, 150]) + rng.normal(0, 15, 3)
            image[((xx - cx) / (0.9 * r)) ** 2 + ((yy - cy) / r) ** 2 <= 1] = skin
            pts = np.array([[0.33, 0.38], [0.67, 0.38], [0.5, 0.6], [0.35, 0.78], [0.65, 0.78]])
            pts = np.array([x0, y0]) + pts * s
            for px, py in pts[:3]:
                image[(xx - px) ** 2 + (yy - py) ** 2 <= (0.07 * s) ** 2] = (40, 20, 20)
            mouth = (np.abs(yy - pts[3, 1]) <= 0.04 * s) & (xx >= pts[3, 0]) & (xx <= pts[4, 0])
            image[mouth] = (120, 20, 30)
            boxes.append(box)
            marks.append(pts.astype(np.float32))
        data.append((np.clip(image, 0, 255).astype(np.uint8), np.array(boxes, np.float32).reshape(-1, 4),
                     np.array(marks, np.float32).reshape(-1, 5, 2)))
    return data


def wider_face_samples(split: str = "train", data_dir: str | None = None,
                       max_images: int | None = None) -> Iterable:
    """Yields (image, boxes xyxy, None) from WIDER FACE via ``tfds.load("wider_face")``.

    WIDER FACE has no landmarks; ONet then learns landmarks only from data
    that has them (pass a mixture of iterables, e.g. with CelebA).
    """
    import tensorflow_datasets as tfds

    ds = tfds.load("wider_face", split=split, data_dir=data_dir)
    for i, example in enumerate(tfds.as_numpy(ds)):
        if max_images is not None and i >= max_images:
            return
        image = example["image"]
        h, w = image.shape[:2]
        boxes = convert_format(example["faces"]["bbox"], "rel_yxyx", "xyxy", height=h, width=w).numpy()
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        yield image, boxes[keep].reshape(-1, 4), None


def _label_crops(crops: np.ndarray, boxes: np.ndarray, landmarks):
    """Labels square crops (N, 4) against faces: 1 pos, -1 part, 0 neg, -2 discarded; + targets."""
    n = len(crops)
    labels = np.zeros(n, np.int32)
    box_t = np.zeros((n, 4), np.float32)
    mark_t = np.zeros((n, 10), np.float32)
    mark_m = np.zeros(n, np.float32)
    for i, crop in enumerate(crops):
        ious = [float(iou_numpy(crop, b)) for b in boxes]
        j = int(np.argmax(ious)) if ious else -1
        best = ious[j] if ious else 0.0
        if best >= POSITIVE_IOU:
            labels[i] = 1
        elif best >= PART_IOU:
            labels[i] = -1
        elif best >= NEGATIVE_IOU:
            labels[i] = -2
        if labels[i] in (1, -1):
            size = crop[2] - crop[0]
            box_t[i] = (boxes[j] - crop) / size
            if labels[i] == 1 and landmarks is not None and len(landmarks):
                rel = (landmarks[j] - crop[:2]) / size          # (5, 2)
                mark_t[i] = np.concatenate([rel[:, 0], rel[:, 1]])   # (x1..x5, y1..y5) as ONet
                mark_m[i] = 1.0
    return labels, box_t, mark_t, mark_m


def _random_crops(rng, boxes, height, width, per_face: int, negatives: int, min_side: int):
    """Perturbed crops around faces (positives/parts) and random crops (mostly negatives)."""
    crops = []
    for b in boxes:
        side = max(b[2] - b[0], b[3] - b[1])
        for _ in range(per_face):
            s = side * rng.uniform(0.8, 1.25)
            cx = (b[0] + b[2]) / 2 + rng.uniform(-0.2, 0.2) * side
            cy = (b[1] + b[3]) / 2 + rng.uniform(-0.2, 0.2) * side
            crops.append([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2])
    max_side = max(min_side + 1, min(height, width) // 2)
    for _ in range(negatives):
        s = rng.uniform(min_side, max_side)
        x0, y0 = rng.uniform(0, width - s), rng.uniform(0, height - s)
        crops.append([x0, y0, x0 + s, y0 + s])
    return np.array(crops, np.float32).reshape(-1, 4)


def generate_samples(data: Iterable, stage: str, per_face: int = 8, negatives_per_image: int = 8,
                     detector: MTCNN | None = None, seed: int = 0) -> dict:
    """Builds a stage's training crops from images with faces.

    Args:
        data: iterable of (image, boxes (M, 4) xyxy, landmarks (M, 5, 2) or None).
        stage: "pnet" (12 px), "rnet" (24 px) or "onet" (48 px).
        per_face, negatives_per_image: random crops per face / per image.
        detector: for RNet/ONet, the cascade trained so far: its PNet (for
            RNet) or RNet (for ONet) proposals are added as hard samples.

    Returns:
        dict of NumPy arrays: "images" (N, S, S, 3) normalised crops,
        "label" (N,) 1/0/-1 (part), "box" (N, 4), "landmarks" (N, 10),
        "landmark_mask" (N,).
    """
    if stage not in STAGE_SIZES:
        raise ValueError(f"stage must be one of {sorted(STAGE_SIZES)}; received {stage!r}.")
    size = STAGE_SIZES[stage]
    rng = np.random.default_rng(seed)
    parts = {k: [] for k in ("images", "label", "box", "landmarks", "landmark_mask")}
    for image, boxes, landmarks in data:
        h, w = image.shape[:2]
        crops = _random_crops(rng, boxes, h, w, per_face, negatives_per_image, PNET_CELL)
        if detector is not None:
            raw = detector.raw_outputs(tf.constant(image[None], tf.float32))
            if raw:
                _, valid, cand = raw["pnet" if stage == "rnet" else "rnet"]
                crops = np.concatenate([crops, cand[0].numpy()[valid[0].numpy()]])
        labels, box_t, mark_t, mark_m = _label_crops(crops, boxes, landmarks)
        keep = labels != -2
        if not keep.any():
            continue
        x = cascade.normalize(tf.constant(image[None]))
        patches = cascade.crop_patches(x, tf.constant(crops[keep][None]), size).numpy()
        for key, value in zip(parts, (patches, labels[keep], box_t[keep], mark_t[keep], mark_m[keep])):
            parts[key].append(value)
    if not parts["images"]:
        raise ValueError("No training samples could be generated: does the data hold faces?")
    return {k: np.concatenate(v) for k, v in parts.items()}


# ------------------------------------------------------------------- models
class StageTrainer(keras.Model):
    """Wraps PNet/RNet/ONet for ``fit`` with the multi-task loss and OHEM.

    Args:
        net: a network from ``networks.py`` (weights are shared, trained in place).
        stage: "pnet", "rnet" or "onet" (selects loss weights and outputs).
        ohem_ratio: fraction of the hardest classification losses kept per batch.
    """

    def __init__(self, net: keras.Model, stage: str, ohem_ratio: float = OHEM_RATIO, **kwargs):
        super().__init__(**kwargs)
        self.net = logits_model(net)
        self.stage = stage
        self.ohem_ratio = float(ohem_ratio)
        self.loss_weights = LOSS_WEIGHTS[stage]
        self.trackers = {n: keras.metrics.Mean(name=n) for n in ("cls_loss", "box_loss", "landmark_loss")}

    def call(self, x, training=None):
        outputs = self.net(x, training=training)
        box, logits = outputs[0], outputs[-1]
        marks = outputs[1] if self.stage == "onet" else tf.zeros((tf.shape(x)[0], 10))
        flat = lambda t, d: tf.reshape(t, (-1, d))  # PNet on 12x12 crops: (N, 1, 1, d)
        return {"box": flat(box, 4), "logits": flat(logits, 2), "landmarks": flat(marks, 10)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        label = tf.cast(y["label"], tf.int32)
        cls_mask = label >= 0                                   # positives and negatives
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(label, 0), y_pred["logits"])
        ce = tf.where(cls_mask, ce, 0.0)
        # OHEM: keep the top 70% losses among the classification samples of the batch.
        n_keep = tf.cast(tf.math.ceil(self.ohem_ratio * tf.reduce_sum(tf.cast(cls_mask, tf.float32))), tf.int32)
        top = tf.math.top_k(ce, k=tf.shape(ce)[0]).values
        cls_loss = tf.reduce_sum(top[:tf.maximum(n_keep, 1)]) / tf.cast(tf.maximum(n_keep, 1), tf.float32)
        box_mask = tf.cast(label != 0, tf.float32)              # positives and parts
        box_se = tf.reduce_sum(tf.square(y_pred["box"] - y["box"]), -1)
        box_loss = tf.reduce_sum(box_se * box_mask) / tf.maximum(tf.reduce_sum(box_mask), 1.0)
        mark_mask = tf.cast(y["landmark_mask"], tf.float32)
        mark_se = tf.reduce_sum(tf.square(y_pred["landmarks"] - y["landmarks"]), -1)
        mark_loss = tf.reduce_sum(mark_se * mark_mask) / tf.maximum(tf.reduce_sum(mark_mask), 1.0)
        for name, value in zip(self.trackers, (cls_loss, box_loss, mark_loss)):
            self.trackers[name].update_state(value)
        w = self.loss_weights
        return w[0] * cls_loss + w[1] * box_loss + w[2] * mark_loss

    @property
    def metrics(self):
        return [*super().metrics, *self.trackers.values()]


def train_stage(net: keras.Model, stage: str, samples: dict, epochs: int = 10, batch_size: int = 64,
                learning_rate: float = 1e-3, verbose: int = 0) -> keras.callbacks.History:
    """Fits one network on its generated samples with ``model.fit`` (Adam, OHEM)."""
    trainer = StageTrainer(net, stage)
    trainer.compile(optimizer=Adam(learning_rate))
    y = {k: samples[k] for k in ("label", "box", "landmarks", "landmark_mask")}
    return trainer.fit(samples["images"], y, epochs=epochs, batch_size=batch_size, shuffle=True,
                       verbose=verbose)


def train_cascade(data: Sequence, width: float = 1.0, epochs: Sequence[int] = (10, 10, 10),
                  batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0,
                  verbose: int = 0, **detector_kwargs):
    """Trains PNet, then RNet on PNet's hard samples, then ONet on PNet+RNet's.

    Args:
        data: sequence of (image, boxes (M, 4) xyxy, landmarks (M, 5, 2) or None);
            iterated three times (materialise generators with ``list``).
        width: channel multiplier of the networks.
        epochs: epochs of the PNet, RNet and ONet stages.
        **detector_kwargs: MTCNN arguments of the returned detector (and of
            the one mining hard samples), e.g. ``min_face_size``.

    Returns:
        (MTCNN with the trained networks, {"pnet"|"rnet"|"onet": History}).
    """
    data = list(data)
    nets = {"pnet": build_pnet(width), "rnet": build_rnet(width), "onet": build_onet(width)}
    detector = MTCNN(weights=None, width=width, **nets, **detector_kwargs)
    history = {}
    for i, stage in enumerate(("pnet", "rnet", "onet")):
        samples = generate_samples(data, stage, detector=None if stage == "pnet" else detector,
                                   seed=seed + i)
        history[stage] = train_stage(nets[stage], stage, samples, epochs[i], batch_size,
                                     learning_rate, verbose)
    return detector, history
