"""Dataset readers: COCO json, VOC xml, YOLO txt folders written to disk, tfds through mock data.

Each on-disk dataset is the synthetic dataset (exact boxes) written in the
format, so the reader must give back exactly the boxes that were drawn.
"""

import json
import logging
import pathlib
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kdet.data
from kdet.data.coco import read_coco
from kdet.data.voc import read_voc
from kdet.data.yolo_txt import read_yolo_txt

NAMES = ["rectangle", "ellipse", "triangle"]


@pytest.fixture(scope="module")
def arrays():
    return kdet.data.synthetic_arrays(4, (48, 64), seed=3)


def _valid(y, i):
    keep = y["labels"][i] >= 0
    return y["boxes"][i][keep], y["labels"][i][keep]


def _write_images(folder, x):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(x):
        Image.fromarray(image).save(folder / f"img{i}.png")


def write_coco(root, x, y, extra_annotations=(), category_offset=1):
    _write_images(root / "val2017", x)
    images, annotations = [], []
    for i in range(len(x)):
        images.append({"id": 100 + i, "file_name": f"img{i}.png", "height": x.shape[1], "width": x.shape[2]})
        for box, label in zip(*_valid(y, i)):
            x1, y1, x2, y2 = box.tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i,
                                "category_id": 2 * int(label) + category_offset,  # ids with gaps, like COCO
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0, "area": (x2 - x1) * (y2 - y1)})
    annotations += list(extra_annotations)
    categories = [{"id": 2 * k + category_offset, "name": n} for k, n in enumerate(NAMES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _check_stream(ds, x, y):
    count = 0
    for i, (image, target) in enumerate(ds):
        boxes, labels = _valid(y, i)
        np.testing.assert_array_equal(image.numpy(), x[i])
        np.testing.assert_allclose(target["boxes"].numpy(), boxes, atol=1e-4)
        np.testing.assert_array_equal(target["labels"].numpy(), labels)
        count += 1
    assert count == len(x)


# ------------------------------------------------------------------ COCO
def test_coco_folder_round_trip(tmp_path, arrays):
    x, y = arrays
    write_coco(tmp_path, x, y)
    ds = kdet.data.coco(tmp_path, split="validation")
    _check_stream(ds, x, y)
    records = read_coco(tmp_path / "annotations" / "instances_val2017.json")
    assert records.class_names == NAMES and records.problems == []


def test_coco_batched_is_padded(tmp_path, arrays):
    x, y = arrays
    write_coco(tmp_path, x, y)
    images, target = next(iter(kdet.data.coco(tmp_path, "val", batch_size=4, max_boxes=5)))
    assert images.shape == (4, 48, 64, 3) and target["boxes"].shape == (4, 5, 4)
    np.testing.assert_array_equal(target["labels"].numpy()[:, 3:], -1)


BAD_ANNOTATIONS = [
    ({"id": 901, "image_id": 100, "category_id": 1, "bbox": [5, 5, -3, 4]}, "degenerate box"),
    ({"id": 902, "image_id": 999, "category_id": 1, "bbox": [5, 5, 3, 4]}, "image_id 999"),
    ({"id": 903, "image_id": 100, "category_id": 77, "bbox": [5, 5, 3, 4]}, "category_id 77"),
    ({"id": 904, "image_id": 100, "category_id": 1, "bbox": [5, "a", 3, 4]}, "non-numbers"),
    ({"id": 905, "image_id": 100, "category_id": 1}, "bbox None"),
]


@pytest.mark.parametrize("bad,message", BAD_ANNOTATIONS)
def test_coco_bad_annotation_raise_warn_skip(tmp_path, arrays, bad, message, caplog):
    x, y = arrays
    path = write_coco(tmp_path, x, y, extra_annotations=[bad])
    with pytest.raises(ValueError, match=rf"instances_val2017.json \(annotation id {bad['id']}\).*{message}"):
        read_coco(path, on_error="raise")
    with pytest.warns(UserWarning, match=message):
        records = read_coco(path, on_error="warn")
    assert len(records.problems) == 1 and message in records.problems[0]
    with caplog.at_level(logging.INFO, logger="kdet.data"), warnings.catch_warnings():
        warnings.simplefilter("error")  # skip: no warning, but logged and recorded
        records = read_coco(path, on_error="skip")
    assert message in caplog.text and len(records.problems) == 1
    # The good annotations are all still there.
    assert sum(len(b) for b in records.boxes) == int((y["labels"] >= 0).sum())


def test_coco_malformed_file_and_missing_image(tmp_path, arrays):
    x, y = arrays
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json: not a valid COCO json"):
        read_coco(bad, on_error="skip")
    path = write_coco(tmp_path / "c", x, y)
    (tmp_path / "c" / "val2017" / "img2.png").unlink()
    with pytest.raises(ValueError, match=r"image id 102.*img2.png does not exist"):
        read_coco(path, on_error="raise")
    with pytest.warns(UserWarning, match="img2.png"):
        assert len(read_coco(path)) == 3
    with pytest.raises(ValueError, match="on_error"):
        read_coco(path, on_error="ignore")


def test_coco_crowd_left_out_unless_asked(tmp_path, arrays):
    x, y = arrays
    crowd = {"id": 950, "image_id": 100, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 1}
    path = write_coco(tmp_path, x, y, extra_annotations=[crowd])
    n = int((y["labels"] >= 0).sum())
    assert sum(len(b) for b in read_coco(path).boxes) == n
    assert sum(len(b) for b in read_coco(path, include_crowd=True).boxes) == n + 1


# ------------------------------------------------------------------- VOC
def write_voc(root, x, y, names=NAMES, difficult_extra=False):
    _write_images(root / "JPEGImages", x)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(len(x)):
        objects = ""
        for box, label in zip(*_valid(y, i)):
            x1, y1, x2, y2 = (int(v) for v in box)
            # VOC: 1-based inclusive pixel indices.
            objects += (f"<object><name>{names[label]}</name><difficult>0</difficult><bndbox>"
                        f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                        "</bndbox></object>")
        if difficult_extra and i == 0:
            objects += ("<object><name>ellipse</name><difficult>1</difficult><bndbox><xmin>2</xmin>"
                        "<ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>")
        xml = (f"<annotation><filename>img{i}.png</filename><size><width>{x.shape[2]}</width>"
               f"<height>{x.shape[1]}</height><depth>3</depth></size>{objects}</annotation>")
        (root / "Annotations" / f"img{i}.xml").write_text(xml)
        ids.append(f"img{i}")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids) + "\n")


