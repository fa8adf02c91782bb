"""Multi-worker training: two worker processes on 127.0.0.1 with TF_CONFIG and MultiWorkerMirroredStrategy.

One cluster run, driven through ``kdet.training.train`` by ``tests/distribute_worker.py``
(a tiny RetinaNet, 16 images of 64 px, global batch 8, 3 epochs of 2 steps, a backup
after every step), beside a single-process reference with the same global batch:

1. both workers start; after the backup of step 3 (mid-epoch 2) they report and wait;
2. worker 1 is killed (SIGKILL), then the chief, whose next all-reduce could never
   complete (TensorFlow's rule: when a worker fails, the whole cluster restarts);
3. both restart on fresh ports and finish from the chief's backup.

The workers get separate ``out_dir`` folders, so that anything the non-chief wrote
there would show; the chief's backup is copied into the non-chief's folder before
the restart, standing in for the storage all workers read on a real cluster.
Each worker records the ids of the examples it trained on at every step.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distribute_worker.py"
NUM_IMAGES, STEPS_PER_EPOCH, EPOCHS, PAUSE_AT = 16, 2, 3, 3  # as in distribute_worker.py
PROCESS_TIMEOUT = 420  # seconds for any one process (the machine may be shared and slow)
# The curves differ only by batch normalisation: each replica normalises its own 4 images
# instead of all 8 (measured: at most ~2 % apart per step).
LOSS_RTOL = 0.05


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while chosen, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class Processes:
    """The subprocesses of one test: started with ``sys.executable``, logged to files, all killed on close."""

    def __init__(self, folder: pathlib.Path):
        self.folder, self.running = folder, []

    def start(self, name: str, args: list[str], tf_config_json: str | None = None,
              tmpdir: pathlib.Path | None = None) -> subprocess.Popen:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="",
                   KDET_WORKER_TIMEOUT=str(PROCESS_TIMEOUT + 60))
        env.pop("TF_CONFIG", None)
        if tf_config_json is not None:
            env["TF_CONFIG"] = tf_config_json
        if tmpdir is not None:
            tmpdir.mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(tmpdir)
        log = open(self.folder / f"{name}.log", "w")
        process = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=REPO)
        log.close()
        process.name = name
        self.running.append(process)
        return process

    def log(self, process) -> str:
        return (self.folder / f"{process.name}.log").read_text()[-4000:]

    def wait(self, process, timeout: float = PROCESS_TIMEOUT) -> int:
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{process.name} ran past {timeout} s:\n{self.log(process)}")
        assert code == 0, f"{process.name} exited with {code}:\n{self.log(process)}"
        return code

    def kill(self, process) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)

    def close(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)


def _wait_for_reports(processes: Processes, workers, reports, deadline: float) -> None:
    while not all(r.exists() for r in reports):
        for worker in workers:
            assert worker.poll() is None, f"{worker.name} exited early:\n{processes.log(worker)}"
        if time.time() > deadline:
            pytest.fail("the workers never reached the pause:\n" + "\n".join(processes.log(w) for w in workers))
        time.sleep(0.2)


def _names(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _files(folder: pathlib.Path) -> dict:
    return {name: (folder / name).read_bytes() for name in _names(folder)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Runs the scenario once; returns the reports and what the file system showed at each stage."""
    root = tmp_path_factory.mktemp("multiworker")
    processes = Processes(root)
    outs = [root / "out_chief", root / "out_worker1"]
    tmps = [root / "tmp_chief", root / "tmp_worker1"]
    try:
        reference = processes.start("reference", [str(WORKER), str(root / "out_reference"),
                                                  str(root / "reference.json")])
        ports = free_ports(2)
        paused = [processes.start(f"worker{i}_first", [str(WORKER), str(outs[i]), str(root / f"paused{i}.json"),
                                                       str(PAUSE_AT)], tf_config(ports, i), tmps[i])
                  for i in range(2)]
        _wait_for_reports(processes, paused, [root / f"paused{i}.json" for i in range(2)],
                          time.time() + PROCESS_TIMEOUT)
        seen = {"chief_at_pause": _names(outs[0]), "worker1_out_at_pause": outs[1].exists(),
                "worker1_tmp_at_pause": _names(tmps[1])}
        processes.kill(paused[1])  # the worker dies mid-epoch ...
        processes.kill(paused[0])  # ... and the cluster is restarted
        shutil.copytree(outs[0] / "backup", outs[1] / "backup")  # the shared storage's view for worker 1
        seen["worker1_out_before_restart"] = _files(outs[1])
        stale = set(_names(tmps[1]))
        ports = free_ports(2)
        resumed = [processes.start(f"worker{i}_resumed", [str(WORKER), str(outs[i]), str(root / f"resumed{i}.json")],
                                   tf_config(ports, i), tmps[i]) for i in range(2)]
        for process in [*resumed, reference]:
            processes.wait(process)
        seen.update(chief_after=_names(outs[0]), worker1_out_after=_files(outs[1]),
                    worker1_tmp_after=set(_names(tmps[1])), worker1_tmp_stale=stale)
        load = lambda name: json.loads((root / name).read_text())  # noqa: E731
        return {"reference": load("reference.json"), "paused": [load(f"paused{i}.json") for i in range(2)],
                "resumed": [load(f"resumed{i}.json") for i in range(2)], "seen": seen}
    finally:
        processes.close()


def _ids_by_step(cluster, worker: int) -> dict:
    """Step -> ids the worker trained on, over the run: before the kill (steps < PAUSE_AT), then resumed."""
    before = {step: ids for step, ids in cluster["paused"][worker]["consumed"] if step < PAUSE_AT}
    after = {step: ids for step, ids in cluster["resumed"][worker]["consumed"]}
    assert set(before) == set(range(PAUSE_AT)) and set(after) == set(range(PAUSE_AT, STEPS_PER_EPOCH * EPOCHS))
    return {**before, **after}


