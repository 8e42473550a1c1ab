"""One or two hundred training steps on real data, where it is on this machine (skipped otherwise)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from kit import data
from conftest import run_in_process

pytestmark = pytest.mark.slow  # end to end: `pytest -m "not slow"` skips them

CIFAR_DIR = os.environ.get("VAE_CIFAR10_DIR")


@pytest.mark.skipif(not data.has_fashion_mnist_files(data.DEBIAN_FASHION_MNIST_DIR),
                    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_a_hundred_steps_on_real_fashion_mnist(tmp_path):
    # keras-io architecture, 100 steps of 128 images; the untrained model scores about 543 nats.
    result = run_in_process("vae_fashion_mnist.py", "--preset", "keras-io", "--epochs", 1, "--limit", 12800,
                            "--iw-samples", 0, "--fd-images", 0, "--outdir", tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["data_source"] == str(data.DEBIAN_FASHION_MNIST_DIR) and metrics["data_warnings"] == []
    assert metrics["test_images"] == 10000
    assert metrics["bce_floor"] == pytest.approx(189.86, abs=0.01)  # the test split's binary entropy
    assert metrics["test_neg_elbo"] < 400  # 358.0 on 2026-12-01 (331.7 after 200 steps)


@pytest.mark.skipif(not CIFAR_DIR or not data.find_cifar_dir(CIFAR_DIR),
                    reason="no CIFAR-10 folder in VAE_CIFAR10_DIR")
def test_two_hundred_steps_on_cifar10_from_env(tmp_path):
    """The script's own steps up to training, on the real files: its loader, its input pipeline and
    200 steps of fit; then the −ELBO of the first 1,000 test images. (The evaluation and pictures
    of a CIFAR-10 run: the tiny end-to-end runs of tests/test_scripts.py; at full size, `make cifar`
    and bench/.)"""
    import keras
    from kit import run
    from kit.config import parse_config
    from kit.evaluate import elbo_terms
    from kit.models import build_model
    from vae_cifar10 import CIFAR10
    config = parse_config(CIFAR10, ["--data-dir", CIFAR_DIR, "--outdir", str(tmp_path), "--epochs", "1",
                                    "--limit", "12800", "--batch-size", "64", "--lr-schedule", "constant",
                                    "--latent-dim", "32", "--likelihood", "bernoulli", "--encoder-filters", "16,32",
                                    "--encoder-dense", "128", "--decoder-filters", "32,16", "--decoder-dense", ""])
    strategy = run.set_up_runtime(config)
    try:
        splits = run.load_data(config, CIFAR10)
        assert Path(splits.source).name == "cifar-10-batches-py"
        assert splits.x_train.shape == (12800, 32, 32, 3) and splits.x_test.shape == (10000, 32, 32, 3)
        assert splits.x_val.shape == (5000, 32, 32, 3) and splits.x_train.dtype == np.float32
        steps = run.steps_per_epoch(config, splits, strategy)
        assert steps == 200
        model = build_model(CIFAR10.image_shape, dataset=CIFAR10.name, seed=config.seed, **config.model_options())
        model.compile(optimizer=run.adam(config, steps))
        model.fit(run.train_batches(config, splits.x_train, first_epoch=0), epochs=1, steps_per_epoch=steps,
                  shuffle=False, verbose=0)
        reconstruction, kl = elbo_terms(model, splits.x_test[:1000], seed=config.seed)
    finally:
        keras.backend.clear_session()
    # An untrained decoder (logits near 0) costs 3072 ln 2 = 2129 nats; 200 steps reached 2009.6
    # on the whole test split of the JPEG copy (the script, 2026-11) and 1978.9 on these 1,000
    # images (twice, 2026-12-01).
    neg_elbo = float(np.mean(reconstruction + kl))
    print(f"CIFAR-10 (JPEG copy), 200 steps: -ELBO of the first 1,000 test images {neg_elbo:.1f} nats")
    assert neg_elbo < 2060
