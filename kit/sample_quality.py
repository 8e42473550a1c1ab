"""Sample quality: a Fréchet distance in the features of a small classifier trained by the kit,
and an ex-post Gaussian-mixture sampler of the latent space.

Everything here takes arrays (images float32 in [0, 1] shaped (N, H, W, C), int labels); the
caller loads data and parses options. Feature networks are cached per data set under
`<cache>/<dataset>/` (feature_net.keras + info.json), where <cache> is the `cache_dir` argument,
else $VAE_KIT_CACHE/feature-nets, else ~/.cache/vae-kit/feature-nets.
"""
import hashlib
import json
import re
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
import scipy.linalg
import tensorflow as tf
from keras import layers
from sklearn.mixture import GaussianMixture

from kit.atomic_files import atomic_path, file_sha256, write_json
from kit.errors import UsageError
from kit.guards import feature_cache_root
from kit.pipeline import shuffled_batches

FEATURE_NET_VERSION = 1  # bump when the architecture or training changes: old caches are refused
FEATURE_NET_FILE = "feature_net.keras"
INFO_FILE = "info.json"
FEATURE_LAYER = "features"
FEATURE_BATCH = 500
GMM_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FeatureNetSettings:
    """Architecture and training schedule of one data set's feature classifier."""
    conv_filters: tuple = (32, 64, 128)  # a block each: conv, 2x2 max-pool, BN, ReLU (+ more convs)
    convs_per_block: int = 1
    feature_units: int = 128  # width of the penultimate Dense layer: the feature space
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 3e-3


# Tuned on 2 shared CPU cores to train in under 2 minutes: about 92 % test accuracy on
# Fashion-MNIST, about 73 % on the CIFAR-10 JPEG copy (see the module's bench script).
FEATURE_NET_SETTINGS = {
    "fashion_mnist": FeatureNetSettings(feature_units=128, epochs=5),
    "cifar10": FeatureNetSettings(feature_units=256, epochs=4),
}


class FeatureNetError(UsageError):
    """The cached feature network cannot be used for this data (stale, foreign or damaged): exit 2."""


# --- cache ---------------------------------------------------------------------------------------

