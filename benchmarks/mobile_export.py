"""LiteRT export of the mobile detectors beside SSD300: size and latency, float32 and int8 weights.

Usage:
    python benchmarks/mobile_export.py           # writes docs/benchmarks/mobile_export.md
    python benchmarks/mobile_export.py --quick   # SSDLite float32 only

The full-size zoo architectures (``kdet.zoo.build.build`` of each entry, random
weights: size and latency do not depend on the values) are converted with
``kdet.export.litert`` (builtin ops only, resizing, decoding and NMS inside),
checked once with ``kdet.export.run_litert`` (the detection outputs are
there), then timed with one ``ai_edge_litert`` signature runner on one
(1, H, W, 3) float32 image (median of repeats, the interpreter's default
threads). Faster R-CNN MobileNetV3 uses torchvision's ``min_max`` rule, so
its export takes a fixed served size (``image_size=``) and the graph holds
the canvas min_max gives it.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import bench_parser, machine_summary, markdown_table, publish  # noqa: E402
from export import check_and_time  # noqa: E402

# zoo entry -> the served image size (height, width) of its export.
ENTRIES = {
    "ssdlite320_mobilenet_v3_large_coco": (320, 320),
    "fasterrcnn_mobilenet_v3_large_fpn_coco": (480, 640),  # a 4:3 photo; min_max makes it 800 x 1088
    "ssd300_vgg16_coco": (300, 300),
}


def export_row(name: str, served, quantization, folder: pathlib.Path, repeats: int):
    """(entry, weights, served input, MiB, ms) for one zoo architecture."""
    import keras

    from kdet.export import litert
    from kdet.zoo import build, registry

    keras.utils.set_random_seed(0)
    model = build.build(registry.get_entry(name))
    path = folder / f"{name}_{quantization or 'float32'}.tflite"
    litert(model, path, quantization=quantization, image_size=served)
    kib, ms = check_and_time(path, served, repeats, name)
    mib = kib / 1024
    print(f"{name} {quantization or 'float32'}: {mib:.1f} MiB, {ms:.1f} ms", flush=True)
    return (name, quantization or "float32", f"{served[0]}x{served[1]}", mib, ms)


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "mobile_export.md", "SSDLite float32 only")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    repeats = args.repeats or (3 if args.quick else 10)
    names = list(ENTRIES)[:1] if args.quick else list(ENTRIES)
    quantizations = (None,) if args.quick else (None, "dynamic_int8")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for quantization in quantizations:
                rows.append(export_row(name, ENTRIES[name], quantization, pathlib.Path(tmp), repeats))
    text = (f"### LiteRT export of the mobile detectors (full size)\n\n"
            f"`python benchmarks/mobile_export.py{' --quick' if args.quick else ''}`; the zoo architectures "
            f"(random weights), `kdet.export.litert` (builtin ops only; resizing, decoding and NMS inside), "
            f"batch 1 float32 input of the served size, median of {repeats} runs of one `ai_edge_litert` "
            f"signature runner. dynamic_int8: int8 weights, float activations. {machine_summary()}.\n\n"
            + markdown_table(("zoo entry", "weights", "served input", "size (MiB)", "latency (ms)"), rows))
    keys = ("entry", "weights", "input", "size_mib", "latency_ms")
    return publish(text, args.out, args.quick, "mobile_export.md", start,
                   {"rows": [dict(zip(keys, r)) for r in rows]})


if __name__ == "__main__":
    sys.exit(main())
