"""Train a VAE on CIFAR-10 (32x32 RGB). `python vae_cifar10.py --help` lists options."""
import sys

from kit.cli import main
from kit.config import KERAS_IO_PRESET, DatasetSpec
from kit.data import load_cifar10

CIFAR10 = DatasetSpec(
    name="cifar10", title="CIFAR-10", image_shape=(32, 32, 3), load=load_cifar10,
    default_outdir="outputs/cifar10",
    presets={
        # Colour images need more capacity and a larger latent than the grey defaults.
        "default": dict(latent_dim=128, epochs=10, batch_size=128, lr=1e-3, lr_schedule="cosine",
                        encoder_filters=[32, 64, 128], encoder_dense=[512],
                        decoder_filters=[128, 64, 32], decoder_dense=[512]),
        "keras-io": KERAS_IO_PRESET,
    })

if __name__ == "__main__":
    sys.exit(main(CIFAR10))
