"""Error handling catches what it means and nothing more: a damaged file or a failed download
becomes one line, a programming error keeps its traceback."""
import io
import json
import re
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import common
from conftest import ROOT
from kit import callbacks, data
from kit.callbacks import load_checkpoint, save_checkpoint
from kit.config import parse_config
from kit.data import DataError
from kit.errors import DamagedRunError, UsageError
from kit.run import load_saved_model
from vae_fashion_mnist import FASHION_MNIST


def test_every_remaining_broad_except_says_why():
    broad = [(path.name, line) for path in [ROOT / "common.py", *sorted((ROOT / "kit").glob("*.py"))]
             for line in path.read_text().splitlines() if re.search(r"except (Exception|BaseException)\b|except:", line)]
    # the two downloads, and the signal guard that swaps TensorFlow's wrapper for the stop it hides
    assert [name for name, _ in broad] == ["callbacks.py", "data.py", "data.py"]
    assert all("bare Exception" in line or "always re-raised" in line for _, line in broad), broad


@pytest.fixture(scope="module")
def saved_vae(tmp_path_factory):
    model = common.build_vae((28, 28, 1), latent_dim=2, encoder_filters=(4,), encoder_dense=(),
                             decoder_filters=(4,), decoder_dense=(), seed=0, dataset="fashion_mnist")
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return model, path


def rewritten(source, target, member, change):
    """A copy of the .keras archive `source` at `target` with one member changed."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            content = old.read(name)
            new.writestr(name, change(content) if name == member else content)
    return target


def eval_only_config(path, tmp_path):
    return parse_config(FASHION_MNIST, ["--eval-only", str(path), "--outdir", str(tmp_path / "out")])


@pytest.mark.parametrize("member, change, message", [
    ("config.json", lambda c: c.replace(b'"vae_kit>VAE"', b'"vae_kit>Unknown"'), "TypeError: Could not locate class"),
    ("config.json", lambda c: b"{not json", "JSONDecodeError: Expecting property name"),
    ("model.weights.h5", lambda c: b"garbage" * 100, "OSError: Unable to synchronously open file"),
    ("model.weights.h5", lambda c: c[:len(c) // 2], "OSError: Unable to synchronously open file"),
])
def test_eval_only_of_a_damaged_archive_is_a_usage_error(saved_vae, tmp_path, member, change, message):
    path = rewritten(saved_vae[1], tmp_path / "x.keras", member, change)
    with pytest.raises(UsageError) as err:
        load_saved_model(eval_only_config(path, tmp_path), FASHION_MNIST)
    assert str(err.value).startswith(f"cannot load {path} as a VAE: {message}"), str(err.value)


def test_a_bug_while_loading_keeps_its_traceback(saved_vae, tmp_path, monkeypatch):
    config = eval_only_config(saved_vae[1], tmp_path)
    assert load_saved_model(config, FASHION_MNIST).latent_dim == 2  # the file itself is sound

    def buggy_init(self, *args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
    monkeypatch.setattr(common.VAE, "__init__", buggy_init)
    with pytest.raises(TypeError, match="could not be deserialized properly") as err:
        load_saved_model(config, FASHION_MNIST)
    assert "unsupported operand" in str(err.value.__context__)  # the bug itself, in the traceback


def test_a_typeerror_raised_by_keras_itself_is_not_taken_for_a_bad_file(saved_vae, tmp_path, monkeypatch):
    def broken(path, *args, **kwargs):
        raise TypeError("load_model() got an unexpected keyword argument")
    monkeypatch.setattr(callbacks.keras.models, "load_model", broken)
    with pytest.raises(TypeError, match="unexpected keyword"):
        load_saved_model(eval_only_config(saved_vae[1], tmp_path), FASHION_MNIST)


def checkpoint(model, directory):
    model.compile(optimizer="adam")
    save_checkpoint(model, directory, 1, [{"epoch": 1, "loss": 1.0}])
    return directory / "ckpt-epoch0001.keras"


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # never trained
def test_a_checkpoint_that_keras_cannot_load_is_damaged_but_a_bug_is_a_bug(saved_vae, tmp_path, monkeypatch):
    path = checkpoint(saved_vae[0], tmp_path)
    model, state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and model.latent_dim == 2
    rewritten(path, tmp_path / "damaged.keras", "model.weights.h5", lambda c: c[:len(c) // 2])
    (tmp_path / "damaged.keras").replace(path)
    with pytest.raises(DamagedRunError, match=r"damaged: ckpt-epoch0001.keras has changed since it was written"):
        load_checkpoint(tmp_path)  # the SHA-256 that state.json recorded, before Keras reads a byte
    state_path = tmp_path / "state.json"  # a checkpoint from before digests were recorded: the loader
    state_path.write_text(json.dumps({k: v for k, v in state.items() if k != "model_sha256"}))
    with pytest.raises(DamagedRunError, match=r"damaged: cannot load ckpt-epoch0001.keras \(OSError: "):
        load_checkpoint(tmp_path)

    checkpoint(saved_vae[0], tmp_path)  # sound again

    def buggy(path, *args, **kwargs):
        raise TypeError("'NoneType' object is not subscriptable")
    monkeypatch.setattr(callbacks.keras.models, "load_model", buggy)
    with pytest.raises(TypeError, match="not subscriptable"):  # not "damaged": the user keeps it
        load_checkpoint(tmp_path)


# --- downloads -----------------------------------------------------------------------------------

@pytest.fixture
def nothing_local(tmp_path, monkeypatch):
    """No Keras cache and no Debian folder: the loaders fall back to keras.datasets."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")


