"""A hierarchical VAE in the style of VDVAE: a bottom-up encoder, a top-down decoder with groups
of latent feature maps at several resolutions, and the kit's likelihoods (kit/likelihoods.py).

Laid out as VDVAE's vae.py: the blocks (kit/hierarchical_blocks.py), the Encoder, the Decoder with
its latent groups, VDVAE's guarded update, and the model that joins them with the training step;
the evaluation passes beside it (kit/hierarchical_eval.py). Encoder, Decoder, GuardedUpdate and
Evaluation are base classes of the one Keras model, not layers of their own: their layers and
weights are the model's attributes, under the names and in the order of the first saved models,
so those files load and a seed makes the same weights.

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

Units: nats per image, float32, as in common.VAE.
"""
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

import common
# Re-exported: the kit and its tests import these from here.
from kit.hierarchical_blocks import (GIVEN, LN2, POSTERIOR, POSTERIOR_MEAN, PRIOR,  # noqa: F401
                                     BottleneckBlock, LatentGroup, gaussian_analytic_kl, gaussian_log_density,
                                     log_softplus, smoothed_log_std, sum_per_image)
from kit.hierarchical_eval import EVAL_BATCH, IWAE_DECODES_PER_CALL, Evaluation  # noqa: F401
from kit.likelihoods import global_batch_mean
from kit.model_options import GAUSSIAN_SIGMA_MODES, LIKELIHOODS, NORM_LEVEL_RATE, decoder_output_channels
# The resolutions and VDVAE's thresholds are TensorFlow-free, so that the options can check them.
from kit.model_options import (VDVAE_GRAD_CLIP_PER_DIM, VDVAE_SKIP_THRESHOLD_PER_DIM,  # noqa: F401
                               resolution_chain, vdvae_thresholds)


def _ints_by_resolution(value, chain, name):
    """{resolution: int} from an int for every resolution, a sequence aligned with `chain`, or a dict."""
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