def test_each_epoch_is_sharded_without_duplicates(cluster):
    ids = [_ids_by_step(cluster, w) for w in range(2)]
    reference = dict((step, ids) for step, ids in cluster["reference"]["consumed"])
    for epoch in range(EPOCHS):
        steps = range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
        seen = [i for w in range(2) for s in steps for i in ids[w][s]]
        # Epoch 2 spans the kill: half of it ran before, half after the restart.
        assert sorted(seen) == list(range(NUM_IMAGES)), f"epoch {epoch + 1}: {sorted(seen)}"
        for s in steps:
            assert len(ids[0][s]) == len(ids[1][s]) == 4  # per-replica half of the global batch of 8
            # Each global step trains on the examples of the single-worker step.
            assert sorted(ids[0][s] + ids[1][s]) == sorted(reference[s])


def _step_losses(records) -> dict:
    """Step -> loss from Keras' batch-end running means (the mean over the epoch so far)."""
    losses, previous = {}, 0.0
    for step, batch, mean in records:
        losses[step] = (batch + 1) * mean - batch * previous
        previous = mean
    return losses


def test_loss_curve_matches_a_single_worker(cluster):
    runs = [{**_step_losses(cluster["paused"][w]["running_means"]),
             **_step_losses(cluster["resumed"][w]["running_means"])} for w in range(2)]
    want = _step_losses(cluster["reference"]["running_means"])
    steps = sorted(want)
    assert steps == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))
    assert runs[0] == runs[1]  # the logs are reduced over the workers
    got, want = [runs[0][s] for s in steps], [want[s] for s in steps]
    np.testing.assert_allclose(got, want, rtol=LOSS_RTOL)
    assert got[-1] < got[0] and want[-1] < want[0]
    # The gradients are all-reduced: both workers end with the same trainable weights, bit for bit
    # (each keeps its own batch-norm moving statistics; the chief's are saved).
    assert cluster["resumed"][0]["trainable_sha256"] == cluster["resumed"][1]["trainable_sha256"]
    assert cluster["resumed"][0]["replicas"] == 2 and cluster["reference"]["replicas"] == 1


def test_only_the_chief_writes(cluster):
    seen = cluster["seen"]
    # Mid-run: the chief's backup is in its out_dir; the non-chief wrote its own into a temporary
    # folder and nothing into its out_dir.
    assert {"backup/latest.weights.h5", "history.csv"} <= set(seen["chief_at_pause"])
    assert not seen["worker1_out_at_pause"]
    assert any(name.startswith("kdet_worker1_") and name.endswith("/backup/latest.weights.h5")
               for name in seen["worker1_tmp_at_pause"]), seen["worker1_tmp_at_pause"]
    # After the run: the chief wrote the checkpoints and removed its backup; the non-chief's
    # out_dir holds only the backup copied there, untouched; its temporary folder is gone
    # (the one left is the killed process's).
    assert {"final.keras", "best.keras", "history.csv", "history.json"} <= set(seen["chief_after"])
    assert not any(name.startswith("backup/") for name in seen["chief_after"])
    assert seen["worker1_out_after"] == seen["worker1_out_before_restart"]
    assert seen["worker1_tmp_after"] == seen["worker1_tmp_stale"]


def test_killed_worker_resumes_from_the_backup_and_finishes(cluster):
    for worker in range(2):
        paused, resumed = cluster["paused"][worker], cluster["resumed"][worker]
        assert paused["paused_at"] == PAUSE_AT
        assert resumed["initial_step"] == PAUSE_AT  # both restored the chief's step-3 backup
        assert resumed["iterations"] == STEPS_PER_EPOCH * EPOCHS  # and ran exactly the 3 steps left
        assert [r[0] for r in resumed["running_means"]] == [4, 5, 6]
        assert len(resumed["history"]["loss"]) == 2  # the rest of epoch 2, then epoch 3


def test_kdet_train_cli_with_multiworker_strategy(tmp_path):
    import kdet
    from kdet.models import RetinaNet

    model = RetinaNet(3, backbone="tiny", image_size=64)
    model.save(tmp_path / "start.keras")
    processes = Processes(tmp_path)
    ports = free_ports(2)
    outs = [tmp_path / f"out{i}" / "trained.keras" for i in range(2)]
    try:
        workers = [processes.start(f"cli{i}", ["-m", "kdet.cli", "train", str(tmp_path / "start.keras"),
                                               "--data", "synthetic:8", "--epochs", "1", "--batch-size", "4",
                                               "--strategy", "multiworker", "--out", str(outs[i])],
                                   tf_config(ports, i), tmp_path / f"tmp{i}") for i in range(2)]
        for worker in workers:
            processes.wait(worker)
    finally:
        processes.close()
    logs = [processes.log(w) for w in workers]
    assert logs[0].strip().endswith(str(outs[0]))  # the chief prints the path it wrote
    assert str(outs[1]) not in logs[1]
    assert all("2/2" in log for log in logs)  # 8 images in global batches of 4: 2 steps on each worker
    assert not outs[1].parent.exists()  # worker 1 saved into a temporary folder, then removed it
    assert not [p for p in (tmp_path / "tmp1").iterdir() if p.name.startswith("kdet_")]
    trained = kdet.load(str(outs[0]))
    assert any(not np.array_equal(a, b) for a, b in zip(trained.trainable_weights, model.trainable_weights))
