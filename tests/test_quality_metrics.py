"""Numbers every likelihood shares (MSE, PSNR, SSIM, 8-bit bits/dim) and the PNG/WebP yardstick,
checked on models whose decoder is a constant, so every value can be computed by hand."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import features

from common import build_vae
from kit.evaluate import (compute_metrics, dequantize, png_bits_per_dim, to_uint8,
                          webp_lossless_bits_per_dim)

SHAPE = (16, 16, 3)  # SSIM needs at least 11x11
DIMS = 16 * 16 * 3


def sample_images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *SHAPE))
    x[:, :4] = 0      # some edge levels, where the discretized likelihoods have open bins
    x[:, -3:] = 255
    return (x / 255.0).astype(np.float32)


def constant_model(likelihood, outputs, **options):
    """q(z|x) = N(0, I) = p(z) (zero encoder, so KL = 0 and IWAE = ELBO = log p(x)), and a decoder
    whose outputs are the given per-channel constants (zero kernels, output bias = outputs)."""
    keras.utils.set_random_seed(0)
    model = build_vae(SHAPE, 2, encoder_filters=(4,), encoder_dense=(4,), decoder_filters=(4,),
                      decoder_dense=(), likelihood=likelihood, seed=0, **options)
    for weights in model.encoder.weights + model.decoder.weights:
        weights.assign(np.zeros(weights.shape, np.float32))
    model.decoder.get_layer("outputs").bias.assign(np.asarray(outputs, np.float32))
    return model


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, np.float64)))


def test_dequantize_spreads_each_level_over_its_bin_of_width_one_256th():
    x = sample_images()
    deq = dequantize(x, seed=3)
    k = np.round(x * 255)
    assert np.all(deq >= k / 256) and np.all(deq < (k + 1) / 256)
    np.testing.assert_array_equal(deq, dequantize(x, seed=3))
    assert not np.array_equal(deq, dequantize(x, seed=4))


def test_uniform_density_gives_exactly_eight_bits_per_dim():
    # Continuous Bernoulli with logit 0 is U[0, 1]: density 1, so P(k) = 1/256 per sub-pixel.
    model = constant_model("continuous-bernoulli", [0.0, 0.0, 0.0])
    metrics = compute_metrics(model, sample_images(), iw_samples=5, iwae_images=4, lossless_codecs=False)
    assert metrics["bits_per_dim_8bit"] == pytest.approx(8.0, abs=1e-5)
    assert metrics["iwae_bits_per_dim_8bit"] == pytest.approx(8.0, abs=1e-5)
    assert metrics["bits_per_dim_8bit_on_iwae_images"] == pytest.approx(8.0, abs=1e-5)


def test_gaussian_bits_per_dim_matches_a_hand_computation_on_dequantized_data():
    model = constant_model("gaussian", [0.0, 1.0, -2.0], gaussian_sigma="learned")
    model.gaussian_log_sigma_raw.assign(math.log(0.3))  # well above the floor: sigma ~ 0.3
    log_sigma = float(model.gaussian_log_sigma())
    x = sample_images()
    metrics = compute_metrics(model, x, iw_samples=3, iwae_images=5, seed=7, lossless_codecs=False)
    deq = dequantize(x, seed=7).astype(np.float64)
    mean = sigmoid([0.0, 1.0, -2.0])
    nll = np.sum((deq - mean) ** 2 / (2 * math.exp(2 * log_sigma)) + log_sigma + 0.5 * math.log(2 * math.pi),
                 axis=(1, 2, 3))
    assert metrics["bits_per_dim_8bit"] == pytest.approx(nll.mean() / (DIMS * math.log(2)) + 8, rel=1e-5)
    assert metrics["iwae_bits_per_dim_8bit"] == pytest.approx(nll[:5].mean() / (DIMS * math.log(2)) + 8, rel=1e-5)
    # q(z|x) = p(z) and a constant decoder: the −ELBO of the same 5 images is the same number
    assert metrics["bits_per_dim_8bit_on_iwae_images"] == pytest.approx(nll[:5].mean() / (DIMS * math.log(2)) + 8,
                                                                       rel=1e-5)
    assert metrics["gaussian_sigma"] == pytest.approx(math.exp(log_sigma), rel=1e-6)
    # Quality numbers of the constant reconstruction, by hand.
    err = (x.astype(np.float64) - mean) ** 2
    assert metrics["test_mse"] == pytest.approx(err.mean(), rel=1e-5)
    assert metrics["test_psnr_db"] == pytest.approx(np.mean(-10 * np.log10(err.mean(axis=(1, 2, 3)))), rel=1e-5)
    constant = np.broadcast_to(mean.astype(np.float32), x.shape)
    ssim = tf.image.ssim(tf.constant(constant), tf.constant(x), max_val=1.0).numpy()
    assert metrics["test_ssim"] == pytest.approx(float(ssim.mean()), abs=1e-6)
    assert -1.0 <= metrics["test_ssim"] < 0.5


def test_discretized_logistic_bits_per_dim_is_the_nll_of_the_levels():
    mean, log_scale = np.array([0.2, 0.5, 0.9]), np.array([-2.0, -1.0, -3.0])
    model = constant_model("discretized-logistic", np.concatenate([mean, log_scale]))
    x = sample_images()
    metrics = compute_metrics(model, x, iw_samples=4, iwae_images=6, lossless_codecs=False)
    k = np.round(x * 255).astype(np.float64)
    s = np.exp(log_scale)
    upper = np.where(k == 255, 1.0, sigmoid((k / 255 + 0.5 / 255 - mean) / s))
    lower = np.where(k == 0, 0.0, sigmoid((k / 255 - 0.5 / 255 - mean) / s))
    nll = -np.log(upper - lower).sum(axis=(1, 2, 3))
    assert metrics["bits_per_dim_8bit"] == pytest.approx(nll.mean() / (DIMS * math.log(2)), rel=1e-5)
    assert metrics["iwae_bits_per_dim_8bit"] == pytest.approx(nll[:6].mean() / (DIMS * math.log(2)), rel=1e-5)
    assert metrics["bits_per_dim_8bit_on_iwae_images"] == pytest.approx(nll[:6].mean() / (DIMS * math.log(2)),
                                                                       rel=1e-5)
    assert metrics["bits_per_dim_8bit"] == pytest.approx(metrics["test_neg_elbo_bits_per_dim"])
    assert metrics["gaussian_sigma"] is None


def test_mixture_reports_8bit_numbers_and_bernoulli_reports_none():
    mixture = constant_model("discretized-logistic-mixture", np.zeros(20), mixture_components=2)
    metrics = compute_metrics(mixture, sample_images(), iw_samples=0, iwae_images=0, lossless_codecs=False)
    assert metrics["bits_per_dim_8bit"] == pytest.approx(metrics["test_neg_elbo_bits_per_dim"])
    assert metrics["iwae_bits_per_dim_8bit"] is None  # no IWAE asked for
    assert metrics["bits_per_dim_8bit_on_iwae_images"] is None
    bernoulli = constant_model("bernoulli", [0.0, 0.0, 0.0])
    metrics = compute_metrics(bernoulli, sample_images(), iw_samples=2, iwae_images=2)
    assert metrics["bits_per_dim_8bit"] is None and metrics["iwae_bits_per_dim_8bit"] is None
    assert metrics["bits_per_dim_8bit_on_iwae_images"] is None
    assert metrics["test_mse"] == pytest.approx(float(np.mean((sample_images() - 0.5) ** 2)), rel=1e-5)
    assert metrics["png_bits_per_dim"] == png_bits_per_dim(to_uint8(sample_images()))


def test_ssim_is_none_for_images_smaller_than_its_window():
    keras.utils.set_random_seed(0)
    model = build_vae((4, 4, 1), 1, encoder_filters=(2,), encoder_dense=(2,), decoder_filters=(2,),
                      decoder_dense=(), seed=0)
    x = (np.random.default_rng(0).random((5, 4, 4, 1)) > 0.5).astype(np.float32)
    metrics = compute_metrics(model, x, iw_samples=0, iwae_images=0, lossless_codecs=False)
    assert metrics["test_ssim"] is None and np.isfinite(metrics["test_psnr_db"])


# --- lossless codecs -------------------------------------------------------------------------------

def test_png_compresses_a_constant_image_far_below_and_noise_not_below_eight_bits():
    constant = np.full((4, 32, 32, 3), 117, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    assert png_bits_per_dim(constant) < 0.5
    assert 8.0 < png_bits_per_dim(noise) < 8.5  # incompressible: the data plus headers
    gray = np.full((3, 28, 28, 1), 0, np.uint8)
    assert png_bits_per_dim(gray) < 1.0  # ~73 bytes of PNG structure per 784 pixels


def test_png_bits_are_the_files_sizes_over_the_sub_pixels():
    import io
    from PIL import Image
    images = np.random.default_rng(1).integers(0, 4, (2, 8, 8, 3)).astype(np.uint8)
    sizes = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", optimize=True, compress_level=9)
        sizes.append(len(buffer.getvalue()))
    assert png_bits_per_dim(images) == 8 * sum(sizes) / images.size
    with pytest.raises(ValueError):
        png_bits_per_dim(images.astype(np.float32))


@pytest.mark.skipif(not features.check("webp"), reason="Pillow without WebP")
def test_webp_lossless_compresses_a_constant_image_and_not_noise():
    constant = np.full((4, 32, 32, 3), 200, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    assert webp_lossless_bits_per_dim(constant) < 0.5
    assert webp_lossless_bits_per_dim(noise) > 7.9


@pytest.fixture(scope="module")
def fashion_images(tmp_path_factory):
    from conftest import write_fashion_mnist
    from kit.data import load_fashion_mnist
    return load_fashion_mnist(str(write_fashion_mnist(tmp_path_factory.mktemp("fashion"))))


@pytest.mark.parametrize("likelihood", ["discretized-logistic", "gaussian"])
def test_iwae_bits_are_below_the_8bit_elbo_on_the_same_images_for_a_trained_model(fashion_images, likelihood):
    """Both numbers on the IWAE images: the IWAE bound is the tighter one, as it must be."""
    from kit.pictures import format_metrics
    keras.utils.set_random_seed(0)
    model = build_vae((28, 28, 1), 4, encoder_filters=(8, 16), encoder_dense=(), decoder_filters=(16, 8),
                      decoder_dense=(), likelihood=likelihood, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(fashion_images.x_train, epochs=8, batch_size=32, verbose=0)
    metrics = compute_metrics(model, fashion_images.x_test, iw_samples=50, iwae_images=64, seed=1,
                              lossless_codecs=False)
    elbo_8bit, iwae_8bit = metrics["bits_per_dim_8bit_on_iwae_images"], metrics["iwae_bits_per_dim_8bit"]
    assert iwae_8bit <= elbo_8bit, (iwae_8bit, elbo_8bit)
    assert elbo_8bit - iwae_8bit < 0.1  # the same images: the gap is the bound's slack, not other images
    if likelihood == "discretized-logistic":  # its nats already are -log P(8-bit image)
        assert elbo_8bit == pytest.approx(metrics["test_neg_elbo_on_iwae_images"] / (784 * math.log(2)))
    table = format_metrics(metrics)
    assert "8-bit IWAE (64 images)" in table and f"{elbo_8bit:.4f}" in table
