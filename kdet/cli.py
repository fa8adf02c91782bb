"""The ``kdet`` command line: list the zoo, detect, export, evaluate, train.

Usage::

    kdet models [--pretrained] [--json]
    kdet detect IMAGE... --model NAME [--out DIR] [--score 0.5] [--weights PATH]
    kdet export NAME_OR_PATH --format litert|tf_saved_model --out PATH
    kdet eval NAME_OR_PATH --data coco:PATH | voc:PATH | tfds:NAME | synthetic[:N]
    kdet train CONFIG_OR_NAME --data ... --epochs N [--out model.keras] [--strategy multiworker]

``NAME_OR_PATH`` is anything ``kdet.load`` takes: a zoo name, a ``.keras``
file or a preset directory. Results go to stdout (JSON for detect/eval);
expected failures (missing file, unknown model, weights unavailable offline,
bad arguments) print one line on stderr and exit with status 2, without a
traceback (set ``KDET_DEBUG=1`` to get one).

TensorFlow's own logs (its C++ start-up lines: absl, oneDNN, CUDA probing,
cpu_feature_guard; its Python warnings) are kept off stderr unless
``--verbose`` is given, before or after the command's name.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import pathlib
import sys
import tempfile
from typing import Any, Iterator, Sequence

from kdet.errors import MissingExtraError, WeightsUnavailableError

EXIT_OK, EXIT_ERROR = 0, 2
DATA_HELP = ("dataset: coco:PATH (COCO json + images), voc:PATH (Pascal VOC folder), yolo:PATH (YOLO txt folder), "
             "tfds:NAME (TensorFlow Datasets), or synthetic[:N] (kdet's synthetic shapes)")


class CLIError(Exception):
    """An expected failure: reported as one line on stderr, exit status 2."""


_EXPECTED = (CLIError, ValueError, FileNotFoundError, NotADirectoryError, WeightsUnavailableError,
             MissingExtraError)
# Commands that never import TensorFlow (kept fast: no import to silence).
_NO_TENSORFLOW = ("models",)


# ----------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    """Prints the zoo (no TensorFlow import)."""
    from kdet.zoo import registry

    rows = []
    for name in registry.list_models(pretrained=True if args.pretrained else None):
        entry = registry.get_entry(name)
        size = "x".join(map(str, entry.input_size)) if entry.input_size else "any"
        rows.append({"name": name, "pretrained": entry.pretrained, "input_size": size,
                     "classes": entry.num_classes, "license": entry.license or "",
                     "metrics": dict(entry.metrics), "description": entry.description})
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    header = ("NAME", "WEIGHTS", "INPUT", "CLASSES", "DESCRIPTION")
    table = [header] + [(r["name"], "pretrained" if r["pretrained"] else "-", r["input_size"],
                         str(r["classes"] or "-"), r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


# ----------------------------------------------------------------- detect
def _load_model(name: str, weights: str | None = "default", precision: str = "default", **kwargs: Any):
    """``kdet.load``; ``precision`` "default" leaves it ``kdet.load``'s; None: the global Keras policy for zoo
    names, the saved precision for files; any other value is applied to files too (``with_settings``)."""
    import kdet
    from kdet.zoo import registry

    if precision != "default" and name in registry.list_models():
        return kdet.load(name, weights=weights, precision=precision, **kwargs)
    model = kdet.load(name, weights=weights, **kwargs)  # a .keras file or preset: its saved precision
    if precision not in ("default", None):
        from kdet.config import resolve_precision

        if resolve_precision(precision) != model.config.precision:
            model = model.with_settings(precision=precision)
    return model


def _as_xyxy(boxes, model, height: int, width: int):
    import numpy as np

    fmt = getattr(model, "bounding_box_format", "xyxy")
    if fmt == "xyxy" or len(boxes) == 0:
        return np.asarray(boxes, np.float32).reshape(-1, 4)
    from kdet.ops.boxes import convert_format

    return np.asarray(convert_format(boxes, fmt, "xyxy", height=height, width=width))


def _output_path(out_dir: pathlib.Path, image: pathlib.Path, used: set) -> pathlib.Path:
    path, n = out_dir / f"{image.stem}.png", 1
    while path in used:  # two inputs with the same stem
        path, n = out_dir / f"{image.stem}_{n}.png", n + 1
    used.add(path)
    return path


def cmd_detect(args: argparse.Namespace) -> int:
    """Detects objects in each image, prints JSON, optionally saves annotated copies."""
    images = [pathlib.Path(p) for p in args.images]
    for image in images:
        if not image.is_file():
            raise FileNotFoundError(f"image {str(image)!r} does not exist")
    from kdet.validation import check_probability

    score = check_probability("--score", args.score)
    model = _load_model(args.model, args.weights or "default", args.precision)
    class_names = getattr(model, "class_names", None)
    out_dir = pathlib.Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    import numpy as np

    from kdet.data.images import load_image
    from kdet.visualization import draw_detections

    results, used = [], set()
    for image_path in images:
        pixels = load_image(image_path)
        det = model.detect(pixels, score_threshold=score)
        boxes = _as_xyxy(det["boxes"], model, *pixels.shape[:2])
        record = {"image": str(image_path), "detections": []}
        for i in range(len(boxes)):
            label = int(det["labels"][i])
            item = {"box_xyxy": [round(float(v), 2) for v in boxes[i]],
                    "score": round(float(det["scores"][i]), 4), "label": label}
            if class_names and 0 <= label < len(class_names):
                item["class_name"] = class_names[label]
            if "landmarks" in det:
                item["landmarks"] = [[round(float(v), 2) for v in p] for p in det["landmarks"][i]]
            if "masks" in det:  # instance masks, pasted in the image's pixels (drawn with --out)
                item["mask_area"] = int(np.count_nonzero(det["masks"][i]))
            record["detections"].append(item)
        if out_dir is not None:
            path = _output_path(out_dir, image_path, used)
            draw_detections(pixels, {**det, "boxes": boxes}, class_names, path=path)
            record["annotated"] = str(path)
        results.append(record)
    print(json.dumps({"model": args.model, "score_threshold": score, "results": results}, indent=1))
    return EXIT_OK


# ----------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    """Exports a model with decoding and NMS inside the graph."""
    if args.quantization and args.format != "litert":
        raise CLIError("--quantization applies to --format litert only")
    model = _load_model(args.model, args.weights or "default", args.precision)
    kwargs = {"quantization": args.quantization} if args.quantization else {}
    model.export(args.out, format=args.format, **kwargs)
    print(args.out)
    return EXIT_OK


# ------------------------------------------------------- eval and train
def _dataset(spec: str, split: str, model, batch_size: int):
    """Opens ``--data`` (see DATA_HELP) as batches of (images, {"boxes", "labels"})."""
    import kdet.data

    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from kdet.data.synthetic import SHAPES

        size = model.image_size or (128, 128)
        count = int(arg) if arg else 64
        return kdet.data.synthetic(split, num_images=count, image_size=tuple(size),
                                   num_classes=min(model.num_classes, len(SHAPES)),
                                   batch_size=batch_size)
    readers = {"coco": "coco", "voc": "voc", "yolo": "yolo_txt", "tfds": "tfds"}
    if kind not in readers or not arg:
        raise CLIError(
            f"--data must be coco:PATH, voc:PATH, yolo:PATH, tfds:NAME or synthetic[:N]; received {spec!r}"
        )
    reader = getattr(kdet.data, readers[kind], None)
    if reader is None:
        raise CLIError(f"--data {kind}: kdet.data.{kind} is not available in this kdet version yet")
    if kind != "tfds" and not pathlib.Path(arg).exists():
        raise FileNotFoundError(f"--data {kind}: {arg!r} does not exist")
    options = {"split": split, "batch_size": batch_size, "image_size": model.image_size}
    params = inspect.signature(reader).parameters
    options = {k: v for k, v in options.items() if v is not None and k in params}
    dataset = reader(arg, **options)
    if "batch_size" not in options:  # images of any size: one per batch
        dataset = dataset.batch(1)
    return dataset


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluates COCO mAP and prints it as JSON."""
    model = _load_model(args.model, args.weights or "default", args.precision)
    from kdet.metrics import evaluate_coco

    dataset = _dataset(args.data, args.split, model, args.batch_size)
    metrics = evaluate_coco(model, dataset, bounding_box_format=model.bounding_box_format,
                            steps=args.steps)
    print(json.dumps({"model": args.model, "data": args.data,
                      "metrics": {k: round(float(v), 6) for k, v in metrics.items()}}, indent=1))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """Trains (or fine-tunes) a model and saves it as ``.keras`` (on the chief only, with several workers)."""
    from kdet.validation import check_positive_int

    epochs = check_positive_int("--epochs", args.epochs)
    if args.from_scratch and args.weights:
        raise CLIError("--from-scratch and --weights exclude each other")
    from kdet.distribute import fit_scope, get_strategy, save_on_chief

    # First: MultiWorkerMirroredStrategy (TF_CONFIG) must exist before TensorFlow runs anything.
    strategy = get_strategy(args.strategy)
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    with strategy.scope():
        # Trained in the global Keras policy (float32 unless set), as every model kdet builds for training.
        model = _load_model(args.model, weights=None if args.from_scratch else (args.weights or "default"),
                            precision=None, **kwargs)
        # No COCO metric during training: there is no validation split here, and the
        # metric cannot be attached to a model that is already built (e.g. loaded).
        model.compile(evaluate_coco=False)
    # --batch-size is the global batch. Every worker reads the data in the same order and
    # keeps its own part of each batch (tf.data's DATA sharding), so no example is seen twice.
    train = _dataset(args.data, "train", model, args.batch_size)
    if strategy.num_replicas_in_sync > 1:
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train = train.with_options(options)
    with fit_scope(model, strategy):
        model.fit(train, epochs=epochs, steps_per_epoch=args.steps, verbose=2)
    out = args.out or f"{pathlib.Path(args.model).name.removesuffix('.keras')}.keras"
    if save_on_chief(model, out, strategy):
        print(out)
    return EXIT_OK


