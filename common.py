"""The VAE model: Sampling layer, encoder/decoder builders, losses and the `VAE` keras.Model.

The model knows nothing about files, datasets or plots. Formulas follow Kingma & Welling,
"Auto-Encoding Variational Bayes" (ICLR 2014), unless a comment cites another source.
"""
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

LIKELIHOODS = ("bernoulli", "continuous-bernoulli")
LOG_2PI = math.log(2.0 * math.pi)
# |logit| below which the continuous-Bernoulli formulas switch to their Taylor series.
CB_TAYLOR_CUTOFF = 0.05


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


def build_encoder(input_shape, latent_dim, conv_filters=(32, 64), dense_units=(16,),
                  kernel_size=3, seed=None):
    """Strided Conv2D stack -> Dense -> (z_mean, z_log_var, z); keras.io's encoder by default."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for filters in conv_filters:
        x = layers.Conv2D(filters, kernel_size, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    for units in dense_units:
        x = layers.Dense(units, activation="relu")(x)
    # float32 heads keep the posterior parameters exact under mixed precision.
    z_mean = layers.Dense(latent_dim, name="z_mean", dtype="float32")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var", dtype="float32")(x)
    z = Sampling(seed=seed, name="sampling", dtype="float32")([z_mean, z_log_var])
    return keras.Model(inputs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim, image_shape, conv_filters=(64, 32), dense_units=(),
                  kernel_size=3):
    """Dense -> Reshape -> Conv2DTranspose stack -> per-pixel logits (images are sigmoid(logits))."""
    height, width, channels = image_shape
    scale = 2 ** len(conv_filters)
    if height % scale or width % scale:
        raise ValueError(f"image size {height}x{width} is not divisible by 2^{len(conv_filters)}")
    base_shape = (height // scale, width // scale, conv_filters[0])
    inputs = keras.Input(shape=(latent_dim,), name="z")
    x = inputs
    for units in dense_units:
        x = layers.Dense(units, activation="relu")(x)
    x = layers.Dense(int(np.prod(base_shape)), activation="relu")(x)
    x = layers.Reshape(base_shape)(x)
    for filters in conv_filters:
        x = layers.Conv2DTranspose(filters, kernel_size, strides=2, padding="same",
                                   activation="relu")(x)
    logits = layers.Conv2DTranspose(channels, kernel_size, padding="same", name="logits",
                                    dtype="float32")(x)
    return keras.Model(inputs, logits, name="decoder")


# ---------------------------------------------------------------------------------------------
# Loss terms. Every function returns one value per image (shape [batch]) in nats, in float32.

def sum_per_image(values):
    """(batch, ...) -> (batch,): the sum over every axis but the first."""
    return ops.sum(ops.reshape(values, (ops.shape(values)[0], -1)), axis=1)


def bernoulli_nll(x, logits):
    """Binary cross-entropy summed over pixels, from logits: max(l,0) - l*x + log(1+exp(-|l|))."""
    return sum_per_image(ops.binary_crossentropy(ops.cast(x, "float32"), ops.cast(logits, "float32"),
                                                 from_logits=True))


def continuous_bernoulli_log_norm(logits):
    """log C(lambda) of the continuous Bernoulli, lambda = sigmoid(logits), per element.

    Loaiza-Ganem & Cunningham, "The continuous Bernoulli" (NeurIPS 2019), eq. 7:
    C = 2 atanh(1 - 2 lambda) / (1 - 2 lambda), which in logits is eta / tanh(eta / 2).
    Far from 0: log|eta| - log tanh(|eta|/2), with log tanh(v) = log(-expm1(-2v)) - log1p(exp(-2v)).
    Near 0 (lambda near 0.5) the ratio is 0/0, so use log 2 + eta^2/12 - 7 eta^4/1440.
    """
    eta = ops.cast(logits, "float32")
    a = ops.abs(eta)
    near = a < CB_TAYLOR_CUTOFF
    a_safe = ops.where(near, ops.ones_like(a), a)  # keeps the unused branch (and its gradient) finite
    far = ops.log(a_safe) - (ops.log(-ops.expm1(-a_safe)) - ops.log1p(ops.exp(-a_safe)))
    taylor = math.log(2.0) + eta ** 2 / 12.0 - 7.0 * eta ** 4 / 1440.0
    return ops.where(near, taylor, far)


def continuous_bernoulli_mean(logits):
    """E[x] of the continuous Bernoulli: 1/(1 - exp(-eta)) - 1/eta; 1/2 + eta/12 - eta^3/720 near 0."""
    eta = ops.cast(logits, "float32")
    near = ops.abs(eta) < CB_TAYLOR_CUTOFF
    eta_safe = ops.where(near, ops.ones_like(eta), eta)
    far = 1.0 / (-ops.expm1(-eta_safe)) - 1.0 / eta_safe
    taylor = 0.5 + eta / 12.0 - eta ** 3 / 720.0
    return ops.where(near, taylor, far)


def reconstruction_nll(x, logits, likelihood="bernoulli"):
    """-log p(x|z) per image: BCE, minus the log normaliser for the continuous Bernoulli."""
    nll = bernoulli_nll(x, logits)
    if likelihood == "continuous-bernoulli":
        log_norm = continuous_bernoulli_log_norm(logits)
        nll = nll - sum_per_image(log_norm)
    return nll


def gaussian_kl(z_mean, z_log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) summed over latent dims (Kingma & Welling, App. B)."""
    z_mean = ops.cast(z_mean, "float32")
    z_log_var = ops.cast(z_log_var, "float32")
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)


