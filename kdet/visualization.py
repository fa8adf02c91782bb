"""Drawing detections on an image: boxes, class names, scores, landmarks and instance masks.

``draw_detections(image, model.detect(image), model.class_names)`` returns the
annotated image as a ``(H, W, 3)`` uint8 array (and saves it if ``path`` is
given), at the image's own resolution. Colours follow the label (matplotlib's
``tab10``), so one class has one colour across images.

What draws what:

- masks (``"masks"``: ``(n, H, W)`` uint8, one per detection, as
  ``Detector.detect`` returns for instance-segmentation models):
  ``keras.visualization.draw_segmentation_masks``, as translucent overlays
  (``draw_masks``);
- boxes, "name score" labels and landmarks: matplotlib.
  ``keras.visualization.draw_bounding_boxes`` needs OpenCV, which kdet does
  not install, draws every box in one colour and has no landmarks.

Another per-detection output (keypoints, say) is one more ``draw_*`` function
called from ``draw_detections``, as ``draw_masks`` is.

Example:
    >>> import kdet
    >>> from kdet.visualization import draw_detections
    >>> model = kdet.load("mtcnn")                                  # doctest: +SKIP
    >>> image = kdet.data.images.load_image("photo.jpg")            # doctest: +SKIP
    >>> drawn = draw_detections(image, model.detect(image), model.class_names,
    ...                         path="photo_faces.png")             # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

# Opacity of mask overlays: the object stays visible under its colour.
DEFAULT_MASK_ALPHA = 0.5
# matplotlib colour map of the labels; 10 well-separated colours, cycled.
PALETTE = "tab10"
BOX_LINE_WIDTH = 2  # points = pixels at the figure's DPI below
LABEL_FONT_SIZE = 8
LANDMARK_MARKER_SIZE = 8  # scatter area, points^2
_DPI = 100


def label_colours(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """RGB colours in ``0..1`` for ``labels``: ``(n, 3)`` float, one class one colour.

    Example:
        >>> label_colours([0, 10]).tolist() == label_colours([0, 0]).tolist()   # tab10 cycles
        True
    """
    import matplotlib

    colour_map = matplotlib.colormaps[PALETTE]
    return np.array([colour_map(int(label) % colour_map.N)[:3] for label in labels], np.float64).reshape(-1, 3)


def _as_rgb_uint8(image: Any) -> np.ndarray:
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"image must be one (H, W, 3) RGB image; received shape {pixels.shape}.")
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.round(pixels.astype(np.float32)), 0, 255).astype(np.uint8)
    return pixels


def draw_masks(image: Any, masks: Any, labels: Sequence[int] | np.ndarray,
               alpha: float = DEFAULT_MASK_ALPHA) -> np.ndarray:
    """Overlays instance masks on ``image`` as translucent colours (the label's colour).

    Where masks overlap, the first detection (the highest score, as
    ``detect`` sorts them) is on top.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in ``0..255``.
        masks: ``(n, H, W)``, nonzero inside each detection's object.
        labels: ``(n,)`` class labels (they pick the colours).
        alpha: opacity of the overlay, in ``[0, 1]``.

    Returns:
        ``(H, W, 3)`` uint8 image.

    Raises:
        ValueError: shapes that do not fit the image or each other, or ``alpha`` outside ``[0, 1]``.

    Example:
        >>> image = np.zeros((4, 4, 3), np.uint8)
        >>> mask = np.zeros((1, 4, 4), np.uint8); mask[0, :2] = 1
        >>> out = draw_masks(image, mask, [0], alpha=1.0)
        >>> out[0, 0].tolist() != [0, 0, 0], out[3, 3].tolist()
        (True, [0, 0, 0])
    """
    import keras

    pixels = _as_rgb_uint8(image)
    masks = np.asarray(masks)
    labels = np.asarray(labels).reshape(-1)
    height, width = pixels.shape[:2]
    if masks.ndim != 3 or masks.shape[1:] != (height, width) or len(masks) != len(labels):
        raise ValueError(f"masks must be (n, {height}, {width}) with one mask per label ({len(labels)}); "
                         f"received shape {masks.shape}.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; received {alpha!r}.")
    if len(masks) == 0:
        return pixels.copy()
    # One index map (0 = no object, i + 1 = detection i) for Keras' semantic-mask drawer; painting
    # in reverse order leaves the first (best) detection on top where masks overlap.
    index = np.zeros((height, width), np.int32)
    for i in range(len(masks) - 1, -1, -1):
        index[masks[i] > 0] = i + 1
    colours = {0: (0, 0, 0), **{i + 1: tuple(255 * c) for i, c in enumerate(label_colours(labels))}}
    drawn = keras.visualization.draw_segmentation_masks(
        pixels[None].astype(np.float32), index[None, ..., None], num_classes=len(masks) + 1,
        color_mapping=colours, alpha=float(alpha), ignore_index=0, data_format="channels_last")
    return np.asarray(drawn)[0].astype(np.uint8)


def _checked_detections(detections: Mapping[str, Any], score_threshold: float | None) -> dict[str, np.ndarray]:
    missing = {"boxes", "scores", "labels"} - set(detections)
    if missing:
        raise ValueError(f"detections must hold boxes, scores and labels (the dict of Detector.detect); "
                         f"missing {sorted(missing)}.")
    out = {key: np.asarray(value) for key, value in detections.items() if value is not None}
    count = len(out["boxes"])
    out["boxes"] = out["boxes"].reshape(-1, 4).astype(np.float32)
    for key, value in out.items():
        if len(value) != count:
            raise ValueError(f"detections[{key!r}] has {len(value)} rows but there are {count} boxes.")
    if score_threshold is not None:
        keep = out["scores"] >= score_threshold
        out = {key: value[keep] for key, value in out.items()}
    return out


def draw_detections(image: Any, detections: Mapping[str, Any], class_names: Sequence[str] | None = None, *,
                    bounding_box_format: str = "xyxy", score_threshold: float | None = None,
                    mask_alpha: float = DEFAULT_MASK_ALPHA, path: str | os.PathLike | None = None) -> np.ndarray:
    """Draws one image's detections: masks, boxes, "name score" labels and landmarks.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in ``0..255`` (the image the
            detections are in the pixels of).
        detections: the dict of ``Detector.detect``: ``boxes`` ``(n, 4)``,
            ``scores`` ``(n,)``, ``labels`` ``(n,)``, optionally ``landmarks``
            ``(n, K, 2)`` (x, y pixels) and ``masks`` ``(n, H, W)`` uint8.
        class_names: label names; labels without a name are written as numbers.
        bounding_box_format: format of ``boxes`` (any of ``keras.utils.bounding_boxes``).
        score_threshold: draw only detections scoring at least this; None: all.
        mask_alpha: opacity of the mask overlays.
        path: if given, the drawing is also saved there (format from the suffix, e.g. PNG).

    Returns:
        ``(H, W, 3)`` uint8: the annotated image, pixel for pixel over ``image``.

    Raises:
        ValueError: an image that is not ``(H, W, 3)``, detections with missing
            keys or rows that disagree, an unknown box format.

    Example:
        >>> image = np.full((60, 80, 3), 128, np.uint8)
        >>> det = {"boxes": [[10, 10, 50, 40]], "scores": [0.9], "labels": [0]}
        >>> draw_detections(image, det, ["cat"]).shape
        (60, 80, 3)
    """
    pixels = _as_rgb_uint8(image)
    height, width = pixels.shape[:2]
    det = _checked_detections(detections, score_threshold)
    boxes = det["boxes"]
    if bounding_box_format != "xyxy" and len(boxes):
        from kdet.ops.boxes import convert_format

        boxes = np.asarray(convert_format(boxes, bounding_box_format, "xyxy", height=height, width=width))
    if "masks" in det:
        pixels = draw_masks(pixels, det["masks"], det["labels"], alpha=mask_alpha)
    drawn = _draw_boxes(pixels, boxes, det["scores"], det["labels"], class_names, det.get("landmarks"))
    if path is not None:
        from PIL import Image

        Image.fromarray(drawn).save(os.fspath(path))
    return drawn


def _draw_boxes(pixels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                class_names: Sequence[str] | None, landmarks: np.ndarray | None) -> np.ndarray:
    """Boxes, labels and landmarks over ``pixels`` with matplotlib, rendered 1:1 to an array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    height, width = pixels.shape[:2]
    # Agg truncates the canvas size to whole pixels: a hair more keeps e.g. 29 px from becoming 28.
    figure = Figure(figsize=((width + 1e-3) / _DPI, (height + 1e-3) / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    # Pixel i spans [i, i + 1], the continuous coordinates the boxes are in; 1:1, no resampling blur.
    axes.imshow(pixels, interpolation="nearest", extent=(0, width, height, 0))
    axes.set_axis_off()
    for i, (box, score, label, colour) in enumerate(zip(boxes, scores, labels, label_colours(labels))):
        x1, y1, x2, y2 = (float(v) for v in box)
        axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                                 linewidth=BOX_LINE_WIDTH))
        label = int(label)
        name = class_names[label] if class_names and 0 <= label < len(class_names) else str(label)
        axes.text(x1, y1, f"{name} {float(score):.2f}", color="white", fontsize=LABEL_FONT_SIZE, va="bottom",
                  bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
        if landmarks is not None:
            axes.scatter(landmarks[i][:, 0], landmarks[i][:, 1], s=LANDMARK_MARKER_SIZE, color=colour)
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[:height, :width, :3]