# ----------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``kdet`` command (one sub-parser per command)."""
    import kdet

    parser = argparse.ArgumentParser(prog="kdet", description="kdet object-detection model zoo.")
    parser.add_argument("--version", action="version", version=f"kdet {kdet.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the models kdet.load knows")
    p.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("detect", help="detect objects in images; prints JSON")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", required=True, help="zoo name, .keras file or preset directory")
    p.add_argument("--out", metavar="DIR", help="save annotated images (PNG: boxes, labels, instance masks) into DIR")
    p.add_argument("--score", type=float, default=0.5, help="score threshold (default 0.5)")
    p.add_argument("--weights", metavar="PATH", help="weights file (default: the model's own)")
    _add_precision_flag(p, "default", "network precision (default: kdet.load's, bfloat16 where it is faster)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("export", help="export to SavedModel or LiteRT, NMS inside")
    p.add_argument("model", metavar="NAME_OR_PATH")
    p.add_argument("--format", required=True, choices=("litert", "tf_saved_model"))
    p.add_argument("--out", required=True, metavar="PATH", help="output directory or .tflite file")
    p.add_argument("--quantization", choices=("float16", "dynamic_int8", "int8"),
                   help="LiteRT quantization")
    p.add_argument("--weights", metavar="PATH")
    _add_precision_flag(p, "float32", "network precision of a SavedModel (default float32, which runs anywhere; "
                                      "LiteRT is always float32, its low precision is --quantization)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="COCO mAP of a model on a dataset; prints JSON")
    p.add_argument("model", metavar="NAME_OR_PATH")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--split", default="validation", help="dataset split (default validation)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, help="evaluate only this many batches")
    p.add_argument("--weights", metavar="PATH")
    _add_precision_flag(p, "default", "network precision (default: kdet.load's, bfloat16 where it is faster)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train or fine-tune a model, save it as .keras")
    p.add_argument("model", metavar="CONFIG_OR_NAME", help="zoo name, .keras file or preset directory")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, help="steps per epoch (default: the whole dataset)")
    p.add_argument("--num-classes", type=int, help="new number of classes (keeps all but the head)")
    p.add_argument("--weights", metavar="PATH", help="initial weights (default: pretrained)")
    p.add_argument("--from-scratch", action="store_true", help="random initial weights")
    p.add_argument("--out", metavar="PATH", help="output .keras file (written by the chief worker only)")
    # kdet.distribute.STRATEGIES, spelled out: building the parser must not import TensorFlow.
    p.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default="default",
                   help="tf.distribute strategy: mirrored = all local GPUs; multiworker = the cluster of "
                        "TF_CONFIG (run the same command on every worker)")
    p.set_defaults(func=cmd_train)
    _add_verbose_flag(parser, sub)
    return parser


