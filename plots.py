"""Pictures of a run. Each function takes arrays and a path, writes one PNG, returns nothing."""
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from files import atomic_path  # noqa: E402

LOSS_PANELS = (("loss", "Total loss (−ELBO with training β)"),
               ("reconstruction_loss", "Reconstruction (nats/image)"),
               ("kl_loss", "KL divergence (nats/image)"))


def _save(fig, path):
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
        for prefix, style, name in (("", "o-", "train"), ("val_", "s--", "validation (test split)")):
            values = history.get(prefix + key)
            if values is not None and len(values):
                ax.plot(epochs, values, style, markersize=3, label=name)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def plot_image_grid(images, path, title, ncols=10):
    """A mosaic of images in [0, 1], e.g. decoder samples from z ~ N(0, I)."""
    fig, ax = plt.subplots(figsize=(ncols * 0.8, int(np.ceil(len(images) / ncols)) * 0.8 + 0.6))
    _show(ax, images, ncols)
    ax.set_title(title)
    _save(fig, path)


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
    _save(fig, path)


def pca_2d(points):
    """Projection of (N, D) points onto their first two principal components."""
    centred = points - points.mean(axis=0)
    if points.shape[1] <= 2:
        return centred[:, :2]
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
    if z_mean.shape[1] == 2:
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
    else:
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
    ax.legend(markerscale=4, fontsize=8, loc="best")
    ax.set_title(title)
    _save(fig, path)


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
    _save(fig, path)


def plot_interpolations(rows, row_labels, path, title):
    """rows: (R, steps, H, W, C); each row decodes a straight line between two posterior means."""
    steps = rows.shape[1]
    fig, axes = plt.subplots(len(rows), 1, figsize=(steps * 0.8, len(rows) * 0.9 + 0.6),
                             layout="constrained")
    for ax, row, label in zip(np.atleast_1d(axes), rows, row_labels):
        _show(ax, row, steps)
        ax.text(-0.01, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def plot_curves_vs_time(curves, path, title, ylabel, target=None):
    """curves: {name: (seconds, values)}; used by bench/ for test −ELBO against wall-clock time."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (seconds, values) in curves.items():
        ax.plot(seconds, values, "o-", markersize=3, label=name)
    if target is not None:
        ax.axhline(target, color="gray", linestyle=":", label=f"target {target:g}")
    ax.set_xlabel("wall-clock training time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    _save(fig, path)
