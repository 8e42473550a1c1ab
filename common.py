"""The VAE model: Sampling layer, encoder/decoder builders, losses and the `VAE` keras.Model.

The model knows nothing about files, datasets or plots. Formulas follow Kingma & Welling,
"Auto-Encoding Variational Bayes" (ICLR 2014), unless a comment cites another source.
"""
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from kit.model_options import (CONV_ARCHITECTURES, GAUSSIAN_SIGMA_MODES, LIKELIHOODS,  # noqa: F401
                               check_components, decoder_output_channels, mixture_channels_per_component)

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


# --- Gaussian decoder with one shared sigma (sigma-VAE) -------------------------------------------
# Rybkin, Daniilidis & Levine, "Simple and Effective VAE Training with Calibrated Decoders" (ICML 2021).
GAUSSIAN_MIN_LOG_SIGMA = -6.0     # sigma >= e^-6 ~ 0.6/255, the sigma-VAE floor
GAUSSIAN_SIGMA_MOMENTUM = 0.99    # running average of the batch MSE, for evaluation


def gaussian_mean(outputs):
    """The Gaussian decoder's mean: sigmoid(outputs), so it stays in the data range [0, 1] (as in
    the sigma-VAE reference code, whose decoder ends in a sigmoid)."""
    return ops.sigmoid(ops.cast(outputs, "float32"))


def gaussian_nll(x, outputs, log_sigma):
    """-log N(x; mean, sigma^2 I) summed over sub-pixels: sum (x - mean)^2 / 2 sigma^2 + log sigma + log(2 pi)/2."""
    x, log_sigma = ops.cast(x, "float32"), ops.cast(log_sigma, "float32")
    per_value = (0.5 * ops.square((x - gaussian_mean(outputs)) * ops.exp(-log_sigma))
                 + log_sigma + 0.5 * LOG_2PI)
    return sum_per_image(per_value)


def gaussian_optimal_log_sigma(x, outputs):
    """log of the sigma that minimises the batch's Gaussian NLL: sigma^2 = MSE per sub-pixel (sigma-VAE,
    Sec. 3.2), floored at GAUSSIAN_MIN_LOG_SIGMA. Under tf.distribute the batch is the global one:
    squared errors and counts are summed over replicas, so N replicas get one device's sigma."""
    squared = ops.square(ops.cast(x, "float32") - gaussian_mean(outputs))
    count = sum_over_replicas(ops.cast(ops.size(squared), "float32"))
    mse = sum_over_replicas(ops.sum(squared)) / ops.maximum(count, 1.0)
    return 0.5 * ops.log(ops.maximum(mse, math.exp(2.0 * GAUSSIAN_MIN_LOG_SIGMA)))


def sum_over_replicas(value):
    """value summed over the replicas of a tf.distribute step (all-reduce); itself on one device."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def soft_clip_below(value, minimum):
    """minimum + softplus(value - minimum): about `value` well above `minimum`, never below it, with
    a gradient everywhere (the sigma-VAE soft clip of a learned log sigma)."""
    return minimum + ops.softplus(ops.cast(value, "float32") - minimum)


# --- discretized logistic (PixelCNN++) -------------------------------------------------------------
# Salimans, Karpathy, Chen & Kingma, "PixelCNN++" (ICLR 2017). 8-bit data: level k = round(255 x) in
# 0..255, bin k is [(k - 1/2)/255, (k + 1/2)/255] on the [0, 1] scale, and bins 0 and 255 are open
# to -inf and +inf, so the 256 probabilities sum to 1.
PIXEL_LEVELS = 256
LOGISTIC_MIN_LOG_SCALE = -7.0     # as PixelCNN++ clamps log-scales (there on a [-1, 1] scale)
LOG_TINY = 1e-30                  # floor inside logs: keeps unused branches and gradients finite


def pixel_levels(x):
    """8-bit levels k = round(255 x) of images in [0, 1], as float32."""
    return ops.round(ops.cast(x, "float32") * (PIXEL_LEVELS - 1))


def discretized_logistic_log_prob(levels, mean, log_scale):
    """log P(k) of a logistic(mean, scale) on [0, 1] discretized to 256 bins, per element.

    With a = (k/255 + 1/510 - mean)/s and b = (k/255 - 1/510 - mean)/s, P(k) is sigmoid(a) for
    k = 0, 1 - sigmoid(b) for k = 255 and sigmoid(a) - sigmoid(b) between (PixelCNN++, eq. 2). The
    log CDFs are -softplus(-a) and -softplus(b) as in PixelCNN++; the difference uses the exact
    identity sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))), so it never
    cancels and PixelCNN++'s pdf-times-bin-width fallback for tiny differences is not needed.
    """
    k = ops.cast(levels, "float32")
    log_scale = ops.maximum(ops.cast(log_scale, "float32"), LOGISTIC_MIN_LOG_SCALE)
    inv_scale = ops.exp(-log_scale)
    centred = k / (PIXEL_LEVELS - 1) - ops.cast(mean, "float32")
    half_bin = 0.5 / (PIXEL_LEVELS - 1)
    upper = (centred + half_bin) * inv_scale
    lower = (centred - half_bin) * inv_scale
    log_cdf_upper = -ops.softplus(-upper)          # log sigmoid(a): the mass of bin 0
    log_survival_lower = -ops.softplus(lower)      # log(1 - sigmoid(b)): the mass of bin 255
    bin_width = (2.0 * half_bin) * inv_scale       # a - b > 0
    log_middle = (log_cdf_upper + log_survival_lower
                  + ops.log(ops.maximum(-ops.expm1(-bin_width), LOG_TINY)))
    return ops.where(k <= 0, log_cdf_upper,
                     ops.where(k >= PIXEL_LEVELS - 1, log_survival_lower, log_middle))


@tf.function(reduce_retracing=True)  # a graph: ~4x faster than 255 eager passes
def discretized_logistic_mean(mean, log_scale):
    """Exact E[k/255] of the discretized logistic: sum over k = 1..255 of P(K >= k) / 255, where
    P(K >= k) = sigmoid((mean - (k - 1/2)/255) / s). A graph loop over the levels (tf.range: one
    level after another, not 255 unrolled ops run at once), so memory stays at a few inputs' size."""
    mean = ops.cast(mean, "float32")
    inv_scale = ops.exp(-ops.maximum(ops.cast(log_scale, "float32"), LOGISTIC_MIN_LOG_SCALE))
    total = ops.zeros_like(mean)
    for k in tf.range(1, PIXEL_LEVELS):
        # One level at a time: the while loop's default runs 10 at once, each with temporaries of
        # the input's size, so memory would depend on how many threads the machine has.
        tf.autograph.experimental.set_loop_options(parallel_iterations=1)
        threshold = (ops.cast(k, "float32") - 0.5) / (PIXEL_LEVELS - 1)
        total = total + ops.sigmoid((mean - threshold) * inv_scale)
    return total / (PIXEL_LEVELS - 1)


