"""The hierarchical VAE's pieces (kit/hierarchical_vae.py): the Gaussian maths of its latents,
VDVAE's bottleneck block, and one latent group of the top-down pass (VDVAE's DecBlock).

Units: nats, float32. Sources as in kit/hierarchical_vae.py.
"""
import math

import keras
import tensorflow as tf
from keras import layers, ops

from kit.likelihoods import LOG_2PI

LN2 = math.log(2.0)
# Which z a top-down pass takes per group: a draw from q, q's mean, a draw from the prior (at a
# temperature), or z's given by the caller.
POSTERIOR, POSTERIOR_MEAN, PRIOR, GIVEN = "posterior", "posterior_mean", "prior", "given"


# --- Gaussian maths (float32, elementwise) ----------------------------------------------------------

def log_softplus(y):
    """log(softplus(y)), exact to float32 also far below 0 (where softplus(y) ~ exp(y))."""
    y = ops.cast(y, "float32")
    far = y < -15.0
    safe = ops.where(far, ops.zeros_like(y), y)
    return ops.where(far, y, ops.log(ops.softplus(safe)))


def smoothed_log_std(raw):
    """log sigma for sigma = softplus(ln2 * raw) / ln2: 1 at raw = 0, linear for large raw."""
    # Efficient-VDVAE's "gradient smoothing" of the std, instead of VDVAE's exp(raw), whose
    # gradient exploded for large raw; exponential for small raw.
    return log_softplus(LN2 * ops.cast(raw, "float32")) - math.log(LN2)


def gaussian_analytic_kl(q_mean, q_log_std, p_mean, p_log_std):
    """KL(N(q_mean, e^{2 q_log_std}) || N(p_mean, e^{2 p_log_std})) per element (VDVAE's
    gaussian_analytical_kl): log(sp/sq) + (sq^2 + (mq - mp)^2) / (2 sp^2) - 1/2."""
    q_mean, q_log_std, p_mean, p_log_std = (ops.cast(t, "float32")
                                            for t in (q_mean, q_log_std, p_mean, p_log_std))
    return (p_log_std - q_log_std - 0.5
            + 0.5 * (ops.exp(2.0 * (q_log_std - p_log_std))
                     + ops.square((q_mean - p_mean) * ops.exp(-p_log_std))))


def gaussian_log_density(z, mean, log_std):
    """log N(z; mean, e^{2 log_std}) per element."""
    z, mean, log_std = (ops.cast(t, "float32") for t in (z, mean, log_std))
    return -0.5 * (LOG_2PI + ops.square((z - mean) * ops.exp(-log_std))) - log_std


def sum_per_image(values):
    """(B,): the sum of each image's elements."""
    return ops.sum(ops.reshape(values, (ops.shape(values)[0], -1)), axis=1)


