"""One or two hundred training steps on real data, where it is on this machine (skipped otherwise)."""
import json
import os
from pathlib import Path

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
    result = run_in_process("vae_cifar10.py", "--data-dir", CIFAR_DIR, "--epochs", 1, "--limit", 12800,
                            "--batch-size", 64, "--lr-schedule", "constant", "--latent-dim", 32,
                            "--likelihood", "bernoulli", "--encoder-filters", "16,32",
                            "--encoder-dense", "128", "--decoder-filters", "32,16", "--decoder-dense", "",
                            "--iw-samples", 0, "--fd-images", 0, "--outdir", tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_images"] == 10000 and Path(metrics["data_source"]).name == "cifar-10-batches-py"
    # An untrained decoder (logits near 0) costs 3072 ln 2 = 2129 nats; 200 steps reached 2009.6
    # on the JPEG copy when this test was written.
    assert metrics["test_neg_elbo"] < 2060