def split_logistic_outputs(outputs):
    """Decoder outputs (..., 2C) -> per-sub-pixel mean (first C channels) and log-scale (last C)."""
    outputs = ops.cast(outputs, "float32")
    channels = outputs.shape[-1] // 2
    return outputs[..., :channels], outputs[..., channels:]


def discretized_logistic_nll(x, outputs):
    """-log P(8-bit image) under a factorized discretized logistic per sub-pixel, summed."""
    mean, log_scale = split_logistic_outputs(outputs)
    return -sum_per_image(discretized_logistic_log_prob(pixel_levels(x), mean, log_scale))


# --- mixture of discretized logistics (PixelCNN++) ----------------------------------------------
def split_mixture_outputs(outputs, channels, components):
    """Decoder outputs (B, H, W, K*(1 + 3C)) for C = 3, else K*(1 + 2C), -> logit_probs (B, H, W, K)
    and means, log_scales, coeffs (B, H, W, C, K), coeffs = tanh(raw) (None unless C = 3).

    Channel layout: [K logits | C*K means | C*K log-scales | C*K coefficients], each block c-major.
    """
    outputs = ops.cast(outputs, "float32")
    kinds = 3 if channels == 3 else 2
    shape = ops.shape(outputs)
    logits = outputs[..., :components]
    params = ops.reshape(outputs[..., components:],
                         (shape[0], shape[1], shape[2], kinds, channels, components))
    coeffs = ops.tanh(params[..., 2, :, :]) if kinds == 3 else None
    return logits, params[..., 0, :, :], params[..., 1, :, :], coeffs


def discretized_logistic_mixture_log_prob(x, outputs, components):
    """log P(pixel) per pixel (B, H, W): log sum_j pi_j prod_c P_j(x_c | x_<c), one component for all
    channels of a pixel; for RGB the green mean is mu_g + c_0 r and the blue mean mu_b + c_1 r + c_2 g
    (PixelCNN++, Sec. 2.2), with r, g the pixel's own (target) values in [0, 1]."""
    levels = pixel_levels(x)
    channels = levels.shape[-1]
    logits, means, log_scales, coeffs = split_mixture_outputs(outputs, channels, components)
    if coeffs is not None:
        values = (levels / (PIXEL_LEVELS - 1))[..., None]           # (B, H, W, C, 1)
        means = ops.stack([means[..., 0, :],
                           means[..., 1, :] + coeffs[..., 0, :] * values[..., 0, :],
                           means[..., 2, :] + coeffs[..., 1, :] * values[..., 0, :]
                           + coeffs[..., 2, :] * values[..., 1, :]], axis=-2)
    log_probs = discretized_logistic_log_prob(levels[..., None], means, log_scales)  # (B, H, W, C, K)
    return ops.logsumexp(ops.log_softmax(logits, axis=-1) + ops.sum(log_probs, axis=-2), axis=-1)


