"""A hierarchical VAE in the style of VDVAE: a bottom-up encoder, a top-down decoder with groups
of latent feature maps at several resolutions, and the kit's likelihoods (kit/likelihoods.py).

Sources, cited where each choice is made:
  VDVAE           Child, "Very Deep VAEs Generalize Autoregressive Models and Can Outperform
                  Them on Images" (ICLR 2021), github.com/openai/vdvae.
  Efficient-VDVAE Hazami, Mama & Thurairatnam, "Efficient-VDVAE: Less is more" (2022).
  NVAE            Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder" (NeurIPS 2020).
  IAF-VAE         Kingma et al., "Improved Variational Inference with Inverse Autoregressive
                  Flow" (NeurIPS 2016): the bidirectional (bottom-up + top-down) inference model.
  IWAE            Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders" (ICLR 2016).

The generative model is p(x, z) = p(x | z) prod_i p(z_i | z_<i), the inference model
q(z | x) = prod_i q(z_i | z_<i, x); both share the top-down state h, so sampling z_i from q
(training) or p (generation) is the same pass. Loss per image = -log p(x | z) + beta * sum_i
KL(q(z_i | z_<i, x) || p(z_i | z_<i)), each KL analytic given the sampled z_<i (VDVAE).

Units: nats per image, float32, as in common.VAE. Noise for evaluation is a list with one array
per latent group, so callers can draw it with NumPy from a seed (see draw_noise).
"""
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

import common
from kit.likelihoods import LOG_2PI, global_batch_mean
from kit.model_options import GAUSSIAN_SIGMA_MODES, LIKELIHOODS, decoder_output_channels
# The resolutions and VDVAE's thresholds are TensorFlow-free, so that the options can check them.
from kit.model_options import (VDVAE_GRAD_CLIP_PER_DIM, VDVAE_SKIP_THRESHOLD_PER_DIM,  # noqa: F401
                               resolution_chain, vdvae_thresholds)

LN2 = math.log(2.0)
# The most decodes (samples x images) one log_importance_weights graph call runs at once.
IWAE_DECODES_PER_CALL = 256
EVAL_BATCH = 256


# --- resolutions ---------------------------------------------------------------------------------

def _per_resolution(value, chain, name):
    """An int for every resolution, a sequence aligned with `chain`, or a dict {resolution: int}."""
    if isinstance(value, dict):
        missing = [r for r in chain if r not in value]
        if missing:
            raise ValueError(f"{name} has no entry for resolutions {missing} (chain {chain})")
        return {r: int(value[r]) for r in chain}
    if isinstance(value, (list, tuple)):
        if len(value) != len(chain):
            raise ValueError(f"{name} needs one value per resolution {chain}, not {list(value)}")
        return {r: int(v) for r, v in zip(chain, value)}
    return {r: int(value) for r in chain}


# --- Gaussian maths (float32, elementwise) ----------------------------------------------------------

def log_softplus(y):
    """log(softplus(y)), exact to float32 also far below 0 (where softplus(y) ~ exp(y))."""
    y = ops.cast(y, "float32")
    far = y < -15.0
    safe = ops.where(far, ops.zeros_like(y), y)
    return ops.where(far, y, ops.log(ops.softplus(safe)))


def smoothed_log_std(raw):
    """log sigma for sigma = softplus(ln2 * raw) / ln2: sigma = 1 at raw = 0, linear for large raw,
    exponential for small (Efficient-VDVAE's "gradient smoothing" of the std, instead of VDVAE's
    exp(raw), which made the gradient explode for large raw)."""
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


def _sum_per_image(values):
    return ops.sum(ops.reshape(values, (ops.shape(values)[0], -1)), axis=1)