def files_checksum(sha256_by_file):
    """One hex digest for a data set from its per-file SHA-256s ({filename: hexdigest}, as in
    kit.data's Splits.sha256); independent of the dict's order."""
    if not sha256_by_file:
        raise ValueError("no per-file SHA-256 digests to make a data checksum from")
    lines = "".join(f"{name}\t{digest}\n" for name, digest in sorted(sha256_by_file.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def feature_cache_dir(cache_dir=None):
    """The folder holding one subfolder per data set: cache_dir, else $VAE_KIT_CACHE/feature-nets,
    else ~/.cache/vae-kit/feature-nets."""
    return Path(cache_dir) if cache_dir is not None else feature_cache_root()


def feature_network(dataset_name, x_train, y_train, x_test, y_test, data_checksum, refresh=False,
                    cache_dir=None, seed=0, epochs=None, train_images=None, verbose=1):
    """(features_model, info): the data set's feature classifier cut at its penultimate layer.

    Loads <cache>/<dataset_name>/ when its info.json names the same `data_checksum`, trains and
    caches a new one when there is none or `refresh` is true, and raises FeatureNetError when the
    cached one belongs to other data. `epochs` and `train_images` (first N training images)
    shrink training for tests. info holds the cache's info.json plus "loaded" and "path".
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", dataset_name):
        raise ValueError(f"dataset name {dataset_name!r} cannot name a cache folder")
    folder = feature_cache_dir(cache_dir) / dataset_name
    if not refresh and (folder / INFO_FILE).exists():
        model, info = load_cached_feature_net(folder, data_checksum)
        return feature_extractor(model), {**info, "loaded": True, "path": str(folder)}
    settings = FEATURE_NET_SETTINGS.get(dataset_name, FeatureNetSettings())
    if epochs is not None:
        settings = replace(settings, epochs=epochs)
    if train_images is not None:
        x_train, y_train = x_train[:train_images], y_train[:train_images]
    model, test_accuracy, train_seconds = train_feature_classifier(
        x_train, y_train, x_test, y_test, settings, seed=seed, verbose=verbose)
    info = {
        "dataset": dataset_name, "data_checksum": data_checksum, "net_version": FEATURE_NET_VERSION,
        "test_accuracy": test_accuracy, "train_seconds": train_seconds, "seed": seed,
        "train_images": len(x_train), "test_images": len(x_test), "settings": asdict(settings),
        "feature_layer": FEATURE_LAYER, "feature_units": settings.feature_units,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__},
    }
    save_cached_feature_net(folder, model, info)
    info = json.loads((folder / INFO_FILE).read_text())  # what a later load will see
    return feature_extractor(model), {**info, "loaded": False, "path": str(folder)}


def save_cached_feature_net(folder, model, info):
    """Network first, then info.json naming the network's SHA-256: a run killed in between
    leaves an info.json that does not match the network file, which loading refuses."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / FEATURE_NET_FILE) as tmp:
        model.save(tmp)
    write_json(folder / INFO_FILE, {**info, "feature_net_sha256": file_sha256(folder / FEATURE_NET_FILE)})


def check_feature_cache(dataset_name, data_checksum, cache_dir=None):
    """FeatureNetError now, before any training, if a cached network exists but cannot be used:
    made from other data, by another version, damaged or unreadable."""
    folder = feature_cache_dir(cache_dir) / dataset_name
    if (folder / INFO_FILE).exists():
        cached_feature_net_info(folder, data_checksum)


def cached_feature_net_info(folder, checksum):
    """The cache's info.json after checking it belongs to data `checksum`, to this kit's version
    and to the network file beside it; FeatureNetError (with the way out) otherwise."""
    advice = f"pass --refresh-feature-net to retrain it, or delete {folder}"
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError) as err:
        raise FeatureNetError(f"{folder / INFO_FILE} is unreadable ({err}); {advice}") from None
    if not isinstance(info, dict):
        raise FeatureNetError(f"{folder / INFO_FILE} holds no JSON object; {advice}")
    if info.get("data_checksum") != checksum:
        raise FeatureNetError(
            f"the feature network cached in {folder} was trained on other data (checksum "
            f"{str(info.get('data_checksum'))[:12]}..., this data {checksum[:12]}...); {advice}")
    if info.get("net_version") != FEATURE_NET_VERSION:
        raise FeatureNetError(f"the feature network cached in {folder} is version "
                              f"{info.get('net_version')}, this kit builds {FEATURE_NET_VERSION}; {advice}")
    path = folder / FEATURE_NET_FILE
    if not path.is_file() or file_sha256(path) != info.get("feature_net_sha256"):
        raise FeatureNetError(f"{path} is missing or does not match {INFO_FILE} "
                              f"(an interrupted training?); {advice}")
    return info


def load_cached_feature_net(folder, checksum):
    """(classifier, info) from a cache folder, after checking it (cached_feature_net_info)."""
    info = cached_feature_net_info(folder, checksum)
    return keras.models.load_model(folder / FEATURE_NET_FILE, compile=False), info


def feature_extractor(classifier):
    """The classifier's input -> its penultimate (feature) layer."""
    return keras.Model(classifier.inputs, classifier.get_layer(FEATURE_LAYER).output,
                       name="feature_extractor")


# --- the feature classifier ----------------------------------------------------------------------

def build_feature_classifier(image_shape, num_classes, settings, seed=0):
    """Conv blocks -> global average pooling -> Dense features (ReLU) -> class logits; float32
    whatever the global precision policy, with every initializer seeded."""
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))

    def he():
        return keras.initializers.HeNormal(seed=next(seeds))

    inputs = keras.Input(shape=image_shape, name="image", dtype="float32")
    x = inputs
    for filters in settings.conv_filters:
        for i in range(settings.convs_per_block):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=he(),
                              dtype="float32")(x)
            if i == 0:  # pooling first leaves a quarter of the pixels to normalise
                x = layers.MaxPooling2D(2, dtype="float32")(x)
            x = layers.BatchNormalization(dtype="float32")(x)
            x = layers.Activation("relu", dtype="float32")(x)
    x = layers.GlobalAveragePooling2D(dtype="float32")(x)
    x = layers.Dense(settings.feature_units, activation="relu", kernel_initializer=he(),
                     name=FEATURE_LAYER, dtype="float32")(x)
    logits = layers.Dense(num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
                          name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="feature_classifier")