def log_normal(z, mean, log_var):
    """log N(z; mean, exp(log_var)) summed over the last axis."""
    return -0.5 * ops.sum(LOG_2PI + log_var + ops.square(z - mean) * ops.exp(-log_var), axis=-1)


# ---------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="vae_kit")
class VAE(keras.Model):
    """Encoder + decoder trained on reconstruction + beta * KL (beta-VAE: Higgins et al., 2017)."""

    def __init__(self, encoder, decoder, beta=1.0, likelihood="bernoulli", dataset=None, **kwargs):
        super().__init__(**kwargs)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.dataset = dataset  # which data the model was trained on, so reuse can be checked
        # A variable, not a float: KL warm-up changes it without retracing the train step.
        self.beta = self.add_weight(name="beta", shape=(), trainable=False,
                                    initializer=keras.initializers.Constant(beta))
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
        """What a picture of p(x|z) shows: lambda for Bernoulli, the mean for continuous Bernoulli."""
        if self.likelihood == "continuous-bernoulli":
            return continuous_bernoulli_mean(logits)
        return ops.sigmoid(ops.cast(logits, "float32"))

    def call(self, x, training=False):
        z_mean, z_log_var, z = self.encoder(x, training=training)
        return self.decode(z, training=training)

    # --- training ----------------------------------------------------------------------------
    def per_image_losses(self, x, training=False):
        """Reconstruction NLL and KL per image (float32, nats), one stochastic z per image."""
        z_mean, z_log_var, z = self.encoder(x, training=training)
        logits = self.decode(z, training=training)
        return reconstruction_nll(x, logits, self.likelihood), gaussian_kl(z_mean, z_log_var)

    def _update_trackers(self, reconstruction, kl):
        batch = ops.cast(ops.shape(reconstruction)[0], "float32")
        rec_mean, kl_mean = ops.mean(reconstruction), ops.mean(kl)
        # Weighted by batch size so an epoch's value is the exact mean over its images.
        values = {"loss": rec_mean + self.beta * kl_mean,
                  "reconstruction_loss": rec_mean, "kl_loss": kl_mean}
        for name, value in values.items():
            self.trackers[name].update_state(value, sample_weight=batch)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            reconstruction, kl = self.per_image_losses(x, training=True)
            # Divides by the *global* batch under tf.distribute, so replicas' summed
            # gradients equal single-device training on the same global batch.
            loss = tf.nn.compute_average_loss(reconstruction + self.beta * kl)
            scaled_loss = self.optimizer.scale_loss(loss)  # loss scaling under mixed_float16
        gradients = tape.gradient(scaled_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self._update_trackers(reconstruction, kl)

    def test_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        reconstruction, kl = self.per_image_losses(x, training=False)
        return self._update_trackers(reconstruction, kl)

    # --- saving ------------------------------------------------------------------------------
    def get_config(self):
        return {**super().get_config(),
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
                "beta": float(ops.convert_to_numpy(self.beta)),
                "likelihood": self.likelihood, "dataset": self.dataset}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def build_vae(image_shape, latent_dim, encoder_filters=(32, 64), encoder_dense=(16,),
              decoder_filters=(64, 32), decoder_dense=(), beta=1.0, likelihood="bernoulli",
              dataset=None, seed=None):
    """Encoder + decoder + VAE in one call, built so that `model.summary()` works at once."""
    encoder = build_encoder(image_shape, latent_dim, encoder_filters, encoder_dense, seed=seed)
    decoder = build_decoder(latent_dim, image_shape, decoder_filters, decoder_dense)
    model = VAE(encoder, decoder, beta=beta, likelihood=likelihood, dataset=dataset, name="vae")
    model.build((None, *image_shape))
    return model
