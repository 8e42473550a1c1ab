"""Train a VAE on Fashion-MNIST (28x28 grey). `python vae_fashion_mnist.py --help` lists options."""
import sys

from kit.cli import main
from kit.config import KERAS_IO_PRESET, DatasetSpec
from kit.data import load_fashion_mnist

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist", title="Fashion-MNIST", image_shape=(28, 28, 1), load=load_fashion_mnist,
    default_outdir="outputs/fashion_mnist",
    presets={
        # Tuned for quality per second on a 2-core CPU: see docs/BENCHMARKS.md.
        "default": dict(latent_dim=32, epochs=20, batch_size=128, lr=1e-3, lr_schedule="cosine",
                        encoder_filters=[32, 64], encoder_dense=[256],
                        decoder_filters=[64, 32], decoder_dense=[256]),
        "keras-io": KERAS_IO_PRESET,
    })

if __name__ == "__main__":
    sys.exit(main(FASHION_MNIST))
