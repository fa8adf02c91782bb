"""Inference speed: kdet RetinaNet vs keras-cv's and keras-hub's RetinaNet, and every kdet architecture alone.

Usage:
    python benchmarks/inference.py            # full run, writes docs/benchmarks/inference.md
    python benchmarks/inference.py --quick    # tiny models, seconds (CI runs it)
    python benchmarks/inference.py --out PATH
    python benchmarks/inference.py --skip-archs --batches 1 --repeats 2   # a shorter peer comparison

Peers (full mode), all ResNet-50-FPN RetinaNets, random-initialised, 80
classes, built from their classes offline (no preset, no download):
kdet ``RetinaNet(80, backbone="resnet50", image_size=512)``;
``keras_cv.models.RetinaNet`` on ``keras_cv.models.ResNetBackbone`` with
ResNet-50's configuration (bottleneck blocks 3-4-6-3; keras-cv's
``ResNet50Backbone`` alias resolves a preset through Kaggle); and keras-hub's
``RetinaNetObjectDetector`` on ``RetinaNetBackbone(ResNetBackbone(...))``
with the configuration of its ``retinanet_resnet50_fpn_coco`` preset (P3-P7,
``use_p5=False``), when the optional ``bench`` extra (keras-hub) is
installed. Every pipeline takes raw pixels and includes its normalisation,
decoding and NMS (keras-cv and keras-hub through ``decode_predictions``, what
their ``predict`` runs).

Two modes per batch (1 and 8), timed round-robin in one process so machine
load hits all alike: **default**, what each library's ``predict`` runs on a
CPU-only machine without arguments (kdet: ``model.infer`` on
``inference_compiler()``'s path; keras-cv and keras-hub: Keras resolves
``jit_compile="auto"`` to a ``tf.function`` graph on CPU), and **XLA**
(``jit_compile=True``). keras-cv's NMS is TensorFlow's CPU kernel, which XLA
cannot compile: there its network is XLA-compiled and its decoding runs as a
graph (marked in the notes).

FLOPs are counted with ``tf.compat.v1.profiler`` (``float_operation``) on the
graph of a concrete function of the network at batch 1; the profiler counts
2 FLOPs per multiply-add of Conv2D/MatMul/etc. and skips ops without a FLOP
statistic (NMS loops, gathers), so figures are the network's arithmetic.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import (ARCHS, NUM_CLASSES, _models, architecture_runs, bench_parser,  # noqa: E402
                     interleaved_median_ms, machine_summary, markdown_table, publish, target)

TARGET_RATIO = 1.25  # issue 9: kdet RetinaNet inference >= 1.25x keras-cv on CPU with XLA
TARGET_KERAS_HUB = 1.5  # issue 19: kdet RetinaNet inference >= 1.5x keras-hub's RetinaNetObjectDetector
# keras.applications / torchvision ResNet-50: bottleneck blocks per stage.
RESNET50 = dict(stackwise_filters=[64, 128, 256, 512], stackwise_blocks=[3, 4, 6, 3],
                stackwise_strides=[1, 2, 2, 2], block_type="block")  # keras-cv calls bottlenecks "block"
# A small ResNet V1 for the quick mode and the learning run (one narrow bottleneck per stage).
SMALL_RESNET = dict(stackwise_filters=[16, 32, 64, 128], stackwise_blocks=[1, 1, 1, 1],
                    stackwise_strides=[1, 2, 2, 2], block_type="block")
# keras-hub's ResNet-50 (its resnet_50_imagenet preset, the encoder of retinanet_resnet50_fpn_coco).
HUB_RESNET50 = dict(input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
                    stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2],
                    block_type="bottleneck_block", use_pre_activation=False)
# keras-hub requires 64 filters in the first stage; one bottleneck per stage keeps the quick mode small.
HUB_SMALL_RESNET = {**HUB_RESNET50, "stackwise_num_filters": [64, 64, 64, 64], "stackwise_num_blocks": [1, 1, 1, 1]}
# ImageNet statistics of keras-hub's RetinaNet image converter (pixels / 255, then per-channel mean and std).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def keras_cv_retinanet(image_size: int, num_classes: int, config: dict):
    """keras-cv RetinaNet with a ResNet V1 backbone built from its class (no preset, no download)."""
    import keras_cv

    backbone = keras_cv.models.ResNetBackbone(include_rescaling=True, input_shape=(image_size, image_size, 3),
                                              **config)
    return keras_cv.models.RetinaNet(num_classes=num_classes, bounding_box_format="xyxy", backbone=backbone)


def keras_hub_retinanet(image_size: int, num_classes: int, config: dict):
    """keras-hub RetinaNetObjectDetector as its ResNet-50-FPN preset, from its classes; None without keras-hub."""
    try:
        import keras_hub
    except ImportError:
        return None
    shape = (image_size, image_size, 3)
    encoder = keras_hub.models.ResNetBackbone(image_shape=shape, **config)
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=7, use_p5=False,
                                                  image_shape=shape)
    return keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=num_classes,
                                                    bounding_box_format="xyxy")


def keras_hub_converter():
    """keras-hub's image converter with its RetinaNet statistics: raw pixels in, normalised images out."""
    import keras_hub

    return keras_hub.layers.RetinaNetImageConverter(
        scale=[1 / (255 * s) for s in IMAGENET_STD], offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])