def failing(error):
    def load_data():
        raise error
    return load_data


@pytest.mark.parametrize("error", [
    Exception("URL fetch failure on https://example.org: None -- [Errno -3] name resolution"),
    OSError("no network"), ValueError("Incomplete or corrupted file detected"), EOFError(),
    zipfile.BadZipFile("File is not a zip file")])
@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_a_failed_download_is_a_data_error(nothing_local, monkeypatch, error, dataset):
    monkeypatch.setattr(getattr(keras.datasets, dataset), "load_data", failing(error))
    with pytest.raises(DataError, match="the download failed"):
        (data.load_fashion_mnist if dataset == "fashion_mnist" else data.load_cifar10)()


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_a_bug_in_the_download_is_not_a_failed_download(nothing_local, monkeypatch, dataset):
    monkeypatch.setattr(getattr(keras.datasets, dataset), "load_data",
                        failing(TypeError("expected str, bytes or os.PathLike object, not NoneType")))
    with pytest.raises(TypeError, match="PathLike"):
        (data.load_fashion_mnist if dataset == "fashion_mnist" else data.load_cifar10)()


def test_a_broken_keras_import_is_not_a_failed_download(nothing_local, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # "import keras" now raises ImportError
    with pytest.raises(ImportError):
        data.load_fashion_mnist()


def test_a_cifar_batch_that_cannot_be_read_is_a_data_error(tmp_path):
    (tmp_path / "data_batch_1").mkdir()  # a folder where the file should be
    with pytest.raises(DataError, match="data_batch_1: cannot be read"):
        data.read_cifar_batch(tmp_path / "data_batch_1")


def test_a_pickle_calling_an_allowed_constructor_badly_is_a_data_error(tmp_path):
    # _codecs.encode is allowed (Python 3 pickles bytes with it); called with an int it raises TypeError
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nK\x01\x85R.")
    with pytest.raises(DataError, match="not a valid CIFAR-10 batch \\(TypeError"):
        data.read_cifar_batch(path)


def test_ragged_labels_are_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not a list of integers \\(ValueError"):
        data.cifar_labels([[1], [2, 3]], 2, "x")


# --- common.mean_image --------------------------------------------------------------------------

def test_mean_image_refuses_an_unknown_likelihood_instead_of_a_sigmoid():
    logits = np.zeros((1, 2, 2, 1), np.float32)
    np.testing.assert_allclose(common.mean_image(logits, "bernoulli"), 0.5)
    with pytest.raises(ValueError, match="likelihood must be one of .*not 'gausian'"):
        common.mean_image(logits, "gausian")
