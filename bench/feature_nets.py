"""Feature networks for the Fréchet distance: train (or load) each data set's, time its features.

    python bench/feature_nets.py --refresh
    python bench/feature_nets.py --datasets cifar10 --cifar-dir path/to/cifar-10-batches-py-parent

Per data set: test accuracy and training seconds of the cached network (kit/sample_quality.py),
seconds of feature_statistics over 10,000 images (first call includes tracing), and the
train-vs-test Fréchet distance of 10,000 images each as a sanity number.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit import sample_quality as sq  # noqa: E402
from kit.data import load_cifar10, load_fashion_mnist  # noqa: E402

TITLES = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


def measure(name, splits, refresh, images=10_000):
    title = TITLES[name]
    if splits.warnings:  # not the official files: say so, as the kit's plot titles do
        title += " (JPEG copy)" if "jpeg" in splits.source.lower() else " (modified copy)"
    features, info = sq.feature_network(name, splits.x_train, splits.y_train, splits.x_test, splits.y_test,
                                        sq.files_checksum(splits.sha256), refresh=refresh)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        test_stats = sq.feature_statistics(features, splits.x_test[:images])
        seconds.append(time.perf_counter() - start)
    train_stats = sq.feature_statistics(features, splits.x_train[:images])
    return {"data": title, "source": splits.source, "cache": info["path"], "loaded": info["loaded"],
            "test_accuracy": info["test_accuracy"], "train_seconds": info["train_seconds"],
            "feature_statistics_seconds": seconds, "images": images,
            "fd_train_vs_test": sq.frechet_distance(*train_stats, *test_stats)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion_mnist", "cifar10"], choices=list(TITLES))
    parser.add_argument("--cifar-dir", default=None, help="CIFAR-10 folder (default: kit.data's search)")
    parser.add_argument("--refresh", action="store_true", help="retrain even when a cached network matches")
    args = parser.parse_args()
    loaders = {"fashion_mnist": load_fashion_mnist, "cifar10": lambda: load_cifar10(args.cifar_dir)}
    results = {name: measure(name, loaders[name](), args.refresh) for name in args.datasets}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