def peer_runners(model, normalise=None):
    """A peer's (default, XLA, XLA network + graph decoding) pipelines: normalise, network, decode_predictions."""
    import tensorflow as tf

    prepare = normalise or (lambda x: x)

    def full(x):
        images = prepare(x)
        return model.decode_predictions(model(images, training=False), images)

    net = tf.function(lambda x: model(prepare(x), training=False), jit_compile=True)
    decode = tf.function(lambda raw, x: model.decode_predictions(raw, prepare(x)))
    return tf.function(full), tf.function(full, jit_compile=True), lambda x: decode(net(x), x)


def build_peers(image_size: int, quick: bool):
    """(kdet, {peer name: model}) of the pair at ``image_size``; keras-hub only when installed."""
    import keras

    keras.utils.set_random_seed(0)
    classes = 3 if quick else NUM_CLASSES
    ours = (_models().RetinaNet(3, backbone="tiny", image_size=image_size) if quick
            else _models().RetinaNet(NUM_CLASSES, backbone="resnet50", image_size=image_size))
    peers = {"keras-cv": keras_cv_retinanet(image_size, classes, SMALL_RESNET if quick else RESNET50)}
    hub = keras_hub_retinanet(image_size, classes, HUB_SMALL_RESNET if quick else HUB_RESNET50)
    if hub is not None:
        peers["keras-hub"] = hub
    return ours, peers