def test_voc_folder_round_trip(tmp_path, arrays):
    x, y = arrays
    write_voc(tmp_path, x, y, difficult_extra=True)
    _check_stream(kdet.data.voc(tmp_path, split="validation", class_names=NAMES), x, y)
    with_difficult = read_voc(tmp_path, "val", NAMES, include_difficult=True)
    assert len(with_difficult.boxes[0]) == len(_valid(y, 0)[1]) + 1


def test_voc_default_classes_and_unknown_class(tmp_path, arrays):
    x, y = arrays
    write_voc(tmp_path, x, y, names=["car", "dog", "person"])
    records = read_voc(tmp_path, "val")
    assert len(records.class_names) == 20
    assert records.class_names[records.labels[0][0]] in ("car", "dog", "person")
    with pytest.raises(ValueError, match=r"img0.xml: unknown class 'car'"):
        read_voc(tmp_path, "val", class_names=NAMES, on_error="raise")


def test_voc_malformed_xml_reported_with_file_name(tmp_path, arrays):
    x, y = arrays
    write_voc(tmp_path, x, y)
    (tmp_path / "Annotations" / "img1.xml").write_text("<annotation><filename>img1.png</file")
    (tmp_path / "Annotations" / "img3.xml").write_text(
        "<annotation><filename>img3.png</filename><object><name>ellipse</name><bndbox><xmin>9</xmin>"
        "<ymin>3</ymin><xmax>4</xmax><ymax>8</ymax></bndbox></object></annotation>")
    with pytest.raises(ValueError, match=r"img1.xml: not a readable VOC xml"):
        read_voc(tmp_path, "val", NAMES, on_error="raise")
    with pytest.warns(UserWarning) as record:
        records = read_voc(tmp_path, "val", NAMES, on_error="warn")
    messages = [str(w.message) for w in record]
    assert any("img1.xml" in m for m in messages) and any("img3.xml" in m and "degenerate" in m for m in messages)
    assert len(records) == 3 and len(records.boxes[-1]) == 0  # img3 kept, its bad box dropped
    with pytest.raises(FileNotFoundError, match="split"):
        read_voc(tmp_path, "train", NAMES)


# ------------------------------------------------------------------ YOLO
def write_yolo(root, x, y, split="val"):
    _write_images(root / "images" / split, x)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    h, w = x.shape[1:3]
    for i in range(len(x)):
        lines = []
        for box, label in zip(*_valid(y, i)):
            x1, y1, x2, y2 = box.tolist()
            lines.append(f"{label} {(x1 + x2) / 2 / w:.8f} {(y1 + y2) / 2 / h:.8f} {(x2 - x1) / w:.8f} "
                         f"{(y2 - y1) / h:.8f}")
        (root / "labels" / split / f"img{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")


