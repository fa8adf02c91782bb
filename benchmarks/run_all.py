"""Runs every benchmark script and assembles docs/benchmarks.md (what `make bench` runs).

Usage:
    python benchmarks/run_all.py                 # full mode, every script, writes docs/benchmarks.md
    python benchmarks/run_all.py --only nms inference
    python benchmarks/run_all.py --learning-epochs 30   # the learning section at the full bar protocol
    python benchmarks/run_all.py --quick --out /tmp/bench.md   # every script in --quick mode

Each script runs in its own process (so one model's memory or XLA cache does
not affect the next) and writes its markdown fragment under
``docs/benchmarks/`` (``--fragments`` to change) and its numbers in a JSON
file beside it. The page opens with "targets at a glance", the issue targets
as measured in this run (each script's ``targets`` rows), then the machine
(CPU model, cores, memory), library versions, the date, each script's wall
time, exit status and load average, and every fragment in order. A failing
script is reported on the page and makes the exit status non-zero; the others
still run. Fragments and JSON files of a script that failed or did not run
are never used, so every number on the page comes from this run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import REPO, markdown_table, results_path, write_fragment  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
# (script, fragment file, one-line description), in page order.
SCRIPTS = (
    ("nms.py", "nms.md", "NMS: kdet vs tf.image.combined_non_max_suppression vs keras-cv"),
    ("inference.py", "inference.md", "Inference: kdet vs keras-cv RetinaNet; every architecture"),
    ("training.py", "training.md", "Training speed and learning: kdet vs keras-cv RetinaNet"),
    ("hardware.py", "hardware.md", "Share of peak matmul throughput"),
    ("precision.py", "precision.md", "Low precision: bfloat16 vs float32, OpenCV DNN, LiteRT int8"),
    ("train_synthetic.py", "learning.md", "Learning of every tiny configuration on synthetic data"),
    ("finetune.py", "finetune.md", "Fine-tuning real yolov3-tiny weights vs training from scratch"),
    ("mtcnn.py", "mtcnn.md", "MTCNN vs the mtcnn package vs OpenCV Haar"),
    ("export.py", "export.md", "LiteRT size and latency"),
    ("mobile_export.py", "mobile_export.md", "LiteRT export of the mobile detectors (full size)"),
    ("export_accuracy.py", "export_accuracy.md", "LiteRT export accuracy (COCO mAP of quantized models)"),
)
# Full-mode arguments: each architecture is XLA-compiled and timed once per run, by hardware.py (batch 8,
# with parameters, GFLOPs and img/s), instead of a second time at batch 1 by inference.py.
FULL_ARGS = {"inference.py": ["--skip-archs"]}
# train_synthetic.py's epochs in `make bench`: the bar protocol (30 epochs on 200 images, 5 architectures) takes
# ~8 min on a quiet 2-core machine (~20 loaded) and would push the page past ~25 min, so the page trains 10
# (~3 min) and says so; the slow tests (`make test-all`) and `--learning-epochs 30` measure the bar itself.
LEARNING_EPOCHS = 10
LIBRARIES = ("tensorflow", "keras", "keras_cv", "keras_hub", "numpy", "ai_edge_litert", "mtcnn", "cv2", "pycocotools", "kdet")


def machine() -> dict:
    """CPU model (/proc/cpuinfo), visible cores, memory (/proc/meminfo), OS and Python."""
    info = {"CPU": platform.processor() or platform.machine(), "cores": str(os.cpu_count()), "memory": "unknown"}
    try:
        info["CPU"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        info["memory"] = f"{kib / 2 ** 20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    info["OS"] = platform.platform()
    info["Python"] = platform.python_version()
    return info


def versions() -> dict:
    """Version of each library in LIBRARIES, read in a subprocess-free way (metadata, else import)."""
    from importlib import metadata

    dists = {"cv2": "opencv-python-headless", "ai_edge_litert": "ai-edge-litert", "keras_cv": "keras-cv"}
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(dists.get(name, name))
        except metadata.PackageNotFoundError:
            out[name] = "not installed" if importlib.util.find_spec(name) is None else "unknown"
    return out


def run_script(script: str, fragment: pathlib.Path, quick: bool, extra=()) -> tuple:
    """Runs one script (after removing its old results); returns (exit status, wall seconds, last output lines)."""
    cmd = [sys.executable, str(HERE / script), "--out", str(fragment), *(["--quick"] if quick else []), *extra]
    results_path(fragment).unlink(missing_ok=True)  # a failed run must not leave an older run's numbers
    start = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    print(f"{script}: exit {proc.returncode} in {seconds:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    if proc.returncode:
        print(tail, flush=True)
    return proc.returncode, seconds, tail


def read_results(fragments: pathlib.Path, fragment: str, status: int) -> dict:
    """A script's JSON results of this run ({} if it failed or wrote none)."""
    path = results_path(fragments / fragment)
    return json.loads(path.read_text()) if status == 0 and path.exists() else {}


