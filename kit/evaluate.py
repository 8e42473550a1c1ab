"""How good is a trained VAE: test −ELBO, importance-weighted NLL, bits/dim and the BCE floor;
reconstruction MSE / PSNR / SSIM and 8-bit bits/dim, which every likelihood shares; and what
lossless codecs (PNG, WebP) need for the same test images.

All values are nats per image unless the name says bits_per_dim. Noise comes from NumPy with a
fixed seed, so the same model and seed give the same numbers in any run. The hierarchical VAE
(kit/hierarchical_vae.py) is measured the same way through its own elbo_terms,
log_importance_weights, reconstruct and sample, with noise from its draw_noise.
"""
import io
import math

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, features

from common import gaussian_kl, log_normal, reparameterize
from kit import hierarchical_vae
from kit.models import is_hierarchical

EVAL_BATCH = 1000
IWAE_DECODES_PER_CALL = 4000  # the most decodes (samples x images) of one IWAE call


@tf.function(reduce_retracing=True, autograph=False)
def _elbo_terms(model, x, eps):
    z_mean, z_log_var = model.encode(x)
    logits = model.decode(model.reparameterize(z_mean, z_log_var, eps))
    return model.reconstruction_nll(x, logits), gaussian_kl(z_mean, z_log_var)


def elbo_terms(model, x, seed=0, batch_size=EVAL_BATCH, per_group=False):
    """Per-image reconstruction NLL and KL (beta = 1), one z per image drawn with `seed`.
    per_group: the KL as (N, groups), one column per latent group of a hierarchical VAE (one
    column for the seed VAE's single latent vector)."""
    if is_hierarchical(model):
        return _hierarchical_elbo_terms(model, x, seed, batch_size, per_group)
    eps = np.random.default_rng(seed).standard_normal((len(x), model.latent_dim)).astype(np.float32)
    parts = [_elbo_terms(model, x[i:i + batch_size], eps[i:i + batch_size])
             for i in range(0, len(x), batch_size)]
    kl = np.concatenate([p[1].numpy() for p in parts])
    return np.concatenate([p[0].numpy() for p in parts]), (kl[:, None] if per_group else kl)


def _hierarchical_elbo_terms(model, x, seed, batch_size, per_group):
    """The hierarchical VAE's elbo_terms with noise from its draw_noise, drawn batch by batch from
    one generator seeded with `seed` (so the noise never takes more memory than a batch's)."""
    rng = np.random.default_rng(seed)
    parts = [model.elbo_terms(x[i:i + batch_size], model.draw_noise(len(x[i:i + batch_size]), rng),
                              per_group=True)
             for i in range(0, len(x), batch_size)]
    kls = np.concatenate([p[1] for p in parts])
    return np.concatenate([p[0] for p in parts]), (kls if per_group else kls.sum(axis=1))


