"""The VAE model: Sampling layer, encoder/decoder builders and the `VAE` keras.Model (its
likelihoods and KL are in kit/likelihoods.py).

The model knows nothing about files, datasets or plots. Formulas follow Kingma & Welling,
"Auto-Encoding Variational Bayes" (ICLR 2014), unless a comment cites another source.
"""
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

# The likelihoods are in kit/likelihoods.py, shared with the hierarchical VAE; named here too.
from kit.likelihoods import (  # noqa: F401
    LOG_2PI, CB_TAYLOR_CUTOFF, GAUSSIAN_MIN_LOG_SIGMA, GAUSSIAN_SIGMA_MOMENTUM, PIXEL_LEVELS,
    LOGISTIC_MIN_LOG_SCALE, LOG_TINY, sum_per_image, bernoulli_nll, continuous_bernoulli_log_norm,
    continuous_bernoulli_mean, gaussian_mean, gaussian_nll, gaussian_optimal_log_sigma,
    sum_over_replicas, soft_clip_below, pixel_levels, discretized_logistic_log_prob,
    discretized_logistic_mean, split_logistic_outputs, discretized_logistic_nll,
    split_mixture_outputs, discretized_logistic_mixture_log_prob, discretized_logistic_mixture_nll,
    discretized_logistic_mixture_mean, reconstruction_nll, _implied_components, mean_image,
    gaussian_kl, log_normal, global_batch_mean)
from kit.model_options import (CONV_ARCHITECTURES, GAUSSIAN_SIGMA_MODES, LIKELIHOODS,  # noqa: F401
                               check_components, decoder_output_channels, mixture_channels_per_component)


def reparameterize(z_mean, z_log_var, eps):
    """z = mean + exp(½ log σ²) · ε: a sample of q(z|x) differentiable in its parameters
    (the reparameterization trick, Kingma & Welling 2014, §2.4)."""
    return z_mean + ops.exp(0.5 * z_log_var) * eps


