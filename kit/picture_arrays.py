"""The arrays a run's pictures show, computed from the model once: samples, reconstructions, the test
split's latent means and the interpolations' decodes. kit/pictures.py draws them and never sees a model."""
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from kit.evaluate import decode_images, posterior_means
from kit.models import is_hierarchical

# The temperatures of samples_temperatures.png (the hierarchical VAE): one row each, the same noise.
SAMPLE_TEMPERATURES = (0.0, 0.5, 0.7, 0.85, 1.0)
PICTURE_SAMPLES, RECONSTRUCTED, INTERPOLATION_ROWS, INTERPOLATION_STEPS, MANIFOLD_SIDE = 100, 30, 8, 10, 15


@dataclass
class PictureArrays:
    """Images in [0, 1] as (N, H, W, C); None for a picture this model does not get."""
    samples: np.ndarray  # from the prior, its std times the temperature
    reconstructions: np.ndarray  # of the first RECONSTRUCTED test images
    latent_means: np.ndarray  # the test split's posterior means (the hierarchical VAE: its top group's, flattened)
    interpolation_pairs: list  # (a, b) test indices of each interpolation row
    interpolations: np.ndarray  # (rows, steps, H, W, C)
    samples_gmm: np.ndarray = None
    gmm_components: int = 0
    manifold: np.ndarray = None  # decoded over manifold_grid x manifold_grid (a 2-D latent)
    manifold_grid: np.ndarray = None
    temperatures: tuple = ()  # the hierarchical VAE: temperature_rows' temperatures
    temperature_rows: np.ndarray = None  # the same noise at each of `temperatures`, one row each
    top_group_shape: tuple = None  # the hierarchical VAE's top latent group (h, w, c)


def picture_arrays(model, splits, gmm, z_test=None, reconstructions=None, seed=0, temperature=1.0):
    """Every array the pictures need; z_test and reconstructions of the test split when the caller
    has them already (the evaluation's)."""
    if is_hierarchical(model):
        return hierarchical_picture_arrays(model, splits, seed, temperature, reconstructions)
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((PICTURE_SAMPLES, model.latent_dim))
    samples = decode_images(model, eps * temperature if temperature != 1.0 else eps)
    samples_gmm = decode_images(model, gmm.sample(PICTURE_SAMPLES, seed))
    if z_test is None:
        z_test = posterior_means(model, splits.x_test)
    if reconstructions is None:
        reconstructions = decode_images(model, z_test[:RECONSTRUCTED])
    manifold = grid = None
    if model.latent_dim == 2:
        grid = gaussian_quantiles(MANIFOLD_SIDE)
        manifold = decode_images(model, np.array([[x, y] for y in grid[::-1] for x in grid], dtype=np.float32))
    pairs, rows = interpolation_rows(lambda z: decode_images(model, z), z_test, splits.y_test, rng)
    return PictureArrays(samples, reconstructions[:RECONSTRUCTED], z_test, pairs, rows, samples_gmm=samples_gmm,
                         gmm_components=len(gmm.weights), manifold=manifold, manifold_grid=grid)


def hierarchical_picture_arrays(model, splits, seed, temperature, reconstructions=None):
    """The hierarchical VAE's: samples at `temperature` and the same noise at SAMPLE_TEMPERATURES,
    reconstructions (every group at its posterior mean), the top group's posterior means and
    interpolations between them with the finer groups at their prior means. No GMM and no manifold:
    both are for one latent vector (docs/HIERARCHICAL.md)."""
    rng = np.random.default_rng(seed)
    samples = model.sample(PICTURE_SAMPLES, temperature=temperature, seed=seed)
    noise = model.draw_noise(10, seed)
    temperature_rows = np.stack([model.sample(10, temperature=t, noise=noise) for t in SAMPLE_TEMPERATURES])
    if reconstructions is None:
        reconstructions = model.reconstruct(splits.x_test[:RECONSTRUCTED])
    top = posterior_means(model, splits.x_test)  # the top group's posterior means, flattened
    pairs, rows = interpolation_rows(lambda z: decode_top_group(model, z), top, splits.y_test, rng)
    return PictureArrays(samples, reconstructions[:RECONSTRUCTED], top, pairs, rows,
                         temperatures=SAMPLE_TEMPERATURES, temperature_rows=temperature_rows,
                         top_group_shape=tuple(model.latent_shapes[0]))


def interpolation_rows(decode, z_test, labels, rng):
    """(pairs, rows): decode() along straight lines between the codes of test images of different
    classes, INTERPOLATION_ROWS rows of INTERPOLATION_STEPS images, in one decode call."""
    pairs = interpolation_pairs(labels, rows=INTERPOLATION_ROWS, rng=rng)
    steps = np.linspace(0.0, 1.0, INTERPOLATION_STEPS, dtype=np.float32)[:, None]
    images = decode(np.concatenate([(1 - steps) * z_test[a] + steps * z_test[b] for a, b in pairs]))
    return pairs, images.reshape(len(pairs), len(steps), *images.shape[1:])


def decode_top_group(model, z_top):
    """Mean images for given values of the top (coarsest) latent group, flattened as (n, h*w*c),
    with every finer group at its prior mean given the groups above it (temperature 0). The top
    group's prior does not depend on the image, so z_top becomes its noise: (z - p_mean) / p_std."""
    first = model.latent_statistics(np.zeros((1, *model.image_shape), np.float32), model.draw_noise(1))[0]
    z = np.asarray(z_top, np.float32).reshape(len(z_top), *model.latent_shapes[0])
    noise = [(z - first["p_mean"]) * np.exp(-first["p_log_std"])]
    noise += [np.zeros((len(z), *shape), np.float32) for shape in model.latent_shapes[1:]]
    temperatures = [1.0] + [0.0] * (len(model.latent_shapes) - 1)
    return model.sample(len(z), temperature=temperatures, noise=noise)


def gaussian_quantiles(n):
    """n points of N(0, 1) at evenly spaced probabilities, so the grid covers the prior evenly."""
    return np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)])


def interpolation_pairs(labels, rows, rng):
    """`rows` pairs of test indices whose classes differ (any two, when all share one class)."""
    if len(np.unique(labels)) < 2:
        return [tuple(int(i) for i in rng.integers(len(labels), size=2)) for _ in range(rows)]
    pairs = []
    while len(pairs) < rows:
        a, b = rng.integers(len(labels), size=2)
        if labels[a] != labels[b]:
            pairs.append((int(a), int(b)))
    return pairs