@tf.function(reduce_retracing=True, autograph=False)
def log_importance_weights(model, x, eps):
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k = mean + sigma * eps[k].

    x: (B, H, W, C); eps: (K, B, L). Returns (K, B). Burda et al., "Importance Weighted
    Autoencoders" (ICLR 2016), eq. 8.
    """
    z_mean, z_log_var = model.encode(x)
    z = reparameterize(z_mean[None], z_log_var[None], eps)
    k, b, latent = tf.shape(eps)[0], tf.shape(eps)[1], tf.shape(eps)[2]
    logits = model.decode(tf.reshape(z, (k * b, latent)))
    x_k = tf.reshape(tf.broadcast_to(x[None], tf.concat([[k], tf.shape(x)], 0)),
                     tf.concat([[k * b], tf.shape(x)[1:]], 0))
    log_px = -tf.reshape(model.reconstruction_nll(x_k, logits), (k, b))
    log_pz = log_normal(z, 0.0, tf.zeros_like(z))
    log_qz = log_normal(z, z_mean[None], z_log_var[None])
    return log_px + log_pz - log_qz


def iwae_nll(model, x, k, seed=0, progress=False, decodes_per_call=None):
    """Per-image −log p(x) estimate −log (1/K) Σ w_k, computed with log-sum-exp (never exp(log w)).

    At most `decodes_per_call` decodes at once (default IWAE_DECODES_PER_CALL, or the hierarchical
    VAE's own, smaller, limit), so memory does not grow with K: images go in groups of
    decodes_per_call // K, and when K alone is larger, one image at a time with its K samples in
    slices whose log-sum-exps are combined by np.logaddexp. For the seed VAE, slicing along K draws
    the same noise as one call, so the estimate does not depend on how K is sliced; the
    hierarchical VAE's noise is drawn slice by slice (by its draw_noise, one generator seeded with
    `seed`), the same in every run.
    """
    if is_hierarchical(model):
        decodes_per_call = decodes_per_call or hierarchical_vae.IWAE_DECODES_PER_CALL

        def log_sum_weights(chunk, samples, rng):  # its own noise, prior and posterior per group
            noise = model.draw_noise(len(chunk), rng, samples=samples)
            log_w = model.log_importance_weights(chunk, noise, decodes_per_call=decodes_per_call)
            return np.logaddexp.reduce(log_w.astype(np.float64), axis=0)
    else:
        decodes_per_call = decodes_per_call or IWAE_DECODES_PER_CALL

        def log_sum_weights(chunk, samples, rng):
            # Consecutive draws along the leading axis are one draw of shape (k, ...), sliced.
            eps = rng.standard_normal((samples, len(chunk), model.latent_dim)).astype(np.float32)
            return tf.reduce_logsumexp(log_importance_weights(model, chunk, eps), axis=0).numpy()

    rng = np.random.default_rng(seed)
    per_call = max(1, decodes_per_call // k)
    samples_per_call = max(1, min(k, decodes_per_call))
    bar = keras.utils.Progbar(len(x), unit_name="image") if progress else None
    out = []
    for i in range(0, len(x), per_call):
        chunk = np.asarray(x[i:i + per_call], dtype=np.float32)
        log_sum_w = None  # running log Σ_k w_k over the slices of K seen so far, per image
        for start in range(0, k, samples_per_call):
            part = log_sum_weights(chunk, min(samples_per_call, k - start), rng)
            log_sum_w = part if log_sum_w is None else np.logaddexp(log_sum_w, part)
        out.append(-(log_sum_w - np.asarray(math.log(k), log_sum_w.dtype)))
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


# How each likelihood's NLL relates to P(8-bit image), for bits_per_dim_8bit:
# "discrete": already -log P(8-bit image), as is; "density": a density on [0, 1], bounded through
# uniform dequantization; None: no bound. The Bernoulli "likelihood" of gray values is not a
# distribution over gray values at all (BCE with targets in (0, 1) is no normalised log-probability;
# it is one only for binary data), so it gives no bound on P(8-bit image).
EIGHT_BIT_BOUND = {"bernoulli": None, "continuous-bernoulli": "density", "gaussian": "density",
                   "discretized-logistic": "discrete", "discretized-logistic-mixture": "discrete"}
EIGHT_BITS = 8.0  # log2 of the 256 bins of width 1/256 that dequantization spreads each level over
SSIM_FILTER_SIZE = 11  # tf.image.ssim's default Gaussian window; smaller images get no SSIM


def to_uint8(x, chunk=4096):
    """Images in [0, 1] -> their 8-bit levels round(255 x), a chunk of images at a time so the
    temporaries stay small (float32 is exact here: 255 x is within 1e-4 of an integer)."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=np.uint8)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = np.clip(np.rint(x[i:i + chunk].astype(np.float32) * 255.0), 0, 255)
    return out


def dequantize(x, seed=0):
    """Uniform dequantization of 8-bit images: (k + u) / 256 with k = round(255 x), u ~ U[0, 1).

    Theis, van den Oord & Bethge, "A note on the evaluation of generative models" (ICLR 2016): for
    a density p on [0, 1]^D, P(k) = integral of p over the cell [k/256, (k+1)/256)^D
    = 256^-D E_u[p((k + u)/256)] >= 256^-D exp(E_u log p((k + u)/256)) (Jensen), so
    -log2 P(k) / D <= E_u[-log2 p((k + u)/256)] / D + 8 — the convention of RealNVP and Glow.
    """
    u = np.random.default_rng(seed).random(np.shape(x))
    return ((to_uint8(x) + u) / 256.0).astype(np.float32)


