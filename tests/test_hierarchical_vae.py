"""The hierarchical (VDVAE-style) VAE: KL and IWAE against hand computations, sampling, saving,
training with clipping and skipping, mixed precision (the mirrored step: tests/test_distribute.py)."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp

from kit.evaluate import compute_metrics
from kit.hierarchical_vae import (HierarchicalVAE, build_hierarchical_vae, gaussian_analytic_kl,
                                  gaussian_log_density, resolution_chain)


def tiny(likelihood="discretized-logistic-mixture", image_shape=(8, 8, 3), **kwargs):
    keras.utils.set_random_seed(0)
    options = dict(widths=8, blocks_per_resolution=1, latent_channels=2, latent_resolutions=(1, 4, 8),
                   likelihood=likelihood, mixture_components=2, seed=0)
    options.update(kwargs)
    return build_hierarchical_vae(image_shape, **options)


def images(n, shape=(8, 8, 3), seed=0):
    x = np.random.default_rng(seed).random((n, *shape))
    return (np.round(x * 255) / 255).astype(np.float32)


def bars(n, side=8, seed=0):
    """Learnable 8-bit images: one bright horizontal bar per image on a dark, slightly noisy ground."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, (n, side, side, 1)).astype(np.float32)
    for i, row in enumerate(rng.integers(0, side, n)):
        x[i, row] = 235
    return x / 255.0


def test_resolutions_divide_exactly_for_both_data_sets():
    assert resolution_chain(32) == [32, 16, 8, 4, 1]
    assert resolution_chain(28) == [28, 14, 7, 1]
    assert resolution_chain(2) == [2, 1]
    model = build_hierarchical_vae((28, 28, 1), (8, 8, 8, 8), 1, 2, (14, 1, 7), likelihood="bernoulli", seed=0)
    # Groups in any order are built, and recorded, coarse first (config.py: in_canonical_order).
    assert model.group_resolutions == model.get_config()["latent_resolutions"] == [1, 7, 14]
    assert model.latent_shapes == [(1, 1, 2), (7, 7, 2), (14, 14, 2)]
    reconstruction, kl = model.per_image_losses(images(2, (28, 28, 1)))
    assert reconstruction.shape == (2,) and kl.shape == (2,)
    assert np.all(np.isfinite(reconstruction)) and np.all(np.isfinite(kl))
    with pytest.raises(ValueError):
        build_hierarchical_vae((28, 28, 1), 8, 1, 2, (4,))  # 4 is not a resolution of 28


def test_gaussian_kl_and_density_match_closed_forms():
    # KL(N(1, 0.5^2) || N(-1, 2^2)) = log(2 / 0.5) + (0.5^2 + 2^2) / (2 * 2^2) - 1/2
    kl = gaussian_analytic_kl(np.float32(1.0), np.log(np.float32(0.5)), np.float32(-1.0), np.log(np.float32(2.0)))
    assert float(kl) == pytest.approx(np.log(4.0) + 4.25 / 8.0 - 0.5, rel=1e-6)
    assert float(gaussian_analytic_kl(0.3, -0.2, 0.3, -0.2)) == pytest.approx(0.0, abs=1e-7)
    density = gaussian_log_density(np.float32(0.5), np.float32(-1.0), np.log(np.float32(2.0)))
    assert float(density) == pytest.approx(-0.5 * np.log(2 * np.pi) - np.log(2.0) - 0.5 * (1.5 / 2.0) ** 2, rel=1e-6)