def _add_precision_flag(p: argparse.ArgumentParser, default: str, help: str) -> None:
    # kdet.config.PRECISIONS + "auto", spelled out: building the parser must not import TensorFlow.
    p.add_argument("--precision", choices=("float32", "bfloat16", "float16", "auto"), default=default, help=help)


def _add_verbose_flag(parser: argparse.ArgumentParser, sub) -> None:
    """``--verbose`` before the command (``kdet --verbose detect``) or after it (``kdet detect ... -v``)."""
    text = "show TensorFlow's logs (hidden by default)"
    parser.add_argument("-v", "--verbose", action="store_true", help=text)
    for command_parser in sub.choices.values():
        # SUPPRESS: a sub-command without the flag must not reset the one given before it.
        command_parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=text)


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Any]:
    """Redirects file descriptor 2 (C++ logging included) into a temporary file; yields the file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def quiet_tensorflow(import_now: bool = True) -> None:
    """Keeps TensorFlow's logs off stderr for the rest of the process.

    ``TF_CPP_MIN_LOG_LEVEL=3`` silences TensorFlow's C++ logging from the
    moment absl logging is initialised; the lines written while the libraries
    load (oneDNN, CUDA probing, cpu_feature_guard, "All log messages before
    absl::InitializeLog() ...") go to file descriptor 2 before that, whatever
    the variable says, so ``import tensorflow`` runs with them captured, and
    they are printed only if the import fails. TensorFlow's Python logger is
    set to errors only.

    Args:
        import_now: import TensorFlow now (silenced). False only sets the
            variable and the logger, for commands that never import it.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if not import_now or "tensorflow" in sys.modules:
        return
    error, logs = None, ""
    with _stderr_captured() as sink:
        try:
            import tensorflow  # noqa: F401 - imported for its side effect, silenced
        except BaseException as caught:  # noqa: BLE001 - re-raised below, after the logs
            error = caught
            sink.seek(0)
            logs = sink.read().decode(errors="replace")
    if error is not None:
        sys.stderr.write(logs)  # why TensorFlow failed to load is in its logs
        raise error


def _is_missing_kdet_module(error: ImportError) -> bool:
    return bool(error.name) and error.name.startswith("kdet") and "not available" in str(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``kdet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 with argparse's one-line message
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        if not args.verbose:  # stderr is for kdet's own messages
            quiet_tensorflow(import_now=args.command not in _NO_TENSORFLOW)
        return args.func(args)
    except BrokenPipeError:  # e.g. `kdet detect ... | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - sorted into expected / unexpected below
        expected = isinstance(error, _EXPECTED) or (
            isinstance(error, ImportError) and _is_missing_kdet_module(error))
        if not expected or os.environ.get("KDET_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"kdet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