def reconstruction_quality(x, reconstructions, batch_size=EVAL_BATCH):
    """MSE per sub-pixel, PSNR (dB) and SSIM of `reconstructions` (decoder mean images at the
    posterior mean) against `x`, each averaged over images (tf.image.psnr / ssim, max_val 1); SSIM
    None below 11x11."""
    x = np.asarray(x, dtype=np.float32)
    mse = float(np.mean(np.square(reconstructions.astype(np.float64) - x)))
    psnr, ssim = [], []
    for i in range(0, len(x), batch_size):
        a, b = tf.constant(reconstructions[i:i + batch_size]), tf.constant(x[i:i + batch_size])
        psnr.append(tf.image.psnr(a, b, max_val=1.0).numpy())
        if min(x.shape[1:3]) >= SSIM_FILTER_SIZE:
            ssim.append(tf.image.ssim(a, b, max_val=1.0, filter_size=SSIM_FILTER_SIZE).numpy())
    return {"test_mse": mse, "test_psnr_db": float(np.mean(np.concatenate(psnr))),
            "test_ssim": float(np.mean(np.concatenate(ssim))) if ssim else None}


def _codec_bits_per_dim(images_uint8, save):
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError("images must be uint8 shaped (N, H, W, 1 or 3)")
    total_bytes = 0
    for image in images:
        buffer = io.BytesIO()
        save(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image), buffer)
        total_bytes += buffer.tell()
    return 8.0 * total_bytes / images.size


def png_bits_per_dim(images_uint8):
    """Bits per sub-pixel of the images saved one PNG file each at Pillow's strongest setting
    (optimize=True, compress_level=9), headers included: a lossless-codec yardstick."""
    return _codec_bits_per_dim(images_uint8, lambda image, f: image.save(
        f, format="PNG", optimize=True, compress_level=9))


# Lossless WebP effort: quality 100 (the most effort within a method) at method 2. On the full test
# splits method 6, libwebp's slowest, gives 4.18 bits/dim on CIFAR-10 (JPEG copy) against 4.00 at
# method 2, and 4.55 against 4.62 on Fashion-MNIST, at 70-180x the time (477 s against 2.7 s for
# CIFAR on 2 busy CPU cores): larger or barely smaller, and too slow for every evaluation.
WEBP_METHOD = 2


def webp_lossless_bits_per_dim(images_uint8, method=WEBP_METHOD):
    """Bits per sub-pixel as one lossless WebP file each (quality 100, the given method 0-6),
    headers included; None when Pillow lacks WebP. Gray images are stored as RGB, which WebP
    needs, but are still counted per original sub-pixel."""
    if not features.check("webp"):
        return None
    return _codec_bits_per_dim(images_uint8, lambda image, f: image.save(
        f, format="WEBP", lossless=True, quality=100, method=method))


def compute_metrics(model, x_test, iw_samples, iwae_images, seed=0, progress=False,
                    lossless_codecs=True, reconstructions=None):
    """metrics.json's numbers for `model` on the test images (see docs/EVALUATION.md);
    `reconstructions` of x_test by reconstruct() when the caller has them already."""
    dims = int(np.prod(x_test.shape[1:]))
    reconstruction, kl_by_group = elbo_terms(model, x_test, seed, per_group=True)
    kl = kl_by_group.sum(axis=1)
    neg_elbo = float(np.mean(reconstruction + kl))
    metrics = {"test_reconstruction": float(np.mean(reconstruction)), "test_kl": float(np.mean(kl)),
               "test_neg_elbo": neg_elbo, "test_images": int(len(x_test)),
               "test_neg_elbo_bits_per_dim": bits_per_dim(neg_elbo, dims),
               "likelihood": model.likelihood, "iw_samples": int(iw_samples)}
    if is_hierarchical(model):  # which groups the model uses: their share of test_kl
        metrics["kl_per_group"] = [{"group": i, "resolution": int(r), "kl": float(np.mean(kl_by_group[:, i]))}
                                   for i, r in enumerate(model.group_resolutions)]
    subset = x_test[:iwae_images]
    if iw_samples > 0:
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

    # Numbers every likelihood shares: reconstruction quality and an 8-bit bits/dim bound.
    if reconstructions is None:
        reconstructions = reconstruct(model, x_test)
    metrics.update(reconstruction_quality(x_test, reconstructions))
    metrics["gaussian_sigma"] = (float(np.exp(model.gaussian_log_sigma().numpy()))
                                 if model.likelihood == "gaussian" else None)
    bound = EIGHT_BIT_BOUND[model.likelihood]
    if bound == "discrete":  # the NLL already is -log P(8-bit image)
        on_iwae_images = metrics.get("test_neg_elbo_on_iwae_images")
        metrics.update(bits_per_dim_8bit=metrics["test_neg_elbo_bits_per_dim"],
                       iwae_bits_per_dim_8bit=metrics["test_iwae_bits_per_dim"],
                       bits_per_dim_8bit_on_iwae_images=None if on_iwae_images is None
                       else bits_per_dim(on_iwae_images, dims))
    elif bound == "density":
        metrics.update(dequantized_bits_per_dim(model, x_test, dims, iw_samples, len(subset), seed))
    else:
        metrics.update(bits_per_dim_8bit=None, iwae_bits_per_dim_8bit=None,
                       bits_per_dim_8bit_on_iwae_images=None)
    if lossless_codecs:
        images = to_uint8(x_test)
        metrics.update(png_bits_per_dim=png_bits_per_dim(images),
                       webp_bits_per_dim=webp_lossless_bits_per_dim(images))
    return metrics


