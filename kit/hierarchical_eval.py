"""The hierarchical VAE's evaluation on NumPy arrays (kit/hierarchical_vae.py): ELBO terms, IWAE
log importance weights, reconstructions and prior samples, each through a graph below.

Noise is a list with one array per latent group, drawn with NumPy from a seed (draw_noise), so
that callers can reproduce it. Units: nats per image, float32.
"""
import numpy as np
import tensorflow as tf
from keras import ops

from kit.hierarchical_blocks import GIVEN, POSTERIOR, POSTERIOR_MEAN, PRIOR, gaussian_log_density, sum_per_image

# The most decodes (samples x images) one log_importance_weights graph call runs at once.
IWAE_DECODES_PER_CALL = 256
EVAL_BATCH = 256


class Evaluation:
    """HierarchicalVAE's evaluation methods (a base class of it): NumPy in, NumPy out."""

    def draw_noise(self, batch, seed=0, samples=None):
        """N(0, I) noise for every group from NumPy: a list of float32 arrays (batch, h, w, c), or
        (samples, batch, h, w, c) when `samples` is given. `seed` may be an int or a Generator."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        lead = (batch,) if samples is None else (samples, batch)
        return [rng.standard_normal((*lead, *shape)).astype(np.float32) for shape in self.latent_shapes]

    def elbo_terms(self, x, noise, per_group=False, batch_size=EVAL_BATCH):
        """Per-image reconstruction NLL and KL (nats, beta left out), z_i = q_mean_i + q_std_i * noise[i];
        the KL per group (B, G) when per_group, else summed (B,)."""
        x = np.asarray(x, dtype=np.float32)
        parts = [_elbo_terms_graph(self, x[i:i + batch_size], [n[i:i + batch_size] for n in noise])
                 for i in range(0, len(x), batch_size)]
        reconstruction = np.concatenate([p[0].numpy() for p in parts])
        kls = np.concatenate([p[1].numpy() for p in parts])
        return reconstruction, (kls if per_group else kls.sum(axis=1))

    def log_importance_weights(self, x, noise, decodes_per_call=IWAE_DECODES_PER_CALL):
        """(K, B) log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x), z_k drawn from q with noise[i][k]
        (noise[i] shaped (K, B, h_i, w_i, c); IWAE, eq. 8 with the hierarchical prior and posterior)."""
        x = np.asarray(x, dtype=np.float32)
        k = int(noise[0].shape[0])
        # Slices along K of at most decodes_per_call decodes: memory does not grow with K, and the
        # result does not depend on the slicing.
        per_call = max(1, decodes_per_call // max(1, len(x)))
        out = []
        for start in range(0, k, per_call):
            out.append(_log_weights_graph(self, x, [n[start:start + per_call] for n in noise]).numpy())
        return np.concatenate(out, axis=0)

    def latent_statistics(self, x, noise):
        """Per group a dict of NumPy arrays z, q_mean, q_log_std, p_mean, p_log_std, z drawn from q with `noise`."""
        _, stats = self.top_down(len(x), POSTERIOR, self.bottom_up(ops.convert_to_tensor(x, "float32")),
                                 noise=[ops.convert_to_tensor(n) for n in noise])
        return [{key: ops.convert_to_numpy(value) for key, value in s.items()} for s in stats]

    def sample(self, n, temperature=1.0, seed=0, noise=None, return_noise=False, batch_size=EVAL_BATCH):
        """n mean images (n, H, W, C) in [0, 1] from the prior, each group's prior std times `temperature`
        (one, or one per group; VDVAE); with return_noise also the noise (draw_noise's, from `seed`)."""
        # Noise from NumPy with `seed` (or given): the same seed decodes the same z's at any temperature.
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


# Graphs of the evaluation passes; one trace per model and input shape.
@tf.function(reduce_retracing=True, autograph=False)
def _elbo_terms_graph(model, x, noise):
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
        log_w += sum_per_image(gaussian_log_density(s["z"], s["p_mean"], s["p_log_std"])
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
