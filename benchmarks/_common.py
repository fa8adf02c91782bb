"""Small helpers shared by the benchmark scripts: timing, markdown, machine info."""

from __future__ import annotations

import os
import pathlib
import platform
import statistics
import time
from typing import Callable, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]


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


def interleaved_median_ms(fns: dict, repeats: int = 10, warmup: int = 2) -> dict:
    """Median ms of several callables timed round-robin, so machine load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            block(fn())
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


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


def publish(text: str, out, quick: bool, fragment: str, start: float) -> int:
    """Prints a benchmark's markdown, writes it to ``out`` (default ``docs/benchmarks/<fragment>``
    in full mode, nowhere in quick mode) and prints the total time; returns exit code 0."""
    import time

    print("\n" + text)
    out = out or (None if quick else pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / fragment)
    if out:
        print(f"wrote {write_fragment(out, text)}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0
