"""The likelihoods p(x | z) of both models (common.VAE and kit/hierarchical_vae.py), the Gaussian
KL and the replica-exact batch mean: one home for each formula, cited beside it.

Every loss function returns one value per image (shape [batch]) in nats, in float32.
"""
import math

import numpy as np
import tensorflow as tf
from keras import ops

from kit.model_options import LIKELIHOODS, mixture_channels_per_component

LOG_2PI = math.log(2.0 * math.pi)
# |logit| below which the continuous-Bernoulli formulas switch to their Taylor series.
CB_TAYLOR_CUTOFF = 0.05


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


# Elements of one slice of discretized_logistic_mean's input (4 MB of float32): its temporaries are
# a few slices, whatever the input's size (issue 17).
MEAN_SLICE_ELEMENTS = 2 ** 20


@tf.function(reduce_retracing=True)  # a graph: ~4x faster than 255 eager passes
def discretized_logistic_mean(mean, log_scale):
    """Exact E[k/255] of the discretized logistic: sum over k = 1..255 of P(K >= k) / 255, where
    P(K >= k) = sigmoid((mean - (k - 1/2)/255) / s). Graph loops, one slice of MEAN_SLICE_ELEMENTS
    after another and one level after another (the while loop's default would run 10 at once), so
    the memory beyond the input and the output is a few slices, not a few inputs."""
    shape = tf.shape(mean)
    flat_mean = tf.reshape(ops.cast(mean, "float32"), [-1])
    flat_log_scale = tf.reshape(ops.cast(log_scale, "float32"), [-1])
    size = tf.size(flat_mean)
    slices = tf.TensorArray(tf.float32, size=(size + MEAN_SLICE_ELEMENTS - 1) // MEAN_SLICE_ELEMENTS,
                            element_shape=tf.TensorShape([None]), infer_shape=False)
    for start in tf.range(0, size, MEAN_SLICE_ELEMENTS):
        tf.autograph.experimental.set_loop_options(parallel_iterations=1)
        part = flat_mean[start:start + MEAN_SLICE_ELEMENTS]
        inv_scale = ops.exp(-ops.maximum(flat_log_scale[start:start + MEAN_SLICE_ELEMENTS],
                                         LOGISTIC_MIN_LOG_SCALE))
        total = ops.zeros_like(part)
        for k in tf.range(1, PIXEL_LEVELS):
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            threshold = (ops.cast(k, "float32") - 0.5) / (PIXEL_LEVELS - 1)
            total = total + ops.sigmoid((part - threshold) * inv_scale)
        slices = slices.write(start // MEAN_SLICE_ELEMENTS, total / (PIXEL_LEVELS - 1))
    return tf.reshape(slices.concat(), shape)


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
    One reshape and one split, no slices: a slice's gradient writes a zero tensor of the whole
    input (13 % of the hierarchical VAE's step, docs/BENCHMARKS.md), a split's is one concatenation.
    """
    outputs = ops.cast(outputs, "float32")
    kinds = 3 if channels == 3 else 2
    shape = ops.shape(outputs)
    blocks = ops.reshape(outputs, (shape[0], shape[1], shape[2], 1 + kinds * channels, components))
    logits, *params = tf.split(blocks, [1] + [channels] * kinds, axis=-2)
    coeffs = ops.tanh(params[2]) if kinds == 3 else None
    return ops.squeeze(logits, axis=-2), params[0], params[1], coeffs


def discretized_logistic_mixture_log_prob(x, outputs, components):
    """log P(pixel) per pixel (B, H, W): log sum_j pi_j prod_c P_j(x_c | x_<c), one component for all
    channels of a pixel; for RGB the green mean is mu_g + c_0 r and the blue mean mu_b + c_1 r + c_2 g
    (PixelCNN++, Sec. 2.2), with r, g the pixel's own (target) values in [0, 1]."""
    levels = pixel_levels(x)
    channels = levels.shape[-1]
    logits, means, log_scales, coeffs = split_mixture_outputs(outputs, channels, components)
    if coeffs is not None:
        red, green, _ = ops.unstack((levels / (PIXEL_LEVELS - 1))[..., None], axis=-2)  # (B, H, W, 1)
        mean_r, mean_g, mean_b = ops.unstack(means, axis=-2)
        coeff_rg, coeff_rb, coeff_gb = ops.unstack(coeffs, axis=-2)
        means = ops.stack([mean_r, mean_g + coeff_rg * red, mean_b + coeff_rb * red + coeff_gb * green],
                          axis=-2)
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
        mean_r, mean_g, mean_b = ops.unstack(means, axis=-2)
        scale_r, scale_g, scale_b = ops.unstack(log_scales, axis=-2)
        coeff_rg, coeff_rb, coeff_gb = ops.unstack(coeffs, axis=-2)
        red = discretized_logistic_mean(mean_r, scale_r)
        green = discretized_logistic_mean(mean_g + coeff_rg * red, scale_g)
        blue = discretized_logistic_mean(mean_b + coeff_rb * red + coeff_gb * green, scale_b)
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