def test_yolo_folder_round_trip(tmp_path, arrays):
    x, y = arrays
    write_yolo(tmp_path, x, y)
    _check_stream(kdet.data.yolo_txt(tmp_path, split="validation"), x, y)
    assert read_yolo_txt(tmp_path, "val").class_names == NAMES


def test_yolo_malformed_lines_reported_with_file_and_line(tmp_path, arrays):
    x, y = arrays
    write_yolo(tmp_path, x, y)
    label_file = tmp_path / "labels" / "val" / "img0.txt"
    good = label_file.read_text()
    label_file.write_text(good + "7 0.5 0.5 0.1 0.1\n1 0.5 oops 0.1 0.1\n0 0.5 0.5 0.1\n")
    (tmp_path / "labels" / "val" / "img1.txt").unlink()  # no label file: a background image
    with pytest.raises(ValueError, match=r"img0.txt:\d+: class 7"):
        read_yolo_txt(tmp_path, "val", on_error="raise")
    with pytest.warns(UserWarning):
        records = read_yolo_txt(tmp_path, "val")
    assert len(records.problems) == 3 and all("img0.txt:" in p for p in records.problems)
    assert len(records.boxes[0]) == len(_valid(y, 0)[1]) and len(records.boxes[1]) == 0


# ------------------------------------------------------------------ tfds
def _mock_examples(family):
    """Two examples with known relative yxyx boxes, in the tfds feature layout."""
    image = np.zeros((40, 80, 3), np.uint8)
    bbox = np.array([[0.25, 0.1, 0.5, 0.3], [0.0, 0.5, 1.0, 1.0]], np.float32)
    key, flag, _ = kdet.data.tfds.__globals__["TFDS_DATASETS"][family]
    objects = {"bbox": bbox, flag: np.array([False, True])}
    if family != "wider_face":
        objects["label"] = np.array([4, 2], np.int64)
    return [{"image": image, key: objects}, {"image": image[:20], key: {k: v[:0] for k, v in objects.items()}}]


@pytest.mark.parametrize("name,family", [("voc/2007", "voc"), ("voc/2012", "voc"), ("coco/2017", "coco"),
                                         ("wider_face", "wider_face")])
def test_tfds_mapped_to_kdet_convention(name, family):
    import tensorflow_datasets as tfds

    examples = _mock_examples(family)

    def as_dataset(self, split, **kwargs):
        assert split == "validation"
        return tf.data.Dataset.from_generator(
            lambda: iter(examples),
            output_signature={"image": tf.TensorSpec((None, None, 3), tf.uint8),
                              **{k: {f: tf.TensorSpec((None,) + np.shape(v)[1:], tf.as_dtype(v.dtype))
                                     for f, v in examples[0][k].items()} for k in examples[0] if k != "image"}})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
        (image, target), (_, empty) = list(kdet.data.tfds(name, split="val"))
        assert image.shape == (40, 80, 3)
        # rel yxyx (0.25, 0.1, 0.5, 0.3) of 40 x 80 -> xyxy pixels (8, 10, 24, 20); the flagged box is dropped.
        np.testing.assert_allclose(target["boxes"].numpy(), [[8, 10, 24, 20]], atol=1e-5)
        assert target["labels"].numpy().tolist() == ([0] if family == "wider_face" else [4])
        assert empty["boxes"].shape == (0, 4)
        (_, kept), _ = list(kdet.data.tfds(name, split="validation", keep_ignored=True))
        assert kept["boxes"].shape == (2, 4)
        images, batch = next(iter(kdet.data.tfds(name, "validation", image_size=32, batch_size=2, max_boxes=3)))
        assert images.shape == (2, 32, 32, 3) and batch["labels"].shape == (2, 3)


def test_tfds_unknown_name():
    with pytest.raises(ValueError, match="Unsupported tfds dataset 'mnist'"):
        kdet.data.tfds("mnist")


def test_readers_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        kdet.data.coco(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="not a VOC folder"):
        kdet.data.voc(tmp_path)
    with pytest.raises(ValueError, match="no class names"):
        kdet.data.yolo_txt(tmp_path, split=None)


def test_reader_module_import_paths_still_work():
    assert pathlib.Path(read_coco.__code__.co_filename).name == "coco.py"
    assert callable(kdet.data.coco) and callable(kdet.data.voc) and callable(kdet.data.tfds)


