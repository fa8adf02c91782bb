"""kdet.distribute in one process: the sharded input pipelines, strategy names, chief-only saving.

The two-process MultiWorkerMirroredStrategy run is in test_training_multiworker.py.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from kdet.distribute import distributed_stream, get_strategy, is_chief, save_on_chief, sharded_batches

SIZE = 8  # image side


def _examples(count: int) -> tf.data.Dataset:
    """``count`` examples whose id is pixel (0, 0) of the image (one box each)."""
    images = np.full((count, SIZE, SIZE, 3), 100, np.uint8)
    images[:, 0, 0, 0] = np.arange(count)
    boxes = np.tile(np.array([[1.0, 1.0, 6.0, 6.0]], np.float32), (count, 1, 1))
    return tf.data.Dataset.from_tensor_slices((images, {"boxes": boxes, "labels": np.zeros((count, 1), np.int32)}))


def _ids(stream: tf.data.Dataset, steps: int) -> list[list[int]]:
    return [np.round(images[:, 0, 0, 0].numpy()).astype(int).tolist() for images, _ in stream.take(steps)]


def test_shards_split_every_pass_disjointly_like_one_pipeline():
    # 10 examples, global batch 4 = 2 shards x 2: each pass is 2 global steps (8 examples; the 2 left
    # over differ from pass to pass) and global step s holds the examples of one pipeline's step s.
    count, passes = 10, 3
    one = _ids(sharded_batches(_examples(count), 4, image_size=SIZE, max_boxes=2, seed=5), 2 * passes)
    shards = [_ids(sharded_batches(_examples(count), 2, num_shards=2, index=i, image_size=SIZE, max_boxes=2,
                                   seed=5), 2 * passes) for i in range(2)]
    left_over = []
    for p in range(passes):
        steps = range(2 * p, 2 * p + 2)
        seen = [i for s in steps for shard in shards for i in shard[s]]
        assert len(seen) == len(set(seen)) == 8, f"pass {p}: {seen}"
        left_over.append(sorted(set(range(count)) - set(seen)))
        for s in steps:
            assert sorted(shards[0][s] + shards[1][s]) == sorted(one[s])
    assert len({tuple(x) for x in left_over}) > 1  # reshuffled every pass
    # Each pipeline keeps every second example of the shared permutation.
    assert [one[0][0], one[0][2]] == shards[0][0] and [one[0][1], one[0][3]] == shards[1][0]


def test_shards_of_a_dataset_of_unknown_size_stay_disjoint():
    examples = _examples(12).filter(lambda image, target: True)  # cardinality unknown
    assert int(examples.cardinality()) < 0
    one = _ids(sharded_batches(examples, 4, image_size=SIZE, max_boxes=2, seed=2), 3)
    shards = [_ids(sharded_batches(examples, 2, num_shards=2, index=i, image_size=SIZE, max_boxes=2, seed=2), 3)
              for i in range(2)]
    seen = [i for shard in shards for batch in shard for i in batch]
    assert sorted(seen) == list(range(12))  # the first 12 of the endless stream: one pass
    for s in range(3):
        assert sorted(shards[0][s] + shards[1][s]) == sorted(one[s])


def test_stream_fast_forwards_and_checks_sizes():
    stream = distributed_stream(_examples(8), tf.distribute.get_strategy(), 4, start_step=3, seed=1,
                                image_size=SIZE, max_boxes=2)
    full = _ids(sharded_batches(_examples(8), 4, image_size=SIZE, max_boxes=2, seed=1), 5)
    assert _ids(stream, 2) == full[3:5]
    with pytest.raises(ValueError, match="fewer than one global batch of 16"):
        sharded_batches(_examples(8), 8, num_shards=2)

    class TwoReplicas:
        num_replicas_in_sync = 2

    with pytest.raises(ValueError, match="multiple of the 2 replicas"):
        distributed_stream(_examples(8), TwoReplicas(), 3)


def test_strategy_names_and_multiworker_after_tensorflow_started(monkeypatch):
    assert get_strategy(None) is tf.distribute.get_strategy() and get_strategy("default").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="strategy must be None, one of"):
        get_strategy("tpu")
    tf.constant(1.0) + 1  # TensorFlow has run: collective ops can no longer be configured
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    with pytest.raises(RuntimeError, match="first thing in the program"):
        get_strategy("multiworker")


def test_single_process_is_chief_and_saves(tmp_path):
    import keras

    strategy = tf.distribute.get_strategy()
    assert is_chief(strategy)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert save_on_chief(model, tmp_path / "new" / "m.keras", strategy)
    assert (tmp_path / "new" / "m.keras").is_file()


def test_training_batches_have_static_shapes():
    # What TPUStrategy (XLA) needs: no ragged or unknown dimension in the training stream.
    stream = distributed_stream(_examples(8), tf.distribute.get_strategy(), 4, image_size=SIZE, max_boxes=3)
    specs = tf.nest.flatten(stream.element_spec)
    assert [tuple(s.shape) for s in specs] == [(4, SIZE, SIZE, 3), (4, 3, 4), (4, 3)]


@pytest.mark.slow
def test_retinanet_training_step_compiles_with_xla():
    # TPUs run the whole step through XLA; on CPU, jit_compile=True checks the same static-shape rule.
    import kdet
    from kdet.models import RetinaNet

    model = RetinaNet(3, backbone="tiny", image_size=64)
    model.compile(jit_compile=True, evaluate_coco=False)
    x, y = kdet.data.synthetic_arrays(8, 64)
    examples = tf.data.Dataset.from_tensor_slices((x, y))
    stream = distributed_stream(examples, tf.distribute.get_strategy(), 4, image_size=64, max_boxes=10)
    history = model.fit(stream, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