def test_each_groups_kl_equals_a_numpy_computation_from_its_parameters():
    model = tiny()
    x = images(5)
    noise = model.draw_noise(5, seed=3)
    stats = model.latent_statistics(x, noise)
    _, kls = model.elbo_terms(x, noise, per_group=True)
    assert kls.shape == (5, 3)
    for i, s in enumerate(stats):
        qm, ql, pm, pl = (s[k].astype(np.float64) for k in ("q_mean", "q_log_std", "p_mean", "p_log_std"))
        assert not np.allclose(qm, pm)  # a real comparison, not 0 = 0
        hand = (pl - ql + (np.exp(2 * ql) + (qm - pm) ** 2) / (2 * np.exp(2 * pl)) - 0.5).reshape(5, -1).sum(1)
        np.testing.assert_allclose(kls[:, i], hand, rtol=1e-5, atol=1e-6)
        # z was drawn from q with this group's noise
        np.testing.assert_allclose(s["z"], qm + np.exp(ql) * noise[i], rtol=1e-5, atol=1e-6)
    _, total = model.elbo_terms(x, noise)
    np.testing.assert_allclose(total, kls.sum(axis=1), rtol=1e-6)


def test_iwae_lies_above_the_elbo_and_converges_to_the_integrated_likelihood():
    # One group with a 1-D latent on 2x2 binary images: log p(x) = log ∫ p(x|z) p(z) dz on a grid.
    keras.utils.set_random_seed(0)
    model = build_hierarchical_vae((2, 2, 1), 4, 1, 1, (1,), likelihood="bernoulli", seed=0)
    group = model.latent_groups[0]
    group.z_proj.kernel.assign(group.z_proj.kernel * 8.0)  # p(x|z) depends strongly on z
    x = np.array([[0, 0, 0, 1], [1, 1, 0, 0], [1, 1, 1, 0]], np.float32).reshape(3, 2, 2, 1)
    prior = model.latent_statistics(x, model.draw_noise(3, 0))[0]
    p_mean, p_log_std = float(prior["p_mean"][0].ravel()[0]), float(prior["p_log_std"][0].ravel()[0])
    grid = np.linspace(p_mean - 9 * np.exp(p_log_std), p_mean + 9 * np.exp(p_log_std), 6001).astype(np.float32)
    outputs = model.decode_latents([grid.reshape(-1, 1, 1, 1)])
    log_prior = -0.5 * np.log(2 * np.pi) - p_log_std - 0.5 * ((grid - p_mean) / np.exp(p_log_std)) ** 2
    exact = np.array([logsumexp(-model.reconstruction_nll(np.repeat(x[i:i + 1], len(grid), 0), outputs).numpy()
                                + log_prior) + np.log(grid[1] - grid[0]) for i in range(3)])

    draws = model.draw_noise(3, seed=1, samples=300)
    elbo = np.mean([-np.add(*model.elbo_terms(x, [n[s] for n in draws])) for s in range(300)], axis=0)
    assert np.all(elbo < exact - 1.0)  # a loose posterior: the ELBO is well below log p(x)

    def iwae(k, seed):
        log_w = model.log_importance_weights(x, model.draw_noise(3, seed, samples=k), decodes_per_call=60000)
        return logsumexp(log_w, axis=0) - np.log(k)

    small = np.mean([iwae(10, seed) for seed in range(10)], axis=0)
    large = iwae(50000, 0)
    assert np.all(small > elbo) and np.all(large > elbo)
    assert np.mean(np.abs(large - exact)) < 0.25 * np.mean(np.abs(small - exact))
    np.testing.assert_allclose(large, exact, atol=0.05)
    # Slicing along K changes nothing.
    noise = model.draw_noise(3, 7, samples=50)
    np.testing.assert_allclose(model.log_importance_weights(x, noise, decodes_per_call=12),
                               model.log_importance_weights(x, noise, decodes_per_call=1000), rtol=1e-5)