# --- layers ---------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="vae_kit")
class BottleneckBlock(layers.Layer):
    """VDVAE's block: 1x1 -> 3x3 -> 3x3 -> 1x1 convolutions, each after a GELU, the middle ones
    `middle_width` wide (bottleneck; 1x1 instead of 3x3 at sides <= 2, as VDVAE), plus the input
    when `residual`. last_init: "zeros" (the block starts as a constant, VDVAE's zero_last) or a
    float s scaling the last kernel's initial std by s (VDVAE scales residual branches by
    1/sqrt(number of blocks) so the stream's variance does not grow with depth)."""

    def __init__(self, middle_width, out_width, residual=True, use_3x3=True, last_init=1.0,
                 output_dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.middle_width, self.out_width = int(middle_width), int(out_width)
        self.residual, self.use_3x3 = bool(residual), bool(use_3x3)
        self.last_init, self.output_dtype = last_init, output_dtype
        kernel = 3 if self.use_3x3 else 1
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


@keras.saving.register_keras_serializable(package="vae_kit")
class LatentGroup(layers.Layer):
    """One latent group of the top-down pass (VDVAE's DecBlock), at a resolution of width w:

    prior:     [p_mean, p_raw_std, h_prior] = Block(h)    (last conv zero: p = N(0, I) at start)
    posterior: [q_mean, q_raw_std] = Block(concat(h, bottom-up activation))
    update:    h <- ResBlock(h + h_prior + conv1x1(z))

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
        out = self.prior_block(h)
        c = self.latent_channels
        return out[..., :c], smoothed_log_std(out[..., c:2 * c]), h + ops.cast(out[..., 2 * c:], h.dtype)

    def posterior(self, h, activation):
        out = self.posterior_block(ops.concatenate([h, ops.cast(activation, h.dtype)], axis=-1))
        c = self.latent_channels
        return out[..., :c], smoothed_log_std(out[..., c:])

    def update(self, h, z):
        return self.resnet(h + ops.cast(self.z_proj(z), h.dtype))

    def call(self, h):  # the state update alone, from the prior mean (for Keras' bookkeeping)
        p_mean, _, h = self.prior(h)
        return self.update(h, p_mean)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "middle_width": self.middle_width,
                "latent_channels": self.latent_channels, "use_3x3": self.use_3x3,
                "depth_scale": self.depth_scale}


@keras.saving.register_keras_serializable(package="vae_kit")
class VariableReadout(keras.metrics.Metric):
    """A metric that reports a variable kept elsewhere (a running count) and is never reset."""

    def __init__(self, variable=None, **kwargs):
        super().__init__(**kwargs)
        self._variable = variable

    def update_state(self, *args, **kwargs):
        pass

    def reset_state(self):
        pass

    def result(self):
        return ops.convert_to_tensor(self._variable) if self._variable is not None else ops.zeros(())


# --- the model ------------------------------------------------------------------------------------

# Which z a top-down pass uses per group.
POSTERIOR, POSTERIOR_MEAN, PRIOR, GIVEN = "posterior", "posterior_mean", "prior", "given"


@keras.saving.register_keras_serializable(package="vae_kit")
class HierarchicalVAE(common.OptimizerBuiltBeforeTracing, keras.Model):
    """A VDVAE-style hierarchical VAE trained on reconstruction + beta * sum of the groups' KLs.

    Arguments are those of build_hierarchical_vae. Attributes shared with common.VAE: likelihood,
    dataset, mixture_components, gaussian_sigma, image_shape, beta (a non-trainable weight),
    mean_image(outputs), reconstruction_nll(x, outputs, training), gaussian_log_sigma(...).
    """

    def __init__(self, image_shape, widths, blocks_per_resolution, latent_channels, latent_resolutions,
                 likelihood="discretized-logistic-mixture", mixture_components=5, gaussian_sigma="optimal",
                 beta=1.0, dataset=None, seed=None, bottleneck_ratio=0.25, decoder_blocks_per_resolution=None,
                 grad_clip=None, skip_threshold=None, **kwargs):
        super().__init__(**kwargs)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
        if gaussian_sigma not in GAUSSIAN_SIGMA_MODES:
            raise ValueError(f"gaussian_sigma must be one of {GAUSSIAN_SIGMA_MODES}, not {gaussian_sigma!r}")
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
            raise ValueError(f"image_shape must be (side, side, channels), not {image_shape}")
        self._image_shape = image_shape
        self.chain = resolution_chain(image_shape[0])
        self.likelihood, self.dataset, self.gaussian_sigma = likelihood, dataset, gaussian_sigma
        self.mixture_components = int(mixture_components)
        out_channels = decoder_output_channels(likelihood, image_shape[-1], self.mixture_components)
        self.seed, self.bottleneck_ratio = seed, float(bottleneck_ratio)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.skip_threshold = None if skip_threshold is None else float(skip_threshold)
        self.widths = _per_resolution(widths, self.chain, "widths")
        self.encoder_blocks = _per_resolution(blocks_per_resolution, self.chain, "blocks_per_resolution")
        self.latent_channels = int(latent_channels)
        resolutions = [int(r) for r in (latent_resolutions if isinstance(latent_resolutions, (list, tuple))
                                        else [latent_resolutions])]
        if not resolutions or any(r not in self.chain for r in resolutions):
            raise ValueError(f"latent_resolutions {resolutions} must be non-empty and in the chain {self.chain}")
        # Top-down order: coarse to fine; repeated resolutions are several groups there.
        self.group_resolutions = sorted(resolutions)
        groups_at = {r: self.group_resolutions.count(r) for r in self.chain}
        if decoder_blocks_per_resolution is None:  # plain blocks only where no group updates h
            self.decoder_blocks = {r: (self.encoder_blocks[r] if groups_at[r] == 0 else 0) for r in self.chain}
        else:
            self.decoder_blocks = _per_resolution(decoder_blocks_per_resolution, self.chain,
                                                  "decoder_blocks_per_resolution")
        self._config = dict(image_shape=list(image_shape), widths=widths, blocks_per_resolution=blocks_per_resolution,
                            latent_channels=self.latent_channels, latent_resolutions=list(self.group_resolutions),
                            likelihood=likelihood, mixture_components=self.mixture_components,
                            gaussian_sigma=gaussian_sigma, dataset=dataset, seed=seed,
                            bottleneck_ratio=self.bottleneck_ratio,
                            decoder_blocks_per_resolution=decoder_blocks_per_resolution,
                            grad_clip=self.grad_clip, skip_threshold=self.skip_threshold)
        if isinstance(widths, dict) or isinstance(blocks_per_resolution, dict):
            self._config.update(widths=_json_keys(widths), blocks_per_resolution=_json_keys(blocks_per_resolution))
        if isinstance(decoder_blocks_per_resolution, dict):
            self._config["decoder_blocks_per_resolution"] = _json_keys(decoder_blocks_per_resolution)

        def middle(r):
            return max(1, int(round(self.widths[r] * self.bottleneck_ratio)))

        # Residual branches start scaled by 1/sqrt(residual blocks in that pass) (VDVAE).
        enc_scale = 1.0 / math.sqrt(max(1, sum(self.encoder_blocks.values())))
        dec_total = len(self.group_resolutions) + sum(self.decoder_blocks.values())
        dec_scale = 1.0 / math.sqrt(max(1, dec_total))
        channels = image_shape[-1]

        # Bottom-up: stem 3x3 conv, residual blocks per resolution, average pooling between them
        # (VDVAE); a 1x1 conv where the width changes (VDVAE pads with zeros instead).
        self.stem = layers.Conv2D(self.widths[self.chain[0]], 3, padding="same", name="stem")
        self.stem.build((None, *image_shape))
        self.encoder_stages = {}
        self.encoder_projections = {}
        previous = None
        for r in self.chain:
            w = self.widths[r]
            if previous is not None and self.widths[previous] != w:
                proj = layers.Conv2D(w, 1, name=f"enc_proj_{r}")
                proj.build((None, r, r, self.widths[previous]))
                self.encoder_projections[str(r)] = proj
            blocks = []
            for b in range(self.encoder_blocks[r]):
                block = BottleneckBlock(middle(r), w, residual=True, use_3x3=r > 2, last_init=enc_scale,
                                        name=f"enc_{r}_{b}")
                block.build((None, r, r, w))
                blocks.append(block)
            self.encoder_stages[str(r)] = blocks
            previous = r

        # Top-down: a learned bias per resolution (zeros at start) plus the upsampled coarser state
        # (VDVAE's bias_xs and "mixin"); the latent groups; optional plain blocks.
        self.top_down_biases = {}
        self.decoder_projections = {}
        self.latent_groups = []
        self.decoder_stages = {}
        previous = None
        for r in reversed(self.chain):
            w = self.widths[r]
            self.top_down_biases[str(r)] = self.add_weight(name=f"top_down_bias_{r}", shape=(r, r, w),
                                                           initializer="zeros")
            if previous is not None and self.widths[previous] != w:
                proj = layers.Conv2D(w, 1, name=f"dec_proj_{r}")
                proj.build((None, r, r, self.widths[previous]))
                self.decoder_projections[str(r)] = proj
            for _ in range(groups_at[r]):
                group = LatentGroup(w, middle(r), self.latent_channels, use_3x3=r > 2, depth_scale=dec_scale,
                                    name=f"group_{len(self.latent_groups)}_res{r}")
                group.build((None, r, r, w))
                self.latent_groups.append(group)
            blocks = []
            for b in range(self.decoder_blocks[r]):
                block = BottleneckBlock(middle(r), w, residual=True, use_3x3=r > 2, last_init=dec_scale,
                                        name=f"dec_{r}_{b}")
                block.build((None, r, r, w))
                blocks.append(block)
            self.decoder_stages[str(r)] = blocks
            previous = r
        # Output: per-channel gain and bias, then a 1x1 conv to the likelihood's parameters in
        # float32 (VDVAE's final_fn and DmolNet).
        top = self.widths[self.chain[0]]
        self.out_gain = self.add_weight(name="out_gain", shape=(top,), initializer="ones")
        self.out_bias = self.add_weight(name="out_bias", shape=(top,), initializer="zeros")
        self.out_conv = layers.Conv2D(out_channels, 1, name="outputs", dtype="float32")
        self.out_conv.build((None, *image_shape[:2], top))

        self.seed_generator = keras.random.SeedGenerator(seed)
        # Validation's posterior noise: its own generator, back at its start for every evaluate()
        # (reset_metrics), so each validation pass sees the same noise and leaves training's alone.
        self.validation_seed_generator = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self._validation_seed_start = ops.convert_to_numpy(self.validation_seed_generator.state)
        # A variable, not a float: KL warm-up changes it without retracing (as common.VAE).
        self.beta = self.add_weight(name="beta", shape=(), trainable=False,
                                    initializer=keras.initializers.Constant(beta))
        # Updates skipped for a non-finite or too large gradient norm, since the model was made.
        self.skipped_updates = self.add_weight(name="skipped_updates", shape=(), dtype="float32",
                                               trainable=False, aggregation="only_first_replica",
                                               initializer="zeros", autocast=False)
        # The last step's global gradient norm (before clipping), for callbacks choosing thresholds.
        self.gradient_norm = self.add_weight(name="gradient_norm", shape=(), dtype="float32",
                                             trainable=False, aggregation="only_first_replica",
                                             initializer="zeros", autocast=False)
        if likelihood == "gaussian":
            self._add_gaussian_sigma_weights()
        names = (["loss", "reconstruction_loss", "kl_loss"]
                 + [f"kl_group_{i}" for i in range(len(self.group_resolutions))])
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        # A metric, so that Keras' epoch logs (which come from the metrics when the step's keys
        # match them) carry the running count.
        self.trackers["skipped_updates"] = VariableReadout(self.skipped_updates, name="skipped_updates")
        self.built = True

    # --- shapes and shared attributes ------------------------------------------------------------
    @property
    def image_shape(self):
        return self._image_shape

    @property
    def latent_shapes(self):
        """(h, w, c) of every latent group, in top-down order (coarse to fine)."""
        return [(r, r, self.latent_channels) for r in self.group_resolutions]

    @property
    def latent_dim(self):
        """Latent variables in all groups together."""
        return int(sum(np.prod(s) for s in self.latent_shapes))

    @property
    def metrics(self):
        return list(self.trackers.values())

    # The likelihood, its mean image and the Gaussian's sigma are common.VAE's own methods: they
    # only use likelihood, gaussian_sigma, mixture_components, image_shape and the sigma weights.
    mean_image = common.VAE.mean_image
    reconstruction_nll = common.VAE.reconstruction_nll
    gaussian_log_sigma = common.VAE.gaussian_log_sigma
    _add_gaussian_sigma_weights = common.VAE._add_gaussian_sigma_weights

    # --- the two passes ---------------------------------------------------------------------------
    def bottom_up(self, x):
        """{resolution: activation} of the encoder (VDVAE keeps the last one at each resolution)."""
        h = self.stem(ops.cast(x, self.compute_dtype) * 2.0 - 1.0)  # inputs on [-1, 1]
        activations = {}
        previous = None
        for r in self.chain:
            if previous is not None:
                factor = previous // r
                h = ops.average_pool(h, factor, strides=factor, padding="valid")
                if str(r) in self.encoder_projections:
                    h = self.encoder_projections[str(r)](h)
            for block in self.encoder_stages[str(r)]:
                h = block(h)
            activations[r] = h
            previous = r
        return activations

    def top_down(self, batch, mode, activations=None, noise=None, latents=None, temperature=1.0,
                 training=False):
        """Decoder outputs (float32) and per group a dict of z, p_mean, p_log_std (and q_mean,
        q_log_std when the posterior is used).

        mode: POSTERIOR (z = q_mean + q_std * noise; noise None draws it from the model's seed
        generator), POSTERIOR_MEAN (z = q_mean), PRIOR (z = p_mean + temperature * p_std * noise,
        VDVAE's temperature; temperature a float or one per group), GIVEN (z = latents[i]).
        """
        stats = []
        h, previous, index = None, None, 0
        temperatures = (list(temperature) if isinstance(temperature, (list, tuple))
                        else [temperature] * len(self.group_resolutions))
        for r in reversed(self.chain):
            bias = ops.cast(self.top_down_biases[str(r)], self.compute_dtype)
            base = ops.broadcast_to(bias[None], (batch, r, r, self.widths[r]))
            if h is None:
                h = base
            else:  # nearest-neighbour upsampling (VDVAE's F.interpolate)
                factor = r // previous
                h = ops.repeat(ops.repeat(h, factor, axis=1), factor, axis=2)
                if str(r) in self.decoder_projections:
                    h = self.decoder_projections[str(r)](h)
                h = h + base
            for _ in range(self.group_resolutions.count(r)):
                group = self.latent_groups[index]
                p_mean, p_log_std, h_prior = group.prior(h)
                stat = {"p_mean": p_mean, "p_log_std": p_log_std}
                if mode in (POSTERIOR, POSTERIOR_MEAN):
                    # q(z_i | z_<i, x) sees the top-down state and the bottom-up features: the
                    # bidirectional inference of IAF-VAE, NVAE and VDVAE (h before the prior's part).
                    q_mean, q_log_std = group.posterior(h, activations[r])
                    stat.update(q_mean=q_mean, q_log_std=q_log_std)
                    if mode == POSTERIOR_MEAN:
                        z = q_mean
                    else:  # the reparameterization trick (Kingma & Welling 2014)
                        eps = self._noise(ops.shape(q_mean)) if noise is None else ops.cast(noise[index], "float32")
                        z = q_mean + ops.exp(q_log_std) * eps
                elif mode == PRIOR:  # the prior's std times a temperature (VDVAE, NVAE)
                    eps = ops.cast(noise[index], "float32")
                    z = p_mean + ops.exp(p_log_std) * ops.cast(temperatures[index], "float32") * eps
                elif mode == GIVEN:
                    z = ops.cast(latents[index], "float32")
                else:
                    raise ValueError(f"unknown mode {mode!r}")
                stat["z"] = z
                stats.append(stat)
                h = group.update(h_prior, z)
                index += 1
            for block in self.decoder_stages[str(r)]:
                h = block(h)
            previous = r
        h = h * ops.cast(self.out_gain, h.dtype) + ops.cast(self.out_bias, h.dtype)
        return self.out_conv(h), stats

    def _noise(self, shape, seed_generator=None):
        """N(0, I) for the posterior samples of this replica's images (training's generator, or the
        one given). Under tf.distribute the noise is drawn for the global batch, the same on every
        replica, and each replica takes its own images' rows: fresh noise per replica, and the
        same noise per image as on one device."""
        seed_generator = seed_generator or self.seed_generator
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return keras.random.normal(shape, dtype="float32", seed=seed_generator)
        sizes = context.all_gather(tf.reshape(tf.cast(shape[0], "int32"), (1,)), axis=0)  # (replicas,)
        start = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
        everyone = keras.random.normal(tf.concat([tf.reduce_sum(sizes)[None], tf.cast(shape[1:], "int32")], 0),
                                       dtype="float32", seed=seed_generator)
        return everyone[start:start + sizes[context.replica_id_in_sync_group]]

    def call(self, x, training=False):
        """Decoder outputs for x with z ~ q(z | x), like common.VAE.call."""
        outputs, _ = self.top_down(ops.shape(x)[0], POSTERIOR, self.bottom_up(x), training=training)
        return outputs

    # --- losses ------------------------------------------------------------------------------------
    @staticmethod
    def group_kls(stats):
        """(B, G): each group's analytic KL(q || p) per image, summed over its elements."""
        return ops.stack([_sum_per_image(gaussian_analytic_kl(s["q_mean"], s["q_log_std"],
                                                              s["p_mean"], s["p_log_std"]))
                          for s in stats], axis=1)

    def per_image_losses_by_group(self, x, training=False, noise=None):
        """Reconstruction NLL (B,) and the groups' KLs (B, G), one z ~ q per image (float32, nats).
        noise: a list with one array per group, or None to draw it from the training generator."""
        outputs, stats = self.top_down(ops.shape(x)[0], POSTERIOR, self.bottom_up(x), noise=noise,
                                       training=training)
        return self.reconstruction_nll(x, outputs, training), self.group_kls(stats)

    def per_image_losses(self, x, training=False):
        """Reconstruction NLL and total KL per image, as common.VAE.per_image_losses."""
        reconstruction, kls = self.per_image_losses_by_group(x, training)
        return reconstruction, ops.sum(kls, axis=1)

    # --- training ------------------------------------------------------------------------------------
    def _update_trackers(self, reconstruction, kls):
        # One value per image, as common.VAE: exact epoch means, also for empty replica shares.
        kl = ops.sum(kls, axis=1)
        values = {"loss": reconstruction + self.beta * kl, "reconstruction_loss": reconstruction, "kl_loss": kl}
        values.update({f"kl_group_{i}": kls[:, i] for i in range(len(self.group_resolutions))})
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            reconstruction, kls = self.per_image_losses_by_group(x, training=True)
            loss = global_batch_mean(reconstruction + self.beta * ops.sum(kls, axis=1))
            scaled_loss = self.optimizer.scale_loss(loss)  # loss scaling under mixed_float16
        gradients = tape.gradient(scaled_loss, self.trainable_weights)
        self.apply_guarded_gradients(gradients)
        return self._update_trackers(reconstruction, kls)

    def test_step(self, data):
        """Validation: the noise of validation_seed_generator, the same in every evaluate()."""
        x = data[0] if isinstance(data, tuple) else data
        noise = [self._noise((ops.shape(x)[0], *shape), self.validation_seed_generator)
                 for shape in self.latent_shapes]
        reconstruction, kls = self.per_image_losses_by_group(x, training=False, noise=noise)
        return self._update_trackers(reconstruction, kls)

    def reset_metrics(self):
        """Keras calls this as every evaluate() and every training epoch begins."""
        super().reset_metrics()
        self.validation_seed_generator.state.assign(self._validation_seed_start)

    def apply_guarded_gradients(self, gradients):
        """VDVAE's update: clip the global gradient norm to grad_clip, and skip the update when the
        norm is non-finite or above skip_threshold. Returns the norm (before clipping).

        Under tf.distribute the gradients are summed over replicas here, so the norm, the clipping
        and the decision are the global batch's, the same on every replica and as on one device.
        """
        weights = self.trainable_weights
        gradients = [ops.zeros_like(w) if g is None else g for g, w in zip(gradients, weights)]
        if not self.optimizer.built:  # outside the cond below, which cannot create variables
            self.optimizer.build(weights)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas > 1:
            gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        scale = ops.cast(self.optimizer.dynamic_scale, "float32") if loss_scaled else 1.0
        norm = tf.linalg.global_norm([ops.cast(g, "float32") for g in gradients]) / scale
        finite = ops.isfinite(norm)
        too_large = ops.logical_and(finite, norm > self.skip_threshold) if self.skip_threshold else False
        # A LossScaleOptimizer skips non-finite steps itself and lowers its scale; pass those on.
        skip = too_large if loss_scaled else ops.logical_or(ops.logical_not(finite), too_large)
        factor = 1.0
        if self.grad_clip:
            factor = ops.where(finite, ops.minimum(1.0, self.grad_clip / ops.maximum(norm, 1e-30)), 1.0)
        # The optimizer sums replicas' gradients again (Keras' TF optimizer), hence / replicas.
        gradients = [g * ops.cast(factor / replicas, g.dtype) for g in gradients]
        self.skipped_updates.assign_add(ops.cast(ops.logical_or(skip, ops.logical_not(finite)), "float32"))
        self.gradient_norm.assign(norm)
        self._apply_unless(skip, gradients, weights, context)
        return norm

    def _apply_unless(self, skip, gradients, weights, context):
        def apply():
            self.optimizer.apply_gradients(zip(gradients, weights))
            return tf.constant(True)

        if isinstance(skip, bool):
            if not skip:
                apply()
            return
        if context is None or tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(skip, lambda: tf.constant(False), apply)
            return

        # The optimizer's apply calls merge_call, which a cond in a replica context may not contain:
        # take the (identical) decision in the cross-replica context, as Keras' LossScaleOptimizer does.
        def cross_replica(distribution, skip, gradients):
            decision = distribution.experimental_local_results(skip)[0]

            def apply_everywhere():
                distribution.extended.call_for_each_replica(
                    lambda g: self.optimizer.apply_gradients(zip(g, weights)), args=(gradients,))
                return tf.constant(True)

            tf.cond(decision, lambda: tf.constant(False), apply_everywhere)

        context.merge_call(cross_replica, args=(skip, gradients))

    # --- evaluation with given noise ---------------------------------------------------------------
    def draw_noise(self, batch, seed=0, samples=None):
        """N(0, I) noise for every group from NumPy: a list of float32 arrays (batch, h, w, c), or
        (samples, batch, h, w, c) when `samples` is given. `seed` may be an int or a Generator."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        lead = (batch,) if samples is None else (samples, batch)
        return [rng.standard_normal((*lead, *shape)).astype(np.float32) for shape in self.latent_shapes]

    def elbo_terms(self, x, noise, per_group=False, batch_size=EVAL_BATCH):
        """Per-image reconstruction NLL and KL (NumPy, nats, with the model's beta left out) for
        z_i = q_mean_i + q_std_i * noise[i], noise[i] shaped (B, h_i, w_i, c). per_group: the KL as
        (B, G), else its sum (B,)."""
        x = np.asarray(x, dtype=np.float32)
        parts = [_elbo_graph(self, x[i:i + batch_size], [n[i:i + batch_size] for n in noise])
                 for i in range(0, len(x), batch_size)]
        reconstruction = np.concatenate([p[0].numpy() for p in parts])
        kls = np.concatenate([p[1].numpy() for p in parts])
        return reconstruction, (kls if per_group else kls.sum(axis=1))

    def log_importance_weights(self, x, noise, decodes_per_call=IWAE_DECODES_PER_CALL):
        """(K, B) log w_k = log p(x | z_k) + sum_i log p(z_ik | z_<i) - sum_i log q(z_ik | z_<i, x),
        z_k drawn from q with noise[i][k] (noise[i] shaped (K, B, h_i, w_i, c); IWAE, eq. 8 with
        the hierarchical prior and posterior). At most `decodes_per_call` decodes per graph call:
        slices along K, so memory does not grow with K and the result does not depend on slicing."""
        x = np.asarray(x, dtype=np.float32)
        k = int(noise[0].shape[0])
        per_call = max(1, decodes_per_call // max(1, len(x)))
        out = []
        for start in range(0, k, per_call):
            out.append(_log_weights_graph(self, x, [n[start:start + per_call] for n in noise]).numpy())
        return np.concatenate(out, axis=0)

    def latent_statistics(self, x, noise):
        """Per group a dict of NumPy arrays z, q_mean, q_log_std, p_mean, p_log_std, with z drawn
        from q with `noise` (for checks and pictures)."""
        _, stats = self.top_down(len(x), POSTERIOR, self.bottom_up(ops.convert_to_tensor(x, "float32")),
                                 noise=[ops.convert_to_tensor(n) for n in noise])
        return [{key: ops.convert_to_numpy(value) for key, value in s.items()} for s in stats]

    # --- pictures ---------------------------------------------------------------------------------
    def sample(self, n, temperature=1.0, seed=0, noise=None, return_noise=False, batch_size=EVAL_BATCH):
        """n mean images (n, H, W, C) in [0, 1] from the prior, every group's prior std scaled by
        `temperature` (a float, or one per group; VDVAE). The noise comes from NumPy with `seed`
        (or is given, as draw_noise returns it), so the same seed decodes the same z's at any
        temperature; return_noise also returns that noise."""
        if noise is None:
            noise = self.draw_noise(n, seed)
        temps = np.asarray(temperature, np.float32)
        if temps.ndim > 1 or temps.size not in (1, len(self.group_resolutions)):
            raise ValueError(f"temperature: one value, or one per group ({len(self.group_resolutions)})")
        temps = np.broadcast_to(temps.reshape(-1), (len(self.group_resolutions),))
        images = np.concatenate([_prior_images_graph(self, [e[i:i + batch_size] for e in noise], temps).numpy()
                                 for i in range(0, n, batch_size)])
        return (images, noise) if return_noise else images

    def reconstruct(self, x, batch_size=EVAL_BATCH):
        """Mean images of p(x | z) with every group at its posterior mean (no noise): for PSNR/SSIM."""
        x = np.asarray(x, dtype=np.float32)
        return np.concatenate([_reconstruction_graph(self, x[i:i + batch_size]).numpy()
                               for i in range(0, len(x), batch_size)])

    def posterior_latents(self, x):
        """Each group's posterior mean along the posterior-mean path (a list of NumPy arrays)."""
        _, stats = self.top_down(len(x), POSTERIOR_MEAN, self.bottom_up(ops.convert_to_tensor(x, "float32")))
        return [ops.convert_to_numpy(s["z"]) for s in stats]

    def decode_latents(self, latents):
        """Decoder outputs (float32) for given z of every group (shapes (B, h_i, w_i, c))."""
        outputs, _ = self.top_down(int(latents[0].shape[0]), GIVEN,
                                   latents=[ops.convert_to_tensor(z, "float32") for z in latents])
        return outputs

    # --- saving -------------------------------------------------------------------------------------
    def get_config(self):
        return {**super().get_config(), **self._config, "beta": float(ops.convert_to_numpy(self.beta))}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("widths", "blocks_per_resolution", "decoder_blocks_per_resolution"):
            if isinstance(config.get(key), dict):
                config[key] = {int(r): v for r, v in config[key].items()}
        return cls(**config)


def _json_keys(value):
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


# Graphs of the evaluation passes; one trace per model and input shape.
@tf.function(reduce_retracing=True, autograph=False)
def _elbo_graph(model, x, noise):
    return model.per_image_losses_by_group(x, training=False, noise=noise)


@tf.function(reduce_retracing=True, autograph=False)
def _log_weights_graph(model, x, noise):
    k, b = tf.shape(noise[0])[0], tf.shape(x)[0]

    def tile(t):  # (B, ...) -> (K*B, ...), k-major like noise reshaped
        t = tf.broadcast_to(t[None], tf.concat([[k], tf.shape(t)], 0))
        return tf.reshape(t, tf.concat([[k * b], tf.shape(t)[2:]], 0))

    activations = {r: tile(a) for r, a in model.bottom_up(x).items()}
    flat_noise = [tf.reshape(n, tf.concat([[k * b], tf.shape(n)[2:]], 0)) for n in noise]
    outputs, stats = model.top_down(k * b, POSTERIOR, activations, noise=flat_noise)
    log_w = -model.reconstruction_nll(tile(x), outputs)
    for s in stats:
        log_w += _sum_per_image(gaussian_log_density(s["z"], s["p_mean"], s["p_log_std"])
                                - gaussian_log_density(s["z"], s["q_mean"], s["q_log_std"]))
    return tf.reshape(log_w, (k, b))


@tf.function(reduce_retracing=True, autograph=False)
def _prior_images_graph(model, noise, temperatures):
    temps = [temperatures[i] for i in range(len(noise))]
    outputs, _ = model.top_down(tf.shape(noise[0])[0], PRIOR, noise=noise, temperature=temps)
    return model.mean_image(outputs)


@tf.function(reduce_retracing=True, autograph=False)
def _reconstruction_graph(model, x):
    outputs, _ = model.top_down(tf.shape(x)[0], POSTERIOR_MEAN, model.bottom_up(x))
    return model.mean_image(outputs)


def build_hierarchical_vae(image_shape, widths, blocks_per_resolution, latent_channels, latent_resolutions,
                           likelihood="discretized-logistic-mixture", mixture_components=5,
                           gaussian_sigma="optimal", beta=1.0, dataset=None, seed=None, bottleneck_ratio=0.25,
                           decoder_blocks_per_resolution=None, grad_clip=None, skip_threshold=None):
    """A built HierarchicalVAE.

    image_shape: (side, side, C); resolutions follow resolution_chain(side) (32, 16, 8, 4, 1 for
    CIFAR-10; 28, 14, 7, 1 for Fashion-MNIST). widths, blocks_per_resolution (encoder residual
    blocks) and decoder_blocks_per_resolution (plain top-down blocks; default: the encoder's count
    at resolutions without latents, none elsewhere): an int, one per resolution of the chain, or
    {resolution: int}. latent_resolutions: the resolution of every latent group (repeat one for
    several groups there), each group latent_channels feature maps. bottleneck_ratio: the blocks'
    middle width over their width (VDVAE 0.25). grad_clip / skip_threshold: the global gradient
    norm (of the per-image loss's batch mean, nats) to clip to / above which to skip the update
    (VDVAE); None turns clipping / skipping of finite norms off (non-finite ones are always skipped).
    vdvae_thresholds(image_shape) gives VDVAE's CIFAR-10 values in these units.
    """
    return HierarchicalVAE(image_shape, widths, blocks_per_resolution, latent_channels, latent_resolutions,
                           likelihood=likelihood, mixture_components=mixture_components,
                           gaussian_sigma=gaussian_sigma, beta=beta, dataset=dataset, seed=seed,
                           bottleneck_ratio=bottleneck_ratio,
                           decoder_blocks_per_resolution=decoder_blocks_per_resolution,
                           grad_clip=grad_clip, skip_threshold=skip_threshold, name="hierarchical_vae")
