"""Fréchet distance, the cached feature network and the ex-post latent GMM sampler."""
import json
import shutil
import warnings

import keras
import numpy as np
import pytest

from kit import sample_quality as sq


def rotation(degrees):
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def random_covariance(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# --- Fréchet distance ----------------------------------------------------------------------------

def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((500, 16)) @ np.diag(np.arange(1, 17))
    mu, cov = features.mean(axis=0), np.cov(features, rowvar=False)
    assert abs(sq.frechet_distance(mu, cov, mu, cov)) < 1e-8 * np.trace(cov)


def test_frechet_distance_of_diagonal_gaussians():
    # ||(1, 2, 0)||^2 = 5; trace term per axis (sigma1 - sigma2)^2: (1-2)^2 + (2-1)^2 + (3-1)^2 = 6
    fd = sq.frechet_distance([0, 0, 0], np.diag([1.0, 4.0, 9.0]), [1, 2, 0], np.diag([4.0, 1.0, 1.0]))
    assert fd == pytest.approx(11.0, abs=1e-10)


def test_frechet_distance_of_commuting_rotated_gaussians():
    # Same eigenvectors: (S1 S2)^(1/2) = R diag(1*2, 3*4) R^T, so the trace term is
    # (1-2)^2 + (3-4)^2 = 2; the means differ by (3, 4), length^2 25.
    r = rotation(30)
    cov1, cov2 = r @ np.diag([1.0, 9.0]) @ r.T, r @ np.diag([4.0, 16.0]) @ r.T
    assert not np.allclose(cov1, np.diag(np.diag(cov1)))  # really not diagonal
    assert sq.frechet_distance([0, 0], cov1, [3, 4], cov2) == pytest.approx(27.0, abs=1e-9)


def test_frechet_distance_is_symmetric_and_positive():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    cov1, cov2 = random_covariance(rng, 6), random_covariance(rng, 6)
    forward, backward = sq.frechet_distance(mu1, cov1, mu2, cov2), sq.frechet_distance(mu2, cov2, mu1, cov1)
    assert forward == pytest.approx(backward, rel=1e-9)
    assert forward > 0


def test_frechet_distance_with_singular_covariances():
    # Both Gaussians live on the first axis: sigmas 2 and 1 there, nothing on the second.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the singular product is handled, not warned about
        fd = sq.frechet_distance([0, 0], np.diag([4.0, 0.0]), [0, 0], np.diag([1.0, 0.0]))
    assert fd == pytest.approx(1.0, abs=1e-5)


def test_frechet_distance_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        sq.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_statistics_and_distance_of_images():
    flatten = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten()])
    images = np.random.default_rng(2).random((300, 2, 2, 1), dtype=np.float32)
    mu, cov = sq.feature_statistics(flatten, images, batch_size=64)
    flat = images.reshape(300, 4).astype(np.float64)
    np.testing.assert_allclose(mu, flat.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(cov, np.cov(flat, rowvar=False), rtol=1e-5)
    assert abs(sq.frechet_distance_of_images(flatten, images, images)) < 1e-9
    # Shifting every pixel by 0.25 moves the mean by 0.25 on each of 4 features: 4 * 0.0625.
    assert sq.frechet_distance_of_images(flatten, images, images + 0.25) == pytest.approx(0.25, abs=1e-6)


# --- latent GMM ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def latent_codes():
    rng = np.random.default_rng(3)
    return np.concatenate([rng.normal([-4.0, 0.0, 1.0], 0.5, (600, 3)),
                           rng.normal([3.0, 2.0, -1.0], [1.0, 0.3, 0.6], (400, 3))])


def test_gmm_fit_keeps_the_data_mean_and_its_samples_have_the_mixture_mean(latent_codes):
    gmm = sq.fit_latent_gmm(latent_codes, components=2, seed=0)
    assert gmm.weights.shape == (2,) and gmm.means.shape == (2, 3) and gmm.covariances.shape == (2, 3, 3)
    assert gmm.weights.sum() == pytest.approx(1.0)
    assert sorted(gmm.weights) == pytest.approx([0.4, 0.6], abs=0.01)
    # At an EM fixed point sum_k w_k mu_k equals the mean of the data.
    np.testing.assert_allclose(gmm.mean, latent_codes.mean(axis=0), atol=1e-6)
    z = gmm.sample(20000, seed=1)
    assert z.shape == (20000, 3) and z.dtype == np.float32
    total_cov = sum(w * (c + np.outer(m, m)) for w, m, c in zip(gmm.weights, gmm.means, gmm.covariances)) \
        - np.outer(gmm.mean, gmm.mean)
    standard_error = np.sqrt(np.diag(total_cov) / len(z))
    assert np.all(np.abs(z.mean(axis=0) - gmm.mean) < 5 * standard_error)


def test_gmm_samples_follow_the_seed(latent_codes):
    gmm = sq.fit_latent_gmm(latent_codes, components=2, seed=0)
    np.testing.assert_array_equal(gmm.sample(50, seed=4), gmm.sample(50, seed=4))
    assert not np.array_equal(gmm.sample(50, seed=4), gmm.sample(50, seed=5))


def test_gmm_save_load_round_trip_without_pickle(latent_codes, tmp_path):
    gmm = sq.fit_latent_gmm(latent_codes, components=3, seed=0)
    path = tmp_path / "latent_gmm.npz"
    gmm.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent_gmm.npz"]  # no temporary left
    with np.load(path, allow_pickle=False) as arrays:
        assert set(arrays.files) == {"weights", "means", "covariances", "format_version"}
        np.testing.assert_array_equal(arrays["means"], gmm.means)
    loaded = sq.LatentGMM.load(path)
    np.testing.assert_array_equal(loaded.sample(100, seed=7), gmm.sample(100, seed=7))


def test_each_gmm_sample_is_its_components_mean_plus_cholesky_times_noise():
    covariances = np.array([[[4.0, 0.0], [0.0, 1.0]], [[1.0, 0.5], [0.5, 1.0]]])
    gmm = sq.LatentGMM([0.3, 0.7], np.array([[10.0, 0.0], [-5.0, 2.0]]), covariances)
    z = gmm.sample(50, seed=3)
    rng = np.random.default_rng(3)  # the same draws, in the order sample() makes them
    component = rng.choice(2, size=50, p=[0.3, 0.7])
    eps = rng.standard_normal((50, 2))
    cholesky = [np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.5, np.sqrt(0.75)]])]
    expected = [gmm.means[c] + cholesky[c] @ e for c, e in zip(component, eps)]
    np.testing.assert_allclose(z, np.array(expected), rtol=1e-6, atol=1e-6)
    assert z.dtype == np.float32 and 0 < (component == 0).sum() < 50


