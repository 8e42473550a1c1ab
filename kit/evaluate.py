"""How good is a trained VAE: test −ELBO, importance-weighted NLL, bits/dim and the BCE floor.

All values are nats per image unless the name says bits_per_dim. Noise comes from NumPy with a
fixed seed, so the same model and seed give the same numbers in any run.
"""
import math

import keras
import numpy as np
import tensorflow as tf

from common import gaussian_kl, log_normal, reconstruction_nll, reparameterize

EVAL_BATCH = 1000
IWAE_DECODES_PER_CALL = 4000  # the most decodes (samples x images) of one IWAE call


@tf.function(reduce_retracing=True)
def _elbo_terms(model, x, eps):
    z_mean, z_log_var = model.encode(x)
    logits = model.decode(model.reparameterize(z_mean, z_log_var, eps))
    return reconstruction_nll(x, logits, model.likelihood), gaussian_kl(z_mean, z_log_var)


def elbo_terms(model, x, seed=0, batch_size=EVAL_BATCH):
    """Per-image reconstruction NLL and KL (beta = 1), one z per image drawn with `seed`."""
    eps = np.random.default_rng(seed).standard_normal((len(x), model.latent_dim)).astype(np.float32)
    parts = [_elbo_terms(model, x[i:i + batch_size], eps[i:i + batch_size])
             for i in range(0, len(x), batch_size)]
    return (np.concatenate([p[0].numpy() for p in parts]),
            np.concatenate([p[1].numpy() for p in parts]))


@tf.function(reduce_retracing=True)
def log_importance_weights(model, x, eps):
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k = mean + sigma * eps[k].

    x: (B, H, W, C); eps: (K, B, L). Returns (K, B). Burda et al., "Importance Weighted
    Autoencoders" (ICLR 2016), eq. 8.
    """
    z_mean, z_log_var = model.encode(x)
    z = reparameterize(z_mean[None], z_log_var[None], eps)
    k, b, latent = tf.shape(eps)[0], tf.shape(eps)[1], tf.shape(eps)[2]
    logits = model.decode(tf.reshape(z, (k * b, latent)))
    x_k = tf.reshape(tf.broadcast_to(x[None], tf.concat([[k], tf.shape(x)], 0)), tf.shape(logits))
    log_px = -tf.reshape(reconstruction_nll(x_k, logits, model.likelihood), (k, b))
    log_pz = log_normal(z, 0.0, tf.zeros_like(z))
    log_qz = log_normal(z, z_mean[None], z_log_var[None])
    return log_px + log_pz - log_qz


def iwae_nll(model, x, k, seed=0, progress=False, decodes_per_call=IWAE_DECODES_PER_CALL):
    """Per-image −log p(x) estimate −log (1/K) Σ w_k, computed with log-sum-exp (never exp(log w)).

    At most `decodes_per_call` decodes at once, so memory does not grow with K: images go in
    groups of decodes_per_call // K, and when K alone is larger, one image at a time with its K
    samples in slices whose log-sum-exps are combined by np.logaddexp. Slicing along K draws
    the same noise as one call, so the estimate does not depend on how K is sliced.
    """
    rng = np.random.default_rng(seed)
    per_call = max(1, decodes_per_call // k)
    samples_per_call = max(1, min(k, decodes_per_call))
    bar = keras.utils.Progbar(len(x), unit_name="image") if progress else None
    out = []
    for i in range(0, len(x), per_call):
        chunk = x[i:i + per_call]
        log_sum_w = None  # running log Σ_k w_k over the slices of K seen so far, per image
        for start in range(0, k, samples_per_call):
            # Consecutive draws along the leading axis are one draw of shape (k, ...), sliced.
            eps = rng.standard_normal((min(samples_per_call, k - start), len(chunk), model.latent_dim))
            log_w = log_importance_weights(model, chunk, eps.astype(np.float32))
            part = tf.reduce_logsumexp(log_w, axis=0).numpy()
            log_sum_w = part if log_sum_w is None else np.logaddexp(log_sum_w, part)
        out.append(-(log_sum_w - np.float32(math.log(k))))
        if bar:
            bar.add(len(chunk))
    return np.concatenate(out)


def bce_floor(x):
    """Mean over images of the summed binary entropy of the targets: the least BCE can reach.

    BCE(x, p) = H(x) + KL(Bern(x) || Bern(p)) >= H(x), with 0 log 0 = 0 (so 0 for binary x).
    """
    p = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log1p(-p), 0.0))
    return float(entropy.sum(axis=1).mean())


def bits_per_dim(nats_per_image, dims):
    """nats/image -> bits per dimension: divide by D ln 2."""
    return nats_per_image / (dims * math.log(2.0))


def compute_metrics(model, x_test, iw_samples, iwae_images, seed=0, progress=False):
    """metrics.json's numbers for `model` on the test images (see README, Evaluation)."""
    dims = int(np.prod(x_test.shape[1:]))
    reconstruction, kl = elbo_terms(model, x_test, seed)
    neg_elbo = float(np.mean(reconstruction + kl))
    metrics = {"test_reconstruction": float(np.mean(reconstruction)), "test_kl": float(np.mean(kl)),
               "test_neg_elbo": neg_elbo, "test_images": int(len(x_test)),
               "test_neg_elbo_bits_per_dim": bits_per_dim(neg_elbo, dims),
               "likelihood": model.likelihood, "iw_samples": int(iw_samples)}
    if iw_samples > 0:
        subset = x_test[:iwae_images]
        if progress:
            print(f"IWAE estimate, K = {iw_samples}:")
        nll = float(np.mean(iwae_nll(model, subset, iw_samples, seed, progress)))
        # The same images' −ELBO, so the two can be compared like for like.
        metrics.update(test_iwae_nll=nll, iwae_images=int(len(subset)),
                       test_iwae_bits_per_dim=bits_per_dim(nll, dims),
                       test_neg_elbo_on_iwae_images=float(np.mean((reconstruction + kl)[:len(subset)])))
    else:
        metrics.update(test_iwae_nll=None, iwae_images=0, test_iwae_bits_per_dim=None)
    if model.likelihood == "bernoulli":
        floor = bce_floor(x_test)
        metrics.update(bce_floor=floor, excess_over_floor=neg_elbo - floor)
    else:  # the floor is a property of BCE; under the continuous Bernoulli it does not apply
        metrics.update(bce_floor=None, excess_over_floor=None)
    return metrics


def posterior_means(model, x, batch_size=EVAL_BATCH):
    return np.concatenate([model.encode(x[i:i + batch_size])[0].numpy()
                           for i in range(0, len(x), batch_size)])


def decode_images(model, z, batch_size=EVAL_BATCH):
    """Pictures of p(x|z): lambda (Bernoulli) or the distribution's mean (continuous Bernoulli)."""
    z = np.asarray(z, dtype=np.float32)
    return np.concatenate([model.mean_image(model.decode(z[i:i + batch_size])).numpy()
                           for i in range(0, len(z), batch_size)])