def classifier_batches(x, y, batch_size, seed, epochs):
    """(images, labels) batches: a fresh permutation per epoch keyed by (seed, epoch), so the
    same seed gives the same batches."""
    ds = shuffled_batches((x, np.asarray(y, dtype=np.int32)), batch_size, seed, 0, epochs)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_feature_classifier(x_train, y_train, x_test, y_test, settings, seed=0, verbose=1):
    """(classifier, test accuracy, training seconds): Adam with linear warm-up and cosine decay,
    cross-entropy from logits, a Keras progress bar per epoch."""
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    model = build_feature_classifier(x_train.shape[1:], num_classes, settings, seed=seed)
    steps_per_epoch = -(-len(x_train) // settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = max(1, total_steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        settings.learning_rate / 10, decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=settings.learning_rate, warmup_steps=warmup_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    batches = classifier_batches(x_train, y_train, settings.batch_size, seed, settings.epochs)
    start = time.perf_counter()
    model.fit(batches, epochs=settings.epochs, steps_per_epoch=steps_per_epoch, shuffle=False,
              verbose=verbose)
    train_seconds = time.perf_counter() - start
    logits = model.predict(x_test, batch_size=FEATURE_BATCH, verbose=0)
    test_accuracy = float(np.mean(np.argmax(logits, axis=1) == np.asarray(y_test)))
    return model, test_accuracy, train_seconds


# --- Fréchet distance ----------------------------------------------------------------------------

def feature_statistics(features_model, images, batch_size=FEATURE_BATCH):
    """(mean, covariance) in float64 of the features of `images` (at least two)."""
    if len(images) < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {len(images)}")
    features = features_model.predict(np.asarray(images, dtype=np.float32), batch_size=batch_size,
                                      verbose=0).astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, cov1, mu2, cov2, eps=1e-6):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians; Heusel et al.,
    "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium" (2017)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: means {mu1.shape} {mu2.shape}, "
                         f"covariances {cov1.shape} {cov2.shape}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov1 @ cov2)
    singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
    if singular or not np.all(np.isfinite(root)):
        # e.g. a feature that is always 0: the distance between both Gaussians widened by eps I
        cov1, cov2 = cov1 + eps * np.eye(len(mu1)), cov2 + eps * np.eye(len(mu1))
        root = scipy.linalg.sqrtm(cov1 @ cov2)
    if np.iscomplexobj(root):
        # Round-off gives the root of a PSD product a tiny imaginary part; a large one means
        # the inputs are not covariances.
        largest = np.max(np.abs(root.imag))
        if largest > 1e-3 * max(1.0, np.max(np.abs(root.real))):
            raise ValueError(f"matrix square root has an imaginary part of {largest:.3g}: "
                             f"are both matrices covariances?")
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(root))


def frechet_distance_of_images(features_model, images_a, images_b, batch_size=FEATURE_BATCH):
    """Fréchet distance between two image sets in the feature network's feature space."""
    return frechet_distance(*feature_statistics(features_model, images_a, batch_size),
                            *feature_statistics(features_model, images_b, batch_size))


# --- ex-post Gaussian-mixture sampler -----------------------------------------------------------

