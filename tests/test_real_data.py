"""One or two hundred training steps on real data, where it is on this machine (skipped otherwise),
through the scripts' own loaders and input pipelines."""
import os
from pathlib import Path

import numpy as np
import pytest

from kit import data

pytestmark = [pytest.mark.slow, pytest.mark.scenario]  # real data on this machine: `make test-scenarios`

CIFAR_DIR = os.environ.get("VAE_CIFAR10_DIR")


def train_as_the_script_does(spec, argv, steps):
    """The script's own steps up to training: its options, runtime, loader and input pipeline, and
    `steps` steps of fit; returns (the data's splits, the trained model). (The evaluation and
    pictures that follow: the tiny end-to-end runs of tests/test_scripts.py; at full size,
    `make run`, `make cifar` and bench/.)"""
    import keras
    from kit import run
    from kit.config import parse_config
    from kit.models import build_model
    keras.backend.clear_session()  # a fresh Keras state, as a new process
    config = parse_config(spec, argv)
    strategy = run.set_up_runtime(config)
    splits = run.load_data(config, spec)
    assert run.steps_per_epoch(config, splits, strategy) == steps
    model = build_model(spec.image_shape, dataset=spec.name, seed=config.seed, **config.model_options())
    model.compile(optimizer=run.adam(config, steps), jit_compile=config.jit_compile,
                  steps_per_execution=config.steps_per_execution)
    model.fit(run.train_batches(config, splits.x_train, first_epoch=0), epochs=1, steps_per_epoch=steps,
              shuffle=False, verbose=0)
    return splits, model


def assert_the_shipped_network_scores_as_its_card_says(dataset, splits):
    """On the very files it was trained on (same checksum), the shipped feature network's test
    accuracy is the one its card records: the weights in the repository are the trained ones."""
    from kit import sample_quality as sq
    classifier, card = sq.shipped_feature_network(dataset)
    if sq.files_checksum(splits.sha256) != card["data_checksum"]:
        pytest.skip(f"these are not the files {dataset}'s shipped network was trained on")
    accuracy = sq.classifier_accuracy(classifier, splits.x_test, splits.y_test)
    print(f"{card['trained_on']}: shipped feature network's test accuracy {accuracy:.4f}")
    assert accuracy == pytest.approx(card["test_accuracy"], abs=2e-4)  # two images of 10,000 at most


def neg_elbo_of_the_first_test_images(model, splits, n=1000):
    from kit.evaluate import elbo_terms
    reconstruction, kl = elbo_terms(model, splits.x_test[:n])
    return float(np.mean(reconstruction + kl))


@pytest.mark.skipif(not data.has_fashion_mnist_files(data.DEBIAN_FASHION_MNIST_DIR),
                    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_a_hundred_steps_on_real_fashion_mnist(tmp_path):
    from kit.evaluate import bce_floor
    from vae_fashion_mnist import FASHION_MNIST
    # keras-io architecture, 100 steps of 128 images, from the default data folder (no --data-dir).
    splits, model = train_as_the_script_does(
        FASHION_MNIST, ["--preset", "keras-io", "--epochs", "1", "--limit", "12800", "--fd-images", "0",
                        "--outdir", str(tmp_path)], 100)
    assert splits.source == str(data.DEBIAN_FASHION_MNIST_DIR) and splits.warnings == []
    assert splits.x_train.shape == (12800, 28, 28, 1) and splits.x_val.shape == (5000, 28, 28, 1)
    assert splits.x_test.shape == (10000, 28, 28, 1)
    assert bce_floor(splits.x_test) == pytest.approx(189.86, abs=0.01)  # the test split's binary entropy
    neg_elbo = neg_elbo_of_the_first_test_images(model, splits)
    print(f"Fashion-MNIST, 100 steps: -ELBO of the first 1,000 test images {neg_elbo:.1f} nats")
    # The untrained model scores about 543 nats; the script reached 358.0 on the whole test split
    # after these 100 steps (2026-12-01), and 367.3 on these 1,000 images.
    assert neg_elbo < 400
    assert_the_shipped_network_scores_as_its_card_says("fashion_mnist", splits)


@pytest.mark.skipif(not CIFAR_DIR or not data.find_cifar_dir(CIFAR_DIR),
                    reason="no CIFAR-10 folder in VAE_CIFAR10_DIR")
def test_two_hundred_steps_on_cifar10_from_env(tmp_path):
    from vae_cifar10 import CIFAR10
    splits, model = train_as_the_script_does(
        CIFAR10, ["--data-dir", CIFAR_DIR, "--outdir", str(tmp_path), "--epochs", "1", "--limit", "12800",
                  "--fd-images", "0", "--batch-size", "64", "--lr-schedule", "constant", "--latent-dim", "32",
                  "--likelihood", "bernoulli", "--encoder-filters", "16,32", "--encoder-dense", "128",
                  "--decoder-filters", "32,16", "--decoder-dense", ""], 200)
    assert Path(splits.source).name == "cifar-10-batches-py"
    assert splits.x_train.shape == (12800, 32, 32, 3) and splits.x_test.shape == (10000, 32, 32, 3)
    assert splits.x_val.shape == (5000, 32, 32, 3) and splits.x_train.dtype == np.float32
    neg_elbo = neg_elbo_of_the_first_test_images(model, splits)
    print(f"CIFAR-10 (JPEG copy), 200 steps: -ELBO of the first 1,000 test images {neg_elbo:.1f} nats")
    # An untrained decoder (logits near 0) costs 3072 ln 2 = 2129 nats; 200 steps reached 2009.6
    # on the whole test split of the JPEG copy (the script, 2026-11) and 1978.9 on these 1,000
    # images (twice, 2026-12-01).
    assert neg_elbo < 2060
    assert_the_shipped_network_scores_as_its_card_says("cifar10", splits)