@keras.saving.register_keras_serializable(package="vae_kit")
class Sampling(layers.Layer):
    """z ~ q(z|x) with ε ~ N(0, I) drawn from the layer's seeded generator."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator)
        return reparameterize(z_mean, z_log_var, eps)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_encoder(input_shape, latent_dim, conv_filters, dense_units, kernel_size=3, seed=None,
                  arch="plain", blocks_per_resolution=1):
    """Conv stack -> Dense -> (z_mean, z_log_var, z); keras.io's encoder with its preset's widths.

    arch "plain": one strided ReLU Conv2D per width. "resnet": per width a strided Conv2D, then
    `blocks_per_resolution` residual blocks of that width (see residual_block).
    """
    _check_arch(arch, blocks_per_resolution)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for filters in conv_filters:
        if arch == "plain":
            x = layers.Conv2D(filters, kernel_size, strides=2, padding="same", activation="relu")(x)
        else:
            x = layers.Conv2D(filters, kernel_size, strides=2, padding="same")(x)
            for _ in range(blocks_per_resolution):
                x = residual_block(x, filters, kernel_size)
    if arch == "resnet":  # pre-activation blocks leave the stream un-normalised
        x = layers.Activation("relu")(layers.GroupNormalization(groups=norm_groups(x.shape[-1]))(x))
    x = layers.Flatten()(x)
    for units in dense_units:
        x = layers.Dense(units, activation="relu")(x)
    # float32 heads keep the posterior parameters exact under mixed precision.
    z_mean = layers.Dense(latent_dim, name="z_mean", dtype="float32")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var", dtype="float32")(x)
    z = Sampling(seed=seed, name="sampling", dtype="float32")([z_mean, z_log_var])
    return keras.Model(inputs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim, image_shape, conv_filters, dense_units, kernel_size=3,
                  likelihood="bernoulli", mixture_components=5, arch="plain", blocks_per_resolution=1):
    """Dense -> Reshape -> Conv2DTranspose stack -> the parameters of p(x|z) per pixel.

    The last layer has decoder_output_channels(likelihood, C, mixture_components) channels, in
    float32. arch as in build_encoder: "resnet" adds residual blocks after each upsampling.
    """
    _check_arch(arch, blocks_per_resolution)
    height, width, channels = image_shape
    scale = 2 ** len(conv_filters)
    if height % scale or width % scale:
        raise ValueError(f"image size {height}x{width} is not divisible by 2^{len(conv_filters)}")
    out_channels = decoder_output_channels(likelihood, channels, mixture_components)
    base_shape = (height // scale, width // scale, conv_filters[0])
    inputs = keras.Input(shape=(latent_dim,), name="z")
    x = inputs
    for units in dense_units:
        x = layers.Dense(units, activation="relu")(x)
    x = layers.Dense(int(np.prod(base_shape)), activation="relu")(x)
    x = layers.Reshape(base_shape)(x)
    for filters in conv_filters:
        if arch == "plain":
            x = layers.Conv2DTranspose(filters, kernel_size, strides=2, padding="same",
                                       activation="relu")(x)
        else:
            x = layers.Conv2DTranspose(filters, kernel_size, strides=2, padding="same")(x)
            for _ in range(blocks_per_resolution):
                x = residual_block(x, filters, kernel_size)
    if arch == "plain":
        outputs = layers.Conv2DTranspose(out_channels, kernel_size, padding="same", name="outputs",
                                         dtype="float32")(x)
    else:
        x = layers.Activation("relu")(layers.GroupNormalization(groups=norm_groups(x.shape[-1]))(x))
        outputs = layers.Conv2D(out_channels, kernel_size, padding="same", name="outputs",
                                dtype="float32")(x)
    return keras.Model(inputs, outputs, name="decoder")


def _check_arch(arch, blocks_per_resolution):
    if arch not in CONV_ARCHITECTURES:  # "hierarchical" is kit/hierarchical_vae.py's own model
        raise ValueError(f"arch must be one of {CONV_ARCHITECTURES}, not {arch!r}")
    if arch == "resnet" and (int(blocks_per_resolution) != blocks_per_resolution
                             or blocks_per_resolution < 1):
        raise ValueError(f"blocks_per_resolution must be an integer >= 1, not {blocks_per_resolution!r}")


def norm_groups(width, max_groups=32):
    """GroupNormalization groups for `width` channels: the largest divisor of width up to 32."""
    return math.gcd(width, max_groups)


def residual_block(x, width, kernel_size=3):
    """Pre-activation residual block x + conv(relu(gn(conv(relu(gn(x)))))) (He et al., "Identity
    Mappings in Deep Residual Networks", ECCV 2016), GroupNorm (Wu & He, ECCV 2018) so nothing depends
    on the batch; the last conv starts at zero so each block starts as the identity (Goyal et al. 2017)."""
    h = layers.Activation("relu")(layers.GroupNormalization(groups=norm_groups(width))(x))
    h = layers.Conv2D(width, kernel_size, padding="same")(h)
    h = layers.Activation("relu")(layers.GroupNormalization(groups=norm_groups(width))(h))
    h = layers.Conv2D(width, kernel_size, padding="same", kernel_initializer="zeros")(h)
    return layers.Add()([x, h])


class OptimizerBuiltBeforeTracing:
    """Makes the optimizer's variables before the train step is traced: made inside its first trace
    (Keras defers them there without a tf.distribute strategy), they make TensorFlow trace the step
    twice, twice the start-up of every fit. With use_ema, the average starts at the weights: Keras
    starts it at zeros and copies the weights in at the first applied update, so a fit whose
    updates were all skipped would end (finalize_variable_values) with every weight zero."""

    def make_train_function(self, force=False):
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
                for average, weight in zip(getattr(self.optimizer, "_model_variables_moving_average", ()),
                                           self.trainable_variables):
                    average.assign(weight)
        return super().make_train_function(force)


# ---------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="vae_kit")
class VAE(OptimizerBuiltBeforeTracing, keras.Model):
    """Encoder + decoder trained on reconstruction + beta * KL (beta-VAE: Higgins et al., 2017)."""

    def __init__(self, encoder, decoder, beta=1.0, likelihood="bernoulli", dataset=None,
                 gaussian_sigma="optimal", mixture_components=5, **kwargs):
        super().__init__(**kwargs)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
        if gaussian_sigma not in GAUSSIAN_SIGMA_MODES:
            raise ValueError(f"gaussian_sigma must be one of {GAUSSIAN_SIGMA_MODES}, not {gaussian_sigma!r}")
        check_components(mixture_components)
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.dataset = dataset  # which data the model was trained on, so reuse can be checked
        self.gaussian_sigma = gaussian_sigma
        self.mixture_components = int(mixture_components)
        expected = decoder_output_channels(likelihood, self.image_shape[-1], self.mixture_components)
        if decoder.outputs[0].shape[-1] != expected:
            raise ValueError(f"the decoder gives {decoder.outputs[0].shape[-1]} channels; {likelihood} "
                             f"needs {expected} (build it with the same likelihood and mixture_components)")
        # A variable, not a float: KL warm-up changes it without retracing the train step.
        self.beta = self.add_weight(name="beta", shape=(), trainable=False,
                                    initializer=keras.initializers.Constant(beta))
        if likelihood == "gaussian":
            self._add_gaussian_sigma_weights()
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "reconstruction_loss", "kl_loss")}

    @property
    def latent_dim(self):
        return self.decoder.inputs[0].shape[-1]

    @property
    def image_shape(self):
        return tuple(self.encoder.inputs[0].shape[1:])

    @property
    def metrics(self):
        return list(self.trackers.values())

    # --- the math, named as in pytorch/examples' VAE -----------------------------------------
    def encode(self, x, training=False):
        """Posterior parameters (z_mean, z_log_var) of q(z|x)."""
        z_mean, z_log_var, _ = self.encoder(x, training=training)
        return z_mean, z_log_var

    def reparameterize(self, z_mean, z_log_var, eps=None):
        """z ~ q(z|x) through the Sampling layer, or from a given eps (for reproducible estimates)."""
        if eps is None:
            return self.encoder.get_layer("sampling")([z_mean, z_log_var])
        return reparameterize(z_mean, z_log_var, eps)

    def decode(self, z, training=False):
        """Logits of p(x|z)."""
        return self.decoder(z, training=training)

    def mean_image(self, logits):
        """What a picture of p(x|z) shows: lambda for Bernoulli, E[x|z] for every other likelihood."""
        return mean_image(logits, self.likelihood, self.image_shape[-1], self.mixture_components)

    def reconstruction_nll(self, x, outputs, training=False):
        """-log p(x|z) per image with this model's likelihood, its sigma (gaussian) and K (mixture)."""
        log_sigma = self.gaussian_log_sigma(x, outputs, training) if self.likelihood == "gaussian" else None
        return reconstruction_nll(x, outputs, self.likelihood, log_sigma, self.mixture_components)

    def call(self, x, training=False):
        z_mean, z_log_var, z = self.encoder(x, training=training)
        return self.decode(z, training=training)

    # --- training ----------------------------------------------------------------------------
    def per_image_losses(self, x, training=False):
        """Reconstruction NLL and KL per image (float32, nats), one stochastic z per image."""
        z_mean, z_log_var, z = self.encoder(x, training=training)
        logits = self.decode(z, training=training)
        return self.reconstruction_nll(x, logits, training), gaussian_kl(z_mean, z_log_var)

    def _update_trackers(self, reconstruction, kl):
        # One value per image: an epoch's value is the exact mean over its images, also when a
        # replica's share of the last batch is empty (its sum and count are then 0, not NaN).
        values = {"loss": reconstruction + self.beta * kl,
                  "reconstruction_loss": reconstruction, "kl_loss": kl}
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            reconstruction, kl = self.per_image_losses(x, training=True)
            loss = global_batch_mean(reconstruction + self.beta * kl)
            scaled_loss = self.optimizer.scale_loss(loss)  # loss scaling under mixed_float16
        gradients = tape.gradient(scaled_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self._update_trackers(reconstruction, kl)

    def test_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        reconstruction, kl = self.per_image_losses(x, training=False)
        return self._update_trackers(reconstruction, kl)

    # --- the Gaussian decoder's shared sigma (sigma-VAE) -----------------------------------------
    # Default "optimal": sigma^2 = the batch MSE, the sigma-VAE paper's recommendation. It is the
    # exact minimiser of the batch NLL, so it needs no extra parameter and does not lag behind the
    # model as a learned log sigma does (Adam moves a scalar ~lr per step). Evaluation cannot use
    # the test batch's own MSE, so it uses a running average of the training batches' MSE, kept
    # in a non-trainable weight (saved with the model).
    def _add_gaussian_sigma_weights(self):
        if self.gaussian_sigma == "learned":
            # raw such that soft_clip_below(raw, min) = 0: sigma starts at 1, as in sigma-VAE.
            minimum = GAUSSIAN_MIN_LOG_SIGMA
            start = minimum + math.log(math.expm1(-minimum))
            self.gaussian_log_sigma_raw = self.add_weight(
                name="gaussian_log_sigma_raw", shape=(), dtype="float32", autocast=False,
                initializer=keras.initializers.Constant(start))
        else:
            # 0 = no training batch seen yet (then sigma = 1); "mean": replicas' updates are averaged.
            self.gaussian_mse_average = self.add_weight(
                name="gaussian_mse_average", shape=(), dtype="float32", autocast=False,
                trainable=False, aggregation="mean", initializer="zeros")

    def gaussian_log_sigma(self, x=None, outputs=None, training=False):
        """log sigma of the Gaussian decoder: the soft-clipped learned value, or (optimal) the batch's
        RMS error while training (which also updates the running average) and the average otherwise."""
        if self.gaussian_sigma == "learned":
            return soft_clip_below(self.gaussian_log_sigma_raw, GAUSSIAN_MIN_LOG_SIGMA)
        average = ops.convert_to_tensor(self.gaussian_mse_average)
        if not training:
            floor = math.exp(2.0 * GAUSSIAN_MIN_LOG_SIGMA)
            return 0.5 * ops.log(ops.where(average > 0, ops.maximum(average, floor), 1.0))
        # sigma* minimises the batch NLL, so d NLL / d sigma = 0 there and stopping its
        # gradient leaves the model's gradient unchanged (envelope theorem).
        log_sigma = ops.stop_gradient(gaussian_optimal_log_sigma(x, outputs))
        mse = ops.exp(2.0 * log_sigma)
        self.gaussian_mse_average.assign(ops.where(
            average > 0, GAUSSIAN_SIGMA_MOMENTUM * average + (1.0 - GAUSSIAN_SIGMA_MOMENTUM) * mse, mse))
        return log_sigma

    # --- saving ------------------------------------------------------------------------------
    def get_config(self):
        return {**super().get_config(),
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
                "beta": float(ops.convert_to_numpy(self.beta)),
                "likelihood": self.likelihood, "dataset": self.dataset,
                "gaussian_sigma": self.gaussian_sigma, "mixture_components": self.mixture_components}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def build_vae(image_shape, latent_dim, encoder_filters, encoder_dense, decoder_filters,
              decoder_dense, beta=1.0, likelihood="bernoulli", dataset=None, seed=None,
              gaussian_sigma="optimal", mixture_components=5, arch="plain", blocks_per_resolution=1):
    """Encoder + decoder + VAE in one call, built so that `model.summary()` works at once."""
    encoder = build_encoder(image_shape, latent_dim, encoder_filters, encoder_dense, seed=seed,
                            arch=arch, blocks_per_resolution=blocks_per_resolution)
    decoder = build_decoder(latent_dim, image_shape, decoder_filters, decoder_dense,
                            likelihood=likelihood, mixture_components=mixture_components,
                            arch=arch, blocks_per_resolution=blocks_per_resolution)
    model = VAE(encoder, decoder, beta=beta, likelihood=likelihood, dataset=dataset,
                gaussian_sigma=gaussian_sigma, mixture_components=mixture_components, name="vae")
    model.build((None, *image_shape))
    return model