@dataclass
class LatentGMM:
    """A Gaussian mixture over latent codes: weights (K,), means (K, L), covariances (K, L, L).

    Ghosh et al., "From Variational to Deterministic Autoencoders" (ICLR 2020): sample z from
    a density fitted to the posterior means instead of the prior.
    """
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def __post_init__(self):
        self.weights = np.asarray(self.weights, np.float64)
        self.means = np.asarray(self.means, np.float64)
        self.covariances = np.asarray(self.covariances, np.float64)
        k, latent = self.means.shape
        if self.weights.shape != (k,) or self.covariances.shape != (k, latent, latent):
            raise ValueError(f"inconsistent mixture: weights {self.weights.shape}, means "
                             f"{self.means.shape}, covariances {self.covariances.shape}")
        if np.any(self.weights < 0) or not np.isclose(self.weights.sum(), 1.0):
            raise ValueError(f"mixture weights must be non-negative and sum to 1 "
                             f"(sum {self.weights.sum():.6g})")
        self.cholesky = np.linalg.cholesky(self.covariances)  # fails unless positive definite

    @property
    def mean(self):
        """Mean of the mixture: sum_k w_k mu_k."""
        return self.weights @ self.means

    def sample(self, n, seed=0):
        """n latent codes (float32): a component by weight, then mu_k + L_k eps with L_k L_k^T = S_k."""
        rng = np.random.default_rng(seed)
        component = rng.choice(len(self.weights), size=n, p=self.weights / self.weights.sum())
        eps = rng.standard_normal((n, self.means.shape[1]))
        z = np.empty_like(eps)
        for k in np.unique(component):  # one matrix product per component: no (n, L, L) array
            chosen = component == k
            z[chosen] = self.means[k] + eps[chosen] @ self.cholesky[k].T
        return z.astype(np.float32)

    def save(self, path):
        """Write an .npz of plain arrays (loads with allow_pickle=False), atomically."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, weights=self.weights, means=self.means, covariances=self.covariances,
                         format_version=np.int64(GMM_FORMAT_VERSION))

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as arrays:
            version = int(arrays["format_version"])
            if version != GMM_FORMAT_VERSION:
                raise ValueError(f"{path}: latent GMM format {version}, expected {GMM_FORMAT_VERSION}")
            return cls(arrays["weights"], arrays["means"], arrays["covariances"])


def fit_latent_gmm(z, components=10, seed=0):
    """LatentGMM fitted by EM (sklearn, full covariances) to posterior means z shaped (N, L)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) < components:
        raise ValueError(f"need an (N, latent) array with N >= {components} components, got {z.shape}")
    gmm = GaussianMixture(n_components=components, covariance_type="full", random_state=seed).fit(z)
    return LatentGMM(gmm.weights_, gmm.means_, gmm.covariances_)


# --- the numbers of a trained VAE ------------------------------------------------------------------

def sample_quality_metrics(model, features, x_train, x_test, gmm, n_images, seed=0, reconstructions=None,
                           temperature=1.0):
    """Fréchet distances to the test images, in the feature network's space: of decoder means of
    prior samples (the prior's std times `temperature`: z ~ N(0, T² I), or the hierarchical VAE's
    sample), of GMM samples (None without a GMM: the hierarchical VAE has none), of test
    reconstructions (given, or made here), and of real training images (what a perfect model would
    get). Uses up to n_images of each set."""
    from kit.evaluate import decode_images, prior_samples, reconstruct  # the model's side, kept out of the maths
    n_images = min(n_images, len(x_test), len(x_train))  # every set the same size
    test = x_test[:n_images]
    reference = feature_statistics(features, test)

    def fd(images):
        return frechet_distance(*feature_statistics(features, images), *reference)

    return {"fd_images": int(len(test)),
            "fd_prior_samples": fd(prior_samples(model, n_images, seed, temperature)),
            "fd_gmm_samples": None if gmm is None else fd(decode_images(model, gmm.sample(n_images, seed))),
            "fd_reconstructions": fd(reconstructions[:n_images] if reconstructions is not None
                                     else reconstruct(model, test)),
            "fd_train_vs_test": fd(x_train[:n_images])}
