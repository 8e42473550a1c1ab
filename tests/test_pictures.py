"""Pictures for every option value the checks let through: a 1-D latent, a test split of one class."""
import numpy as np

from kit.pictures import interpolation_pairs, pca_2d, plot_latent_space
from conftest import png_size


def test_a_one_dimensional_latent_gets_a_latent_space_picture(tmp_path):
    z = np.array([[1.0], [3.0], [5.0]])
    np.testing.assert_allclose(pca_2d(z), [[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])  # centred, zeros beside
    plot_latent_space(z, np.array([0, 1, 1]), ("a", "b"), tmp_path / "latent_space.png", "1-D")
    assert png_size(tmp_path / "latent_space.png")[0] > 200


def test_interpolation_pairs_differ_in_class_and_one_class_still_gives_pairs():
    labels = np.array([0, 0, 1, 2, 2])
    pairs = interpolation_pairs(labels, rows=8, rng=np.random.default_rng(0))
    assert len(pairs) == 8 and all(labels[a] != labels[b] for a, b in pairs)
    same = interpolation_pairs(np.zeros(4, int), rows=8, rng=np.random.default_rng(0))  # no endless loop
    assert len(same) == 8 and all(0 <= i < 4 for pair in same for i in pair)
