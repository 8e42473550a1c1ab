"""Loaders on small files in the official formats: values, search order, every kind of bad file."""
import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from kit import data
from conftest import write_cifar10, write_cifar_batch, write_fashion_mnist, write_idx_gz
from kit.data import DataError, load_cifar10, load_fashion_mnist


@pytest.fixture
def no_default_places(tmp_path, monkeypatch):
    """Empty Keras cache, no Debian folder, and a 'download' that fails as it does offline."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    import keras

    def offline():
        raise OSError("no network")
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    return tmp_path / "keras_home"


def test_fashion_mnist_from_data_dir_has_official_layout_and_values(tmp_path):
    directory = write_fashion_mnist(tmp_path / "f", n_train=20, n_test=10)
    splits = load_fashion_mnist(str(directory))
    assert splits.x_train.shape == (20, 28, 28, 1) and splits.x_test.shape == (10, 28, 28, 1)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int64
    raw = np.frombuffer(gzip.decompress((directory / "train-images-idx3-ubyte.gz").read_bytes())[16:],
                        np.uint8).reshape(20, 28, 28)
    np.testing.assert_array_equal(splits.x_train[..., 0], raw.astype(np.float32) / 255.0)
    assert 0.0 <= splits.x_train.min() and splits.x_train.max() <= 1.0
    assert splits.source == str(directory)
    # These are not the official files, so each one is reported as a modified copy.
    assert len(splits.warnings) == 4 and "differs from the official file" in splits.warnings[0]


def test_cifar10_from_data_dir_or_its_parent(tmp_path):
    parent = write_cifar10(tmp_path, n_per_batch=6, n_test=4)
    for given in (parent, parent / "cifar-10-batches-py"):
        splits = load_cifar10(str(given))
        assert splits.x_train.shape == (30, 32, 32, 3) and splits.x_test.shape == (4, 32, 32, 3)
    batch = pickle.load(open(parent / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="bytes")
    row = batch[b"data"][0]
    # Channel-first rows: the red plane is the first 1024 values.
    np.testing.assert_array_equal(splits.x_train[0, :, :, 0], row[:1024].reshape(32, 32).astype(np.float32) / 255.0)
    np.testing.assert_array_equal(splits.x_train[0, :, :, 2], row[2048:].reshape(32, 32).astype(np.float32) / 255.0)
    assert list(splits.y_train[:6]) == batch[b"labels"]


def test_limit_keeps_the_first_training_images(tmp_path):
    splits = load_fashion_mnist(str(write_fashion_mnist(tmp_path, n_train=20, n_test=5)))
    limited = splits.limit(7)
    assert len(limited.x_train) == 7 and len(limited.x_test) == 5
    np.testing.assert_array_equal(limited.x_train, splits.x_train[:7])


def test_validation_images_are_held_out_of_the_training_split_by_seed(tmp_path):
    splits = load_fashion_mnist(str(write_fashion_mnist(tmp_path, n_train=40, n_test=5)))
    held = splits.hold_out(10, seed=3)
    assert held.x_val.shape == (10, 28, 28, 1) and held.x_train.shape == (30, 28, 28, 1)
    np.testing.assert_array_equal(held.x_val, splits.x_train[held.validation_indices])
    np.testing.assert_array_equal(held.y_val, splits.y_train[held.validation_indices])
    rest = np.setdiff1d(np.arange(40), held.validation_indices)
    np.testing.assert_array_equal(held.x_train, splits.x_train[rest])  # the rest, in their order
    np.testing.assert_array_equal(held.x_test, splits.x_test)  # the test split is untouched
    again, other = splits.hold_out(10, seed=3), splits.hold_out(10, seed=4)
    np.testing.assert_array_equal(again.validation_indices, held.validation_indices)
    assert set(other.validation_indices) != set(held.validation_indices)
    limited = held.limit(7)  # --limit counts the training images that remain
    np.testing.assert_array_equal(limited.x_train, held.x_train[:7])
    np.testing.assert_array_equal(limited.x_val, held.x_val)
    assert limited.full is splits and len(splits.hold_out(0, seed=3).x_val) == 0


def test_search_order_data_dir_then_keras_cache_then_debian(tmp_path, no_default_places, monkeypatch):
    cache = write_fashion_mnist(no_default_places / "datasets" / "fashion-mnist", n_train=3, n_test=2)
    debian = write_fashion_mnist(tmp_path / "debian", n_train=5, n_test=2)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian)
    assert load_fashion_mnist().source == str(cache)
    shutil.rmtree(cache)
    assert load_fashion_mnist().source == str(debian)
    explicit = write_fashion_mnist(tmp_path / "mine", n_train=4, n_test=2)
    assert load_fashion_mnist(str(explicit)).source == str(explicit)


def test_keras_cache_is_used_for_cifar10(no_default_places):
    write_cifar10(no_default_places / "datasets" / "cifar-10-batches-py-target", n_per_batch=2, n_test=2)
    assert load_cifar10().source.endswith("cifar-10-batches-py-target/cifar-10-batches-py")


def test_nothing_found_and_no_download_gives_one_clear_error(no_default_places):
    with pytest.raises(DataError) as err:
        load_fashion_mnist()
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    assert str(no_default_places / "datasets" / "fashion-mnist") in message and "no network" in message
    with pytest.raises(DataError, match="cifar-10-batches-py.*--data-dir"):
        load_cifar10()


def test_data_dir_without_files_is_an_error_naming_it_not_a_fallback(tmp_path):
    with pytest.raises(DataError, match=f"--data-dir {tmp_path}: missing Fashion-MNIST files"):
        load_fashion_mnist(str(tmp_path))
    with pytest.raises(DataError, match=f"--data-dir {tmp_path}: no CIFAR-10 batches"):
        load_cifar10(str(tmp_path))


def corrupt_fashion(directory, name, how):
    path = Path(directory) / name
    raw = gzip.decompress(path.read_bytes())
    if how == "magic":
        write_idx_gz(path, np.zeros((3, 28, 28)), magic=0x802)
    elif how == "truncated":
        path.write_bytes(gzip.compress(raw[:-10]))
    elif how == "not-gzip":
        path.write_bytes(b"this is not gzip data at all")
    elif how == "cut-gzip":
        path.write_bytes(path.read_bytes()[:30])
    elif how == "dims":
        write_idx_gz(path, np.zeros((3, 32, 32)))
    elif how == "count":
        write_idx_gz(path, np.zeros(7))
    elif how == "range":
        write_idx_gz(path, np.full(len(raw) - 8, 10))
    return str(path)


@pytest.mark.parametrize("name, how, message", [
    ("train-images-idx3-ubyte.gz", "magic", "wrong magic number"),
    ("t10k-images-idx3-ubyte.gz", "truncated", "bytes, expected"),
    ("train-labels-idx1-ubyte.gz", "not-gzip", "not a readable gzip file"),
    ("train-images-idx3-ubyte.gz", "cut-gzip", "not a readable gzip file"),
    ("t10k-images-idx3-ubyte.gz", "dims", "images are 32x32, expected 28x28"),
    ("train-labels-idx1-ubyte.gz", "count", "images but 7 labels"),
    ("t10k-labels-idx1-ubyte.gz", "range", "labels out of range"),
])
def test_bad_fashion_mnist_files_are_reported_not_loaded(tmp_path, name, how, message):
    directory = write_fashion_mnist(tmp_path, n_train=20, n_test=10)
    path = corrupt_fashion(directory, name, how)
    with pytest.raises(DataError, match=message) as err:
        load_fashion_mnist(str(directory))
    # The message names the bad file (or, for a mismatch between two files, their folder).
    assert path in str(err.value) or str(directory) in str(err.value)


@pytest.mark.parametrize("content, message", [
    (b"garbage", "not a valid CIFAR-10 batch"),
    (pickle.dumps([1, 2, 3]), "not a CIFAR-10 batch"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}), r"shape \(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "1 labels for 2 images"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}), "labels out of range"),
    # The dtype is named, not only the (correct) shape.
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float64), b"labels": [1, 2]}),
     r"must be a uint8 array of shape \(N, 3072\), got float64 of shape \(2, 3072\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.int16), b"labels": [1, 2]}), "got int16"),
    (pickle.dumps({b"data": [[0] * 3072] * 2, b"labels": [1, 2]}), "got a list"),
    # Labels must be integers: strings, floats (even whole, in range), booleans and None are refused.
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["cat", "dog"]}), "must be integers 0-9, got string values"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"3", b"4"]}), "labels must be integers"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, "2"]}), "labels must be integers"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1.0, 2.0]}), "got float64"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1.5, 2.0]}), "labels must be integers"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [True, False]}), "got bool"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, None]}), "got object"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": None}), "flat list of integers"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[1], [2, 3]]}), "not a list of integers"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 2]}), r"out of range 0-9 \(min -1"),
])
def test_bad_cifar_batches_are_reported_by_name(tmp_path, content, message):
    parent = write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    bad = parent / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        load_cifar10(str(parent))
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_a_split_without_images_is_reported_not_loaded(tmp_path, dataset):
    if dataset == "fashion_mnist":  # idx files of 0 images: count and range checks pass
        directory, load = write_fashion_mnist(tmp_path, n_train=20, n_test=0), load_fashion_mnist
    else:  # protocol 4 pickles empty bytes as bytes (protocol 2 calls bytes(), which is refused)
        directory, load = write_cifar10(tmp_path, n_per_batch=2) / "cifar-10-batches-py", load_cifar10
        write_cifar_batch(directory / "test_batch", np.zeros((0, 3072)), [], protocol=4)
    with pytest.raises(DataError, match=f"^{directory}: the test split holds no images$"):
        load(str(directory))


class CreatesMarker:
    """Unpickling this calls pathlib.Path.touch(marker): code execution if the loader allowed it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_crafted_pickle_cannot_run_code(tmp_path):
    parent = write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    marker = tmp_path / "pwned"
    payload = {b"data": CreatesMarker(marker), b"labels": [0]}
    (parent / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(payload))
    pickle.loads(pickle.dumps(CreatesMarker(tmp_path / "control")))  # the payload really works
    assert (tmp_path / "control").exists()
    with pytest.raises(DataError, match="refusing to load global pathlib"):
        load_cifar10(str(parent))
    assert not marker.exists()


def test_integer_label_arrays_of_any_int_dtype_load_as_int64(tmp_path):
    path = tmp_path / "data_batch_1"
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": np.array([9, 0, 5], np.uint8)}
    path.write_bytes(pickle.dumps(batch))
    images, labels = data.read_cifar_batch(path)
    assert labels.dtype == np.int64 and labels.tolist() == [9, 0, 5]


def test_official_batches_pickled_by_python2_style_protocol_load(tmp_path):
    path = tmp_path / "data_batch_1"
    write_cifar_batch(path, np.arange(3072 * 2).reshape(2, 3072) % 256, [3, 4], protocol=2)
    images, labels = data.read_cifar_batch(path)
    assert images.shape == (2, 32, 32, 3) and list(labels) == [3, 4]


@pytest.mark.skipif(not data.has_fashion_mnist_files(data.DEBIAN_FASHION_MNIST_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_the_official_fashion_mnist_files_are_recognised():
    splits = load_fashion_mnist(str(data.DEBIAN_FASHION_MNIST_DIR))
    assert splits.warnings == []
    assert splits.x_train.shape == (60000, 28, 28, 1) and splits.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(splits.y_test).tolist() == [1000] * 10
