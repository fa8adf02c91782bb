"""Evaluates a detector with COCO mAP (pycocotools conventions) and Pascal VOC AP (11-point and all-point).

    python examples/evaluate.py                               # trains a tiny RetinaNet, evaluates on synthetic
    python examples/evaluate.py --model run/final.keras --coco data/coco --split validation
    python examples/evaluate.py --model run/final.keras --voc VOCdevkit/VOC2007 --split test
"""

import argparse

import numpy as np

import kdet


def collect(model, dataset):
    """Runs the model over padded batches; returns concatenated GT and prediction dicts."""
    truths, preds = [], []
    for images, y in dataset:
        truths.append({k: v.numpy() for k, v in y.items()})
        preds.append({k: np.asarray(v) for k, v in model.predict_on_batch(images).items()})

    def cat(dicts, key):
        width = max(d[key].shape[1] for d in dicts)
        pad = [(0, 0), (0, 0)] + [(0, 0)] * (dicts[0][key].ndim - 2)
        fill = -1 if key == "labels" else 0
        return np.concatenate([np.pad(d[key], [pad[0], (0, width - d[key].shape[1])] + pad[2:],
                                      constant_values=fill) for d in dicts])

    y_true = {k: cat(truths, k) for k in ("boxes", "labels")}
    y_pred = {k: cat(preds, k) for k in ("boxes", "scores", "labels")}
    y_pred["num_detections"] = np.concatenate([p["num_detections"] for p in preds])
    return y_true, y_pred


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .keras file or zoo name (default: train a tiny RetinaNet)")
    parser.add_argument("--coco", help="a COCO folder or instances json")
    parser.add_argument("--voc", help="a VOC-format folder")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--fast", action="store_true", help="CI mode: tiny model, few images")
    args = parser.parse_args(argv)

    if args.model:
        model = kdet.load(args.model)
    else:
        x, y = kdet.data.synthetic_arrays(16 if args.fast else 200, 128, seed=0)
        model = kdet.models.RetinaNet(num_classes=3, backbone="tiny", image_size=128)
        model.compile()
        model.fit(x, y, batch_size=8, epochs=1 if args.fast else 30, verbose=0)
    size = model.image_size
    if args.coco:
        data = kdet.data.coco(args.coco, args.split, image_size=size, batch_size=8)
    elif args.voc:
        data = kdet.data.voc(args.voc, args.split, image_size=size, batch_size=8)
    else:
        data = kdet.data.synthetic("validation", 16 if args.fast else 100, size or 128, batch_size=8)
    y_true, y_pred = collect(model, data)
    coco = kdet.metrics.coco_map(y_true, y_pred)
    voc07 = kdet.metrics.voc_ap(y_true, y_pred, eleven_point=True)
    voc12 = kdet.metrics.voc_ap(y_true, y_pred, eleven_point=False)
    print("COCO: " + ", ".join(f"{k} {v:.3f}" for k, v in coco.items()))
    print(f"VOC mAP@0.5: 11-point {voc07['mAP']:.3f}, all-point {voc12['mAP']:.3f}")
    for label, ap in sorted(voc07["per_class"].items()):
        name = model.class_names[label] if model.class_names else label
        print(f"  class {name}: AP {ap:.3f}")
    return {"coco": coco, "voc07": voc07, "voc12": voc12}


if __name__ == "__main__":
    main()
