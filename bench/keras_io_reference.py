"""The keras.io "Variational AutoEncoder" example's training loop, rebuilt as the benchmark baseline.

Same architecture as `--preset keras-io` (Conv2D 32/64 stride 2, Dense 16, latent 2; Dense 7*7*64,
Conv2DTranspose 64/32 stride 2, a final sigmoid Conv2DTranspose), the example's way of training:
a GradientTape train_step, BCE on probabilities summed over pixels, `model.fit` on a NumPy array
with batch 128 and Adam 1e-3, Keras' default compile settings. No validation, no checkpoints.

    python bench/keras_io_reference.py --epochs 4 --json out.json
prints and writes the wall time of each epoch.
"""
import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, ops  # noqa: E402

from kit.data import load_fashion_mnist  # noqa: E402


class Sampling(layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps


def reference_encoder(latent_dim=2):
    inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(inputs)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Dense(16, activation="relu")(layers.Flatten()(x))
    z_mean = layers.Dense(latent_dim)(x)
    z_log_var = layers.Dense(latent_dim)(x)
    return keras.Model(inputs, [z_mean, z_log_var, Sampling()([z_mean, z_log_var])])


def reference_decoder(latent_dim=2):
    inputs = keras.Input(shape=(latent_dim,))
    x = layers.Reshape((7, 7, 64))(layers.Dense(7 * 7 * 64, activation="relu")(inputs))
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
    outputs = layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
    return keras.Model(inputs, outputs)


class ReferenceVAE(keras.Model):
    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.total = keras.metrics.Mean(name="total_loss")
        self.recon = keras.metrics.Mean(name="reconstruction_loss")
        self.kl = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [self.total, self.recon, self.kl]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            z_mean, z_log_var, z = self.encoder(data)
            reconstruction = self.decoder(z)
            recon = ops.mean(ops.sum(keras.losses.binary_crossentropy(data, reconstruction), axis=(1, 2)))
            kl = ops.mean(ops.sum(-0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)), axis=1))
            total = recon + kl
        grads = tape.gradient(total, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total.update_state(total)
        self.recon.update_state(recon)
        self.kl.update_state(kl)
        return {m.name: m.result() for m in self.metrics}


class EpochClock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", help="write the epoch times here")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x_train = load_fashion_mnist().x_train  # (60000, 28, 28, 1) float32 in [0, 1]
    vae = ReferenceVAE(reference_encoder(), reference_decoder())
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    clock = EpochClock()
    vae.fit(x_train, epochs=args.epochs, batch_size=128, callbacks=[clock], verbose=2)
    result = {"epoch_seconds": clock.seconds, "train_images": len(x_train),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