def test_samples_are_images_at_every_temperature_and_repeat_with_the_seed():
    model = tiny()
    for temperature in (0.0, 0.5, 1.0, 1.5):
        samples = model.sample(6, temperature=temperature, seed=1)
        assert samples.shape == (6, 8, 8, 3) and samples.dtype == np.float32
        assert np.all(np.isfinite(samples)) and samples.min() >= 0.0 and samples.max() <= 1.0
    np.testing.assert_array_equal(model.sample(4, seed=5), model.sample(4, seed=5))
    assert not np.allclose(model.sample(4, seed=5), model.sample(4, seed=6))
    # Temperature 0 decodes the prior means, whatever the noise.
    np.testing.assert_allclose(model.sample(3, 0.0, seed=1), model.sample(3, 0.0, seed=2), atol=1e-6)
    images_1, noise = model.sample(3, 1.0, seed=9, return_noise=True)
    assert [n.shape[1:] for n in noise] == model.latent_shapes
    np.testing.assert_array_equal(model.sample(3, 1.0, noise=noise), images_1)
    assert not np.allclose(model.sample(3, 0.5, noise=noise), images_1)
    reconstructions = model.reconstruct(images(3))
    assert reconstructions.shape == (3, 8, 8, 3) and np.all((reconstructions >= 0) & (reconstructions <= 1))


def test_save_and_load_reproduce_the_elbo_terms_with_the_same_noise(tmp_path):
    model = tiny("gaussian", beta=0.5, dataset="tiny", grad_clip=100.0, skip_threshold=1e4, clip_factor=2.0,
                 skip_factor=8.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)  # eager: no minutes of tracing
    x = images(16)
    model.fit(x, epochs=1, batch_size=8, verbose=0)  # moves the weights and the Gaussian's running sigma
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, HierarchicalVAE)
    assert (loaded.likelihood, loaded.dataset, loaded.latent_shapes) == ("gaussian", "tiny", model.latent_shapes)
    assert (loaded.grad_clip, loaded.skip_threshold, loaded.clip_factor, loaded.skip_factor) == (100.0, 1e4, 2.0, 8.0)
    assert float(loaded.gradient_norm_level.numpy()) == float(model.gradient_norm_level.numpy()) > 0
    assert float(loaded.beta.numpy()) == 0.5
    assert float(loaded.gaussian_mse_average.numpy()) == float(model.gaussian_mse_average.numpy()) > 0
    noise = model.draw_noise(16, seed=4)
    for a, b in zip(model.elbo_terms(x, noise, per_group=True), loaded.elbo_terms(x, noise, per_group=True)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(model.sample(2, seed=0), loaded.sample(2, seed=0))


def test_training_steps_lower_the_loss_on_tiny_data():
    model = tiny("discretized-logistic", image_shape=(8, 8, 1), latent_resolutions=(1, 4))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = bars(64)
    noise = model.draw_noise(64, seed=0)
    before = np.add(*model.elbo_terms(x, noise)).mean()
    history = model.fit(x, epochs=10, batch_size=16, verbose=0).history  # a graph, as in the scripts
    after = np.add(*model.elbo_terms(x, noise)).mean()
    assert after < before - 50.0, (before, after)
    assert history["loss"][-1] < history["loss"][0]
    assert history["skipped_updates"] == [0.0] * 10
    assert {f"kl_group_{i}" for i in range(2)} <= set(history)


def _weights(model):
    return [w.numpy().copy() for w in model.trainable_weights]


def test_gradient_clipping_bounds_the_update():
    x = images(8)
    changes = {}
    for clip, loss_scaled in ((None, False), (1e-3, False), (1e-3, True)):
        model = tiny(grad_clip=clip)
        optimizer = keras.optimizers.SGD(1.0)
        if loss_scaled:  # mixed_float16's optimizer: the norm must be of the unscaled gradient
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, run_eagerly=True)
        before = _weights(model)
        model.fit(x, epochs=1, batch_size=8, verbose=0)
        changes[clip, loss_scaled] = np.sqrt(sum(np.sum((a - w) ** 2) for a, w in zip(_weights(model), before)))
    assert changes[None, False] > 1.0  # the unclipped norm is far above the threshold...
    assert changes[1e-3, False] == pytest.approx(1e-3, rel=1e-3)  # ...and SGD moves exactly lr * clip
    assert changes[1e-3, True] == pytest.approx(1e-3, rel=1e-3)