# ------------------------------------------------------------ COCO masks
def write_coco_masks(root, x, y):
    """COCO json whose segmentations cycle through compressed RLE, uncompressed RLE and polygons."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    from kdet.data.segmentation import mask_to_rle_counts

    path = write_coco(root, x, y)
    data = json.loads(path.read_text())
    anns = iter(data["annotations"])
    for i in range(len(x)):
        for k, mask in enumerate(y["masks"][i][y["labels"][i] >= 0]):
            ann = next(anns)
            kind = (ann["id"] + k) % 3
            if kind == 0:
                rle = mask_utils.encode(np.asfortranarray(mask))
                ann["segmentation"] = {"counts": rle["counts"].decode("ascii"), "size": rle["size"]}
            elif kind == 1:
                ann["segmentation"] = {"counts": mask_to_rle_counts(mask), "size": list(mask.shape)}
            else:  # a polygon around part of the object: pycocotools' rasterisation is the oracle
                x1, y1, x2, y2 = ann["bbox"][0], ann["bbox"][1], ann["bbox"][0] + ann["bbox"][2], \
                    ann["bbox"][1] + ann["bbox"][3]
                ann["segmentation"] = [[x1, y1 + 0.3, (x1 + x2) / 2 + 0.25, y2, x2, (y1 + y2) / 2, x2 - 1.5, y1]]
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def mask_arrays():
    return kdet.data.synthetic_arrays(4, (48, 64), seed=3, masks=True)


def test_coco_masks_equal_pycocotools_ann_to_mask(tmp_path, mask_arrays):
    from pycocotools.coco import COCO

    x, y = mask_arrays
    path = write_coco_masks(tmp_path, x, y)
    coco_api = COCO(str(path))
    ds = kdet.data.coco(tmp_path, split="validation", masks=True)
    kinds = set()
    for i, (image, target) in enumerate(ds):
        boxes, labels = _valid(y, i)
        np.testing.assert_allclose(target["boxes"].numpy(), boxes, atol=1e-4)
        masks = target["masks"].numpy()
        anns = coco_api.loadAnns(coco_api.getAnnIds(imgIds=100 + i))
        assert masks.shape == (len(anns), 48, 64) and masks.dtype == np.uint8
        for mask, ann, drawn in zip(masks, anns, y["masks"][i]):
            np.testing.assert_array_equal(mask, coco_api.annToMask(ann))
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                kinds.add("polygon")
            else:  # RLE: exactly the drawn shape
                kinds.add(type(segmentation["counts"]).__name__)
                np.testing.assert_array_equal(mask, drawn)
    assert kinds == {"polygon", "list", "str"}  # every segmentation kind was read


def test_coco_masks_are_resized_and_padded_with_the_boxes(tmp_path, mask_arrays):
    x, y = mask_arrays
    write_coco_masks(tmp_path, x, y)
    images, target = next(iter(kdet.data.coco(tmp_path, "val", masks=True, batch_size=4, max_boxes=5,
                                              image_size=(96, 128), resize_mode="stretch")))
    assert target["masks"].shape == (4, 5, 96, 128) and target["masks"].dtype == tf.uint8
    masks, labels, boxes = target["masks"].numpy(), target["labels"].numpy(), target["boxes"].numpy()
    assert not masks[labels < 0].any()
    for box, mask in zip(boxes[labels >= 0], masks[labels >= 0]):
        ys, xs = np.nonzero(mask)  # a 2x stretch: the mask still spans its (scaled) box
        assert xs.min() >= box[0] - 1 and xs.max() + 1 <= box[2] + 1
        assert ys.min() >= box[1] - 1 and ys.max() + 1 <= box[3] + 1
    plain = next(iter(kdet.data.coco(tmp_path, "val", batch_size=4, max_boxes=5)))[1]
    assert "masks" not in plain


@pytest.mark.parametrize("segmentation,message", [
    (None, "neither polygons"),
    ([[1, 2, 3, 4]], "at least 3"),
    ({"counts": [1, 2], "size": [48, 64]}, "sum to 3; expected height \\* width = 3072"),
    ({"counts": "abc", "size": [10, 10]}, "does not match the image size \\[48, 64\\]"),
])
def test_coco_bad_segmentation_is_reported(tmp_path, mask_arrays, segmentation, message):
    x, y = mask_arrays
    path = write_coco_masks(tmp_path, x, y)
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 990, "image_id": 100, "category_id": 1, "bbox": [1, 1, 5, 5],
                                "segmentation": segmentation})
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"annotation id 990\).*{message}"):
        read_coco(path, on_error="raise", masks=True)
    with pytest.warns(UserWarning, match=message):
        records = read_coco(path, masks=True)
    # The bad annotation is skipped with its box: masks stay row-aligned with the boxes.
    assert [len(s) for s in records.segmentations] == [len(b) for b in records.boxes]
    assert sum(map(len, records.boxes)) == int((y["labels"] >= 0).sum())
    read_coco(path, on_error="raise")  # boxes alone do not need a segmentation


# ------------------------------------------------------------ tfds masks
def _mock_with_masks(name):
    """One example of coco/2017_panoptic (panoptic PNG) or lvis (mask per object) with known masks."""
    image = np.zeros((40, 80, 3), np.uint8)
    want = np.zeros((3, 40, 80), np.uint8)
    want[0, 4:12, 8:24] = 1
    want[1, 20:40, 40:80] = 1            # the second object touches the bottom-right border
    bbox = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.1, 0.1]], np.float32)
    labels = np.array([3, 7, 1], np.int64)
    if name == "lvis":
        objects = {"bbox": bbox, "label": labels, "id": np.arange(3), "segmentation": want[..., None] * 255}
        return {"image": image, "objects": objects}, want, "objects"
    ids = np.array([5, 70000, 9], np.int64)  # 70000 = 112 + 17 * 256 + 1 * 256^2; id 9 has no pixels
    panoptic = np.zeros((40, 80, 3), np.uint8)
    panoptic[want[0] == 1] = (5, 0, 0)
    panoptic[want[1] == 1] = (112, 17, 1)
    want[2] = 0
    objects = {"bbox": bbox, "label": labels, "id": ids, "is_crowd": np.array([False, True, False])}
    return {"image": image, "panoptic_image": panoptic, "panoptic_objects": objects}, want, "panoptic_objects"


def _spec(value):
    if isinstance(value, dict):
        return {k: _spec(v) for k, v in value.items()}
    return tf.TensorSpec((None,) * np.ndim(value), tf.as_dtype(np.asarray(value).dtype))


@pytest.mark.parametrize("name", ["coco/2017_panoptic", "lvis"])
def test_tfds_masks(name):
    import tensorflow_datasets as tfds

    example, want, key = _mock_with_masks(name)

    def as_dataset(self, split, **kwargs):
        return tf.data.Dataset.from_generator(lambda: iter([example]), output_signature=_spec(example))

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
        (_, target), = list(kdet.data.tfds(name, split="val", masks=True, keep_ignored=True))
        np.testing.assert_array_equal(target["masks"].numpy(), want)
        assert target["labels"].numpy().tolist() == [3, 7, 1]
        np.testing.assert_allclose(target["boxes"].numpy()[1], [40, 20, 80, 40], atol=1e-4)
        (_, kept), = list(kdet.data.tfds(name, split="val", masks=True))
        dropped = [1] if name != "lvis" else []  # the crowd segment leaves with its box and label
        keep = [i for i in range(3) if i not in dropped]
        np.testing.assert_array_equal(kept["masks"].numpy(), want[keep])
        images, batch = next(iter(kdet.data.tfds(name, "val", masks=True, image_size=(20, 40), batch_size=1,
                                                 max_boxes=4, resize_mode="stretch")))
        assert batch["masks"].shape == (1, 4, 20, 40)
        # Halved by nearest-neighbour resizing: the first mask keeps its rectangle exactly.
        np.testing.assert_array_equal(batch["masks"].numpy()[0, 0], want[0, ::2, ::2])
        assert "masks" not in list(kdet.data.tfds(name, split="val"))[0][1]


def test_tfds_masks_unavailable_explains_where_to_find_them():
    with pytest.raises(ValueError, match=r"'coco/2017' does not have.*coco/2017_panoptic, lvis.*kdet.data.coco"):
        kdet.data.tfds("coco/2017", masks=True)
    with pytest.raises(ValueError, match="'voc/2007' does not have"):
        kdet.data.tfds("voc/2007", masks=True)


def test_coco_mask_of_an_image_whose_file_has_another_size(tmp_path, mask_arrays):
    x, y = mask_arrays
    path = write_coco_masks(tmp_path, x, y)
    Image.fromarray(x[0][:40]).save(tmp_path / "val2017" / "img0.png")  # the json still says 48 x 64
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"img0.png: mask 0 cannot be decoded at the image "
                                                             r"size \(40, 64\)"):
        list(kdet.data.coco(path, masks=True))