# --- layers ---------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="vae_kit")
class BottleneckBlock(layers.Layer):
    """VDVAE's block: 1x1 -> 3x3 -> 3x3 -> 1x1 convolutions, each after a GELU, the middle ones
    `middle_width` wide (1x1 instead of 3x3 at sides <= 2, as VDVAE), plus the input when `residual`."""

    def __init__(self, middle_width, out_width, residual=True, use_3x3=True, last_init=1.0,
                 output_dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.middle_width, self.out_width = int(middle_width), int(out_width)
        self.residual, self.use_3x3 = bool(residual), bool(use_3x3)
        self.last_init, self.output_dtype = last_init, output_dtype
        kernel = 3 if self.use_3x3 else 1
        # last_init "zeros": the block starts as a constant (VDVAE's zero_last); a float s scales the
        # last kernel's initial std by s (VDVAE: 1/sqrt(blocks), so the stream's variance does not
        # grow with depth).
        if last_init == "zeros":
            last_initializer = "zeros"
        else:  # glorot uniform with its std scaled by last_init
            last_initializer = keras.initializers.VarianceScaling(
                scale=float(last_init) ** 2, mode="fan_avg", distribution="uniform")
        self.convs = [layers.Conv2D(self.middle_width, 1, name="c1"),
                      layers.Conv2D(self.middle_width, kernel, padding="same", name="c2"),
                      layers.Conv2D(self.middle_width, kernel, padding="same", name="c3"),
                      layers.Conv2D(self.out_width, 1, kernel_initializer=last_initializer, name="c4",
                                    **({"dtype": output_dtype} if output_dtype else {}))]

    def build(self, input_shape):
        if self.residual and input_shape[-1] != self.out_width:
            raise ValueError(f"a residual block needs {self.out_width} input channels, not {input_shape[-1]}")
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = shape[:-1] + (conv.filters,)

    def call(self, x):
        h = x
        for conv in self.convs:
            h = conv(ops.gelu(h, approximate=False))  # pre-activation GELU (VDVAE)
        return x + ops.cast(h, x.dtype) if self.residual else h

    def get_config(self):
        return {**super().get_config(), "middle_width": self.middle_width, "out_width": self.out_width,
                "residual": self.residual, "use_3x3": self.use_3x3, "last_init": self.last_init,
                "output_dtype": self.output_dtype}


# One latent group at a resolution of width w (VDVAE's DecBlock):
#   prior:     [p_mean, p_raw_std, h_prior] = Block(h)    (last conv zero: p = N(0, I) at start)
#   posterior: [q_mean, q_raw_std] = Block(concat(h, bottom-up activation))
#   update:    h <- ResBlock(h + h_prior + conv1x1(z))
@keras.saving.register_keras_serializable(package="vae_kit")
class LatentGroup(layers.Layer):
    """One latent group of the top-down pass: its prior, its posterior and its update of the state h.
    The prior and posterior heads run in float32 (exact under mixed precision)."""

    def __init__(self, width, middle_width, latent_channels, use_3x3=True, depth_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.width, self.middle_width = int(width), int(middle_width)
        self.latent_channels, self.use_3x3, self.depth_scale = int(latent_channels), bool(use_3x3), depth_scale
        c, w = self.latent_channels, self.width
        # The prior also returns w channels added to h, so h carries what the prior computed (VDVAE).
        self.prior_block = BottleneckBlock(middle_width, 2 * c + w, residual=False, use_3x3=use_3x3,
                                           last_init="zeros", output_dtype="float32", name="prior")
        self.posterior_block = BottleneckBlock(middle_width, 2 * c, residual=False, use_3x3=use_3x3,
                                               output_dtype="float32", name="posterior")
        # z's projection and the residual block start scaled by 1/sqrt(blocks) (VDVAE).
        self.z_proj = layers.Conv2D(w, 1, name="z_proj", kernel_initializer=keras.initializers.VarianceScaling(
            scale=depth_scale ** 2, mode="fan_avg", distribution="uniform"))
        self.resnet = BottleneckBlock(middle_width, w, residual=True, use_3x3=use_3x3,
                                      last_init=depth_scale, name="resnet")

    def build(self, input_shape):
        h_shape = tuple(input_shape)
        self.prior_block.build(h_shape)
        self.posterior_block.build(h_shape[:-1] + (2 * self.width,))
        self.z_proj.build(h_shape[:-1] + (self.latent_channels,))
        self.resnet.build(h_shape)

    def prior(self, h):
        """(p_mean, p_log_std, h plus the prior block's state channels)."""
        c = self.latent_channels  # split, not sliced: a slice's gradient writes a zero tensor of out
        mean, raw_log_std, state = tf.split(self.prior_block(h), [c, c, self.width], axis=-1)
        return mean, smoothed_log_std(raw_log_std), h + ops.cast(state, h.dtype)

    def posterior(self, h, activation):
        """(q_mean, q_log_std) from the state h and the encoder's activation at this resolution."""
        out = self.posterior_block(ops.concatenate([h, ops.cast(activation, h.dtype)], axis=-1))
        mean, raw_log_std = tf.split(out, 2, axis=-1)
        return mean, smoothed_log_std(raw_log_std)

    def update(self, h, z):
        """The next state h, from this one and the group's z."""
        return self.resnet(h + ops.cast(self.z_proj(z), h.dtype))

    def call(self, h):  # the state update alone, from the prior mean (for Keras' bookkeeping)
        p_mean, _, h = self.prior(h)
        return self.update(h, p_mean)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "middle_width": self.middle_width,
                "latent_channels": self.latent_channels, "use_3x3": self.use_3x3,
                "depth_scale": self.depth_scale}
