"""Both scripts end to end on tiny data: every output, eval-only reuse and argument errors."""
import json

import numpy as np
import pytest

from conftest import TINY_MODEL, png_size, render_page, run_in_process
from kit.atomic_files import read_csv

pytestmark = pytest.mark.slow  # end to end, in subprocesses: `pytest -m "not slow"` skips them

PICTURES = ["loss_curves.png", "samples.png", "samples_gmm.png", "reconstructions.png",
            "latent_space.png", "interpolations.png"]
FD_KEYS = ["fd_prior_samples", "fd_gmm_samples", "fd_reconstructions", "fd_train_vs_test"]
METRIC_KEYS = {"test_reconstruction", "test_kl", "test_neg_elbo", "test_images", "test_iwae_nll",
               "iw_samples", "iwae_images", "test_neg_elbo_bits_per_dim", "test_iwae_bits_per_dim",
               "bce_floor", "excess_over_floor", "train_seconds", "epochs", "data_source", "likelihood"}


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory, fashion_dir):
    outdir = tmp_path_factory.mktemp("fashion_run")
    result = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 2,
                            "--limit", 200, "--iw-samples", 5, "--iwae-images", 50, "--outdir", outdir,
                            "--seed", 3, *TINY_MODEL)
    assert result.returncode == 0, result.stderr[-3000:]
    return outdir, result


def test_validation_images_that_leave_no_training_images_are_refused(fashion_dir, tmp_path):
    result = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--validation-images", 256,
                            "--outdir", tmp_path / "o", *TINY_MODEL)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--validation-images 256 leaves no training images (the training split has 256)" in result.stderr
    assert not (tmp_path / "o" / "config.json").exists()