def test_skipped_updates_are_counted_and_leave_weights_and_ema_alone():
    model = tiny(skip_threshold=1e-6)  # every finite gradient is "too large"
    # With an EMA: fit ends by copying it into the weights, which must then be the initial ones.
    optimizer = keras.optimizers.Adam(1e-3, use_ema=True)
    model.compile(optimizer=optimizer, run_eagerly=True)
    before = _weights(model)
    history = model.fit(images(24), epochs=2, batch_size=8, verbose=0).history
    assert history["skipped_updates"] == [3.0, 6.0]  # a running count across epochs
    assert int(optimizer.iterations.numpy()) == 0
    assert all(np.array_equal(a, w) for a, w in zip(_weights(model), before))

    # A non-finite loss is skipped whatever the threshold, and the EMA of the weights (Keras'
    # use_ema) only follows the updates that were applied.
    model = tiny()
    optimizer = keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.9)
    model.compile(optimizer=optimizer, run_eagerly=True)
    x = images(16)
    x[12, 0, 0, 0] = np.nan  # in the second batch
    before = _weights(model)
    model.fit(x, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert float(model.skipped_updates.numpy()) == 1.0 and int(optimizer.iterations.numpy()) == 1
    after = _weights(model)  # fit ends by copying the EMA into the weights (Keras)
    assert all(np.all(np.isfinite(a)) for a in after)
    assert any(not np.array_equal(a, w) for a, w in zip(after, before))
    for a, average in zip(after, optimizer._model_variables_moving_average):
        np.testing.assert_array_equal(a, average.numpy())


def _guarded_step(model, norm):
    """One guarded update (SGD, lr 1) with a gradient of global `norm` along all ones; returns the
    norm of the change of the weights."""
    weights = model.trainable_weights
    size = sum(int(np.prod(w.shape)) for w in weights)
    before = _weights(model)
    model.apply_guarded_gradients([tf.fill(w.shape, np.float32(norm / np.sqrt(size))) for w in weights])
    return np.sqrt(sum(np.sum((a - w) ** 2) for a, w in zip(_weights(model), before)))


def test_relative_thresholds_follow_the_running_level_of_the_norm():
    """clip_factor / skip_factor act at multiples of the running level (an EMA at 0.99 of the norms,
    each counted at most at the skip threshold), computed here by hand."""
    model = tiny(clip_factor=1.5, skip_factor=10.0)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    assert float(model.gradient_norm_level.numpy()) == 0.0
    assert _guarded_step(model, 2.0) == pytest.approx(2.0, rel=1e-5)  # no level yet: nothing clipped
    assert float(model.gradient_norm_level.numpy()) == pytest.approx(2.0)  # the first norm
    assert _guarded_step(model, 4.0) == pytest.approx(3.0, rel=1e-5)  # clipped to 1.5 x 2
    level = 0.99 * 2.0 + 0.01 * 4.0
    assert float(model.gradient_norm_level.numpy()) == pytest.approx(level, rel=1e-6)
    assert _guarded_step(model, 100.0) == 0.0  # above 10 x the level: skipped, counted
    assert float(model.skipped_updates.numpy()) == 1.0 and int(model.optimizer.iterations.numpy()) == 2
    level = 0.99 * level + 0.01 * 10.0 * level  # the spike counts at the threshold only
    assert float(model.gradient_norm_level.numpy()) == pytest.approx(level, rel=1e-6)
    assert _guarded_step(model, np.inf) == 0.0  # non-finite: skipped, the level unchanged
    assert float(model.gradient_norm_level.numpy()) == pytest.approx(level, rel=1e-6)
    assert float(model.skipped_updates.numpy()) == 2.0


def test_a_norm_that_jumps_and_stays_is_followed_not_frozen():
    """After the norm jumps 20x and stays there, the level grows by 1 + 0.01 x (5 - 1) per skipped
    update: 1.04^k < 20 / 5 for k = 0 .. 35, so exactly 36 updates are skipped, then they apply."""
    model = tiny(skip_factor=5.0)
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    _guarded_step(model, 1.0)
    applied = [_guarded_step(model, 20.0) > 0 for _ in range(45)]
    assert applied.index(True) == 36 and all(applied[36:])
    assert float(model.skipped_updates.numpy()) == 36.0


def test_a_model_saved_before_the_norm_level_loads_with_the_level_at_zero():
    model = tiny(skip_factor=5.0)
    model.beta.assign(0.25)
    model.gradient_norm_level.assign(7.0)
    owned = model.weights_owned()
    assert owned[-1] is model.gradient_norm_level  # made last, so older files lack only the last
    older = {str(i): v.numpy() for i, v in enumerate(owned[:-1])}
    loaded = tiny(skip_factor=5.0)
    loaded.load_own_variables(older)
    assert float(loaded.beta.numpy()) == 0.25 and float(loaded.gradient_norm_level.numpy()) == 0.0
    with pytest.raises(ValueError):  # anything else missing is still an error
        loaded.load_own_variables({str(i): v.numpy() for i, v in enumerate(owned[:-2])})


@pytest.mark.parametrize("damaged, stopped_after", [((0, 2), None), ((1, 2), 3)])
def test_training_stops_when_updates_are_skipped_in_a_row(damaged, stopped_after):
    """StopWhenFrozen(2): two skipped updates in a row stop training (exit 3); one between applied
    ones does not. Batches with a NaN pixel are the skipped ones (non-finite gradients)."""
    from kit.callbacks import StopWhenFrozen
    from kit.errors import TrainingStopped
    model = tiny()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    x = images(24)  # 3 batches of 8, in order
    for b in damaged:
        x[8 * b, 0, 0, 0] = np.nan
    seen = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batches.append(batch))
    batches = []
    fit = lambda: model.fit(x, epochs=1, batch_size=8, shuffle=False, verbose=0,  # noqa: E731
                            callbacks=[StopWhenFrozen(2), seen])
    if stopped_after is None:
        fit()
        assert len(batches) == 3 and int(model.optimizer.iterations.numpy()) == 1
    else:
        with pytest.raises(TrainingStopped) as stop:
            fit()
        assert stop.value.exit_code == 3
        assert "the last 2 updates were all skipped" in str(stop.value)
        assert len(batches) == stopped_after - 1  # the stop came at the end of batch `stopped_after`
        assert int(model.optimizer.iterations.numpy()) == 1


