"""Evaluation numbers: IWAE against the ELBO and exact likelihoods, the BCE floor, bits/dim."""
import math

import keras
import numpy as np
import pytest

from common import build_vae, gaussian_kl, log_normal, reconstruction_nll
import kit.evaluate
from kit.evaluate import bce_floor, bits_per_dim, compute_metrics, elbo_terms, iwae_nll, log_importance_weights


@pytest.fixture(scope="module")
def tiny_model():
    """A 1-D latent model on 4x4 images: small enough to integrate p(x) over z on a grid."""
    keras.utils.set_random_seed(1)
    return build_vae((4, 4, 1), 1, encoder_filters=(4,), encoder_dense=(8,), decoder_filters=(4,),
                     decoder_dense=(8,), seed=1)


def images(n=6, seed=0):
    return (np.random.default_rng(seed).random((n, 4, 4, 1)) > 0.5).astype(np.float32)


def exact_log_px(model, x):
    """log p(x) = log ∫ p(x|z) N(z; 0, 1) dz by a Riemann sum on a fine grid, in log space."""
    z = np.linspace(-12, 12, 24001, dtype=np.float32)[:, None]
    logits = model.decode(z)
    out = []
    for image in x:
        log_px_z = -reconstruction_nll(np.broadcast_to(image, (len(z), 4, 4, 1)), logits).numpy()
        log_pz = -0.5 * (z[:, 0].astype(np.float64) ** 2 + math.log(2 * math.pi))
        terms = log_px_z + log_pz
        out.append(np.logaddexp.reduce(terms) + math.log(z[1, 0] - z[0, 0]))
    return np.array(out)


def test_iwae_with_one_sample_equals_the_single_sample_elbo(tiny_model):
    x = images()
    eps = np.random.default_rng(3).standard_normal((1, len(x), 1)).astype(np.float32)
    log_w = log_importance_weights(tiny_model, x, eps).numpy()[0]
    z_mean, z_log_var = (t.numpy() for t in tiny_model.encode(x))
    z = z_mean + np.exp(0.5 * z_log_var) * eps[0]
    elbo = (-reconstruction_nll(x, tiny_model.decode(z)).numpy()
            + log_normal(z, 0.0, np.zeros_like(z)).numpy() - log_normal(z, z_mean, z_log_var).numpy())
    np.testing.assert_allclose(log_w, elbo, rtol=1e-5)


def test_iwae_is_at_most_the_neg_elbo_on_average(tiny_model):
    x = images(200, seed=5)
    reconstruction, kl = elbo_terms(tiny_model, x, seed=0)
    nll = iwae_nll(tiny_model, x, k=50, seed=0)
    assert nll.mean() < (reconstruction + kl).mean()


def test_iwae_approaches_the_exact_log_likelihood_as_k_grows(tiny_model):
    x = images(4, seed=7)
    exact = -exact_log_px(tiny_model, x)
    errors = [np.mean(iwae_nll(tiny_model, x, k, seed=0) - exact) for k in (1, 10, 100, 3000)]
    assert errors[0] > errors[1] > errors[2] > errors[3] > -0.01  # an upper bound, tightening
    assert errors[3] < 0.05  # within 0.05 nats of the exact value at K = 3000


def iwae_nll_in_one_call_per_image(model, x, k, seed):
    """Reference: each image's K samples decoded at once, the same noise order as iwae_nll."""
    rng = np.random.default_rng(seed)
    out = []
    for image in x:
        eps = rng.standard_normal((k, 1, model.latent_dim)).astype(np.float32)
        log_w = log_importance_weights(model, image[None], eps).numpy()[:, 0].astype(np.float64)
        out.append(-(np.logaddexp.reduce(log_w) - math.log(k)))
    return np.array(out)


@pytest.mark.parametrize("decodes_per_call", [1, 7, 49, 50])
def test_iwae_split_over_k_equals_the_unsplit_estimate(tiny_model, decodes_per_call):
    x = images(5, seed=4)
    reference = iwae_nll_in_one_call_per_image(tiny_model, x, k=50, seed=2)
    nll = iwae_nll(tiny_model, x, k=50, seed=2, decodes_per_call=decodes_per_call)
    np.testing.assert_allclose(nll, reference, rtol=0, atol=1e-5)


