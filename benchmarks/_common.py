"""Helpers shared by the benchmark scripts: arguments, the architecture list, timing, markdown, results."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time
from typing import Callable, Iterator, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
FRAGMENTS = REPO / "docs" / "benchmarks"
NUM_CLASSES = 80  # COCO, the configuration every builder documents


def _models():
    import kdet.models

    return kdet.models


# name -> (builder of the default configuration, builder of the tiny one). Default sizes from each builder.
ARCHS = {
    "RetinaNet (R50-FPN)": (lambda: _models().RetinaNet(NUM_CLASSES), lambda: _models().RetinaNet(3, backbone="tiny")),
    "EfficientDet (D0)": (lambda: _models().EfficientDet(NUM_CLASSES),
                          lambda: _models().EfficientDet(3, backbone="tiny")),
    "SSD (VGG16, 300)": (lambda: _models().SSD(NUM_CLASSES), lambda: _models().SSD(3, backbone="tiny")),
    "YOLOv3 (Darknet-53)": (lambda: _models().YOLOV3(NUM_CLASSES), lambda: _models().YOLOV3(3, backbone="tiny",
                                                                                              image_size=128)),
    "Faster R-CNN (R50-FPN)": (lambda: _models().FasterRCNN(NUM_CLASSES),
                             lambda: _models().FasterRCNN(3, backbone="tiny")),
}


def bench_parser(doc: str, fragment: str, quick_help: str) -> argparse.ArgumentParser:
    """The arguments every benchmark script takes: ``--quick``, ``--repeats`` and ``--out``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default: the script's own)")
    parser.add_argument("--out", help=f"markdown fragment (default docs/benchmarks/{fragment}; none for --quick)")
    return parser


def build_arch(name: str, tiny: bool):
    """The kdet detector ``name`` (default or tiny configuration), or the reason it is unavailable."""
    try:
        return ARCHS[name][1 if tiny else 0](), None
    except Exception as err:  # an architecture not landed yet is reported, not fatal
        return None, f"not available in this build ({type(err).__name__}: {str(err)[:80]})"


def input_hw(model) -> tuple:
    """(height, width) of a detector's fixed input."""
    size = model.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def function_gflops(fn, spec) -> float:
    """GFLOPs of one call of ``fn`` on a tensor of ``spec``, counted by tf.compat.v1.profiler on its graph."""
    import tensorflow as tf

    graph = tf.function(fn).get_concrete_function(spec).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    prof = tf.compat.v1.profiler.profile(graph, options=opts)
    return prof.total_float_ops / 1e9


def gflops(model, batch: int = 1) -> float:
    """Forward-pass GFLOPs of ``model`` (inference, decoding included) from tf.compat.v1.profiler."""
    import tensorflow as tf

    h, w = input_hw(model)
    return function_gflops(lambda x: model(x, training=False), tf.TensorSpec((batch, h, w, 3), tf.float32))


def architecture_runs(tiny: bool, batch: int, repeats: int, names=None, timed: bool = True) -> Iterator[dict]:
    """Each kdet architecture in turn, inference at ``batch`` on random pixels on its default path.

    The default path is what ``predict`` runs (``model.infer``: ``inference_compiler()``, graph or XLA).
    Yields ``{"name", "input", "params", "gflops_per_image", "path", "ms", "images_per_s"}`` (the last two only
    if ``timed``), or ``{"name", "skipped": reason}``; every model is built with seed 0 and freed before the next.
    """
    import keras
    import numpy as np

    for name in names or ARCHS:
        keras.utils.set_random_seed(0)
        model, why = build_arch(name, tiny)
        label = f"{name} tiny" if tiny else name
        if model is None:
            print(f"{label}: {why}", flush=True)
            yield {"name": label, "skipped": why}
            continue
        h, w = input_hw(model)
        run = {"name": label, "input": f"{h}x{w}", "params": model.count_params(),
               "gflops_per_image": gflops(model, 1), "path": model.inference_compiler()}
        if timed:
            x = np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)).astype(np.float32)
            run["ms"] = median_ms(lambda m=model: m.infer(x), repeats=repeats, warmup=1)
            run["images_per_s"] = 1e3 * batch / run["ms"]
        print(f"{label}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in run.items() if k != "name"), flush=True)
        yield run
        del model
        keras.backend.clear_session()


def block(result):
    """Waits for every tensor in a (nested) result, so timings include the work."""
    import tensorflow as tf

    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)
    return result


def median_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def interleaved_ms(fns: dict, repeats: int = 10, warmup: int = 2) -> dict:
    """Every call's ms of several callables timed round-robin, so machine load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            block(fn())
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_median_ms(fns: dict, repeats: int = 10, warmup: int = 2) -> dict:
    """Median ms of several callables timed round-robin (see ``interleaved_ms``)."""
    return {name: statistics.median(t) for name, t in interleaved_ms(fns, repeats, warmup).items()}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed with 2 decimals."""
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_summary() -> str:
    """One line naming the CPU, core count and library versions used."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}")


def write_fragment(path, text: str) -> pathlib.Path:
    """Writes a markdown fragment (creating folders) and returns its path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def target(name: str, measured: str, met) -> dict:
    """One row of the page's "targets at a glance" table (``met``: True, False or a short word)."""
    return {"target": name, "measured": measured, "met": met}


def results_path(fragment) -> pathlib.Path:
    """The machine-readable results written next to a fragment: ``<fragment>.json``."""
    return pathlib.Path(fragment).with_suffix(".json")


def publish(text: str, out, quick: bool, fragment: str, start: float, results: dict | None = None) -> int:
    """Prints a benchmark's markdown, writes it to ``out`` (default ``docs/benchmarks/<fragment>``
    in full mode, nowhere in quick mode) and prints the total time; returns exit code 0.

    ``results`` (numbers and ``targets`` rows, see ``target``) go to ``<out>.json`` beside the fragment,
    with the script's wall time and the load average, for ``run_all.py``'s summary.
    """
    seconds = time.perf_counter() - start
    print("\n" + text)
    out = out or (None if quick else FRAGMENTS / fragment)
    if out:
        print(f"wrote {write_fragment(out, text)}")
        if results is not None:
            results = {**results, "quick": quick, "seconds": seconds, "load_average": list(os.getloadavg())}
            results_path(out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"total {seconds:.0f} s")
    return 0
