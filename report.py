"""What a run shows a person: the pictures of a trained model and its metrics as a table."""
from pathlib import Path
from statistics import NormalDist

import numpy as np

import plots
from evaluate import decode_images, posterior_means


def write_loss_curves(history, outdir, title, latent_dim):
    """loss_curves.png from history rows (one dict per epoch)."""
    plots.plot_loss_curves({key: [row.get(key) for row in history] for key in history[0]},
                           Path(outdir) / "loss_curves.png",
                           f"{title} — latent dim {latent_dim}, epoch {history[-1]['epoch']}")


def write_pictures(model, splits, outdir, title, seed=0):
    """samples, reconstructions, latent space, interpolations (+ manifold for a 2-D latent)."""
    outdir = Path(outdir)
    rng = np.random.default_rng(seed)
    latent = model.latent_dim
    plots.plot_image_grid(decode_images(model, rng.standard_normal((100, latent))),
                          outdir / "samples.png", f"Samples from z ~ N(0, I) — {title}")

    originals = splits.x_test[:30]
    means = posterior_means(model, originals)
    plots.plot_reconstructions(originals, decode_images(model, means), outdir / "reconstructions.png",
                               f"Test images and reconstructions (posterior mean) — {title}")

    z_test = posterior_means(model, splits.x_test)
    how = "" if latent == 2 else f" (PCA of {latent} dims)"
    plots.plot_latent_space(z_test, splits.y_test, splits.class_names, outdir / "latent_space.png",
                            f"Test-set posterior means{how} — {title}")

    if latent == 2:
        grid = gaussian_quantiles(15)
        zz = np.array([[x, y] for y in grid[::-1] for x in grid], dtype=np.float32)
        plots.plot_latent_manifold(decode_images(model, zz), grid, outdir / "latent_manifold.png",
                                   f"Decoder over Gaussian quantiles of z — {title}")

    pairs = interpolation_pairs(splits.y_test, rows=8, rng=rng)
    steps = np.linspace(0.0, 1.0, 10, dtype=np.float32)[:, None]
    rows = np.stack([decode_images(model, (1 - steps) * z_test[a] + steps * z_test[b]) for a, b in pairs])
    labels = [f"{splits.class_names[splits.y_test[a]]} → {splits.class_names[splits.y_test[b]]}"
              for a, b in pairs]
    plots.plot_interpolations(rows, labels, outdir / "interpolations.png",
                              f"Interpolations between posterior means — {title}")


def gaussian_quantiles(n):
    """n points of N(0, 1) at evenly spaced probabilities, so the grid covers the prior evenly."""
    return np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)])


def interpolation_pairs(labels, rows, rng):
    """`rows` pairs of test indices whose classes differ."""
    pairs = []
    while len(pairs) < rows:
        a, b = rng.integers(len(labels), size=2)
        if labels[a] != labels[b]:
            pairs.append((int(a), int(b)))
    return pairs


def format_metrics(metrics):
    """A small aligned table of the headline numbers."""
    rows = [("test −ELBO", "test_neg_elbo", "nats/image"),
            ("  reconstruction", "test_reconstruction", "nats/image"),
            ("  KL", "test_kl", "nats/image"),
            ("−ELBO", "test_neg_elbo_bits_per_dim", "bits/dim"),
            (f"IWAE NLL (K={metrics.get('iw_samples')}, {metrics.get('iwae_images')} images)",
             "test_iwae_nll", "nats/image"),
            ("IWAE NLL", "test_iwae_bits_per_dim", "bits/dim"),
            ("BCE floor", "bce_floor", "nats/image"),
            ("excess over floor", "excess_over_floor", "nats/image")]
    lines = []
    for label, key, unit in rows:
        value = metrics.get(key)
        if value is not None:
            lines.append(f"  {label:<36} {value:>10.4f}  {unit}")
    return "\n".join(lines)