@pytest.mark.scenario  # 18-23 s each: make test took 5 min 4 s in a slow hour (2026-12-03); CI runs the scenarios too
def test_a_gradient_spike_is_skipped_counted_and_warned(capsys):
    from kit.callbacks import SkippedUpdatesWarning
    x = bars(32)
    spike = x[:8] * 20.0  # a damaged batch: pixel values far outside [0, 1]
    model = tiny("discretized-logistic", image_shape=(8, 8, 1), latent_resolutions=(1, 4))
    model._noise = lambda shape, generator=None: keras.ops.zeros(shape, "float32")  # z = q_mean
    norms = []
    for batch in (x[:8], x[8:16], x[16:24], x[24:], spike):
        with tf.GradientTape() as tape:
            reconstruction, kls = model.per_image_losses_by_group(batch, training=True)
            loss = tf.reduce_mean(reconstruction + tf.reduce_sum(kls, axis=1))
        norms.append(float(tf.linalg.global_norm(tape.gradient(loss, model.trainable_weights))))
    assert norms[4] > 100 * max(norms[:4])  # measured: 1.6e5 against 2.7e2
    initial = model.get_weights()

    def trained(batches, threshold):
        model.set_weights(initial)
        model.skipped_updates.assign(0.0)
        model.skip_threshold = threshold
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(np.concatenate(batches), epochs=1, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[SkippedUpdatesWarning(0.01)])
        return _weights(model), float(model.skipped_updates.numpy()), int(model.optimizer.iterations.numpy())

    # Between the ordinary norms and the spike: the spike's update is skipped, counted and warned
    # about (1 of 5 updates), and the weights are those of the run without the damaged batch.
    weights, skipped, iterations = trained([x[:16], spike, x[16:]], 10 * max(norms[:4]))
    assert (skipped, iterations) == (1.0, 4)
    assert "warning: epoch 1 skipped 1 of its 5 updates (20.0%, more than 1%)" in capsys.readouterr().err
    clean, skipped, iterations = trained([x[:16], x[16:]], 10 * max(norms[:4]))
    assert (skipped, iterations) == (0.0, 4) and capsys.readouterr().err == ""
    assert all(np.array_equal(a, b) for a, b in zip(weights, clean))


