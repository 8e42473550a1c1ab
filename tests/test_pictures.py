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


def test_interpolation_rows_run_from_one_code_to_the_other_in_one_decode(tmp_path, monkeypatch):
    from types import SimpleNamespace
    from kit import pictures
    z_test = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]], np.float32)
    splits = SimpleNamespace(y_test=np.array([0, 1, 2]), class_names=("a", "b", "c"))
    calls, drawn = [], {}
    def decode(z):  # a 2x2 gray image holding each code's first coordinate
        calls.append(len(z))
        return np.broadcast_to(z[:, :1, None, None], (len(z), 2, 2, 1)).copy()
    monkeypatch.setattr(pictures, "plot_image_rows", lambda rows, labels, path, title: drawn.update(rows=rows))
    pictures.plot_interpolations(decode, z_test, splits, np.random.default_rng(0), tmp_path / "i.png", "t")
    pairs = interpolation_pairs(splits.y_test, rows=8, rng=np.random.default_rng(0))  # the same draw
    assert calls == [80] and drawn["rows"].shape == (8, 10, 2, 2, 1)
    for row, (a, b) in zip(drawn["rows"][..., 0, 0, 0], pairs):
        np.testing.assert_allclose(row, np.linspace(z_test[a, 0], z_test[b, 0], 10), atol=1e-6)
