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
from conftest import ROOT, TEST_VALIDATION, TINY_MODEL, run_fashion_runs_in_one_process
from kit.atomic_files import read_csv

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


DISTRIBUTED_LIKELIHOODS = ("bernoulli", "gaussian", "discretized-logistic-mixture")
# The hierarchical VAE's Gaussian: its sigma is the global batch's too (the mixture: above).
HIERARCHICAL_LIKELIHOODS = ("gaussian",)


@pytest.fixture(scope="module")
def distributed_steps():
    """tests/distributed_step.py's results: both models' steps on one device and on two, from one
    process (logical devices must be set before TensorFlow starts; one start serves both)."""
    # TensorFlow's own thread count, as a user's run: the mixture's difference is rounding that
    # depends on the order of sums (3e-7 here; 1.8e-6 with conftest's one intra-op thread).
    env = {k: v for k, v in ENV.items() if k not in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")}
    arguments = [*DISTRIBUTED_LIKELIHOODS, *(f"hierarchical:{name}" for name in HIERARCHICAL_LIKELIHOODS)]
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "distributed_step.py"), *arguments],
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.scenario
@pytest.mark.slow
def test_mirrored_steps_on_two_devices_equal_steps_on_one_for_every_kind_of_likelihood(distributed_steps):
    # Batches of 128, 129 (65 + 64 per replica) and 1 (one replica without images); the Gaussian's
    # sigma comes from the global batch's squared error.
    for likelihood in DISTRIBUTED_LIKELIHOODS:
        out = distributed_steps[likelihood]
        assert out["replicas"] == 2
        assert out["max_weight_change"] > 1e-4, likelihood  # the steps did move the weights...
        # ...identically, float32 summation order aside (2e-8 to 9e-8 measured; 0.5 before issue 16)
        assert out["max_relative_difference"] < 1e-6, (likelihood, out)
        assert np.isfinite(out["mirrored_loss"]), (likelihood, out)  # no NaN from the empty replica
        assert out["mirrored_loss"] == pytest.approx(out["single_loss"], rel=1e-5), likelihood