def test_fashion_script_writes_every_output(fashion_run, fashion_dir):
    outdir, result = fashion_run
    for name in PICTURES + ["latent_manifold.png"]:  # latent dim 2 also draws the manifold
        width, height = png_size(outdir / name)
        assert width > 200 and height > 100, name
    history = read_csv(outdir / "history.csv")
    assert [row["epoch"] for row in history] == [1, 2]
    assert {"loss", "reconstruction_loss", "kl_loss", "val_loss", "val_reconstruction_loss",
            "val_kl_loss", "epoch_seconds"} <= set(history[0])
    assert all(row["epoch_seconds"] > 0 for row in history)
    config = json.loads((outdir / "config.json").read_text())
    assert config["epochs"] == 2 and config["limit"] == 200 and config["latent_dim"] == 2
    assert config["data_source"] == str(fashion_dir) and config["train_images"] == 200
    assert config["validation_images"] == config["validation_images_held_out"] == 32
    assert len(config["validation_indices_sha256"]) == 64
    assert "200 train / 32 validation (held out of the training split) / 128 test images" in result.stdout
    assert {"tensorflow", "keras", "numpy"} <= set(config["versions"])
    metrics = json.loads((outdir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["test_images"] == 128 and metrics["iwae_images"] == 50 and metrics["epochs"] == 2
    assert metrics["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in history))
    assert metrics["excess_over_floor"] == pytest.approx(metrics["test_neg_elbo"] - metrics["bce_floor"])
    assert (outdir / "model.keras").stat().st_size > 10_000
    assert str(outdir) in result.stdout and "test −ELBO" in result.stdout
    # Sample quality: four Fréchet distances on the same number of images, the feature network's
    # accuracy, and a GMM over the 2-D latent that loads without pickle.
    assert metrics["fd_images"] == 128 and all(metrics[k] >= 0 for k in FD_KEYS)
    assert metrics["fd_train_vs_test"] < metrics["fd_prior_samples"]  # real images are closest
    # The shipped feature network scored them, and metrics.json says so; its accuracy is measured on
    # this run's test split: the same number again here from the shipped weights.
    from kit.data import load_fashion_mnist
    from kit.sample_quality import shipped_feature_network
    classifier, card = shipped_feature_network("fashion_mnist")
    assert metrics["feature_net"] == {
        "kind": "shipped", "dataset": "fashion_mnist", "trained_on": "Fashion-MNIST", "net_version": 2,
        "weights_sha256": card["weights_sha256"], "test_accuracy_when_trained": card["test_accuracy"]}
    test = load_fashion_mnist(str(fashion_dir))
    predicted = np.argmax(classifier.predict(test.x_test, verbose=0), axis=1)
    assert metrics["feature_net_test_accuracy"] == pytest.approx(np.mean(predicted == test.y_test), abs=1e-9)
    assert "the kit's shipped fashion_mnist features, v2" in result.stdout
    with np.load(outdir / "latent_gmm.npz", allow_pickle=False) as gmm:
        assert gmm["means"].shape == (10, 2) and gmm["covariances"].shape == (10, 2, 2)
        assert gmm["weights"].sum() == pytest.approx(1.0)
    assert "Fréchet distance to 128 test images" in result.stdout


def test_the_report_page_shows_every_picture_and_the_metrics_in_a_browser(fashion_run, tmp_path):
    """report.html rendered by headless Chromium: every picture of the folder loaded (naturalWidth > 0),
    the headline numbers, the command and the data on the page; and a screenshot of it."""
    outdir, _ = fashion_run
    images, dom = render_page(outdir / "report.html", tmp_path / "report.png")
    assert sorted(src for src, _ in images) == sorted(p.name for p in outdir.glob("*.png"))
    assert len(images) == len(PICTURES) + 1 and all(width > 200 for _, width in images), images
    metrics = json.loads((outdir / "metrics.json").read_text())
    for key in ("test_neg_elbo", "test_iwae_nll", "test_psnr_db", *FD_KEYS):
        assert f"{metrics[key]:.4f}" in dom, key
    assert "nats/image" in dom and "bits/dim" in dom and "test split (128 images)" in dom
    assert "vae_fashion_mnist.py --validation-images 32 --data-dir" in dom and "Fashion-MNIST (modified copy)" in dom
    assert png_size(tmp_path / "report.png")[0] == 1280


def test_eval_only_reproduces_the_metrics_of_the_run(fashion_run, fashion_dir, tmp_path):
    outdir, _ = fashion_run
    result = run_in_process("vae_fashion_mnist.py", "--eval-only", outdir / "model.keras", "--data-dir",
                            fashion_dir, "--iw-samples", 5, "--iwae-images", 50, "--seed", 3,
                            "--outdir", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    before = json.loads((outdir / "metrics.json").read_text())
    after = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_neg_elbo", "test_reconstruction", "test_kl", "test_iwae_nll", "epochs", "train_seconds",
                "feature_net_test_accuracy"):
        assert after[key] == pytest.approx(before[key], rel=1e-5), key
    # The Fréchet distances within 1e-4 (measured 1.1e-5 for the GMM samples' FD of 65.1: the GMM is
    # fitted again), ten times tighter than issue 27's 1e-3 between machines.
    for key in FD_KEYS:
        assert after[key] == pytest.approx(before[key], rel=1e-4), key
    assert after["feature_net"] == before["feature_net"]
    for name in PICTURES:
        assert png_size(tmp_path / name)[0] > 200
        assert f'<img src="{name}"' in (tmp_path / "report.html").read_text()
    assert "--eval-only" in (tmp_path / "report.html").read_text()


def test_eval_only_rejects_a_model_of_the_other_dataset(fashion_run, cifar_dir, tmp_path):
    outdir, _ = fashion_run
    result = run_in_process("vae_cifar10.py", "--eval-only", outdir / "model.keras", "--data-dir", cifar_dir,
                            "--outdir", tmp_path)
    assert result.returncode == 2
    assert "trained on fashion_mnist" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_eval_only_rejects_a_latent_dim_it_cannot_honour(fashion_run, fashion_dir, tmp_path):
    outdir, _ = fashion_run
    result = run_in_process("vae_fashion_mnist.py", "--eval-only", outdir / "model.keras", "--latent-dim", 8,
                            "--data-dir", fashion_dir, "--outdir", tmp_path)
    assert result.returncode == 2 and "--latent-dim cannot be used with --eval-only" in result.stderr


def test_cifar_script_writes_every_output(cifar_dir, tmp_path):
    result = run_in_process("vae_cifar10.py", "--data-dir", cifar_dir, "--epochs", 1, "--iw-samples", 3,
                            "--iwae-images", 20, "--outdir", tmp_path, *TINY_MODEL[:-4], "--latent-dim", 4,
                            "--batch-size", 50)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in PICTURES:
        assert png_size(tmp_path / name)[0] > 200, name
    assert not (tmp_path / "latent_manifold.png").exists()  # only for a 2-D latent
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_images"] == 64 and metrics["dataset"] == "cifar10"
    # The test files are not the official ones: one line says so, config.json names each file.
    assert "6 of its 6 CIFAR-10 files differ from the official ones" in result.stderr
    assert len(json.loads((tmp_path / "config.json").read_text())["data_warnings"]) == 6


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--latent-dim", "-1"], "--latent-dim must be > 0"),
    (["--batch-size", "0"], "--batch-size must be > 0"),
    (["--limit", "0"], "--limit must be > 0"),
    (["--beta", "-0.5"], "--beta must be a finite number >= 0"),
    (["--beta", "nan"], "--beta must be a finite number >= 0"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--epochs", "ten"], "invalid int value: 'ten'"),
    (["--distribute", "tpu"], "invalid choice: 'tpu'"),
    (["--decoder-filters", "8,8,8"], "cannot produce 28x28 images"),
    (["--encoder-filters", "8,-2"], "sizes must be positive"),
    (["--eval-only", "missing.keras"], "no model file at missing.keras"),
    (["--eval-only", "README.md", "--resume"], "cannot be used together"),
    (["--resume"], "no checkpoint in"),
    (["--distribute", "multiworker"], "needs the TF_CONFIG"),
    (["--data-dir", "/nonexistent/folder"], "is not a folder"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, args, message):
    outdir = tmp_path / "out"
    result = run_in_process("vae_fashion_mnist.py", *args, "--outdir", outdir, timeout=240,
                            env={"TF_CONFIG": ""})
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not outdir.exists() or list(outdir.iterdir()) == []


def test_an_unwritable_outdir_fails_before_loading_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_in_process("vae_cifar10.py", "--outdir", blocker / "sub", "--data-dir", tmp_path)
    assert result.returncode == 2 and "cannot be written" in result.stderr
    assert "CIFAR" not in result.stderr  # failed before looking for data


def test_missing_data_exits_1_with_advice_and_no_traceback(tmp_path):
    result = run_in_process("vae_fashion_mnist.py", "--data-dir", tmp_path, "--outdir", tmp_path / "o")
    assert result.returncode == 1
    assert "missing Fashion-MNIST files" in result.stderr and "Traceback" not in result.stderr


def test_continuous_bernoulli_warmup_and_tensorboard_end_to_end(fashion_dir, tmp_path):
    result = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 2, "--limit", 128,
                            "--likelihood", "continuous-bernoulli", "--kl-warmup", 2, "--tensorboard",
                            "--iw-samples", 4, "--iwae-images", 20, "--outdir", tmp_path, *TINY_MODEL)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["likelihood"] == "continuous-bernoulli"
    assert metrics["bce_floor"] is None and metrics["excess_over_floor"] is None  # BCE-only notions
    history = read_csv(tmp_path / "history.csv")
    # Warm-up: beta = 0 in epoch 1, so the training loss is the reconstruction term alone...
    assert history[0]["loss"] == pytest.approx(history[0]["reconstruction_loss"], rel=1e-6)
    # ...and beta = 1/2 in epoch 2.
    assert history[1]["loss"] == pytest.approx(history[1]["reconstruction_loss"] + 0.5 * history[1]["kl_loss"],
                                               rel=1e-4)
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_an_own_feature_network_cached_for_other_data_is_refused_before_training(fashion_dir, tmp_path):
    # The cache holds an own feature network of other files: refused at once, with the way out in
    # the message, and nothing is trained or written.
    from kit.sample_quality import FEATURE_NET_VERSION
    folder = tmp_path / "cache" / "feature-nets" / "fashion_mnist"
    folder.mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps({"data_checksum": "f" * 64, "net_version": FEATURE_NET_VERSION}))
    result = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 1, "--feature-net",
                            "own", "--outdir", tmp_path / "out", *TINY_MODEL,
                            env={"VAE_KIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "trained on other data" in result.stderr and "--refresh-feature-net" in result.stderr
    assert "Epoch 1" not in result.stdout and not (tmp_path / "out").exists()
