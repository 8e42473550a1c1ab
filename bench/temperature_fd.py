"""Fréchet distance of prior samples against the sampling temperature, for a finished run: which
temperature gives the most realistic samples (VDVAE and NVAE sample below 1).

    python bench/temperature_fd.py --run outputs/cifar10 --temperatures 0.5,0.7,0.85,1 \
        --plot docs/cifar10_hierarchical_samples.png

Loads <run>/model.keras and the run's data (config.json's --data-dir, --seed and validation split,
as --eval-only does) and the feature network the kit ships for the data set, then prints, per
temperature, the FD (shipped features) of --images prior samples to as many test
images, as fd_prior_samples in metrics.json is computed. --plot draws 100 samples at the best.
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402

from kit import sample_quality  # noqa: E402
from kit.evaluate import prior_samples  # noqa: E402
from kit.pictures import plot_image_grid  # noqa: E402
from kit.run import data_title  # noqa: E402  (names the JPEG copy as such)


def floats(text):
    return [float(v) for v in text.split(",") if v.strip()]


def load_splits(config):
    """The run's splits, as its script loaded them (the same validation images held out)."""
    from vae_cifar10 import CIFAR10
    from vae_fashion_mnist import FASHION_MNIST
    spec = {"cifar10": CIFAR10, "fashion_mnist": FASHION_MNIST}[config["dataset"]]
    splits = spec.load(config["data_dir"]).hold_out(config["validation_images"], config["seed"])
    return spec, splits


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run folder (model.keras, config.json)")
    parser.add_argument("--temperatures", type=floats, default=[0.5, 0.7, 0.85, 1.0])
    parser.add_argument("--images", type=int, default=10_000, help="samples and test images per FD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="PNG of 100 samples at the temperature with the lowest FD")
    args = parser.parse_args()

    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    spec, splits = load_splits(config)
    features = sample_quality.feature_extractor(sample_quality.shipped_feature_network(spec.name)[0])
    model = keras.models.load_model(run / "model.keras")
    n = min(args.images, len(splits.x_test))
    reference = sample_quality.feature_statistics(features, splits.x_test[:n])
    fd_by_temperature = {}
    for temperature in args.temperatures:
        images = prior_samples(model, n, args.seed, temperature)
        fd_by_temperature[temperature] = sample_quality.frechet_distance(
            *sample_quality.feature_statistics(features, images), *reference)
        print(f"temperature {temperature:g}: FD of {n} prior samples {fd_by_temperature[temperature]:.2f}",
              flush=True)
    best = min(fd_by_temperature, key=fd_by_temperature.get)
    print(json.dumps({"run": str(run), "images": n, "fd_prior_samples_by_temperature": fd_by_temperature,
                      "best_temperature": best}))
    if args.plot:
        plot_image_grid(prior_samples(model, 100, args.seed, best), args.plot,
                        f"{data_title(spec, splits)}: prior samples at temperature {best:g} "
                        f"(FD {fd_by_temperature[best]:.2f})")


if __name__ == "__main__":
    main()
