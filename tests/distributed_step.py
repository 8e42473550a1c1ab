"""One SGD step on one device and on two logical CPU devices (MirroredStrategy), same global
batch; prints the largest weight difference as JSON. Run in its own process: logical devices
must be configured before TensorFlow starts."""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import build_vae  # noqa: E402
from kit.run import make_strategy  # noqa: E402


def one_step(strategy, initial_weights, x):
    with strategy.scope():
        model = build_vae((28, 28, 1), 3, encoder_filters=(4, 8), encoder_dense=(16,),
                          decoder_filters=(8, 4), decoder_dense=(), beta=0.7, seed=0)
        model.set_weights(initial_weights)
        # z = z_mean: the test is about how replicas' gradients are combined, so the sampling
        # noise (drawn per replica) must not differ between the two set-ups.
        model.encoder.get_layer("sampling").call = lambda inputs: inputs[0]
        model.compile(optimizer=keras.optimizers.SGD(0.05))  # SGD: a mis-scaled loss shows up
    logs = model.fit(tf.data.Dataset.from_tensor_slices(x).batch(len(x)), epochs=1, verbose=0).history
    return model.get_weights(), logs["loss"][0]


def main():
    mirrored = make_strategy("mirrored")  # two logical CPUs on a machine without GPUs
    keras.utils.set_random_seed(0)
    initial = build_vae((28, 28, 1), 3, encoder_filters=(4, 8), encoder_dense=(16,),
                        decoder_filters=(8, 4), decoder_dense=(), beta=0.7, seed=0).get_weights()
    x = np.random.default_rng(0).random((16, 28, 28, 1)).astype(np.float32)
    single_weights, single_loss = one_step(tf.distribute.get_strategy(), initial, x)
    multi_weights, multi_loss = one_step(mirrored, initial, x)
    changes = [float(np.abs(a - b).max()) for a, b in zip(single_weights, initial)]
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(single_weights, multi_weights)),
        "max_weight_change": max(changes), "single_loss": float(single_loss), "mirrored_loss": float(multi_loss)}))


if __name__ == "__main__":
    main()
