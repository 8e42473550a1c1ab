"""The input pipeline: 8-bit training batches that decode to the loaders' float32 values, and
validation batches made of the held-out images only."""
import numpy as np
import tensorflow as tf

from conftest import write_fashion_mnist
from kit.config import parse_config
from kit.data import load_fashion_mnist
from kit.run import steps_per_epoch, train_batches, validation_batches
from vae_fashion_mnist import FASHION_MNIST


def test_training_batches_stay_8_bit_and_decode_to_the_loaders_values(tmp_path):
    splits = load_fashion_mnist(str(write_fashion_mnist(tmp_path, n_train=50, n_test=5)))
    config = parse_config(FASHION_MNIST, ["--epochs", "2", "--batch-size", "16", "--outdir", str(tmp_path / "o")])
    ds = train_batches(config, splits.x_train, first_epoch=0)
    batches = [b.numpy() for b in ds]
    assert len(batches) == 2 * steps_per_epoch(config, splits, tf.distribute.get_strategy()) == 8
    assert all(b.dtype == np.float32 for b in batches)
    epoch = np.concatenate(batches[:4])
    # Each epoch is a permutation of the training images, bit for bit the loaders' k / 255.
    order = np.lexsort(epoch.reshape(50, -1).T)
    np.testing.assert_array_equal(epoch[order], splits.x_train[np.lexsort(splits.x_train.reshape(50, -1).T)])
    assert not np.array_equal(epoch, np.concatenate(batches[4:]))  # a new order each epoch
    # The images the pipeline's graph holds (what every worker receives) are 8-bit.
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    images = [n.attr["value"].tensor for n in graph.node
              if n.op == "Const" and len(n.attr["value"].tensor.tensor_shape.dim) == 4]
    assert [tf.dtypes.as_dtype(t.dtype) for t in images] == [tf.uint8]
    assert len(images[0].tensor_content) == splits.x_train.size  # one byte per sub-pixel


def test_a_last_batch_too_small_to_split_is_left_out_and_a_resumed_epoch_skips_its_done_batches(
        tmp_path, capsys):
    """49 images in batches of 16 over 2 replicas: the last batch of 1 is dropped, a different
    image each epoch, with one line saying so. From a checkpoint after batch 2 of epoch 2, the
    batches are the uninterrupted run's from there on."""
    from types import SimpleNamespace
    splits = load_fashion_mnist(str(write_fashion_mnist(tmp_path, n_train=49, n_test=5)))
    config = parse_config(FASHION_MNIST, ["--epochs", "2", "--batch-size", "16", "--outdir", str(tmp_path / "o")])
    steps = steps_per_epoch(config, splits, SimpleNamespace(num_replicas_in_sync=2))
    assert steps == 3
    assert capsys.readouterr().out == ("Each epoch leaves out 1 of its 49 training images, the last of its "
                                       "shuffled order (others each epoch): a batch of 1 cannot be split "
                                       "over 2 replicas\n")
    every = [b.numpy() for b in train_batches(config, splits.x_train, first_epoch=0)]
    assert [len(b) for b in every] == [16, 16, 16, 1] * 2
    kept = [b.numpy() for b in train_batches(config, splits.x_train, 0, steps)]
    assert len(kept) == 6
    for got, want in zip(kept, every[:3] + every[4:7]):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(every[3], every[7])  # not always the same image left out
    resumed = [b.numpy() for b in train_batches(config, splits.x_train, 1, steps, inside_epoch={"batch": 2})]
    assert len(resumed) == 1
    np.testing.assert_array_equal(resumed[0], kept[5])
    resumed = [b.numpy() for b in train_batches(config, splits.x_train, 0, inside_epoch={"batch": 3})]
    assert len(resumed) == 5 and all(np.array_equal(a, b) for a, b in zip(resumed, every[3:]))


def test_validation_batches_hold_exactly_the_held_out_images(tmp_path):
    splits = load_fashion_mnist(str(write_fashion_mnist(tmp_path, n_train=50, n_test=5))).hold_out(12, seed=1)
    images = np.concatenate([b.numpy() for b in validation_batches(splits)])
    np.testing.assert_array_equal(images, splits.x_val)
    assert validation_batches(load_fashion_mnist(str(tmp_path)).hold_out(0, seed=1)) is None


def test_only_the_chief_writes_tensorboard_logs(tmp_path, monkeypatch):
    import keras
    from kit import run
    splits = load_fashion_mnist(str(write_fashion_mnist(tmp_path, n_train=50, n_test=5)))
    config = parse_config(FASHION_MNIST, ["--tensorboard", "--outdir", str(tmp_path / "o")])
    kinds = {}
    for chief in (True, False):
        monkeypatch.setattr(run, "is_chief", lambda: chief)
        kinds[chief] = [type(c) for c in run.training_callbacks(config, FASHION_MNIST, splits, [])]
    assert keras.callbacks.TensorBoard in kinds[True]
    assert keras.callbacks.TensorBoard not in kinds[False] and len(kinds[False]) == len(kinds[True]) - 1


def test_to_uint8_recovers_every_8_bit_level_from_the_loaders_floats():
    from kit.evaluate import to_uint8
    levels = np.arange(256, dtype=np.uint8)
    x = (levels.astype(np.float32) / 255.0).reshape(1, 16, 16, 1)
    np.testing.assert_array_equal(to_uint8(np.repeat(x, 5, axis=0), chunk=2).reshape(5, -1), np.tile(levels, (5, 1)))
    assert to_uint8(np.array([[-0.2, 1.3, 0.51 / 255, 0.49 / 255]])).tolist() == [[0, 255, 1, 0]]