def discretized_logistic_mixture_nll(x, outputs, components):
    """-log P(8-bit image): the mixture per pixel, factorized across pixels, summed."""
    return -sum_per_image(discretized_logistic_mixture_log_prob(x, outputs, components))


def discretized_logistic_mixture_mean(outputs, channels, components):
    """sum_j pi_j E_j[x_c]: per component the exact discretized mean of red; for green and blue
    the exact discretized mean with E_j[red] (and E_j[green]) plugged into the linear dependence,
    which is exact where that mean does not reach the clipped edge bins."""
    logits, means, log_scales, coeffs = split_mixture_outputs(outputs, channels, components)
    if coeffs is None:
        per_component = discretized_logistic_mean(means, log_scales)          # (B, H, W, C, K)
    else:
        red = discretized_logistic_mean(means[..., 0, :], log_scales[..., 0, :])
        green = discretized_logistic_mean(means[..., 1, :] + coeffs[..., 0, :] * red,
                                          log_scales[..., 1, :])
        blue = discretized_logistic_mean(means[..., 2, :] + coeffs[..., 1, :] * red
                                         + coeffs[..., 2, :] * green, log_scales[..., 2, :])
        per_component = ops.stack([red, green, blue], axis=-2)
    return ops.sum(ops.softmax(logits, axis=-1)[..., None, :] * per_component, axis=-1)


# --- which likelihood: NLL, mean image (output channels: kit.model_options) -------------------------
def reconstruction_nll(x, logits, likelihood="bernoulli", log_sigma=None, mixture_components=None):
    """-log p(x|z) per image (nats, float32) for decoder outputs `logits` under `likelihood`.

    gaussian needs the shared log sigma; the mixture's K defaults to what the channels imply.
    """
    if likelihood == "bernoulli":
        return bernoulli_nll(x, logits)
    if likelihood == "continuous-bernoulli":
        log_norm = continuous_bernoulli_log_norm(logits)
        return bernoulli_nll(x, logits) - sum_per_image(log_norm)
    if likelihood == "gaussian":
        if log_sigma is None:
            raise ValueError("the gaussian likelihood needs log_sigma (VAE.reconstruction_nll supplies it)")
        return gaussian_nll(x, logits, log_sigma)
    if likelihood == "discretized-logistic":
        return discretized_logistic_nll(x, logits)
    if likelihood == "discretized-logistic-mixture":
        components = mixture_components or _implied_components(logits.shape[-1], x.shape[-1])
        return discretized_logistic_mixture_nll(x, logits, components)
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")


def _implied_components(output_channels, image_channels):
    per_component = mixture_channels_per_component(image_channels)
    if output_channels % per_component:
        raise ValueError(f"{output_channels} decoder channels are not K x {per_component}")
    return output_channels // per_component


def mean_image(outputs, likelihood="bernoulli", image_channels=None, mixture_components=None):
    """E[x|z] in [0, 1] per sub-pixel: what pictures show (exact for every likelihood except the
    RGB mixture's green and blue, see discretized_logistic_mixture_mean, which needs C and K)."""
    if likelihood == "continuous-bernoulli":
        return continuous_bernoulli_mean(outputs)
    if likelihood == "gaussian":
        return gaussian_mean(outputs)
    if likelihood == "discretized-logistic":
        return discretized_logistic_mean(*split_logistic_outputs(outputs))
    if likelihood == "discretized-logistic-mixture":
        if image_channels is None or mixture_components is None:
            raise ValueError("the mixture's mean image needs image_channels and mixture_components")
        return discretized_logistic_mixture_mean(outputs, image_channels, mixture_components)
    if likelihood != "bernoulli":
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
    return ops.sigmoid(ops.cast(outputs, "float32"))



def gaussian_kl(z_mean, z_log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) summed over latent dims (Kingma & Welling, App. B)."""
    z_mean = ops.cast(z_mean, "float32")
    z_log_var = ops.cast(z_log_var, "float32")
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)


def log_normal(z, mean, log_var):
    """log N(z; mean, exp(log_var)) summed over the last axis."""
    return -0.5 * ops.sum(LOG_2PI + log_var + ops.square(z - mean) * ops.exp(-log_var), axis=-1)


def global_batch_mean(per_image):
    """This replica's share of the mean over the *global* batch: its sum over all replicas' image
    count. Replicas' gradients are summed, so N replicas step as one device on the same batch, even
    when the batch does not split evenly (tf.nn.compute_average_loss assumes it does)."""
    images = sum_over_replicas(ops.cast(ops.shape(per_image)[0], "float32"))
    return ops.sum(per_image) / ops.maximum(images, 1.0)


class OptimizerBuiltBeforeTracing:
    """Makes the optimizer's variables before the train step is traced: made inside its first trace
    (Keras defers them there without a tf.distribute strategy), they make TensorFlow trace the step
    twice, twice the start-up of every fit."""

    def make_train_function(self, force=False):
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
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