# Peak of GMM sampling's allocations (10,000 codes at latent 256), as tracemalloc counts NumPy's:
# 48.9 MB in each of 20 runs (2026-12-01; the count is exact, so it does not vary); an (n, L, L)
# array of covariances alone would be 5.2 GB.
GMM_SAMPLING_MEMORY_BOUND_MB = 250


def test_gmm_sampling_memory_does_not_grow_with_n_times_latent_squared():
    import tracemalloc
    latent = 256  # the CIFAR default's latent
    gmm = sq.LatentGMM(np.full(10, 0.1), np.zeros((10, latent)), np.tile(np.eye(latent), (10, 1, 1)))
    gmm.sample(10)  # first call's one-off costs
    tracemalloc.start()
    try:
        z = gmm.sample(10_000)
        peak_mb = tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()
    assert z.shape == (10_000, latent)
    assert peak_mb < GMM_SAMPLING_MEMORY_BOUND_MB, f"sampling allocated up to {peak_mb:.0f} MB at once"


def test_gmm_refuses_an_inconsistent_mixture():
    with pytest.raises(ValueError, match="sum to 1"):
        sq.LatentGMM([0.5, 0.6], np.zeros((2, 1)), np.ones((2, 1, 1)))
    with pytest.raises(ValueError, match="inconsistent"):
        sq.LatentGMM([1.0], np.zeros((1, 2)), np.ones((1, 1, 1)))


# --- feature network cache -----------------------------------------------------------------------

