"""LiteRT export: model size and latency of every architecture's tiny configuration.

Usage:
    python benchmarks/export.py            # every architecture, writes docs/benchmarks/export.md
    python benchmarks/export.py --quick    # RetinaNet tiny only, float32 (CI runs it)

Each tiny detector (random-initialised) is converted with
``kdet.export.litert`` (builtin ops only, decoding and NMS inside the graph),
checked once with ``kdet.export.run_litert``, then timed with one
``ai_edge_litert`` signature runner on a (1, H, W, 3) float32 batch (median
of repeats, the interpreter's default threads). Sizes are the ``.tflite`` file
sizes.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import (ARCHS, bench_parser, build_arch, input_hw, machine_summary, markdown_table,  # noqa: E402
                     median_ms, publish)


def litert_runner(path):
    """A callable running the ``serving_default`` signature of ``path``."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    name = interpreter.get_signature_list()["serving_default"]["inputs"][0]
    return lambda images: runner(**{name: images})


def export_row(name: str, quantization, folder: pathlib.Path, repeats: int):
    """(architecture, quantization, input, KiB, ms) for one tiny configuration, or a skip row."""
    import keras

    from kdet.export import litert

    keras.utils.set_random_seed(0)
    model, why = build_arch(name, tiny=True)
    label = f"{name} tiny"
    if model is None:
        return (label, quantization or "float32", "-", "-", why)
    h, w = input_hw(model)
    path = folder / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}_{quantization}.tflite"
    try:
        litert(model, path, quantization=quantization)
    except Exception as err:  # report the failure in the table rather than lose the other rows
        return (label, quantization or "float32", f"{h}x{w}", "-", f"export failed ({type(err).__name__}: "
                                                                   f"{str(err)[:80]})")
    kib, ms = check_and_time(path, (h, w), repeats, label)
    print(f"{label} {quantization or 'float32'}: {kib:.0f} KiB, {ms:.2f} ms", flush=True)
    return (label, quantization or "float32", f"{h}x{w}", kib, ms)


def check_and_time(path: pathlib.Path, hw, repeats: int, label: str) -> tuple[float, float]:
    """(KiB, median ms) of a ``.tflite`` detector on one random (1, H, W, 3) image, after checking its outputs."""
    from kdet.export import run_litert

    images = np.random.default_rng(0).uniform(0, 255, (1, *hw, 3)).astype(np.float32)
    out = run_litert(path, images)
    if set(out) < {"boxes", "scores", "labels", "num_detections"}:
        raise AssertionError(f"{label}: unexpected LiteRT outputs {sorted(out)}")
    run = litert_runner(path)
    return path.stat().st_size / 1024, median_ms(lambda: run(images), repeats=repeats, warmup=1)


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "export.md", "RetinaNet tiny, float32 only")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    repeats = args.repeats or (3 if args.quick else 10)
    names = list(ARCHS)[:1] if args.quick else list(ARCHS)
    quantizations = (None,) if args.quick else (None, "dynamic_int8")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for quantization in quantizations:
                rows.append(export_row(name, quantization, pathlib.Path(tmp), repeats))
    text = (f"### LiteRT export: size and latency (tiny configurations)\n\n"
            f"`python benchmarks/export.py{' --quick' if args.quick else ''}`; `kdet.export.litert` (builtin ops "
            f"only, decoding + NMS inside), batch 1 float32 input, median of {repeats} runs of one "
            f"`ai_edge_litert` signature runner. {machine_summary()}.\n\n"
            + markdown_table(("architecture", "weights", "input", "size (KiB)", "latency (ms)"), rows))
    keys = ("architecture", "weights", "input", "size_kib", "latency_ms")
    return publish(text, args.out, args.quick, "export.md", start, {"rows": [dict(zip(keys, r)) for r in rows]})


if __name__ == "__main__":
    sys.exit(main())
