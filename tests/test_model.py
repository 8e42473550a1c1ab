"""The model: sampling, loss terms against hand computations, training, saving."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import common
from kit import config
from common import (LIKELIHOODS, VAE, Sampling, bernoulli_nll, build_decoder, build_encoder,
                    build_vae, continuous_bernoulli_log_norm, continuous_bernoulli_mean, gaussian_kl,
                    reconstruction_nll)


def test_sampling_has_the_requested_mean_and_variance():
    z_mean = np.full((200_000, 2), [1.5, -2.0], dtype=np.float32)
    z_log_var = np.full((200_000, 2), [np.log(0.25), np.log(4.0)], dtype=np.float32)
    z = Sampling(seed=3)([z_mean, z_log_var]).numpy()
    np.testing.assert_allclose(z.mean(axis=0), [1.5, -2.0], atol=0.02)
    np.testing.assert_allclose(z.var(axis=0), [0.25, 4.0], rtol=0.02)


def test_sampling_is_reproducible_from_its_seed():
    args = [np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32)]
    np.testing.assert_array_equal(Sampling(seed=7)(args).numpy(), Sampling(seed=7)(args).numpy())
    assert not np.array_equal(Sampling(seed=7)(args).numpy(), Sampling(seed=8)(args).numpy())


def test_kl_matches_a_hand_computation():
    # KL(N(1, e^0.5) || N(0,1)) per dim = -0.5 * (1 + 0.5 - 1 - e^0.5); second dim N(0,1): 0.
    z_mean = np.array([[1.0, 0.0]], np.float32)
    z_log_var = np.array([[0.5, 0.0]], np.float32)
    expected = -0.5 * (1 + 0.5 - 1 - math.exp(0.5))
    assert gaussian_kl(z_mean, z_log_var).numpy()[0] == pytest.approx(expected, rel=1e-6)


def test_bce_from_logits_matches_a_hand_computation_with_extreme_values():
    x = np.array([[0.0, 1.0, 0.25, 0.0, 1.0, 1.0]], np.float32)
    logits = np.array([[-2.0, 3.0, 0.5, 200.0, -200.0, 0.0]], np.float32)
    p = [1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-3.0)), 1 / (1 + math.exp(-0.5))]
    expected = (-math.log(1 - p[0]) - math.log(p[1])
                - (0.25 * math.log(p[2]) + 0.75 * math.log(1 - p[2]))
                + 200.0      # x=0, logit 200: -log(1 - sigmoid(200)) = 200 (to float precision)
                + 200.0      # x=1, logit -200: -log(sigmoid(-200)) = 200
                + math.log(2.0))
    value = bernoulli_nll(x, logits).numpy()[0]
    assert np.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-5)


def test_bce_gradient_is_finite_at_extreme_logits():
    logits = tf.Variable(np.array([[300.0, -300.0]], np.float32))
    with tf.GradientTape() as tape:
        loss = bernoulli_nll(np.array([[0.0, 1.0]], np.float32), logits)
    grad = tape.gradient(loss, logits).numpy()
    np.testing.assert_allclose(grad, [[1.0, -1.0]])


@pytest.mark.parametrize("lam", [1e-4, 0.01, 0.2, 0.49, 0.4999, 0.5, 0.5001, 0.51, 0.8, 0.99, 1 - 1e-4])
def test_continuous_bernoulli_normaliser_and_mean_match_numerical_integration(lam):
    x = np.linspace(0.0, 1.0, 200_001)
    density = lam ** x * (1 - lam) ** (1 - x)
    integral = np.trapezoid(density, x)
    logit = np.float32(math.log(lam / (1 - lam)))
    log_c = continuous_bernoulli_log_norm(np.array([logit])).numpy()[0]
    assert log_c == pytest.approx(-math.log(integral), abs=2e-5)
    mean = continuous_bernoulli_mean(np.array([logit])).numpy()[0]
    assert mean == pytest.approx(np.trapezoid(x * density, x) / integral, abs=2e-5)


def test_continuous_bernoulli_nll_is_bce_minus_log_normaliser():
    x = np.array([[[[0.3]], [[0.9]]]], np.float32).reshape(1, 2, 1, 1)
    logits = np.array([0.01, 4.0], np.float32).reshape(1, 2, 1, 1)
    bce = reconstruction_nll(x, logits, "bernoulli").numpy()[0]
    cb = reconstruction_nll(x, logits, "continuous-bernoulli").numpy()[0]
    log_c = continuous_bernoulli_log_norm(logits).numpy().sum()
    assert cb == pytest.approx(bce - log_c, rel=1e-6)
    assert log_c > 2 * math.log(2.0)  # C(lambda) >= 2 for every lambda


def test_keras_io_architecture_has_the_examples_parameter_counts():
    # keras.io "Variational AutoEncoder": encoder 69,076 and decoder 65,089 parameters.
    preset = config.KERAS_IO_PRESET
    encoder = build_encoder((28, 28, 1), 2, preset["encoder_filters"], preset["encoder_dense"])
    decoder = build_decoder(2, (28, 28, 1), preset["decoder_filters"], preset["decoder_dense"])
    assert encoder.count_params() == 69_076
    assert decoder.count_params() == 65_089
    assert decoder.output_shape == (None, 28, 28, 1)


def test_output_channels_per_likelihood():
    from kit.model_options import decoder_output_channels
    assert [decoder_output_channels(name, 3, 5) for name in LIKELIHOODS] == [3, 3, 3, 6, 5 * (1 + 9)]
    assert decoder_output_channels("discretized-logistic-mixture", 1, 4) == 4 * 3  # logit, mean, scale
    with pytest.raises(ValueError, match="likelihood must be one of"):
        decoder_output_channels("poisson", 1)


def small_data(n=512, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = np.zeros((n, 28, 28, 1), np.float32)
    for i, k in enumerate(labels):
        x[i, 4 + 5 * k:9 + 5 * k, 4:24] = 1.0
    return x


def test_loss_decreases_on_a_small_synthetic_data_set():
    keras.utils.set_random_seed(0)
    model = build_vae((28, 28, 1), 4, encoder_filters=(32, 64), encoder_dense=(32,), decoder_filters=(64, 32),
                      decoder_dense=(), seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(small_data(), epochs=4, batch_size=32, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert all(np.isfinite(history["loss"]))


def test_trackers_report_reconstruction_plus_beta_kl():
    keras.utils.set_random_seed(0)
    model = build_vae((28, 28, 1), 4, encoder_filters=(32, 64), encoder_dense=(16,), decoder_filters=(64, 32),
                      decoder_dense=(), beta=0.5, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = model.evaluate(small_data(64), batch_size=64, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["reconstruction_loss"] + 0.5 * logs["kl_loss"], rel=1e-5)


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_vae((32, 32, 3), 8, encoder_filters=(8, 16), encoder_dense=(16,), decoder_filters=(16, 8),
                      decoder_dense=(), beta=2.0,
                      likelihood="continuous-bernoulli", dataset="cifar10", seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = np.random.default_rng(0).random((16, 32, 32, 3)).astype(np.float32)
    model.fit(x, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # custom objects are registered
    assert isinstance(loaded, VAE)
    assert (loaded.likelihood, loaded.dataset, float(loaded.beta)) == ("continuous-bernoulli", "cifar10", 2.0)
    for a, b in zip(model.encode(x), loaded.encode(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    z = np.ones((3, 8), np.float32)
    np.testing.assert_array_equal(model.decode(z).numpy(), loaded.decode(z).numpy())
    assert int(loaded.optimizer.iterations) == 2