def pair_rows(image_size: int, batches, repeats: int, quick: bool):
    """Times kdet vs its peers on the default path and under XLA; returns table rows, notes, parameters.

    kdet runs twice: at the precision ``kdet.load`` gives a pretrained model (bfloat16 where
    ``bfloat16_pays()``; "XLA" is then what ``compile(jit_compile=True)`` resolves to), and in float32.
    """
    import tensorflow as tf

    ours, peers = build_peers(image_size, quick)
    fast = ours.with_settings(precision="bfloat16") if ours.bfloat16_pays() else ours
    kdets = {"": (fast, fast.inference_compiler(jit_compile=True))}  # mode suffix -> (model, its XLA-mode path)
    if fast is not ours:
        kdets[", kdet float32"] = (ours, "xla")
    runners = {name: peer_runners(model, keras_hub_converter() if name == "keras-hub" else None)
               for name, model in peers.items()}
    rows, notes = [], []
    for batch in batches:
        x = tf.constant(np.random.default_rng(batch).uniform(0, 255, (batch, image_size, image_size, 3)),
                        tf.float32)
        fns = {}
        for model, xla_path in kdets.values():
            fns[f"kdet {model.config.precision} default"] = lambda m=model: m.infer(x)
            fns[f"kdet {model.config.precision} XLA"] = lambda m=model, c=xla_path: m.infer(x, compiler=c)
        for name, (default, xla, split) in runners.items():
            try:
                xla(x)
            except Exception as err:
                xla = split
                notes.append(f"{name}'s full pipeline does not compile under XLA ({type(err).__name__}); its "
                             "network is XLA-compiled and its decoding + NMS run as a graph.")
            fns[f"{name} default"] = lambda f=default: f(x)
            fns[f"{name} XLA"] = lambda f=xla: f(x)
        ips = {k: 1e3 * batch / v for k, v in interleaved_median_ms(fns, repeats=repeats, warmup=1).items()}
        for suffix, (model, xla_path) in kdets.items():
            for mode in ("default", "XLA"):
                path = model.inference_compiler() if mode == "default" else xla_path
                kdet_ips = ips[f"kdet {model.config.precision} {mode}"]
                row = [batch, mode + suffix, f"{path}, {model.config.precision}", kdet_ips]
                row += [ips.get(f"{name} {mode}", "-") for name in ("keras-cv", "keras-hub")]
                row += [kdet_ips / ips[f"{name} {mode}"] if f"{name} {mode}" in ips else "-"
                        for name in ("keras-cv", "keras-hub")]
                rows.append(tuple(row))
        print(f"B={batch}: " + ", ".join(f"{k} {v:.2f} img/s" for k, v in ips.items()), flush=True)
    if "keras-hub" not in peers:
        notes.append("keras-hub is not installed (`pip install -e .[bench]`): its column is empty.")
    if fast is not ours:
        notes.append("kdet's first two rows per batch are at the precision `kdet.load` gives a pretrained RetinaNet "
                     "on this machine (bfloat16: `model.bfloat16_pays()`), the path users get; the "
                     "`kdet float32` rows are the same network in float32 (`precision=\"float32\"`). keras-cv and "
                     "keras-hub compute in float32 (the global Keras policy) in every row.")
    params = {"kdet": ours.count_params(), **{name: m.count_params() for name, m in peers.items()}}
    return rows, sorted(set(notes)), params