def targets_table(results: list, fragments: pathlib.Path) -> str:
    """The "targets at a glance" table: each script's target rows, measured in this run."""
    def met(value):
        return {True: "yes", False: "**no**"}.get(value, value)

    rows = []
    for script, fragment, _, status, _, _ in results:
        targets = read_results(fragments, fragment, status).get("targets", [])
        if status:
            rows.append((f"targets of `{script}`", f"not measured: the script failed (exit {status})", "**no**",
                         script))
        rows += [(t["target"], t["measured"], met(t["met"]), script) for t in targets]
    return markdown_table(("target", "measured in this run", "met?", "script"), rows) if rows else (
        "No script of this run reports a target.\n")


def assemble(results: list, fragments: pathlib.Path, quick: bool, when: datetime.datetime | None = None) -> str:
    """The page: header, targets at a glance, machine, versions, run table, then each fragment (results:
    (script, fragment, desc, status, seconds, tail))."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    lines = ["# kdet benchmarks", "",
             f"Generated by `make bench` (`python benchmarks/run_all.py{' --quick' if quick else ''}`) on "
             f"{when:%Y-%m-%d %H:%M} UTC. Every number below was measured in this run, ratios side by side in "
             "one process; absolute times on shared machines drift, ratios much less.", ""]
    if quick:
        lines += ["**Quick mode**: tiny models and few repeats, to check that the scripts run; these numbers "
                  "are not evidence for or against any target.", ""]
    lines += ["## Targets at a glance", "", targets_table(results, fragments), "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine().items()]
    lines += ["", "## Library versions", ""] + [f"- {k}: {v}" for k, v in versions().items()]
    run_rows = []
    for script, fragment, desc, status, seconds, _ in results:
        load = read_results(fragments, fragment, status).get("load_average")
        run_rows.append((script, desc, "ok" if status == 0 else f"failed (exit {status})", seconds,
                         "/".join(f"{v:.1f}" for v in load) if load else "-"))
    total = sum(r[4] for r in results)
    lines += ["", "## Scripts run", "", f"Total {total / 60:.1f} min.", "",
              markdown_table(("script", "what", "status", "wall s", "load average at its end (1/5/15 min)"),
                             run_rows)]
    for script, fragment, desc, status, _, tail in results:
        lines += [f"## {desc}", ""]
        path = fragments / fragment
        if status == 0 and path.exists():
            lines += [path.read_text().rstrip(), ""]
        elif status == 0:
            lines += [f"`{script}` wrote no fragment.", ""]
        else:
            lines += [f"`{script}` failed (exit {status}); its last output:", "", "```", tail, "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [s for s, _, _ in SCRIPTS]
    parser.add_argument("--only", nargs="*", choices=[n[:-3] for n in names], help="a subset of the scripts")
    parser.add_argument("--quick", action="store_true", help="run every script with --quick")
    parser.add_argument("--fragments", default=str(REPO / "docs" / "benchmarks"))
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--learning-epochs", type=int, default=LEARNING_EPOCHS,
                        help=f"epochs of train_synthetic.py (default {LEARNING_EPOCHS}; 30 is the bar protocol; "
                             "fewer is said on the page)")
    args = parser.parse_args(argv)
    extra = {} if args.quick else {**FULL_ARGS, "train_synthetic.py": ["--epochs", str(args.learning_epochs)]}
    fragments = pathlib.Path(args.fragments)
    fragments.mkdir(parents=True, exist_ok=True)
    results = []
    for script, fragment, desc in SCRIPTS:
        if args.only and script[:-3] not in args.only:
            continue
        if not (HERE / script).exists():
            print(f"{script}: not present, skipped", flush=True)
            continue
        results.append((script, fragment, desc, *run_script(script, fragments / fragment, args.quick,
                                                                extra.get(script, ()))))
    print(f"wrote {write_fragment(args.out, assemble(results, fragments, args.quick))}")
    return int(any(status for _, _, _, status, _, _ in results))


if __name__ == "__main__":
    sys.exit(main())