def toy_images(n, seed):
    """8x8 images whose class is the row of a bright bar, so a tiny net can tell them apart."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.random((n, 8, 8, 1), dtype=np.float32) * 0.2
    for i, label in enumerate(labels):
        images[i, 2 * label:2 * label + 2] = 1.0
    return images, labels


TOY = {"x_train": toy_images(64, 0)[0], "y_train": toy_images(64, 0)[1],
       "x_test": toy_images(32, 1)[0], "y_test": toy_images(32, 1)[1]}
CHECKSUM = sq.files_checksum({"toy-train": "aa" * 32, "toy-test": "bb" * 32})


def train_toy(cache_dir, **kwargs):
    return sq.feature_network("toy", **TOY, data_checksum=kwargs.pop("checksum", CHECKSUM),
                              cache_dir=cache_dir, epochs=1, verbose=0, **kwargs)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("feature-nets")
    features, info = train_toy(cache)
    return cache, features, info


@pytest.fixture
def cache_copy(toy_cache, tmp_path):
    shutil.copytree(toy_cache[0], tmp_path / "cache")
    return tmp_path / "cache"


def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("trained although a matching cache exists")
    monkeypatch.setattr(sq, "train_feature_classifier", fail)


def test_files_checksum():
    digests = {"a": "11" * 32, "b": "22" * 32}
    assert sq.files_checksum(digests) == sq.files_checksum(dict(reversed(digests.items())))
    assert sq.files_checksum(digests) != sq.files_checksum({**digests, "b": "23" * 32})
    assert len(sq.files_checksum(digests)) == 64
    with pytest.raises(ValueError):
        sq.files_checksum({})


def test_feature_network_trains_and_writes_its_cache(toy_cache):
    cache, features, info = toy_cache
    assert info["loaded"] is False
    assert sorted(p.name for p in (cache / "toy").iterdir()) == ["feature_net.keras", "info.json"]
    saved = json.loads((cache / "toy" / "info.json").read_text())
    assert saved["data_checksum"] == CHECKSUM and saved["seed"] == 0
    assert saved["train_images"] == 64 and saved["settings"]["epochs"] == 1
    assert saved["train_seconds"] > 0
    # The saved accuracy is the saved classifier's, measured again here on the same test images.
    classifier = keras.models.load_model(cache / "toy" / "feature_net.keras", compile=False)
    predicted = np.argmax(classifier.predict(TOY["x_test"], verbose=0), axis=1)
    assert saved["test_accuracy"] == pytest.approx(np.mean(predicted == TOY["y_test"]), abs=1e-9)
    assert saved["feature_net_sha256"] == sq.file_sha256(cache / "toy" / "feature_net.keras")
    assert features.output.shape[-1] == sq.FeatureNetSettings().feature_units


def test_the_feature_classifier_learns_a_separable_task():
    # 4 classes told apart by where a bright bar lies: chance is 0.25, the classifier all but perfect.
    (x, y), (x_test, y_test) = toy_images(2000, 0), toy_images(200, 1)
    _, accuracy, _ = sq.train_feature_classifier(x, y, x_test, y_test, sq.FeatureNetSettings(epochs=5),
                                                 seed=0, verbose=0)
    assert accuracy > 0.9, accuracy


def test_feature_network_cache_is_reused(toy_cache, cache_copy, monkeypatch):
    forbid_training(monkeypatch)
    features, info = train_toy(cache_copy)
    assert info["loaded"] is True and info["data_checksum"] == CHECKSUM
    x = TOY["x_test"]
    np.testing.assert_allclose(features.predict(x, verbose=0), toy_cache[1].predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_feature_network_refuses_other_data(cache_copy, monkeypatch):
    forbid_training(monkeypatch)
    other = sq.files_checksum({"toy-train": "cc" * 32})
    with pytest.raises(sq.FeatureNetError, match="--refresh") as error:
        train_toy(cache_copy, checksum=other)
    assert "\n" not in str(error.value) and "other data" in str(error.value)


def test_feature_network_refuses_a_damaged_cache(cache_copy, monkeypatch):
    forbid_training(monkeypatch)
    with open(cache_copy / "toy" / "feature_net.keras", "ab") as f:
        f.write(b"\0")  # as if a newer network had been written but not its info.json
    with pytest.raises(sq.FeatureNetError, match="does not match"):
        train_toy(cache_copy)


def test_feature_network_refresh_retrains_deterministically(toy_cache, cache_copy, monkeypatch):
    calls = []
    real = sq.train_feature_classifier
    monkeypatch.setattr(sq, "train_feature_classifier", lambda *a, **k: calls.append(1) or real(*a, **k))
    other = sq.files_checksum({"toy-train": "cc" * 32})
    features, info = train_toy(cache_copy, checksum=other, refresh=True)
    assert calls == [1] and info["loaded"] is False and info["data_checksum"] == other
    assert json.loads((cache_copy / "toy" / "info.json").read_text())["data_checksum"] == other
    # Same data, same seed: the same network as the first training.
    x = TOY["x_test"]
    np.testing.assert_allclose(features.predict(x, verbose=0), toy_cache[1].predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_feature_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_KIT_CACHE", str(tmp_path))
    assert sq.feature_cache_dir() == tmp_path / "feature-nets"
    assert sq.feature_cache_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    monkeypatch.delenv("VAE_KIT_CACHE")
    assert str(sq.feature_cache_dir()).endswith(".cache/vae-kit/feature-nets")


# --- the shipped feature networks ----------------------------------------------------------------

@pytest.mark.parametrize("dataset, shape, units", [("fashion_mnist", (28, 28, 1), 128), ("cifar10", (32, 32, 3), 256)])
def test_the_shipped_networks_load_and_their_checksums_hold(dataset, shape, units):
    from kit.atomic_files import file_sha256
    from kit.guards import shipped_feature_net_paths, shipped_feature_net_problem
    weights, card_path = shipped_feature_net_paths(dataset)
    card = json.loads(card_path.read_text())
    assert shipped_feature_net_problem(dataset) is None
    assert file_sha256(weights) == card["weights_sha256"] and weights.stat().st_size == card["weights_bytes"]
    assert card["weights_bytes"] < 3_000_000 and card["dataset"] == dataset
    assert len(card["data_checksum"]) == 64 and card["command"].startswith("python bench/feature_nets.py --ship")
    classifier, info = sq.shipped_feature_network(dataset)
    assert info == card
    # The values loaded are the values trained: the digest of the weights themselves matches.
    assert sq.weight_values_sha256(classifier) == card["weight_values_sha256"]
    assert classifier.input_shape == (None, *shape) and classifier.output_shape == (None, 10)
    features = sq.feature_extractor(classifier).predict(np.zeros((2, *shape), np.float32), verbose=0)
    assert features.shape == (2, units)


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of kit/feature_nets/ that the kit uses instead of the real one."""
    from kit import guards
    shutil.copytree(guards.SHIPPED_FEATURE_NETS, tmp_path / "nets")
    monkeypatch.setattr(guards, "SHIPPED_FEATURE_NETS", tmp_path / "nets")
    return tmp_path / "nets"