def arch_rows(tiny: bool, batch: int, repeats: int, timed: bool = True, names=None):
    """Per architecture: input, parameters, GFLOPs/image, default path, its images/s at ``batch`` (if ``timed``)."""
    rows = []
    for run in architecture_runs(tiny, batch, repeats, names=names, timed=timed):
        if "skipped" in run:
            rows.append((run["name"], "-", "-", "-", "-", run["skipped"]))
        else:
            rows.append((run["name"], run["input"], f"{run['params']:,}", run["gflops_per_image"], run["path"],
                         run.get("images_per_s", "not timed (--quick)")))
    return rows


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "inference.md", "tiny models, runs in seconds")
    parser.add_argument("--skip-archs", action="store_true",
                        help="only the kdet vs peers pair (run_all.py: hardware.py times every architecture)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes of the peer comparison (default 1 8; --quick: 1)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    size, batches = (128, (1,)) if args.quick else (512, (1, 8))
    if args.batches:
        if min(args.batches) < 1:
            raise ValueError(f"--batches must be positive batch sizes; received {args.batches}.")
        batches = tuple(args.batches)
    # 3 timed rounds to fit `make bench`'s budget: a ResNet-50 batch of 8 takes seconds per call and library on
    # 2 shared cores; the rounds are round-robin, so load drift hits every library alike.
    repeats = args.repeats or (1 if args.quick else 3)
    rows, notes, params = pair_rows(size, batches, repeats, args.quick)
    pair = ("tiny kdet RetinaNet vs small ResNet V1 peers (quick mode)" if args.quick
            else "ResNet-50-FPN, 80 classes")
    text = (f"### Inference: kdet RetinaNet vs keras-cv and keras-hub RetinaNet ({pair}, {size}x{size})\n\n"
            f"`python benchmarks/inference.py{' --quick' if args.quick else ''}"
            f"{' --batches ' + ' '.join(map(str, batches)) if args.batches else ''}`; all random-initialised, raw "
            f"pixels in, normalisation + decoding + NMS included; median of {repeats} round-robin runs in one "
            f"process. **default** is what each library's `predict` runs on this CPU without arguments; **XLA** "
            f"is `jit_compile=True` (kdet path: what it resolves to). Parameters: "
            + ", ".join(f"{k} {v:,}" for k, v in params.items())
            + f". Ratio > 1 means kdet is faster. {machine_summary()}.\n\n"
            + markdown_table(("batch", "mode", "kdet path", "kdet img/s", "keras-cv img/s", "keras-hub img/s",
                              "kdet / keras-cv", "kdet / keras-hub"), rows))
    text += "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    if args.skip_archs:
        text += ("\nEvery kdet architecture alone (parameters, GFLOPs, img/s at default size on its default path "
                 "and the other paths): see the hardware section, which times each at batch 8 "
                 "(`benchmarks/hardware.py`; `run_all.py` skips the batch-1 table here so each architecture is "
                 "built and compiled once per run).\n")
    else:
        # --quick keeps CI short: two tiny architectures, FLOPs and parameters only.
        names = list(ARCHS)[:2] if args.quick else None
        arch = arch_rows(args.quick, 1, repeats, timed=not args.quick, names=names)
        text += ("\n### Inference: every kdet architecture alone "
                 f"({'tiny configurations' if args.quick else 'default sizes'}, batch 1, default path)\n\n"
                 "GFLOPs per image from `tf.compat.v1.profiler` float_operation on the traced inference "
                 "graph (2 FLOPs per multiply-add); the path is `model.inference_compiler()`, what `predict` runs.\n\n"
                 + markdown_table(("architecture", "input", "parameters", "GFLOPs/img", "path", "img/s"), arch))
    return publish(text, args.out, args.quick, "inference.md", start, results(rows, f"{pair}, {size} px"))


def results(rows, pair: str) -> dict:
    """Every ratio and the issue targets on the path users get (kdet at ``kdet.load``'s precision): keras-cv under
    XLA (issue 9), keras-hub on both modes (issue 19)."""
    keys = ("batch", "mode", "kdet_path", "kdet_ips", "keras_cv_ips", "keras_hub_ips", "vs_keras_cv", "vs_keras_hub")
    users = [r for r in rows if r[1] in ("default", "XLA")]
    xla_cv = {r[0]: r[6] for r in users if r[1] == "XLA"}
    hub = [(r[0], r[1], r[7]) for r in users if isinstance(r[7], float)]
    out = {"ratios": [dict(zip(keys, r)) for r in rows], "targets": [
        target(f"kdet RetinaNet inference >= {TARGET_RATIO}x keras-cv, CPU, XLA ({pair})",
               ", ".join(f"{ratio:.2f}x at batch {batch}" for batch, ratio in xla_cv.items()),
               all(r >= TARGET_RATIO for r in xla_cv.values()))]}
    out["targets"].append(target(
        f"kdet RetinaNet inference >= {TARGET_KERAS_HUB}x keras-hub RetinaNetObjectDetector, CPU, default path "
        f"and XLA ({pair})",
        ", ".join(f"{ratio:.2f}x ({mode}, batch {batch})" for batch, mode, ratio in hub) or "keras-hub not installed",
        bool(hub) and all(r >= TARGET_KERAS_HUB for _, _, r in hub)))
    return out


if __name__ == "__main__":
    sys.exit(main())
