"""kdet.training.train: resume after SIGKILL with nothing lost, MirroredStrategy parity, recipes.

The training runs happen in subprocesses (a kill must hit a real process; logical
devices must be configured before TensorFlow starts) on the tiny test detector.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# A training run of the tiny detector: 2 epochs x 4 steps of 2 images, backup after every step,
# augmentation on (so the resumed run must also replay the augmenter's random stream).
CHILD = textwrap.dedent("""
    import os, sys, json, time
    sys.path.insert(0, {tests!r})
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    import keras
    from helpers import TinyAnchorDetector
    from kdet.training import train

    out, pause_at = sys.argv[1], int(sys.argv[2])

    class PauseAt(keras.callbacks.Callback):
        # After the backup of step `pause_at` is written: say so, then wait to be killed.
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == pause_at:
                open(os.path.join(out, "ready"), "w").close()
                time.sleep(600)

    result = train(lambda: TinyAnchorDetector(3, 64, width=16), "synthetic:8", epochs=2, batch_size=2,
                   steps_per_epoch=4, out_dir=out, backup_every=1, verbose=0, seed=3,
                   callbacks=[PauseAt()] if pause_at else [])
    weights = [w.tolist() for w in result.model.get_weights()[:6]]
    json.dump({{"initial_step": result.initial_step, "iterations": int(result.model.optimizer.iterations.numpy()),
               "epochs_run": len(result.history["loss"]), "weights": weights}},
              open(os.path.join(out, "result.json"), "w"))
""").format(tests=str(REPO / "tests"))


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    return env


def test_resume_after_sigkill_loses_nothing(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    killed.mkdir()
    reference.mkdir()
    # The uninterrupted reference runs beside the run that gets killed.
    ref = subprocess.Popen([sys.executable, str(script), str(reference), "0"], env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    child = subprocess.Popen([sys.executable, str(script), str(killed), "6"], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not (killed / "ready").exists():
        assert child.poll() is None, child.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the child never reached step 6"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)  # mid-epoch: step 2 of epoch 2, after its backup was written
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert (killed / "backup" / "latest.weights.h5").is_file()
    assert not (killed / "result.json").exists()

    resumed = subprocess.run([sys.executable, str(script), str(killed), "0"], env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()[-3000:]
    got = json.loads((killed / "result.json").read_text())
    want = json.loads((reference / "result.json").read_text())
    assert got["initial_step"] == 6 and want["initial_step"] == 0
    # Exactly the planned 8 optimizer steps, the interrupted epoch finished with its 2 remaining
    # steps, and the same weights as the run that was never interrupted: nothing lost or repeated.
    assert got["iterations"] == want["iterations"] == 8
    assert got["epochs_run"] == 1 and want["epochs_run"] == 2
    for a, b in zip(got["weights"], want["weights"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert not (killed / "backup").exists()  # removed once training completed


MIRRORED = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, {tests!r})
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from helpers import TinyAnchorDetector
    from kdet.training import train

    losses = {{}}
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for name, strategy in (("one", None), ("two", mirrored)):
        result = train(lambda: TinyAnchorDetector(3, 64, width=16), "synthetic:16", epochs=3, batch_size=8,
                       steps_per_epoch=2, out_dir=sys.argv[1] + "/" + name, augment=False, verbose=0, seed=1,
                       strategy=strategy)
        losses[name] = result.history["loss"]
        losses[name + "_replicas"] = (strategy or tf.distribute.get_strategy()).num_replicas_in_sync
    try:  # validation cannot run on several replicas yet: refused before anything is built
        train(lambda: 1 / 0, "synthetic:16", validation_data="synthetic:4", strategy=mirrored)
    except ValueError as error:
        losses["validation_error"] = str(error)
    print("LOSSES" + json.dumps(losses))
""").format(tests=str(REPO / "tests"))


@pytest.fixture(scope="module")
def mirrored_losses(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mirrored")
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], env=_env(), capture_output=True, text=True,
                         timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(run.stdout.split("LOSSES")[-1])


def test_mirrored_strategy_matches_one_device(mirrored_losses):
    losses = mirrored_losses
    assert losses["one_replicas"] == 1 and losses["two_replicas"] == 2
    # Same data, same initial weights: the curves agree (batch-norm statistics are per replica,
    # so they are close, not identical). Keras sums the replicas' gradients, so this also checks
    # that the detector's loss is divided by the number of replicas.
    np.testing.assert_allclose(losses["two"], losses["one"], rtol=0.05)
    assert losses["one"][-1] < losses["one"][0]
    assert "validation_data is not supported with 2 replicas" in losses["validation_error"]


def test_recipes_and_optimizer_schedule():
    import keras

    from kdet.config import SCRATCH_RECIPE
    from kdet.models import RetinaNet
    from kdet.models.retinanet.retinanet import RETINANET_RECIPE
    from kdet.training import make_optimizer, training_defaults

    sys.path.insert(0, str(REPO / "tests"))
    from helpers import TinyAnchorDetector

    # Each model declares its recipe: tiny presets train from scratch with Adam, full size with the paper's.
    assert training_defaults(TinyAnchorDetector(3, 64, width=8)) is SCRATCH_RECIPE
    assert training_defaults(RetinaNet(3, backbone="tiny")) is SCRATCH_RECIPE
    assert training_defaults(RetinaNet(3, backbone="resnet50", image_size=64)) is RETINANET_RECIPE
    opt = make_optimizer(RETINANET_RECIPE, total_steps=1000, batch_size=8)
    assert isinstance(opt, keras.optimizers.SGD)
    lr = opt.learning_rate
    schedule = opt._learning_rate
    peak = 0.01 * 8 / 16  # linear scaling rule
    assert float(schedule(0)) == pytest.approx(peak * 0.1)
    assert float(schedule(100)) == pytest.approx(peak, rel=1e-5)  # warm-up: 10 % of the run
    assert float(schedule(1000)) == pytest.approx(peak * 0.01, rel=1e-4)
    assert float(lr) > 0


def test_train_rejects_bad_arguments(tmp_path):
    from kdet.training import get_strategy, open_dataset, train

    with pytest.raises(ValueError, match="epochs"):
        train("retinanet", epochs=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="strategy"):
        get_strategy("tpu-please")
    with pytest.raises(ValueError, match="data must be"):
        open_dataset("mnist:/x")


def test_mixed_precision_flag_trains_without_nan_and_restores_policy(tmp_path):
    import keras

    from kdet.training import train

    sys.path.insert(0, str(REPO / "tests"))
    from helpers import TinyAnchorDetector

    result = train(lambda: TinyAnchorDetector(3, 64, width=8), "synthetic:4", epochs=1, batch_size=2,
                   steps_per_epoch=1, mixed_precision=True, augment=False, out_dir=tmp_path, verbose=0)
    # The networks compute in float16; the detector's decoding and NMS stay float32.
    assert result.model.config.precision == "float16"
    assert result.model.network.dtype_policy.name == "mixed_float16"
    assert np.isfinite(result.history["loss"][0])
    assert keras.mixed_precision.global_policy().name == "float32"
    out = result.model.predict(kdet_images(), verbose=0)
    assert np.all(np.isfinite(out["boxes"]))


def kdet_images():
    import kdet

    return kdet.data.synthetic_arrays(2, 64, split="test")[0]
