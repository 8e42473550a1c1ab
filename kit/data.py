"""Dataset loading: Fashion-MNIST (idx .gz files) and CIFAR-10 (pickled python batches).

Where the files come from, in order: --data-dir, Keras' cache, Debian's dataset-fashion-mnist
folder (Fashion-MNIST only), then keras.datasets.<name>.load_data(), which downloads.
Every file is checked (magic number, sizes, shapes, label range) and named in any error.
"""
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from kit.errors import DataError

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

FASHION_MNIST_FILES = {  # name -> (split, kind); the official files hold 60000 and 10000
    "train-images-idx3-ubyte.gz": ("train", "images"),
    "train-labels-idx1-ubyte.gz": ("train", "labels"),
    "t10k-images-idx3-ubyte.gz": ("test", "images"),
    "t10k-labels-idx1-ubyte.gz": ("test", "labels"),
}
# Official copies are recognised by either digest. MD5 of the .gz files: published by the
# Fashion-MNIST authors. SHA-256 of the decompressed idx bytes (independent of how a copy was
# re-gzipped): computed from Debian's dataset-fashion-mnist package, whose .gz files differ
# from the published ones only in compression.
FASHION_MNIST_DIGESTS = {  # name -> (MD5 of the .gz, SHA-256 of the decompressed idx bytes)
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                   "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",
                                   "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",
                                  "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",
                                  "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
# MD5 of the official python-version batch files, as published with the data set (and used by
# torchvision); no SHA-256 of the individual batches is published.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x00000803 and 0x00000801

# What a failed download raises: network and file errors (urllib's URLError and HTTPError are
# OSErrors), get_file's ValueError for a bad hash, a cut or damaged archive. Keras' get_file turns
# URLError and HTTPError into a bare Exception("URL fetch failure ..."): see is_download_error.
DOWNLOAD_ERRORS = (OSError, ValueError, EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error)


def is_download_error(err):
    """Does an exception of keras.datasets.*.load_data mean the download failed (not a bug)?"""
    return isinstance(err, DOWNLOAD_ERRORS) or type(err) is Exception


@dataclass
class Splits:
    """Train, validation and test splits: float32 images in [0, 1] shaped (N, H, W, C), int64
    labels. The loaders return no validation images; hold_out() takes them from the training split."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    class_names: tuple
    warnings: list = field(default_factory=list)
    sha256: dict = field(default_factory=dict)

    full: Optional["Splits"] = None  # as loaded: the feature network trains on all of it
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    validation_indices: Optional[np.ndarray] = None  # rows of the loaded training split

    def hold_out(self, n, seed):
        """n training images chosen at random by `seed` become the validation split; the rest stay
        training images in their order (n = 0: no validation split)."""
        if n > len(self.x_train):
            raise DataError(f"--validation-images {n}: the training split has only "
                            f"{len(self.x_train)} images")
        held = np.sort(np.random.default_rng(seed).permutation(len(self.x_train))[:n])
        keep = np.setdiff1d(np.arange(len(self.x_train)), held)
        return replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep],
                       x_val=self.x_train[held], y_val=self.y_train[held],
                       validation_indices=held, full=self.full or self)

    def limit(self, n):
        """The same splits with only the first n training images (None keeps all)."""
        if n is None or n >= len(self.x_train):
            return self
        return replace(self, x_train=self.x_train[:n], y_train=self.y_train[:n],
                       full=self.full or self)


def keras_cache_dir():
    """Where keras.utils.get_file keeps datasets: $KERAS_HOME/datasets or ~/.keras/datasets."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


# --- Fashion-MNIST -----------------------------------------------------------------------------

def parse_idx(raw, kind, name):
    """uint8 array from the bytes of an idx file, after checking magic number, shape and size."""
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated idx file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != IDX_MAGIC[kind]:
        raise DataError(f"{name}: wrong magic number {magic:#010x}, expected "
                        f"{IDX_MAGIC[kind]:#010x} for idx {kind}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if kind == "images" and dims[1:] != (28, 28):
        raise DataError(f"{name}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected_bytes = header + int(np.prod(dims))
    if len(raw) != expected_bytes:
        raise DataError(f"{name}: {len(raw)} bytes, expected {expected_bytes} for shape {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_fashion_mnist_dir(directory):
    """Splits from the four official .gz files in `directory` (DataError names a bad file)."""
    directory = Path(directory)
    arrays, warnings, sha256 = {}, [], {}
    for name, (split, kind) in FASHION_MNIST_FILES.items():
        path = directory / name
        try:
            packed = path.read_bytes()
            raw = gzip.decompress(packed)
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: not a readable gzip file ({err})") from None
        arrays[split, kind] = parse_idx(raw, kind, str(path))
        sha256[name] = hashlib.sha256(raw).hexdigest()
        official_md5, official_sha256 = FASHION_MNIST_DIGESTS[name]
        if hashlib.md5(packed).hexdigest() != official_md5 and sha256[name] != official_sha256:
            warnings.append(f"{path} differs from the official file (sha256 of its contents "
                            f"{sha256[name][:16]}...): a modified copy; results may not compare")
    for split in ("train", "test"):
        labels = arrays[split, "labels"]
        if len(labels) != len(arrays[split, "images"]):
            raise DataError(f"{directory}: {split} split has {len(arrays[split, 'images'])} images "
                            f"but {len(labels)} labels")
        if not len(labels):
            raise DataError(f"{directory}: the {split} split holds no images")
        if labels.max() > 9:
            raise DataError(f"{directory}: {split} labels out of range 0-9 (max {labels.max()})")
    images = {s: arrays[s, "images"][..., None].astype(np.float32) / 255.0 for s in ("train", "test")}
    labels = {s: arrays[s, "labels"].astype(np.int64) for s in ("train", "test")}
    return Splits(images["train"], labels["train"], images["test"], labels["test"],
                  source=str(directory), class_names=FASHION_MNIST_CLASSES,
                  warnings=warnings, sha256=sha256)


def has_fashion_mnist_files(directory):
    return all((Path(directory) / name).is_file() for name in FASHION_MNIST_FILES)


def load_fashion_mnist(data_dir=None):
    """Fashion-MNIST as Splits, from the first place that has it (see the module docstring)."""
    if data_dir is not None:
        if not has_fashion_mnist_files(data_dir):
            missing = [n for n in FASHION_MNIST_FILES if not (Path(data_dir) / n).is_file()]
            raise DataError(f"--data-dir {data_dir}: missing Fashion-MNIST files: {', '.join(missing)}")
        return read_fashion_mnist_dir(data_dir)
    candidates = [keras_cache_dir() / "fashion-mnist", DEBIAN_FASHION_MNIST_DIR]
    for directory in candidates:
        if has_fashion_mnist_files(directory):
            return read_fashion_mnist_dir(directory)
    import keras  # outside the try: a broken installation is no failed download
    try:
        keras.datasets.fashion_mnist.load_data()  # downloads into the Keras cache
    except Exception as err:  # as broad as get_file's bare Exception; anything else is re-raised
        if not is_download_error(err):
            raise
        raise DataError(
            f"Fashion-MNIST not found in {', '.join(map(str, candidates))} and the download "
            f"failed ({type(err).__name__}: {err}). Provide the four official .gz files with "
            f"--data-dir DIR, or install them with 'apt-get install dataset-fashion-mnist'."
        ) from None
    splits = read_fashion_mnist_dir(candidates[0])
    splits.source = f"downloaded by keras.datasets.fashion_mnist into {candidates[0]}"
    return splits


# --- CIFAR-10 ----------------------------------------------------------------------------------

class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can build only what the official CIFAR batches hold: dicts, lists, bytes,
    numbers and uint8 NumPy arrays. Any other global (os.system, eval, ...) is refused, so a
    crafted file cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2: str -> bytes only

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def cifar_labels(labels, n_images, path):
    """b'labels' as an int64 array after checking it holds n_images integers in 0-9.

    Strings, floats (even whole ones such as 3.0), booleans and mixed lists are refused, not
    converted: the official batches hold Python ints, so anything else is a damaged copy.
    """
    try:
        labels = np.asarray(labels)
    except ValueError as err:  # ragged nested lists ("inhomogeneous shape")
        raise DataError(f"{path}: b'labels' is not a list of integers ({type(err).__name__}: {err})") from None
    if labels.ndim != 1:
        raise DataError(f"{path}: b'labels' must be a flat list of integers, got shape {labels.shape}")
    if not labels.size and not n_images:  # [] is float64 to NumPy; read_cifar10_dir reports it
        return labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        kind = "string" if labels.dtype.kind in "US" else labels.dtype.name
        raise DataError(f"{path}: labels must be integers 0-9, got {kind} values "
                        f"such as {labels[:3].tolist()}")
    if len(labels) != n_images:
        raise DataError(f"{path}: {len(labels)} labels for {n_images} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels out of range 0-9 (min {labels.min()}, max {labels.max()})")
    return labels.astype(np.int64)


# What unpickling a damaged or crafted file can raise (the pickle module documents UnpicklingError,
# EOFError, AttributeError, ImportError and IndexError); TypeError and ValueError come from the few
# constructors RestrictedUnpickler allows (numpy's _reconstruct, ndarray.__setstate__, _codecs.encode)
# called with bad arguments, RecursionError from nesting. Only the file decides these: the
# unpickler's own code is find_class.
UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, AttributeError, ImportError, LookupError,
                     TypeError, ValueError, OverflowError, RecursionError)


def read_cifar_batch(path):
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) from one pickled batch, validated."""
    try:
        with open(path, "rb") as f:
            batch = RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    except UNPICKLING_ERRORS as err:
        raise DataError(f"{path}: not a valid CIFAR-10 batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), "
                        f"got a {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), "
                        f"got {data.dtype} of shape {data.shape}")
    labels = cifar_labels(labels, len(data), path)
    # Rows are channel-first (3 x 32 x 32); images are channel-last.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def find_cifar_dir(directory):
    """`directory` itself or its cifar-10-batches-py child, whichever holds the batches."""
    for candidate in (Path(directory), Path(directory) / "cifar-10-batches-py"):
        if (candidate / CIFAR10_TEST_FILE).is_file():
            return candidate
    return None


def read_cifar10_dir(directory):
    directory = Path(directory)
    parts, warnings, sha256 = {}, [], {}
    for name in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE):
        path = directory / name
        parts[name] = read_cifar_batch(path)
        content = path.read_bytes()
        sha256[name] = hashlib.sha256(content).hexdigest()
        if hashlib.md5(content).hexdigest() != CIFAR10_MD5[name]:
            warnings.append(f"{path} differs from the official file (sha256 "
                            f"{sha256[name][:16]}...): a modified copy; results are not CIFAR-10 results")
    x_train = np.concatenate([parts[n][0] for n in CIFAR10_TRAIN_FILES])
    y_train = np.concatenate([parts[n][1] for n in CIFAR10_TRAIN_FILES])
    x_test, y_test = parts[CIFAR10_TEST_FILE]
    for split, images in (("train", x_train), ("test", x_test)):
        if not len(images):
            raise DataError(f"{directory}: the {split} split holds no images")
    return Splits(x_train.astype(np.float32) / 255.0, y_train, x_test.astype(np.float32) / 255.0,
                  y_test, source=str(directory), class_names=CIFAR10_CLASSES,
                  warnings=warnings, sha256=sha256)


def load_cifar10(data_dir=None):
    """CIFAR-10 as Splits, from the first place that has it (see the module docstring)."""
    if data_dir is not None:
        found = find_cifar_dir(data_dir)
        if found is None:
            raise DataError(f"--data-dir {data_dir}: no CIFAR-10 batches (expected {CIFAR10_TEST_FILE} "
                            f"in it or in its cifar-10-batches-py folder)")
        return read_cifar10_dir(found)
    cache = keras_cache_dir()
    # Keras 3.x extracts into cifar-10-batches-py-target/; older versions straight into the cache.
    candidates = [cache / "cifar-10-batches-py-target", cache]
    for directory in candidates:
        found = find_cifar_dir(directory)
        if found is not None:
            return read_cifar10_dir(found)
    import keras  # outside the try: a broken installation is no failed download
    try:
        keras.datasets.cifar10.load_data()
    except Exception as err:  # as broad as get_file's bare Exception; anything else is re-raised
        if not is_download_error(err):
            raise
        raise DataError(
            f"CIFAR-10 not found in {', '.join(str(c / 'cifar-10-batches-py') for c in candidates)} "
            f"and the download failed ({type(err).__name__}: {err}). Provide the official "
            f"cifar-10-batches-py folder with --data-dir DIR."
        ) from None
    found = next(filter(None, map(find_cifar_dir, candidates)), None)
    if found is None:
        raise DataError(f"keras.datasets.cifar10 downloaded CIFAR-10, but not into {cache}")
    splits = read_cifar10_dir(found)
    splits.source = f"downloaded by keras.datasets.cifar10 into {found}"
    return splits