def dequantized_bits_per_dim(model, x, dims, iw_samples, iwae_images, seed=0):
    """Upper bounds on -log2 P(8-bit image) / D for a density on [0, 1]: the −ELBO (and the IWAE
    NLL on the first `iwae_images`, beside the −ELBO on those same images) of dequantize(x) in
    bits/dim, plus 8 (see dequantize)."""
    x_deq = dequantize(x, seed)
    reconstruction, kl = elbo_terms(model, x_deq, seed)
    out = {"bits_per_dim_8bit": bits_per_dim(float(np.mean(reconstruction + kl)), dims) + EIGHT_BITS,
           "iwae_bits_per_dim_8bit": None, "bits_per_dim_8bit_on_iwae_images": None}
    if iw_samples > 0:
        nll = float(np.mean(iwae_nll(model, x_deq[:iwae_images], iw_samples, seed)))
        out["iwae_bits_per_dim_8bit"] = bits_per_dim(nll, dims) + EIGHT_BITS
        neg_elbo = float(np.mean((reconstruction + kl)[:iwae_images]))
        out["bits_per_dim_8bit_on_iwae_images"] = bits_per_dim(neg_elbo, dims) + EIGHT_BITS
    return out


def posterior_means(model, x, batch_size=EVAL_BATCH):
    """The seed VAE's posterior means; for the hierarchical VAE, the top (coarsest) latent group's
    posterior means, flattened (what its latent-space picture and interpolations use)."""
    if is_hierarchical(model):
        return np.concatenate([_top_group_means(model, x[i:i + batch_size]).numpy()
                               for i in range(0, len(x), batch_size)])
    return np.concatenate([model.encode(x[i:i + batch_size])[0].numpy()
                           for i in range(0, len(x), batch_size)])


@tf.function(reduce_retracing=True, autograph=False)
def _top_group_means(model, x):
    _, stats = model.top_down(tf.shape(x)[0], hierarchical_vae.POSTERIOR_MEAN, model.bottom_up(x))
    return tf.reshape(stats[0]["z"], (tf.shape(x)[0], -1))


def reconstruct(model, x, batch_size=EVAL_BATCH):
    """Decoder mean images at the posterior means of x: what reconstructions show and measure
    (the hierarchical VAE's reconstruct: every group at its posterior mean)."""
    if is_hierarchical(model):
        return model.reconstruct(np.asarray(x, dtype=np.float32))
    return decode_images(model, posterior_means(model, x, batch_size), batch_size)


def prior_samples(model, n, seed=0, temperature=1.0):
    """n mean images of p(x|z) for z from the prior with its std times `temperature`: z ~ N(0, T² I)
    for the seed VAE, every group's p(z_i | z_<i) for the hierarchical VAE (its sample)."""
    if is_hierarchical(model):
        return model.sample(n, temperature=temperature, seed=seed)
    eps = np.random.default_rng(seed).standard_normal((n, model.latent_dim))
    return decode_images(model, eps * temperature if temperature != 1.0 else eps)


def decode_images(model, z, batch_size=EVAL_BATCH):
    """Pictures of p(x|z): lambda (Bernoulli) or the distribution's mean (continuous Bernoulli)."""
    z = np.asarray(z, dtype=np.float32)
    return np.concatenate([model.mean_image(model.decode(z[i:i + batch_size])).numpy()
                           for i in range(0, len(z), batch_size)])
