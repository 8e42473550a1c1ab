"""Likelihoods beyond Bernoulli: normalisation over the 256 levels, hand computations, extreme
parameters, the Gaussian's shared sigma (optimal and learned), saving, training, mean images."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import (GAUSSIAN_MIN_LOG_SIGMA, GAUSSIAN_SIGMA_MOMENTUM, LIKELIHOODS, LOGISTIC_MIN_LOG_SCALE,
                    VAE, build_vae, decoder_output_channels, discretized_logistic_log_prob,
                    discretized_logistic_mean, discretized_logistic_mixture_log_prob,
                    discretized_logistic_mixture_mean, discretized_logistic_nll, gaussian_nll,
                    gaussian_optimal_log_sigma, mean_image, reconstruction_nll, soft_clip_below)
from kit.evaluate import log_importance_weights

LEVELS = np.arange(256, dtype=np.float32)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, np.float64)))


def logistic_bin_probs(mean, log_scale):
    """P(k) for k = 0..255 in float64 from the logistic CDF, open edge bins (the definition)."""
    s = math.exp(max(log_scale, LOGISTIC_MIN_LOG_SCALE))
    edges = (np.arange(255) + 0.5) / 255.0
    cdf = np.concatenate([[0.0], sigmoid((edges - mean) / s), [1.0]])
    return np.diff(cdf)


def mixture_outputs(logits, means, log_scales, raw_coeffs=None):
    """(K,), (C, K), (C, K)[, (C, K)] -> one pixel's decoder outputs in the documented layout."""
    parts = [logits, np.ravel(means), np.ravel(log_scales)]
    if raw_coeffs is not None:
        parts.append(np.ravel(raw_coeffs))
    return np.concatenate(parts).astype(np.float32).reshape(1, 1, 1, -1)


# --- discretized logistic ------------------------------------------------------------------------

