"""Pictures of a run and its metrics as a table. The plot_* functions take arrays and a path and
write one PNG; write_* functions draw a run's pictures from the arrays kit/picture_arrays.py
computed. Nothing here sees a model."""
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pathlib import Path  # noqa: E402

from kit.atomic_files import atomic_path  # noqa: E402

LOSS_PANELS = (("loss", "Total loss (−ELBO with training β)"),
               ("reconstruction_loss", "Reconstruction (nats/image)"),
               ("kl_loss", "KL divergence (nats/image)"))


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _tile(images, ncols):
    """(N, H, W, C) in [0, 1] -> one (rows*H, ncols*W, C) mosaic with 1-pixel white gaps."""
    n, h, w, c = images.shape
    nrows = int(np.ceil(n / ncols))
    mosaic = np.ones((nrows * (h + 1) - 1, ncols * (w + 1) - 1, c), dtype=np.float32)
    for i, image in enumerate(images):
        r, q = divmod(i, ncols)
        mosaic[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = image
    return mosaic


def _show(ax, images, ncols):
    mosaic = np.clip(_tile(np.asarray(images, dtype=np.float32), ncols), 0.0, 1.0)
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()


def plot_loss_curves(history, path, title=""):
    """history: {'epoch': [...], 'loss': [...], 'val_loss': [...], ...}; one panel per term."""
    epochs = np.asarray(history["epoch"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    for ax, (key, label) in zip(axes, LOSS_PANELS):
        for prefix, style, name in (("", "o-", "train"), ("val_", "s--", "validation (held-out training images)")):
            values = history.get(prefix + key)
            if values is not None and len(values):
                ax.plot(epochs, values, style, markersize=3, label=name)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def plot_image_grid(images, path, title, ncols=10):
    """A mosaic of images in [0, 1], e.g. decoder samples from z ~ N(0, I)."""
    fig, ax = plt.subplots(figsize=(ncols * 0.8, int(np.ceil(len(images) / ncols)) * 0.8 + 0.6))
    _show(ax, images, ncols)
    ax.set_title(title)
    save_figure(fig, path)


def plot_reconstructions(originals, reconstructions, path, title, ncols=10):
    """Rows alternate: test images, then their reconstructions below them."""
    rows = []
    for start in range(0, len(originals), ncols):
        rows += [originals[start:start + ncols], reconstructions[start:start + ncols]]
    fig, axes = plt.subplots(len(rows), 1, figsize=(ncols * 0.8, len(rows) * 0.85 + 0.6),
                             layout="constrained")
    for i, (ax, row) in enumerate(zip(np.atleast_1d(axes), rows)):
        _show(ax, row, ncols)
        ax.text(-0.01, 0.5, "input" if i % 2 == 0 else "recon.", transform=ax.transAxes,
                ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    save_figure(fig, path)


def pca_2d(points):
    """Projection of (N, D) points onto their first two principal components (a 1-D latent gets a
    second axis of zeros)."""
    centred = points - points.mean(axis=0)
    if points.shape[1] <= 2:
        return np.pad(centred, ((0, 0), (0, 2 - points.shape[1])))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_latent_space(z_mean, labels, class_names, path, title):
    """Posterior means coloured by class: the two dims, or a 2-D PCA projection of more."""
    points = z_mean if z_mean.shape[1] == 2 else pca_2d(z_mean)
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(class_names):
        chosen = labels == k
        ax.scatter(points[chosen, 0], points[chosen, 1], s=3, alpha=0.6, color=cmap(k), label=name)
    if z_mean.shape[1] <= 2:
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]" if z_mean.shape[1] == 2 else "(a 1-D latent)")
    else:
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
    ax.legend(markerscale=4, fontsize=8, loc="best")
    ax.set_title(title)
    save_figure(fig, path)


def plot_latent_manifold(images, grid_values, path, title):
    """images: (n*n, H, W, C) decoded on an n x n grid of z values (rows: z[1], columns: z[0])."""
    n = len(grid_values)
    fig, ax = plt.subplots(figsize=(9, 9))
    _show(ax, images, n)
    ax.set_axis_on()
    h = images.shape[1] + 1
    ticks = np.arange(n) * h + h / 2 - 1
    ax.set_xticks(ticks, [f"{v:.1f}" for v in grid_values], fontsize=7)
    ax.set_yticks(ticks, [f"{v:.1f}" for v in grid_values[::-1]], fontsize=7)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    save_figure(fig, path)


def plot_kl_per_group(kl_per_group, path, title):
    """Bar chart of the hierarchical VAE's KL per latent group (nats/image), coarse to fine, each
    bar labelled with its group's resolution: which groups the model uses."""
    kls = [group["kl"] for group in kl_per_group]
    labels = [f"{i}\n{group['resolution']}×{group['resolution']}" for i, group in enumerate(kl_per_group)]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(kls) + 2.0), 4.2), layout="constrained")
    bars = ax.bar(range(len(kls)), kls, color="tab:blue")
    ax.bar_label(bars, [f"{kl:.3g}" for kl in kls], fontsize=8)
    ax.set_xticks(range(len(kls)), labels, fontsize=8)
    ax.set_xlabel("latent group (top-down order) and its resolution")
    ax.set_ylabel("KL(q ‖ p) on the test split (nats/image)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    save_figure(fig, path)


def plot_image_rows(rows, row_labels, path, title):
    """rows: (R, N, H, W, C), one labelled row of N images each (interpolations, comparisons)."""
    steps = rows.shape[1]
    fig, axes = plt.subplots(len(rows), 1, figsize=(steps * 0.8, len(rows) * 0.9 + 0.6),
                             layout="constrained")
    for ax, row, label in zip(np.atleast_1d(axes), rows, row_labels):
        _show(ax, row, steps)
        ax.text(-0.01, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


# --- what a run writes -------------------------------------------------------------------------
def write_loss_curves(history, outdir, title, model_note):
    """loss_curves.png from history rows (one dict per epoch); model_note says which model, e.g.
    'latent dim 32'."""
    plot_loss_curves({key: [row.get(key) for row in history] for key in history[0]},
                           Path(outdir) / "loss_curves.png",
                           f"{title} — {model_note}, epoch {history[-1]['epoch']}")


def write_pictures(arrays, splits, outdir, title, temperature=1.0):
    """samples (prior, its std times `temperature`, and GMM), reconstructions, latent space,
    interpolations (+ manifold for a 2-D latent), from `arrays` (kit/picture_arrays.py); `splits`
    gives the test images, their labels and class names."""
    outdir = Path(outdir)
    prior = "N(0, I)" if temperature == 1.0 else f"N(0, {temperature:g}² I)"
    plot_image_grid(arrays.samples, outdir / "samples.png", f"Samples from z ~ {prior} — {title}")
    plot_image_grid(arrays.samples_gmm, outdir / "samples_gmm.png",
                    f"Samples from a {arrays.gmm_components}-component GMM of the training codes — {title}")
    plot_reconstructions(splits.x_test[:len(arrays.reconstructions)], arrays.reconstructions,
                         outdir / "reconstructions.png",
                         f"Test images and reconstructions (posterior mean) — {title}")
    latent = arrays.latent_means.shape[1]
    how = "" if latent == 2 else f" (PCA of {latent} dims)"
    plot_latent_space(arrays.latent_means, splits.y_test, splits.class_names, outdir / "latent_space.png",
                      f"Test-set posterior means{how} — {title}")
    if arrays.manifold is not None:
        plot_latent_manifold(arrays.manifold, arrays.manifold_grid, outdir / "latent_manifold.png",
                             f"Decoder over Gaussian quantiles of z — {title}")
    plot_interpolations(arrays, splits, outdir / "interpolations.png",
                        f"Interpolations between posterior means — {title}")


def write_hierarchical_pictures(arrays, splits, outdir, title, metrics, temperature=1.0):
    """The hierarchical VAE's pictures: samples at `temperature`, the same noise at several
    temperatures, reconstructions (every group at its posterior mean), the KL per group (from
    metrics' kl_per_group), the top group's posterior means (PCA) and interpolations between them
    with the finer groups at their prior means."""
    outdir = Path(outdir)
    plot_image_grid(arrays.samples, outdir / "samples.png",
                    f"Samples from the prior, temperature {temperature:g} — {title}")
    temperatures = arrays.temperatures
    plot_image_rows(arrays.temperature_rows, [f"T = {t:g}" for t in temperatures],
                    outdir / "samples_temperatures.png",
                    f"The same latent noise at temperatures {', '.join(f'{t:g}' for t in temperatures)} "
                    f"(each group's prior std times T) — {title}")
    plot_reconstructions(splits.x_test[:len(arrays.reconstructions)], arrays.reconstructions,
                         outdir / "reconstructions.png",
                         f"Test images and reconstructions (every group at its posterior mean) — {title}")
    plot_kl_per_group(metrics["kl_per_group"], outdir / "kl_per_group.png",
                      f"KL per latent group: which groups the model uses — {title}")
    top = arrays.latent_means
    side, channels = arrays.top_group_shape[0], arrays.top_group_shape[2]
    how = "" if top.shape[1] == 2 else f", PCA of {top.shape[1]} dims"
    plot_latent_space(top, splits.y_test, splits.class_names, outdir / "latent_space.png",
                      f"Test-set posterior means of the top latent group ({side}×{side}×{channels}{how}) — {title}")
    plot_interpolations(arrays, splits, outdir / "interpolations.png",
                        f"Interpolations between the top group's posterior means, finer groups at their prior "
                        f"means — {title}")


def plot_interpolations(arrays, splits, path, title):
    """arrays.interpolations, one row per pair of test images, labelled with their classes."""
    labels = [f"{splits.class_names[splits.y_test[a]]} → {splits.class_names[splits.y_test[b]]}"
              for a, b in arrays.interpolation_pairs]
    plot_image_rows(arrays.interpolations, labels, path, title)


def feature_net_label(metrics):
    """Which network the Fréchet distances used, in a few words: the kit's shipped one (comparable
    with every machine's and the docs' numbers) or this machine's own (comparable only with runs
    scored by that same network)."""
    net = metrics.get("feature_net") or {}
    if net.get("kind") == "shipped":
        return f"the kit's shipped {net.get('dataset')} features, v{net.get('net_version')}"
    return "this machine's own features, not comparable with the kit's shipped network"


def metric_rows(metrics):
    """(label, key, value, unit) of each headline number `metrics` holds, in the printed order,
    labels indented two spaces a level; a heading's key and value are None."""
    rows = [("test −ELBO", "test_neg_elbo", "nats/image"),
            ("  reconstruction", "test_reconstruction", "nats/image"),
            ("  KL", "test_kl", "nats/image"),
            ("−ELBO", "test_neg_elbo_bits_per_dim", "bits/dim"),
            (f"IWAE NLL (K={metrics.get('iw_samples')}, {metrics.get('iwae_images')} images)",
             "test_iwae_nll", "nats/image"),
            ("  −ELBO on the same images", "test_neg_elbo_on_iwae_images", "nats/image"),
            ("IWAE NLL", "test_iwae_bits_per_dim", "bits/dim"),
            ("8-bit −ELBO (bound on −log₂ P)", "bits_per_dim_8bit", "bits/dim"),
            (f"8-bit IWAE ({metrics.get('iwae_images')} images)", "iwae_bits_per_dim_8bit", "bits/dim"),
            ("  8-bit −ELBO on the same images", "bits_per_dim_8bit_on_iwae_images", "bits/dim"),
            ("PNG of the test images", "png_bits_per_dim", "bits/dim"),
            ("WebP lossless of the test images", "webp_bits_per_dim", "bits/dim"),
            ("reconstruction MSE", "test_mse", "per sub-pixel"),
            ("reconstruction PSNR", "test_psnr_db", "dB"),
            ("reconstruction SSIM", "test_ssim", ""),
            ("Gaussian decoder σ (evaluation)", "gaussian_sigma", ""),
            ("BCE floor", "bce_floor", "nats/image"),
            ("excess over floor", "excess_over_floor", "nats/image"),
            (f"Fréchet distance to {metrics.get('fd_images')} test images ({feature_net_label(metrics)}):",
             None, ""),
            (f"  prior samples (temperature {metrics.get('temperature', 1.0):g})", "fd_prior_samples", ""),
            ("  GMM samples", "fd_gmm_samples", ""),
            ("  test reconstructions", "fd_reconstructions", ""),
            ("  real training images (ideal)", "fd_train_vs_test", ""),
            ("feature network test accuracy", "feature_net_test_accuracy", "")]
    out = []
    for label, key, unit in rows:
        value = metrics.get(key)
        if key is None and metrics.get("fd_images"):  # a heading
            out.append((label, None, None, ""))
        elif value is not None:
            out.append((label, key, value, unit))
        if key == "test_kl":  # the hierarchical VAE's groups, coarse to fine
            for group in metrics.get("kl_per_group") or []:
                out.append((f"    group {group['group']} ({group['resolution']}×{group['resolution']})",
                            "kl_per_group", group["kl"], "nats/image"))
    return out


def format_metrics(metrics):
    """A small aligned table of the headline numbers."""
    return "\n".join(f"  {label}" if value is None else f"  {label:<36} {value:>10.4f}  {unit}"
                     for label, _, value, unit in metric_rows(metrics))
