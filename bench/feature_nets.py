"""The feature networks of the Fréchet distance: train the ones the kit ships, or measure them.

    python bench/feature_nets.py --ship --cifar-dir path/to/cifar-10-batches-py-parent
    python bench/feature_nets.py --cifar-dir path/to/cifar-10-batches-py-parent

--ship trains each data set's network once, deterministically (seed 0, TensorFlow's deterministic
ops, the settings in kit/sample_quality.py's FEATURE_NET_SETTINGS, on the whole training split),
and writes kit/feature_nets/<dataset>.weights.h5 and <dataset>.json: the weights' SHA-256 and size,
a digest of the weight values, this command, the data's checksum and the test accuracy. Without
--ship it measures the shipped networks: test accuracy, seconds of feature_statistics over 10,000
images (the first call includes tracing), and the train-vs-test Fréchet distance of 10,000 images
each as a sanity number.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kit import sample_quality as sq  # noqa: E402
from kit.data import load_cifar10, load_fashion_mnist  # noqa: E402

TITLES = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
SEED = 0


def data_title(name, splits):
    """The data set's name, saying so when the files are not the official ones."""
    if not splits.warnings:
        return TITLES[name]
    return TITLES[name] + (" (JPEG copy)" if "jpeg" in splits.source.lower() else " (modified copy)")


def ship(name, splits, command):
    """Train the data set's network deterministically and write it into kit/feature_nets/."""
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    settings = sq.FEATURE_NET_SETTINGS[name]
    model, accuracy, seconds = sq.train_feature_classifier(
        splits.x_train, splits.y_train, splits.x_test, splits.y_test, settings, seed=SEED, verbose=2)
    info = {"dataset": name, "trained_on": data_title(name, splits),
            "data_source": Path(splits.source).name,  # the folder's name: no machine's path in the card
            "data_checksum": sq.files_checksum(splits.sha256), "data_sha256": splits.sha256,
            "image_shape": list(splits.x_train.shape[1:]), "num_classes": int(model.output.shape[-1]),
            "settings": asdict(settings), "seed": SEED, "net_version": sq.FEATURE_NET_VERSION,
            "feature_layer": sq.FEATURE_LAYER, "deterministic_ops": True,
            "test_accuracy": accuracy, "train_images": len(splits.x_train),
            "test_images": len(splits.x_test), "train_seconds": round(seconds, 1),
            "command": command, "created": time.strftime("%Y-%m-%d"),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "numpy": np.__version__}}
    sq.save_shipped_feature_network(model, info)
    return json.loads(sq.shipped_feature_net_paths(name)[1].read_text())


def measure(name, splits, images=10_000):
    """The shipped network's accuracy on these files' test split, its feature time and the
    train-vs-test Fréchet distance."""
    classifier, card = sq.shipped_feature_network(name)
    features = sq.feature_extractor(classifier)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        test_stats = sq.feature_statistics(features, splits.x_test[:images])
        seconds.append(round(time.perf_counter() - start, 2))
    train_stats = sq.feature_statistics(features, splits.x_train[:images])
    return {"data": data_title(name, splits), "source": splits.source,
            "weights_sha256": card["weights_sha256"], "weights_bytes": card["weights_bytes"],
            "test_accuracy": sq.classifier_accuracy(classifier, splits.x_test, splits.y_test),
            "test_accuracy_when_trained": card["test_accuracy"], "train_seconds": card["train_seconds"],
            "feature_statistics_seconds": seconds, "images": images,
            "fd_train_vs_test": sq.frechet_distance(*train_stats, *test_stats)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion_mnist", "cifar10"], choices=list(TITLES))
    parser.add_argument("--cifar-dir", default=None, help="CIFAR-10 folder (default: kit.data's search)")
    parser.add_argument("--ship", action="store_true",
                        help="train the networks the kit ships and write them into kit/feature_nets/")
    args = parser.parse_args()
    loaders = {"fashion_mnist": load_fashion_mnist, "cifar10": lambda: load_cifar10(args.cifar_dir)}
    command = "python bench/feature_nets.py --ship --datasets {}" + (
        " --cifar-dir <the CIFAR-10 folder>" if args.cifar_dir else "")
    results = {}
    for name in args.datasets:
        splits = loaders[name]()
        results[name] = ship(name, splits, command.format(name)) if args.ship else measure(name, splits)
        results[name].pop("data_sha256", None)  # printed in the card, too long for the screen
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
