"""tf.distribute: mirrored replicas match one device; two workers train; mixed precision."""
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from common import build_vae
from conftest import ROOT, TEST_VALIDATION, TINY_MODEL, run_script
from kit.atomic_files import read_csv

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


DISTRIBUTED_LIKELIHOODS = ("bernoulli", "gaussian", "discretized-logistic-mixture")


@pytest.mark.slow
def test_mirrored_steps_on_two_devices_equal_steps_on_one_for_every_kind_of_likelihood():
    # Batches of 128, 129 (65 + 64 per replica) and 1 (one replica without images); the Gaussian's
    # sigma comes from the global batch's squared error.
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "distributed_step.py"),
                             *DISTRIBUTED_LIKELIHOODS], env=ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(results) == set(DISTRIBUTED_LIKELIHOODS)
    for likelihood, out in results.items():
        assert out["replicas"] == 2
        assert out["max_weight_change"] > 1e-4, likelihood  # the steps did move the weights...
        # ...identically, float32 summation order aside (2e-8 to 9e-8 measured; 0.5 before issue 16)
        assert out["max_relative_difference"] < 1e-6, (likelihood, out)
        assert np.isfinite(out["mirrored_loss"]), (likelihood, out)  # no NaN from the empty replica
        assert out["mirrored_loss"] == pytest.approx(out["single_loss"], rel=1e-5), likelihood


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def localhost_usable():
    try:
        with socket.create_server(("127.0.0.1", 0)):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not localhost_usable(), reason="this platform cannot open sockets on 127.0.0.1")
def test_two_workers_train_together_on_localhost(fashion_dir, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        args = [sys.executable, str(ROOT / "vae_fashion_mnist.py"), "--distribute", "multiworker",
                "--data-dir", str(fashion_dir), "--epochs", "2", "--limit", "128", "--iw-samples", "0",
                "--outdir", str(tmp_path / f"worker{index}"), *TINY_MODEL, *TEST_VALIDATION]
        processes.append(subprocess.Popen(args, cwd=ROOT, env={**ENV, "TF_CONFIG": json.dumps(tf_config)},
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=240) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    chief_history = read_csv(tmp_path / "worker0" / "history.csv")
    assert [r["epoch"] for r in chief_history] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in chief_history)
    assert (tmp_path / "worker0" / "model.keras").exists()
    # Only the chief (worker 0) writes outputs.
    assert not (tmp_path / "worker1" / "history.csv").exists()


def test_mixed_precision_keeps_losses_float32_and_finite():
    try:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        keras.utils.set_random_seed(0)
        model = build_vae((28, 28, 1), 4, encoder_filters=(8, 16), encoder_dense=(16,), decoder_filters=(16, 8),
                          decoder_dense=(), seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        x = np.random.default_rng(0).random((32, 28, 28, 1)).astype(np.float32)
        assert model.encoder.layers[1].compute_dtype == "bfloat16"  # the convolutions run in bf16
        reconstruction, kl = model.per_image_losses(x)
        assert reconstruction.dtype == "float32" and kl.dtype == "float32"
        history = model.fit(x, epochs=2, batch_size=16, verbose=0).history
        assert all(np.isfinite(history["loss"]))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@pytest.mark.slow
def test_mixed_precision_runs_end_to_end(fashion_dir, tmp_path):
    result = run_script("vae_fashion_mnist.py", "--mixed-precision", "--data-dir", fashion_dir, "--epochs", 1,
                        "--limit", 128, "--iw-samples", 4, "--iwae-images", 20, "--outdir", tmp_path, *TINY_MODEL)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert np.isfinite(metrics["test_neg_elbo"]) and np.isfinite(metrics["test_iwae_nll"])


@pytest.mark.slow
def test_mirrored_strategy_runs_the_script(fashion_dir, tmp_path):
    result = run_script("vae_fashion_mnist.py", "--distribute", "mirrored", "--data-dir", fashion_dir,
                        "--epochs", 1, "--limit", 128, "--iw-samples", 0, "--outdir", tmp_path, *TINY_MODEL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_csv(tmp_path / "history.csv")) == 1
