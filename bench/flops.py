"""FLOPs of a VAE counted from its layer shapes, and this machine's float32 matmul throughput.

Forward multiply-adds x 2 = forward FLOPs; a training step costs about 3 x forward (forward,
gradient w.r.t. activations, gradient w.r.t. weights). Elementwise ops are left out: they are a
few percent of the convolutions and dense layers here.
"""
import time

import keras
import numpy as np
import tensorflow as tf


def layer_macs(layer):
    """Multiply-adds of one forward pass of `layer` for one image."""
    if isinstance(layer, keras.layers.Conv2DTranspose):
        _, h_in, w_in, c_in = layer.input.shape  # each input pixel scatters a k x k x C_out kernel
        kh, kw = layer.kernel_size
        return h_in * w_in * c_in * kh * kw * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        _, h_out, w_out, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        return h_out * w_out * c_out * kh * kw * layer.input.shape[-1]
    if isinstance(layer, keras.layers.Dense):
        return layer.input.shape[-1] * layer.units
    return 0


def training_flops_per_image(model):
    """3 x 2 x forward multiply-adds over the encoder and decoder of a VAE."""
    macs = sum(layer_macs(layer) for part in (model.encoder, model.decoder) for layer in part.layers)
    return 3 * 2 * macs


def matmul_gflops(n=2048, repeats=20):
    """Best-of float32 matmul throughput (GFLOP/s) for n x n matrices, timed in this process."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    matmul(a, b).numpy()  # warm-up and tracing
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9