def test_discretized_logistic_probabilities_of_all_levels_sum_to_one():
    rng = np.random.default_rng(0)
    mean = rng.uniform(-0.5, 1.5, (2, 2, 3)).astype(np.float32)
    log_scale = rng.uniform(-9.0, 1.0, (2, 2, 3)).astype(np.float32)  # some below the clamp
    log_p = discretized_logistic_log_prob(LEVELS[:, None, None, None], mean[None], log_scale[None]).numpy()
    np.testing.assert_allclose(np.exp(log_p.astype(np.float64)).sum(axis=0), 1.0, atol=1e-5)
    # The same through the per-image NLL: a 1x1x1 image at each of the 256 levels.
    outputs = np.broadcast_to(np.array([0.3, -3.0], np.float32), (256, 1, 1, 2))
    nll = discretized_logistic_nll(LEVELS.reshape(256, 1, 1, 1) / 255.0, outputs).numpy()
    assert np.exp(-nll.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.exp(-nll), logistic_bin_probs(0.3, -3.0), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("mean,log_scale", [(0.2, -3.0), (0.0, -6.0), (1.0, -2.0), (-0.3, 0.5), (0.5, -12.0)])
def test_discretized_logistic_matches_the_cdf_at_the_edges_and_between(mean, log_scale):
    s = math.exp(max(log_scale, LOGISTIC_MIN_LOG_SCALE))
    expected = {0: sigmoid((0.5 / 255 - mean) / s),                          # P(x <= 1/510)
                255: 1.0 - sigmoid((1.0 - 0.5 / 255 - mean) / s),            # P(x > 1 - 1/510)
                51: sigmoid((51.5 / 255 - mean) / s) - sigmoid((50.5 / 255 - mean) / s)}
    for k, p in expected.items():
        log_p = discretized_logistic_log_prob(np.float32(k), np.float32(mean), np.float32(log_scale)).numpy()
        if p > 1e-30:
            assert log_p == pytest.approx(math.log(p), rel=1e-5, abs=1e-5)
        else:  # far in a tail: finite and very negative (float64 rounds P to 0 here)
            assert np.isfinite(log_p) and log_p < -60


def test_discretized_logistic_mean_is_the_expectation_over_the_levels():
    for mean, log_scale in [(0.3, -3.0), (-0.2, -1.0), (0.999, -6.0), (0.5, 3.0)]:
        probs = logistic_bin_probs(mean, log_scale)
        value = discretized_logistic_mean(np.float32([mean]), np.float32([log_scale])).numpy()[0]
        assert value == pytest.approx(float(probs @ (np.arange(256) / 255.0)), abs=1e-5)


# Peak growth of the mean of a 12.3 MB input (a mixture's decode of 200 CIFAR images), each in a
# fresh process on a 2-core machine, over 20 runs (`python bench/mean_memory.py`, 2026-12-01):
# 79-122 MB in slices one level at a time; 250-338 MB with ten levels (and slices) at once.
MEAN_MEMORY_BOUND_MB = 180


@pytest.mark.scenario
@pytest.mark.slow
def test_discretized_logistic_mean_memory_stays_near_its_input_size():
    from conftest import peak_memory_growth_mb
    setup = """
import numpy as np
from common import discretized_logistic_mean
rng = np.random.default_rng(0)
mean = rng.uniform(0, 1, (200, 32, 32, 3, 5)).astype(np.float32)
log_scale = rng.uniform(-4, 0, mean.shape).astype(np.float32)
discretized_logistic_mean(mean[:2], log_scale[:2])  # trace the graph first"""
    grown_mb = peak_memory_growth_mb(setup, "discretized_logistic_mean(mean, log_scale)")
    assert grown_mb < MEAN_MEMORY_BOUND_MB, \
        f"the mean of 12 MB of parameters raised the peak memory by {grown_mb:.0f} MB"


# --- mixture ---------------------------------------------------------------------------------------

@tf.function(reduce_retracing=True)
def _joint_probability_mass(targets, outputs, components):
    return tf.reduce_sum(tf.exp(tf.cast(discretized_logistic_mixture_log_prob(targets, outputs, components),
                                        tf.float64)))


def test_rgb_mixture_probabilities_of_all_256_cubed_colours_sum_to_one():
    # One pixel, K = 2, wide scales and strong red->green->blue dependence, so the mass spreads.
    outputs = mixture_outputs(logits=[0.3, -0.4],
                              means=[[0.2, 0.7], [0.1, 0.6], [0.5, 0.2]],
                              log_scales=[[-2.5, -3.0], [-2.0, -3.5], [-2.8, -2.2]],
                              raw_coeffs=[[1.2, -0.8], [-1.5, 0.6], [0.9, 1.8]])
    g, b = np.meshgrid(LEVELS, LEVELS, indexing="ij")
    total = 0.0
    for r0 in range(0, 256, 16):  # 16 reds at a time: 1M colours per call
        r = np.arange(r0, r0 + 16, dtype=np.float32)[:, None, None] + 0 * g[None]
        colours = np.stack([r, np.broadcast_to(g, r.shape), np.broadcast_to(b, r.shape)], -1)
        targets = colours.reshape(-1, 1, 1, 3) / 255.0
        total += float(_joint_probability_mass(targets, np.broadcast_to(outputs, (len(targets), 1, 1, 10 * 2)), 2))
    assert total == pytest.approx(1.0, abs=1e-5)


def test_rgb_mixture_matches_a_hand_computation_with_the_colour_dependence():
    logits = np.array([0.5, -1.0, 0.2])
    means = np.array([[0.3, 0.6, 0.1], [0.2, 0.9, 0.4], [0.7, 0.1, 0.5]])
    log_scales = np.array([[-3.0, -2.0, -4.0], [-2.5, -3.5, -3.0], [-2.0, -4.0, -3.3]])
    raw = np.array([[0.7, -1.1, 2.0], [-0.4, 0.3, 1.0], [1.5, -2.0, 0.1]])
    outputs = mixture_outputs(logits, means, log_scales, raw)
    r, g, b = 40, 200, 130
    c = np.tanh(raw)
    pi = np.exp(logits - np.logaddexp.reduce(logits))
    expected = 0.0
    for j in range(3):
        mu = [means[0, j], means[1, j] + c[0, j] * r / 255, means[2, j] + c[1, j] * r / 255 + c[2, j] * g / 255]
        expected += pi[j] * np.prod([logistic_bin_probs(mu[ch], log_scales[ch, j])[k]
                                     for ch, k in enumerate((r, g, b))])
    x = np.array([r, g, b], np.float32).reshape(1, 1, 1, 3) / 255.0
    value = discretized_logistic_mixture_log_prob(x, outputs, 3).numpy()[0, 0, 0]
    assert value == pytest.approx(math.log(expected), rel=1e-5)
    assert reconstruction_nll(x, outputs, "discretized-logistic-mixture").numpy()[0] == pytest.approx(-value)


def test_gray_mixture_sums_to_one_and_its_mean_is_the_expectation():
    outputs = mixture_outputs(logits=[1.0, 0.0, -2.0], means=[[0.1, 0.8, 0.5]], log_scales=[[-3.0, -1.5, -6.0]])
    targets = LEVELS.reshape(256, 1, 1, 1) / 255.0
    log_p = discretized_logistic_mixture_log_prob(targets, np.broadcast_to(outputs, (256, 1, 1, 9)), 3).numpy()
    p = np.exp(log_p[:, 0, 0].astype(np.float64))
    assert p.sum() == pytest.approx(1.0, abs=1e-5)
    mean = discretized_logistic_mixture_mean(outputs, 1, 3).numpy()[0, 0, 0, 0]
    assert mean == pytest.approx(float(p @ (np.arange(256) / 255.0)), abs=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_gradient_has_no_slice_gradients(channels):
    """The mixture's parameters are split, not sliced: a slice's gradient (StridedSliceGrad) writes
    a zero tensor of the whole decoder output per slice, 13 % of the hierarchical VAE's step."""
    kinds = 3 if channels == 3 else 2
    outputs = tf.Variable(np.zeros((2, 4, 4, 5 * (1 + kinds * channels)), np.float32))
    x = np.zeros((2, 4, 4, channels), np.float32)

    @tf.function
    def gradient():
        with tf.GradientTape() as tape:
            log_p = tf.reduce_sum(discretized_logistic_mixture_log_prob(x, outputs, 5))
        return tape.gradient(log_p, outputs)

    graph = gradient.get_concrete_function().graph
    op_types = {op.type for op in graph.get_operations()}
    assert "SplitV" in op_types  # the split is there, so the check below looks at the right graph
    assert "StridedSliceGrad" not in op_types


def test_extreme_parameters_give_finite_values_and_gradients():
    x = np.array([0, 255, 17, 128], np.float32).reshape(1, 2, 2, 1) / 255.0
    x_rgb = np.repeat(x, 3, axis=-1)
    means = np.array([1e3, -1e3, 1e3, -1e3], np.float32)
    log_scales = np.array([-50.0, 50.0, 50.0, -50.0], np.float32)
    cases = [("discretized-logistic", x, np.stack([means, log_scales], -1).reshape(1, 2, 2, 2)),
             ("discretized-logistic", x, np.stack([means[::-1], log_scales], -1).reshape(1, 2, 2, 2))]
    # Mixture, K = 2, RGB: logits +-1e4, means +-1e3, log-scales -50/+50, raw coefficients +-1e4.
    rgb = mixture_outputs([1e4, -1e4], [[1e3, -1e3], [-1e3, 0.5], [0.2, 1e3]],
                          [[-50.0, 50.0], [50.0, -50.0], [-50.0, -50.0]], [[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4]])
    cases.append(("discretized-logistic-mixture", x_rgb, np.tile(rgb, (1, 2, 2, 1))))
    gray = mixture_outputs([-1e4, 1e4], [[1e3, -1e3]], [[-50.0, 50.0]])
    cases.append(("discretized-logistic-mixture", x, np.tile(gray, (1, 2, 2, 1))))
    for likelihood, targets, outputs in cases:
        variable = tf.Variable(outputs)
        with tf.GradientTape() as tape:
            nll = reconstruction_nll(targets, variable, likelihood)
        grad = tape.gradient(nll, variable).numpy()
        assert np.all(np.isfinite(nll.numpy())), likelihood
        assert np.all(np.isfinite(grad)), likelihood
        image = mean_image(outputs, likelihood, targets.shape[-1], 2).numpy()
        assert np.all((image >= 0) & (image <= 1)), likelihood


def test_decoder_output_channels():
    assert decoder_output_channels("bernoulli", 3) == 3
    assert decoder_output_channels("gaussian", 1) == 1
    assert decoder_output_channels("discretized-logistic", 3) == 6
    assert decoder_output_channels("discretized-logistic-mixture", 3, 5) == 50
    assert decoder_output_channels("discretized-logistic-mixture", 1, 4) == 12
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            decoder_output_channels("discretized-logistic-mixture", 3, bad)


# --- Gaussian with a shared sigma ------------------------------------------------------------------

def test_gaussian_nll_matches_a_hand_computation():
    x = np.array([0.1, 0.9, 0.5, 0.0], np.float32).reshape(1, 2, 2, 1)
    outputs = np.array([0.0, 2.0, -1.0, -3.0], np.float32).reshape(1, 2, 2, 1)
    log_sigma = math.log(0.2)
    mean = sigmoid(outputs.ravel())
    expected = np.sum((x.ravel() - mean) ** 2 / (2 * 0.04) + log_sigma + 0.5 * math.log(2 * math.pi))
    assert gaussian_nll(x, outputs, log_sigma).numpy()[0] == pytest.approx(expected, abs=1e-5)


def test_optimal_sigma_is_the_rms_error_and_minimises_the_nll():
    rng = np.random.default_rng(1)
    x = rng.random((4, 3, 3, 2)).astype(np.float32)
    outputs = rng.normal(0, 1, x.shape).astype(np.float32)
    rms = math.sqrt(np.mean((x - sigmoid(outputs)) ** 2))
    log_sigma = float(gaussian_optimal_log_sigma(x, outputs))
    assert log_sigma == pytest.approx(math.log(rms), rel=1e-5)
    total = lambda ls: float(np.sum(gaussian_nll(x, outputs, np.float32(ls)).numpy()))  # noqa: E731
    assert total(log_sigma) < min(total(log_sigma - 0.01), total(log_sigma + 0.01))
    # A perfect reconstruction does not give sigma = 0: it stops at the floor.
    assert float(gaussian_optimal_log_sigma(sigmoid(outputs), outputs)) == pytest.approx(GAUSSIAN_MIN_LOG_SIGMA)


def test_learned_sigma_is_soft_clipped_from_below():
    values = soft_clip_below(np.array([-100.0, -6.0, 0.0, 3.0], np.float32), -6.0).numpy()
    assert values[0] == pytest.approx(-6.0)
    assert values[1] == pytest.approx(-6.0 + math.log(2.0))
    assert values[2] == pytest.approx(math.log1p(math.exp(6.0)) - 6.0, abs=1e-6)  # softplus(6) - 6
    assert values[3] == pytest.approx(3.0, abs=2e-4)
    model = tiny_model("gaussian", gaussian_sigma="learned")
    assert float(model.gaussian_log_sigma()) == pytest.approx(0.0, abs=1e-6)  # sigma starts at 1
    model.gaussian_log_sigma_raw.assign(-1e4)
    assert float(model.gaussian_log_sigma()) == pytest.approx(GAUSSIAN_MIN_LOG_SIGMA)
    assert model.gaussian_log_sigma_raw in model.trainable_weights


def test_optimal_sigma_running_average_follows_the_training_batches():
    model = tiny_model("gaussian")
    assert float(model.gaussian_log_sigma()) == 0.0  # nothing seen yet: sigma = 1
    rng = np.random.default_rng(2)
    x1, x2 = (rng.random((8, 8, 8, 3)).astype(np.float32) for _ in range(2))
    o1, o2 = (rng.normal(0, 1, (8, 8, 8, 3)).astype(np.float32) for _ in range(2))
    mse1, mse2 = (np.mean((x - sigmoid(o)) ** 2) for x, o in ((x1, o1), (x2, o2)))
    assert float(model.gaussian_log_sigma(x1, o1, training=True)) == pytest.approx(0.5 * math.log(mse1), rel=1e-5)
    assert float(model.gaussian_mse_average) == pytest.approx(mse1, rel=1e-5)  # the first batch as is
    model.gaussian_log_sigma(x2, o2, training=True)
    average = GAUSSIAN_SIGMA_MOMENTUM * mse1 + (1 - GAUSSIAN_SIGMA_MOMENTUM) * mse2
    assert float(model.gaussian_mse_average) == pytest.approx(average, rel=1e-5)
    assert float(model.gaussian_log_sigma()) == pytest.approx(0.5 * math.log(average), rel=1e-5)
    # Evaluation uses the average, not the batch's own error.
    nll = model.reconstruction_nll(x1, o1).numpy()
    np.testing.assert_allclose(nll, gaussian_nll(x1, o1, 0.5 * math.log(average)).numpy(), rtol=1e-6)


@pytest.mark.parametrize("mode", ["optimal", "learned"])
def test_save_and_load_keep_sigma_and_the_likelihood_options(tmp_path, mode):
    model = tiny_model("gaussian", gaussian_sigma=mode)
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    model.fit(images(16), epochs=1, batch_size=8, verbose=0)
    sigma = float(model.gaussian_log_sigma())
    assert sigma != 0.0  # trained away from the start
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert (loaded.likelihood, loaded.gaussian_sigma) == ("gaussian", mode)
    assert float(loaded.gaussian_log_sigma()) == sigma
    x = images(4)
    outputs = model.decode(model.encode(x)[0])
    np.testing.assert_array_equal(model.reconstruction_nll(x, outputs).numpy(),
                                  loaded.reconstruction_nll(x, outputs).numpy())


def test_mixture_components_survive_saving(tmp_path):
    model = tiny_model("discretized-logistic-mixture", mixture_components=3)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.mixture_components == 3 and loaded.decoder.output_shape[-1] == 30


def test_vae_rejects_a_decoder_built_for_another_likelihood():
    model = tiny_model("bernoulli")
    with pytest.raises(ValueError, match="needs 6"):
        VAE(model.encoder, model.decoder, likelihood="discretized-logistic")
    with pytest.raises(ValueError):
        VAE(model.encoder, model.decoder, gaussian_sigma="fixed")


# --- whole models ----------------------------------------------------------------------------------

def images(n, channels=3, seed=0):
    """8-bit images (k/255) with some structure: a bright square on a noisy background."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, 8, 8, channels))
    x[:, 2:6, 2:6] += 180
    return (x / 255.0).astype(np.float32)


def tiny_model(likelihood, channels=3, **options):
    keras.utils.set_random_seed(0)
    return build_vae((8, 8, channels), 2, encoder_filters=(4,), encoder_dense=(8,), decoder_filters=(4,),
                     decoder_dense=(), likelihood=likelihood, seed=0, **options)


@pytest.mark.parametrize("likelihood,channels", [(name, 3) for name in LIKELIHOODS]
                         + [("discretized-logistic-mixture", 1)])
def test_each_likelihood_trains_and_gives_mean_images_in_range(likelihood, channels):
    model = tiny_model(likelihood, channels, mixture_components=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = images(32, channels)
    history = model.fit(x, epochs=3, batch_size=16, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    pictures = model.mean_image(model.decode(np.zeros((5, 2), np.float32))).numpy()
    assert pictures.shape == (5, 8, 8, channels) and pictures.dtype == np.float32
    assert pictures.min() >= 0.0 and pictures.max() <= 1.0
    # The IWAE weights use the model's own NLL: with K = 1 they are the single-sample ELBO.
    eps = np.random.default_rng(3).standard_normal((1, 4, 2)).astype(np.float32)
    log_w = log_importance_weights(model, x[:4], eps).numpy()[0]
    z_mean, z_log_var = (t.numpy() for t in model.encode(x[:4]))
    z = z_mean + np.exp(0.5 * z_log_var) * eps[0]
    kl_sample = (-0.5 * np.sum(z ** 2 + math.log(2 * math.pi), 1)
                 + 0.5 * np.sum(math.log(2 * math.pi) + z_log_var + (z - z_mean) ** 2 / np.exp(z_log_var), 1))
    elbo = -model.reconstruction_nll(x[:4], model.decode(z)).numpy() + kl_sample
    np.testing.assert_allclose(log_w, elbo, rtol=1e-4)


def test_likelihoods_compute_in_float32_from_half_precision_inputs():
    x = images(2).astype(np.float16)
    for likelihood, channels in (("gaussian", 3), ("discretized-logistic", 6),
                                 ("discretized-logistic-mixture", 20), ("continuous-bernoulli", 3)):
        outputs = np.random.default_rng(0).normal(0, 1, (2, 8, 8, channels)).astype(np.float16)
        nll = reconstruction_nll(x, outputs, likelihood, log_sigma=np.float16(-2.0))
        assert nll.dtype == tf.float32 and nll.shape == (2,)
        reference = reconstruction_nll(x.astype(np.float32), outputs.astype(np.float32), likelihood,
                                       log_sigma=np.float32(-2.0))
        np.testing.assert_allclose(nll.numpy(), reference.numpy(), rtol=1e-6)