@pytest.mark.scenario
@pytest.mark.slow
def test_mirrored_hierarchical_step_and_evaluation_equal_the_one_device_ones(distributed_steps):
    # Batches of 128, 129 (65 + 64), 1 (an empty replica), 64 and a damaged 64, clipping active on
    # every step and the damaged batch's step skipped: norms and decisions must be the global
    # batch's; then the evaluation (tests/hierarchical_distributed_step.py).
    for likelihood in HIERARCHICAL_LIKELIHOODS:
        out = distributed_steps[f"hierarchical:{likelihood}"]
        assert out["replicas"] == 2
        assert out["max_weight_change"] > 1e-4, out
        assert out["max_relative_difference"] < 1e-6, (likelihood, out)
        assert out["mirrored_loss"] == pytest.approx(out["single_loss"], rel=1e-5), (likelihood, out)
        assert out["single_skipped"] == out["mirrored_skipped"] == 1, (likelihood, out)
        assert out["single_iterations"] == out["mirrored_iterations"] == 4, (likelihood, out)
        # Validation during fit (its own fixed noise, the EMA weights swapped in): the same number.
        assert out["mirrored_val_loss"] == pytest.approx(out["single_val_loss"], rel=1e-5), (likelihood, out)
        # Evaluated as the scripts do after training: the same numbers from the mirrored model.
        for key, value in out["single_metrics"].items():
            assert np.isfinite(value) and out["mirrored_metrics"][key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.scenario
@pytest.mark.slow
def test_mirrored_replicas_draw_fresh_posterior_noise_the_same_per_image_as_one_device(distributed_steps):
    # 5 images, 3 + 2 per replica: each replica's rows of the one-device noise, so they differ.
    noise = distributed_steps["hierarchical:noise"]
    single, (first, second) = np.array(noise["single"]), [np.array(share) for share in noise["replicas"]]
    assert single.shape == (5, 2, 2, 3) and first.shape == (3, 2, 2, 3) and second.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(np.concatenate([first, second]), single)
    assert not np.allclose(first[:2], second)


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


@pytest.mark.scenario
@pytest.mark.slow
@pytest.mark.skipif(not localhost_usable(), reason="this platform cannot open sockets on 127.0.0.1")
def test_two_workers_train_together_on_localhost(fashion_dir, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        args = [sys.executable, str(ROOT / "vae_fashion_mnist.py"), "--distribute", "multiworker",
                "--data-dir", str(fashion_dir), "--epochs", "2", "--limit", "128", "--iw-samples", "0",
                "--fd-images", "0", "--outdir", str(tmp_path / f"worker{index}"), *TINY_MODEL, *TEST_VALIDATION]
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


@pytest.fixture(scope="module")
def mirrored_runs(fashion_dir, tmp_path_factory):
    """The Fashion-MNIST script under --distribute mirrored, three runs in one process (two logical
    CPUs serve all three; one TensorFlow start instead of three): a refused batch size, a run whose
    last batch is too small to split, then a run under mixed precision too (last: its precision
    policy stays set in the process)."""
    folder = tmp_path_factory.mktemp("mirrored")
    base = ["--distribute", "mirrored", "--data-dir", str(fashion_dir), *TINY_MODEL, *TEST_VALIDATION]
    runs = {"odd batch": [*base, "--outdir", str(folder / "a"), "--batch-size", "33"],
            # 129 images in batches of 32: the last batch of 1 would leave a replica without images.
            "short last batch": [*base, "--outdir", str(folder / "b"), "--limit", "129", "--epochs", "1",
                                 "--iw-samples", "0", "--fd-images", "0"],
            "mixed precision": [*base, "--outdir", str(folder / "run"), "--mixed-precision", "--epochs", "1",
                                "--limit", "128", "--iw-samples", "4", "--iwae-images", "20"]}
    return folder, dict(zip(runs, run_fashion_runs_in_one_process(runs.values(), folder, timeout=400)))


@pytest.mark.scenario
@pytest.mark.slow
def test_mixed_precision_under_the_mirrored_strategy_runs_end_to_end(mirrored_runs):
    """Both in one run, to keep the end-to-end runs few: bfloat16 on the CPU, two logical CPUs."""
    folder, results = mirrored_runs
    result = results["mixed precision"]
    assert result["code"] == 0, result["stderr"][-3000:]
    assert len(read_csv(folder / "run" / "history.csv")) == 1
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    assert np.isfinite(metrics["test_neg_elbo"]) and np.isfinite(metrics["test_iwae_nll"])
    # The feature network of the Fréchet distances trained under the bfloat16 policy too.
    assert all(np.isfinite(metrics[k]) for k in ("fd_prior_samples", "fd_gmm_samples", "fd_reconstructions"))
    config = json.loads((folder / "run" / "config.json").read_text())  # a CPU computes in bfloat16
    assert config["runtime"] == {"precision": "mixed_bfloat16", "deterministic_ops": False}
    assert "Runtime: mixed_bfloat16 precision, CPU kernels, 2 replica(s)" in result["stdout"]


@pytest.mark.scenario
@pytest.mark.slow
def test_a_batch_size_that_cannot_split_is_refused_and_a_last_batch_too_small_is_left_out(mirrored_runs):
    folder, results = mirrored_runs
    odd, short = results["odd batch"], results["short last batch"]
    assert odd["code"] == 2 and "Traceback" not in odd["stderr"]
    assert "--batch-size 33 (224 training images) does not split evenly over 2 replicas" in odd["stderr"]
    assert short["code"] == 0, short["stderr"][-3000:]
    assert ("Each epoch leaves out 1 of its 129 training images, the last of its shuffled order (others "
            "each epoch): a batch of 1 cannot be split over 2 replicas") in short["stdout"]
    assert "4/4" in short["stdout"]  # four batches of 32 trained, not five
    assert len(read_csv(folder / "b" / "history.csv")) == 1


def test_mixed_precision_picks_bfloat16_where_the_device_has_it():
    from kit.run import mixed_precision_policy
    assert mixed_precision_policy([]) == "mixed_bfloat16"  # CPU
    assert mixed_precision_policy([(8, 0), (9, 0)]) == "mixed_bfloat16"  # A100, H100
    assert mixed_precision_policy([(7, 0)]) == "mixed_float16"  # V100: float16 with loss scaling
    assert mixed_precision_policy([(9, 0), (7, 5)]) == "mixed_float16"  # the weakest GPU decides
    assert mixed_precision_policy([None]) == "mixed_float16"  # unknown capability


def test_deterministic_kernels_are_on_by_default_where_a_gpu_is_used(tmp_path, monkeypatch, capsys):
    """set_up_runtime on a machine that reports a GPU: --no-deterministic leaves TensorFlow's fastest
    kernels, the default turns deterministic ones on (read back from TensorFlow, then off again for
    the rest of this process)."""
    import tensorflow as tf
    from tensorflow.python.framework import config  # the public API can set it, not read it
    from kit import run
    from kit.config import parse_config
    from vae_fashion_mnist import FASHION_MNIST
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["a GPU"] if kind == "GPU" else real(kind))
    monkeypatch.setattr(run, "make_strategy", lambda kind: tf.distribute.get_strategy())
    assert not config.is_op_determinism_enabled()
    enabled = []
    try:
        for options in (["--no-deterministic"], []):
            run.set_up_runtime(parse_config(FASHION_MNIST, ["--outdir", str(tmp_path), *options]))
            enabled.append(config.is_op_determinism_enabled())
    finally:
        config.disable_op_determinism()
    assert enabled == [False, True]
    runtimes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Runtime:")]
    assert runtimes[0].startswith("Runtime: float32 precision, fastest (--no-deterministic) kernels")
    assert runtimes[1].startswith("Runtime: float32 precision, deterministic kernels")
