"""Pictures for every option value the checks let through: a 1-D latent, a test split of one class;
and the pictures module draws arrays, never a model."""
import ast
from pathlib import Path

import numpy as np

from kit.picture_arrays import interpolation_pairs, interpolation_rows
from kit.pictures import pca_2d, plot_latent_space
from conftest import ROOT, png_size


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


def test_interpolation_rows_run_from_one_code_to_the_other_in_one_decode():
    z_test = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]], np.float32)
    labels, calls = np.array([0, 1, 2]), []
    def decode(z):  # a 2x2 gray image holding each code's first coordinate
        calls.append(len(z))
        return np.broadcast_to(z[:, :1, None, None], (len(z), 2, 2, 1)).copy()
    pairs, rows = interpolation_rows(decode, z_test, labels, np.random.default_rng(0))
    assert pairs == interpolation_pairs(labels, rows=8, rng=np.random.default_rng(0))  # the same draw
    assert calls == [80] and rows.shape == (8, 10, 2, 2, 1)
    for row, (a, b) in zip(rows[..., 0, 0, 0], pairs):
        np.testing.assert_allclose(row, np.linspace(z_test[a, 0], z_test[b, 0], 10), atol=1e-6)


def test_the_pictures_module_imports_nothing_of_the_models_or_the_evaluation():
    tree = ast.parse(Path(ROOT, "kit", "pictures.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {f"kit.{alias.name}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module == "kit" for alias in node.names}
    assert "kit.atomic_files" in imported and "matplotlib.pyplot" in imported  # the reading works
    forbidden = {"kit.evaluate", "kit.models", "common", "kit.hierarchical_vae", "kit.hierarchical_blocks",
                 "kit.hierarchical_eval", "kit.picture_arrays", "kit.run", "keras", "tensorflow"}
    assert not imported & forbidden, imported & forbidden