def test_a_damaged_shipped_network_is_refused(shipped_copy):
    from kit.guards import shipped_feature_net_problem
    weights = shipped_copy / "fashion_mnist.weights.h5"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte changed
    weights.write_bytes(bytes(raw))
    problem = shipped_feature_net_problem("fashion_mnist")
    assert problem.startswith(f"the shipped feature network {weights} is damaged: its SHA-256 is ")
    assert problem.endswith("restore kit/feature_nets/ from the repository (git checkout -- kit/feature_nets)")
    with pytest.raises(sq.FeatureNetError, match="is damaged"):
        sq.shipped_feature_network("fashion_mnist")
    assert shipped_feature_net_problem("cifar10") is None  # the other one is untouched


def test_a_missing_shipped_weights_file_or_card_is_named(shipped_copy):
    from kit.guards import shipped_feature_net_problem
    (shipped_copy / "cifar10.weights.h5").unlink()
    assert "the shipped feature network of cifar10 cannot be read" in shipped_feature_net_problem("cifar10")
    (shipped_copy / "cifar10.json").unlink()
    assert shipped_feature_net_problem("cifar10") == (
        "the kit ships no feature network for cifar10; pass --feature-net own to train one on this "
        "machine, or --fd-images 0")


def test_what_metrics_record_of_each_network(toy_cache):
    card = json.loads((sq.shipped_feature_net_paths("cifar10")[1]).read_text())
    shipped = sq.describe_feature_net({**card, "kind": "shipped"})
    assert shipped == {"kind": "shipped", "dataset": "cifar10", "trained_on": card["trained_on"],
                       "net_version": card["net_version"], "weights_sha256": card["weights_sha256"],
                       "test_accuracy_when_trained": card["test_accuracy"]}
    _, _, info = toy_cache
    own = sq.describe_feature_net(info)
    assert own["kind"] == "own" and own["path"] == info["path"]
    assert own["weights_sha256"] == info["feature_net_sha256"]
    assert own["trained_on"] == f"this machine's data files (checksum {CHECKSUM[:12]}...)"
