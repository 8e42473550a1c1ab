"""Training on one device and on two logical CPU devices (MirroredStrategy) from the same weights
on the same batches, for several likelihoods; prints per likelihood the largest weight difference
as JSON. Run in its own process: logical devices must be configured before TensorFlow starts.
Arguments: likelihood names for the seed VAE; "hierarchical:NAME" for the hierarchical VAE
(tests/hierarchical_distributed_step.py), so that one process starts TensorFlow for both.

Batches: 128 images (64 per replica), the 129 as one batch (65 + 64), then 1 image (one replica
empty). The first batch is even because Keras' fit reduces the first batch over replicas to build
the model, which fails for shares of different sizes (Keras 3.15)."""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's oneDNN Conv2D fails on an empty batch of RGB images ("input depth must be evenly
# divisible by filter depth"), which the last batch gives one replica; the plain kernels do not.
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import build_vae  # noqa: E402
from kit.run import make_strategy  # noqa: E402

IMAGE_SHAPE = (8, 8, 3)


def tiny_vae(likelihood):
    return build_vae(IMAGE_SHAPE, 3, encoder_filters=(4, 8), encoder_dense=(16,),
                     decoder_filters=(8, 4), decoder_dense=(), beta=0.7, seed=0,
                     likelihood=likelihood, mixture_components=2)


def train(strategy, likelihood, initial_weights, x):
    with strategy.scope():
        model = tiny_vae(likelihood)
        model.set_weights(initial_weights)
        # z = z_mean: the test is about how replicas' gradients are combined, so the sampling
        # noise (drawn per replica) must not differ between the two set-ups.
        model.encoder.get_layer("sampling").call = lambda inputs: inputs[0]
        model.compile(optimizer=keras.optimizers.SGD(0.01))  # SGD: a mis-scaled loss shows up
    batches = [tf.data.Dataset.from_tensor_slices(images).batch(len(images))
               for images in (x[:128], x, x[:1])]
    logs = model.fit(batches[0].concatenate(batches[1]).concatenate(batches[2]), epochs=1,
                     verbose=0).history
    return model.get_weights(), logs["loss"][0]


def main():
    mirrored = make_strategy("mirrored")  # two logical CPUs on a machine without GPUs
    x = np.random.default_rng(0).random((129, *IMAGE_SHAPE)).astype(np.float32)
    x = np.round(x * 255) / 255  # 8-bit levels, as the discretized likelihoods expect
    results = {}
    plain = [arg for arg in sys.argv[1:] if not arg.startswith("hierarchical:")]
    hierarchical = [arg.split(":", 1)[1] for arg in sys.argv[1:] if arg.startswith("hierarchical:")]
    if hierarchical:
        from hierarchical_distributed_step import compare_steps
        results.update({f"hierarchical:{k}": v for k, v in compare_steps(mirrored, x, hierarchical).items()})
    for likelihood in plain:
        keras.utils.set_random_seed(0)
        initial = tiny_vae(likelihood).get_weights()
        single_weights, single_loss = train(tf.distribute.get_strategy(), likelihood, initial, x)
        multi_weights, multi_loss = train(mirrored, likelihood, initial, x)
        change = max(float(np.abs(a - b).max()) for a, b in zip(single_weights, initial))
        difference = max(float(np.abs(a - b).max()) for a, b in zip(single_weights, multi_weights))
        relative = difference / max(float(np.abs(a).max()) for a in single_weights)
        results[likelihood] = {"replicas": mirrored.num_replicas_in_sync,
                               "max_weight_change": change, "max_weight_difference": difference,
                               "max_relative_difference": relative,
                               "single_loss": single_loss, "mirrored_loss": multi_loss}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