def test_iwae_decodes_at_most_decodes_per_call_whatever_k(tiny_model, monkeypatch):
    shapes = []
    original = kit.evaluate.log_importance_weights
    def recording(model, x, eps):
        shapes.append(eps.shape)
        return original(model, x, eps)
    monkeypatch.setattr(kit.evaluate, "log_importance_weights", recording)
    nll = iwae_nll(tiny_model, images(3), k=1000, seed=0, decodes_per_call=64)
    assert max(k * b for k, b, _ in shapes) == 64  # bounded by the setting, not by K = 1000
    assert sum(k for k, _, _ in shapes) == 3 * 1000  # every sample of every image, once
    assert len(shapes) == 3 * 16 and shapes[15] == (1000 - 15 * 64, 1, 1)  # 15 slices of 64, then 40
    assert nll.shape == (3,) and np.all(np.isfinite(nll))


def test_iwae_with_k_above_the_default_chunk_matches_one_call(tiny_model):
    x = images(2, seed=8)
    sliced = iwae_nll(tiny_model, x, k=9000, seed=1)  # K > IWAE_DECODES_PER_CALL: three slices
    np.testing.assert_allclose(sliced, iwae_nll(tiny_model, x, k=9000, seed=1, decodes_per_call=9000),
                               rtol=0, atol=1e-5)


def test_metrics_use_beta_one_and_expose_consistent_numbers(tiny_model):
    x = images(50, seed=2)
    metrics = compute_metrics(tiny_model, x, iw_samples=20, iwae_images=30, seed=0)
    assert metrics["test_neg_elbo"] == pytest.approx(metrics["test_reconstruction"] + metrics["test_kl"])
    assert metrics["test_images"] == 50 and metrics["iwae_images"] == 30
    assert metrics["test_neg_elbo_bits_per_dim"] == pytest.approx(metrics["test_neg_elbo"] / (16 * math.log(2)))
    assert metrics["bce_floor"] == 0.0  # binary images: BCE can reach 0
    again = compute_metrics(tiny_model, x, iw_samples=20, iwae_images=30, seed=0)
    assert again == metrics  # fixed seed, same numbers


def test_iwae_images_beyond_the_test_split_use_all_of_it(tiny_model):
    x = images(8, seed=3)
    metrics = compute_metrics(tiny_model, x, iw_samples=4, iwae_images=10 ** 30, seed=0, lossless_codecs=False)
    assert metrics["iwae_images"] == 8
    assert metrics["test_neg_elbo_on_iwae_images"] == pytest.approx(metrics["test_neg_elbo"])


def test_bce_floor_matches_a_hand_computation():
    x = np.array([[0.5, 0.0, 1.0, 0.25], [0.0, 0.0, 1.0, 1.0]], np.float32)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert bce_floor(x) == pytest.approx((h(0.5) + h(0.25) + 0.0) / 2)
    assert bce_floor((x > 0.5).astype(np.float32)) == 0.0


def test_bits_per_dim_divides_by_dims_and_ln2():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bits_per_dim(250.0, 3072) == pytest.approx(250.0 / (3072 * 0.6931471805599453))


def test_kl_term_of_metrics_is_the_closed_form(tiny_model):
    x = images(10)
    _, kl = elbo_terms(tiny_model, x, seed=0)
    z_mean, z_log_var = tiny_model.encode(x)
    np.testing.assert_allclose(kl, gaussian_kl(z_mean, z_log_var).numpy(), rtol=1e-6)


def test_the_test_split_is_encoded_once_for_metrics_and_pictures(tmp_path, monkeypatch):
    from conftest import write_fashion_mnist
    from kit import picture_arrays, run
    from kit.config import parse_config
    from kit.data import load_fashion_mnist
    from vae_fashion_mnist import FASHION_MNIST
    splits = load_fashion_mnist(str(write_fashion_mnist(tmp_path / "data", n_train=60, n_test=40)))
    splits = splits.hold_out(10, seed=0)
    config = parse_config(FASHION_MNIST, ["--outdir", str(tmp_path), "--iw-samples", "0", "--fd-images", "0",
                                          "--latent-dim", "2", "--gmm-components", "2"])
    model = build_vae((28, 28, 1), 2, (4, 8), (8,), (8, 4), (), seed=0)
    encoded = []

    def counting_posterior_means(model, x, batch_size=kit.evaluate.EVAL_BATCH):
        encoded.append(len(x))
        return kit.evaluate.posterior_means(model, x, batch_size)

    for module in (run, picture_arrays):
        monkeypatch.setattr(module, "posterior_means", counting_posterior_means)
    gmm = run.fit_latent_gmm(model, config, splits)
    evaluation = run.evaluate(model, config, FASHION_MNIST, splits, [], gmm)
    run.draw_pictures(model, config, FASHION_MNIST, splits, [], gmm, evaluation)
    assert encoded == [50, 40]  # the training images for the GMM, then the test split once
    assert evaluation.z_test.shape == (40, 2) and evaluation.reconstructions.shape == (40, 28, 28, 1)
    assert (tmp_path / "reconstructions.png").stat().st_size > 1000