@pytest.mark.scenario  # 57 s: make test took 4 min 49 s on 2026-12-03; CI runs the scenarios too
def test_validation_draws_fixed_noise_of_its_own_with_the_ema_weights():
    model = tiny()
    model.compile(optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.5))
    x, x_val = images(16), images(8, seed=1)
    raw = []

    class KeepRawWeights(keras.callbacks.Callback):  # after validation swapped them back
        def on_epoch_end(self, epoch, logs=None):
            raw.append(model.get_weights())

    history = model.fit(x, epochs=2, batch_size=8, validation_data=(x_val,), validation_batch_size=4,
                        callbacks=[keras.callbacks.SwapEMAWeights(), KeepRawWeights()], verbose=0).history
    # Validation's noise: a generator seeded seed + 1, from its start in every pass, one draw per
    # group and batch, so the last epoch's val_loss is the EMA weights' (which fit leaves in the
    # model) loss computed here by hand with that noise.
    generator = keras.random.SeedGenerator(1)
    losses = []
    for batch in (x_val[:4], x_val[4:]):
        noise = [keras.random.normal((4, *shape), seed=generator) for shape in model.latent_shapes]
        reconstruction, kls = model.per_image_losses_by_group(batch, noise=noise)
        losses.append(reconstruction.numpy() + kls.numpy().sum(axis=1))
    assert history["val_loss"][1] == pytest.approx(float(np.mean(losses)), rel=1e-6)
    # Validating does not move training's generator; evaluating again gives the same number.
    state = model.seed_generator.state.numpy().copy()
    again = model.evaluate(x_val, batch_size=4, verbose=0, return_dict=True)["loss"]
    assert again == pytest.approx(history["val_loss"][1], rel=1e-6)
    np.testing.assert_array_equal(model.seed_generator.state.numpy(), state)
    # The raw weights at the end of training validate differently.
    model.set_weights(raw[-1])
    assert model.evaluate(x_val, batch_size=4, verbose=0, return_dict=True)["loss"] != pytest.approx(again, rel=1e-3)


@pytest.mark.scenario  # 18-23 s each: make test took 5 min 4 s in a slow hour (2026-12-03); CI runs the scenarios too
def test_mixed_bfloat16_gives_float32_losses_and_finite_gradients():
    try:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        model = tiny()
        assert model.stem.compute_dtype == "bfloat16" and model.out_conv.compute_dtype == "float32"
        x = images(8)
        with tf.GradientTape() as tape:
            reconstruction, kls = model.per_image_losses_by_group(x, training=True)
            loss = tf.reduce_mean(reconstruction + tf.reduce_sum(kls, axis=1))
        assert reconstruction.dtype == "float32" and kls.dtype == "float32"
        gradients = tape.gradient(loss, model.trainable_weights)
        assert np.isfinite(loss.numpy())
        assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
        history = model.fit(x, epochs=2, batch_size=4, verbose=0).history
        assert all(np.isfinite(history["loss"])) and history["skipped_updates"][-1] == 0.0
        assert np.all(np.isfinite(model.sample(2, seed=0)))
        # The scripts' evaluation (its IWAE: log_importance_weights), as after a --mixed-precision run.
        metrics = compute_metrics(model, x, iw_samples=2, iwae_images=4, seed=0, lossless_codecs=False)
        for key in ("test_neg_elbo", "test_kl", "test_iwae_nll", "test_psnr_db", "bits_per_dim_8bit"):
            assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