def _with_string_keys(value):
    """A dict with its keys as strings (JSON's), anything else as it is."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


def _residual_blocks(widths, middle_widths, count, r, scale, prefix):
    """`count` built residual BottleneckBlocks at resolution r, named prefix_r_b."""
    blocks = []
    for b in range(count):
        block = BottleneckBlock(middle_widths[r], widths[r], residual=True, use_3x3=r > 2, last_init=scale,
                                name=f"{prefix}_{r}_{b}")
        block.build((None, r, r, widths[r]))
        blocks.append(block)
    return blocks


def _width_projection(widths, previous, r, prefix):
    """A built 1x1 conv from the width at `previous` to the one at r, or None where they are equal."""
    if previous is None or widths[previous] == widths[r]:
        return None
    proj = layers.Conv2D(widths[r], 1, name=f"{prefix}_proj_{r}")
    proj.build((None, r, r, widths[previous]))
    return proj


# --- the encoder ----------------------------------------------------------------------------------

class Encoder:
    """The bottom-up pass (VDVAE's Encoder), a base class of HierarchicalVAE."""

    def _make_encoder_layers(self):
        """Makes and builds the stem, the width projections and the residual blocks."""
        # Residual branches start scaled by 1/sqrt(residual blocks in the pass) (VDVAE).
        scale = 1.0 / math.sqrt(max(1, sum(self.encoder_blocks.values())))
        # A stem 3x3 conv, residual blocks per resolution, average pooling between them (VDVAE); a
        # 1x1 conv where the width changes (VDVAE pads with zeros instead).
        self.stem = layers.Conv2D(self.widths[self.chain[0]], 3, padding="same", name="stem")
        self.stem.build((None, *self.image_shape))
        self.encoder_stages = {}
        self.encoder_projections = {}
        previous = None
        for r in self.chain:
            proj = _width_projection(self.widths, previous, r, "enc")
            if proj is not None:
                self.encoder_projections[str(r)] = proj
            self.encoder_stages[str(r)] = _residual_blocks(self.widths, self.middle_widths, self.encoder_blocks[r],
                                                           r, scale, "enc")
            previous = r

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


# --- the decoder ----------------------------------------------------------------------------------

class Decoder:
    """The top-down pass with the latent groups (VDVAE's Decoder), a base class of HierarchicalVAE."""

    def _make_decoder_layers(self, out_channels):
        """Makes and builds the biases, projections, latent groups, plain blocks and output layer."""
        scale = 1.0 / math.sqrt(max(1, len(self.group_resolutions) + sum(self.decoder_blocks.values())))
        # A learned bias per resolution (zeros at start) plus the upsampled coarser state (VDVAE's
        # bias_xs and "mixin"); the latent groups; optional plain blocks.
        self.top_down_biases = {}
        self.decoder_projections = {}
        self.latent_groups = []
        self.decoder_stages = {}
        previous = None
        for r in reversed(self.chain):
            w = self.widths[r]
            self.top_down_biases[str(r)] = self.add_weight(name=f"top_down_bias_{r}", shape=(r, r, w),
                                                           initializer="zeros")
            proj = _width_projection(self.widths, previous, r, "dec")
            if proj is not None:
                self.decoder_projections[str(r)] = proj
            for _ in range(self.group_resolutions.count(r)):
                group = LatentGroup(w, self.middle_widths[r], self.latent_channels, use_3x3=r > 2,
                                    depth_scale=scale, name=f"group_{len(self.latent_groups)}_res{r}")
                group.build((None, r, r, w))
                self.latent_groups.append(group)
            self.decoder_stages[str(r)] = _residual_blocks(self.widths, self.middle_widths, self.decoder_blocks[r],
                                                           r, scale, "dec")
            previous = r
        # Output: per-channel gain and bias, then a 1x1 conv to the likelihood's parameters in
        # float32 (VDVAE's final_fn and DmolNet).
        top = self.widths[self.chain[0]]
        self.out_gain = self.add_weight(name="out_gain", shape=(top,), initializer="ones")
        self.out_bias = self.add_weight(name="out_bias", shape=(top,), initializer="zeros")
        self.out_conv = layers.Conv2D(out_channels, 1, name="outputs", dtype="float32")
        self.out_conv.build((None, *self.image_shape[:2], top))

    def top_down(self, batch, mode, activations=None, noise=None, latents=None, temperature=1.0,
                 training=False):
        """Decoder outputs (float32) and per group a dict of z, p_mean, p_log_std (and q_mean,
        q_log_std when the posterior is used); mode as in _z_and_statistics."""
        stats = []
        h, previous = None, None
        temperatures = (list(temperature) if isinstance(temperature, (list, tuple))
                        else [temperature] * len(self.group_resolutions))
        for r in reversed(self.chain):
            h = self._state_entering(r, h, previous, batch)
            for _ in range(self.group_resolutions.count(r)):
                i = len(stats)
                z, stat, h_prior = self._z_and_statistics(
                    self.latent_groups[i], h, mode, activations[r] if mode in (POSTERIOR, POSTERIOR_MEAN) else None,
                    None if noise is None else noise[i], None if latents is None else latents[i], temperatures[i])
                stats.append(stat)
                h = self.latent_groups[i].update(h_prior, z)
            for block in self.decoder_stages[str(r)]:
                h = block(h)
            previous = r
        h = h * ops.cast(self.out_gain, h.dtype) + ops.cast(self.out_bias, h.dtype)
        return self.out_conv(h), stats

    def _state_entering(self, r, h, previous, batch):
        """The top-down state at resolution r: its bias plus the coarser state h, upsampled."""
        bias = ops.cast(self.top_down_biases[str(r)], self.compute_dtype)
        base = ops.broadcast_to(bias[None], (batch, r, r, self.widths[r]))
        if h is None:
            return base
        factor = r // previous  # nearest-neighbour upsampling (VDVAE's F.interpolate)
        h = ops.repeat(ops.repeat(h, factor, axis=1), factor, axis=2)
        if str(r) in self.decoder_projections:
            h = self.decoder_projections[str(r)](h)
        return h + base

    def _z_and_statistics(self, group, h, mode, activation, noise, latent, temperature):
        """(z, its statistics, h with the prior's part) of one group. mode: POSTERIOR (z = q_mean + q_std *
        noise, noise None: from the seed generator), POSTERIOR_MEAN, PRIOR (p_std times temperature), GIVEN."""
        p_mean, p_log_std, h_prior = group.prior(h)
        stat = {"p_mean": p_mean, "p_log_std": p_log_std}
        if mode in (POSTERIOR, POSTERIOR_MEAN):
            # q(z_i | z_<i, x) sees the top-down state and the bottom-up features: the
            # bidirectional inference of IAF-VAE, NVAE and VDVAE (h before the prior's part).
            q_mean, q_log_std = group.posterior(h, activation)
            stat.update(q_mean=q_mean, q_log_std=q_log_std)
            if mode == POSTERIOR_MEAN:
                z = q_mean
            else:  # the reparameterization trick (Kingma & Welling 2014)
                eps = self._noise(ops.shape(q_mean)) if noise is None else ops.cast(noise, "float32")
                z = q_mean + ops.exp(q_log_std) * eps
        elif mode == PRIOR:  # the prior's std times a temperature (VDVAE, NVAE)
            eps = ops.cast(noise, "float32")
            z = p_mean + ops.exp(p_log_std) * ops.cast(temperature, "float32") * eps
        elif mode == GIVEN:
            z = ops.cast(latent, "float32")
        else:
            raise ValueError(f"unknown mode {mode!r}")
        stat["z"] = z
        return z, stat, h_prior

    def _noise(self, shape, seed_generator=None):
        """N(0, I) for this replica's images, from training's seed generator or the one given."""
        # Under tf.distribute the noise is drawn for the global batch, the same on every replica, and
        # each replica takes its own images' rows: fresh noise per replica, and the same noise per
        # image as on one device.
        seed_generator = seed_generator or self.seed_generator
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return keras.random.normal(shape, dtype="float32", seed=seed_generator)
        sizes = context.all_gather(tf.reshape(tf.cast(shape[0], "int32"), (1,)), axis=0)  # (replicas,)
        start = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
        everyone = keras.random.normal(tf.concat([tf.reduce_sum(sizes)[None], tf.cast(shape[1:], "int32")], 0),
                                       dtype="float32", seed=seed_generator)
        return everyone[start:start + sizes[context.replica_id_in_sync_group]]


# --- VDVAE's update ---------------------------------------------------------------------------------

class GuardedUpdate:
    """VDVAE's guarded update (its train.py), a base class of HierarchicalVAE."""

    def apply_guarded_gradients(self, gradients):
        """The global gradient norm (before clipping), after applying the gradients clipped to norm
        grad_clip and to clip_factor times the norm's running level, unless the norm is non-finite or
        above skip_threshold or skip_factor times that level (VDVAE's update, relative thresholds)."""
        # Under tf.distribute the gradients are summed over replicas here, so the norm, the clipping
        # and the decision are the global batch's, the same on every replica and as on one device.
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
        clip, skip_above = self._thresholds()
        too_large = ops.logical_and(finite, norm > skip_above) if skip_above is not None else False
        # A LossScaleOptimizer skips non-finite steps itself and lowers its scale; pass those on.
        skip = too_large if loss_scaled else ops.logical_or(ops.logical_not(finite), too_large)
        factor = 1.0
        if clip is not None:
            factor = ops.where(finite, ops.minimum(1.0, clip / ops.maximum(norm, 1e-30)), 1.0)
        self._follow_norm_level(norm, finite, skip_above)
        # The optimizer sums replicas' gradients again (Keras' TF optimizer), hence / replicas.
        gradients = [g * ops.cast(factor / replicas, g.dtype) for g in gradients]
        self.skipped_updates.assign_add(ops.cast(ops.logical_or(skip, ops.logical_not(finite)), "float32"))
        self.gradient_norm.assign(norm)
        self._apply_unless(skip, gradients, weights, context)
        return norm

    def _thresholds(self):
        """(clip, skip) norms for this update, None where off: the fixed ones (grad_clip,
        skip_threshold), or the relative ones times the running level where lower; the relative ones
        act from the second update on, once the level has a value."""
        level = ops.convert_to_tensor(self.gradient_norm_level)
        unset = ops.cast(3.0e38, "float32")  # before the first update: no relative threshold

        def threshold(fixed, relative):
            if not relative:
                return None if not fixed else ops.convert_to_tensor(fixed, "float32")
            value = ops.where(level > 0, relative * level, unset)
            return ops.minimum(value, fixed) if fixed else value

        return threshold(self.grad_clip, self.clip_factor), threshold(self.skip_threshold, self.skip_factor)

    def _follow_norm_level(self, norm, finite, skip_above):
        """The running level of the gradient norm (NORM_LEVEL_RATE): the first finite norm, then an
        EMA of the finite norms, each counted at most at the skip threshold. So a spike moves it little,
        and a norm that keeps growing raises the thresholds with it: updates are never all skipped."""
        level = ops.convert_to_tensor(self.gradient_norm_level)
        counted = norm if skip_above is None else ops.minimum(norm, skip_above)
        followed = ops.where(level > 0, NORM_LEVEL_RATE * level + (1.0 - NORM_LEVEL_RATE) * counted, norm)
        self.gradient_norm_level.assign(ops.where(finite, followed, level))

    def _apply_unless(self, skip, gradients, weights, context):
        """Applies the gradients unless `skip` (a bool or a boolean tensor)."""
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

@keras.saving.register_keras_serializable(package="vae_kit")
class HierarchicalVAE(Encoder, Decoder, GuardedUpdate, Evaluation, common.OptimizerBuiltBeforeTracing,
                      keras.Model):
    """A VDVAE-style hierarchical VAE trained on reconstruction + beta * the groups' KLs (arguments:
    build_hierarchical_vae's), with common.VAE's likelihood attributes, beta and mean_image."""

    def __init__(self, image_shape, widths, blocks_per_resolution, latent_channels, latent_resolutions,
                 likelihood="discretized-logistic-mixture", mixture_components=5, gaussian_sigma="optimal",
                 beta=1.0, dataset=None, seed=None, bottleneck_ratio=0.25, decoder_blocks_per_resolution=None,
                 grad_clip=None, skip_threshold=None, clip_factor=None, skip_factor=None, **kwargs):
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
        self.seed, self.bottleneck_ratio = seed, float(bottleneck_ratio)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.skip_threshold = None if skip_threshold is None else float(skip_threshold)
        self.clip_factor = None if clip_factor is None else float(clip_factor)
        self.skip_factor = None if skip_factor is None else float(skip_factor)
        self.widths = _ints_by_resolution(widths, self.chain, "widths")
        self.middle_widths = {r: max(1, int(round(w * self.bottleneck_ratio))) for r, w in self.widths.items()}
        self.encoder_blocks = _ints_by_resolution(blocks_per_resolution, self.chain, "blocks_per_resolution")
        self.latent_channels = int(latent_channels)
        resolutions = [int(r) for r in (latent_resolutions if isinstance(latent_resolutions, (list, tuple))
                                        else [latent_resolutions])]
        if not resolutions or any(r not in self.chain for r in resolutions):
            raise ValueError(f"latent_resolutions {resolutions} must be non-empty and in the chain {self.chain}")
        # Top-down order: coarse to fine; repeated resolutions are several groups there.
        self.group_resolutions = sorted(resolutions)
        if decoder_blocks_per_resolution is None:  # plain blocks only where no group updates h
            self.decoder_blocks = {r: (self.encoder_blocks[r] if r not in self.group_resolutions else 0)
                                   for r in self.chain}
        else:
            self.decoder_blocks = _ints_by_resolution(decoder_blocks_per_resolution, self.chain,
                                                      "decoder_blocks_per_resolution")
        self._config = dict(image_shape=list(image_shape), widths=_with_string_keys(widths),
                            blocks_per_resolution=_with_string_keys(blocks_per_resolution),
                            latent_channels=self.latent_channels, latent_resolutions=list(self.group_resolutions),
                            likelihood=likelihood, mixture_components=self.mixture_components,
                            gaussian_sigma=gaussian_sigma, dataset=dataset, seed=seed,
                            bottleneck_ratio=self.bottleneck_ratio,
                            decoder_blocks_per_resolution=_with_string_keys(decoder_blocks_per_resolution),
                            grad_clip=self.grad_clip, skip_threshold=self.skip_threshold,
                            clip_factor=self.clip_factor, skip_factor=self.skip_factor)
        self._make_encoder_layers()
        self._make_decoder_layers(decoder_output_channels(likelihood, image_shape[-1], self.mixture_components))
        self._make_model_state(beta, seed)
        self.built = True

    def _make_model_state(self, beta, seed):
        """Makes the seed generators, beta, the update counters, the Gaussian's sigma and the trackers."""
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
        if self.likelihood == "gaussian":
            self._add_gaussian_sigma_weights()
        # The running level of the gradient norm, to which clip_factor and skip_factor are relative
        # (0 until the first update). Made last: a model saved before it existed loads without it.
        self.gradient_norm_level = self.add_weight(name="gradient_norm_level", shape=(), dtype="float32",
                                                   trainable=False, aggregation="only_first_replica",
                                                   initializer="zeros", autocast=False)
        names = (["loss", "reconstruction_loss", "kl_loss"]
                 + [f"kl_group_{i}" for i in range(len(self.group_resolutions))])
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        # A metric, so that Keras' epoch logs (which come from the metrics when the step's keys
        # match them) carry the running count.
        self.trackers["skipped_updates"] = VariableReadout(self.skipped_updates, name="skipped_updates")

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

    def call(self, x, training=False):
        """Decoder outputs for x with z ~ q(z | x), like common.VAE.call."""
        outputs, _ = self.top_down(ops.shape(x)[0], POSTERIOR, self.bottom_up(x), training=training)
        return outputs

    # --- losses ------------------------------------------------------------------------------------
    @staticmethod
    def group_kls(stats):
        """(B, G): each group's analytic KL(q || p) per image, summed over its elements."""
        return ops.stack([sum_per_image(gaussian_analytic_kl(s["q_mean"], s["q_log_std"],
                                                             s["p_mean"], s["p_log_std"]))
                          for s in stats], axis=1)

    def per_image_losses_by_group(self, x, training=False, noise=None):
        """Reconstruction NLL (B,) and the groups' KLs (B, G), one z ~ q per image (float32, nats);
        noise: one array per group, or None to draw it from the training generator."""
        outputs, stats = self.top_down(ops.shape(x)[0], POSTERIOR, self.bottom_up(x), noise=noise,
                                       training=training)
        return self.reconstruction_nll(x, outputs, training), self.group_kls(stats)

    def per_image_losses(self, x, training=False):
        """Reconstruction NLL and total KL per image, as common.VAE.per_image_losses."""
        reconstruction, kls = self.per_image_losses_by_group(x, training)
        return reconstruction, ops.sum(kls, axis=1)

    # --- training ------------------------------------------------------------------------------------
    def _updated_logs(self, reconstruction, kls):
        """The trackers' results after adding this batch's per-image losses."""
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
        return self._updated_logs(reconstruction, kls)

    def test_step(self, data):
        """Validation: the noise of validation_seed_generator, the same in every evaluate()."""
        x = data[0] if isinstance(data, tuple) else data
        noise = [self._noise((ops.shape(x)[0], *shape), self.validation_seed_generator)
                 for shape in self.latent_shapes]
        reconstruction, kls = self.per_image_losses_by_group(x, training=False, noise=noise)
        return self._updated_logs(reconstruction, kls)

    def reset_metrics(self):
        """Keras calls this as every evaluate() and every training epoch begins."""
        super().reset_metrics()
        self.validation_seed_generator.state.assign(self._validation_seed_start)

    # --- saving -------------------------------------------------------------------------------------
    def load_own_variables(self, store):
        """Keras' loading; a model saved before gradient_norm_level existed (2026-12-03) lacks only
        that, the last of its variables: it starts at 0, as in a new model."""
        if len(store.keys()) == len(self.weights_owned()) - 1:
            store = {**{key: store[key] for key in store.keys()},
                     str(len(self.weights_owned()) - 1): np.zeros((), "float32")}
        super().load_own_variables(store)

    def weights_owned(self):
        """The variables the model itself holds (not its layers'), in Keras' saving order."""
        return self._trainable_variables + self._non_trainable_variables

    def get_config(self):
        return {**super().get_config(), **self._config, "beta": float(ops.convert_to_numpy(self.beta))}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("widths", "blocks_per_resolution", "decoder_blocks_per_resolution"):
            if isinstance(config.get(key), dict):
                config[key] = {int(r): v for r, v in config[key].items()}
        return cls(**config)


# image_shape: (side, side, C); resolutions follow resolution_chain(side) (32, 16, 8, 4, 1 for
# CIFAR-10; 28, 14, 7, 1 for Fashion-MNIST). widths, blocks_per_resolution (encoder residual
# blocks) and decoder_blocks_per_resolution (plain top-down blocks; default: the encoder's count
# at resolutions without latents, none elsewhere): an int, one per resolution of the chain, or
# {resolution: int}. latent_resolutions: the resolution of every latent group (repeat one for
# several groups there), each group latent_channels feature maps. bottleneck_ratio: the blocks'
# middle width over their width (VDVAE 0.25). grad_clip / skip_threshold: the global gradient
# norm (of the per-image loss's batch mean, nats) to clip to / above which to skip the update
# (VDVAE); None turns clipping / skipping of finite norms off (non-finite ones are always skipped).
# vdvae_thresholds(image_shape) gives VDVAE's CIFAR-10 values in these units. clip_factor /
# skip_factor: the same, in multiples of the norm's running level (NORM_LEVEL_RATE); None is off.
def build_hierarchical_vae(image_shape, widths, blocks_per_resolution, latent_channels, latent_resolutions,
                           likelihood="discretized-logistic-mixture", mixture_components=5,
                           gaussian_sigma="optimal", beta=1.0, dataset=None, seed=None, bottleneck_ratio=0.25,
                           decoder_blocks_per_resolution=None, grad_clip=None, skip_threshold=None,
                           clip_factor=None, skip_factor=None):
    """A built HierarchicalVAE (the arguments: the comment above)."""
    return HierarchicalVAE(image_shape, widths, blocks_per_resolution, latent_channels, latent_resolutions,
                           likelihood=likelihood, mixture_components=mixture_components,
                           gaussian_sigma=gaussian_sigma, beta=beta, dataset=dataset, seed=seed,
                           bottleneck_ratio=bottleneck_ratio,
                           decoder_blocks_per_resolution=decoder_blocks_per_resolution,
                           grad_clip=grad_clip, skip_threshold=skip_threshold, clip_factor=clip_factor,
                           skip_factor=skip_factor, name="hierarchical_vae")
