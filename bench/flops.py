"""FLOPs of a VAE counted from its layer shapes, and this machine's float32 matmul throughput.

Forward multiply-adds x 2 = forward FLOPs; a training step costs about 3 x forward (forward,
gradient w.r.t. activations, gradient w.r.t. weights). Elementwise ops are left out: they are a
few percent of the convolutions and dense layers of the plain models (for the hierarchical VAE,
whose convolutions are narrow, they are a larger share: docs/BENCHMARKS.md).

The plain and resnet models are counted from their functional layers' recorded shapes; the
hierarchical VAE (kit/hierarchical_vae.py), whose blocks are built without a symbolic call, from
its structure: every convolution is stride 1 with "same" padding at a known resolution.
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


def conv_macs_at(conv, side):
    """Multiply-adds of a stride-1, "same"-padded Conv2D on a side x side map, for one image."""
    kh, kw, c_in, c_out = conv.kernel.shape
    return side * side * kh * kw * c_in * c_out


def hierarchical_forward_macs(model):
    """{part: multiply-adds} of one forward pass (bottom-up and top-down with the posterior, as in
    training) of a kit.hierarchical_vae.HierarchicalVAE, for one image. Average pooling,
    upsampling, GELUs, the KL and the likelihood are elementwise and left out."""
    def block(b, side):
        return sum(conv_macs_at(c, side) for c in b.convs)

    chain, top = model.chain, model.chain[0]
    parts = {"stem": conv_macs_at(model.stem, top), "encoder blocks": 0, "projections": 0, "priors": 0,
             "posteriors": 0, "z projections": 0, "group residual blocks": 0, "decoder blocks": 0,
             "output": conv_macs_at(model.out_conv, top)}
    for r in chain:
        parts["encoder blocks"] += sum(block(b, r) for b in model.encoder_stages[str(r)])
        parts["decoder blocks"] += sum(block(b, r) for b in model.decoder_stages[str(r)])
        for projections in (model.encoder_projections, model.decoder_projections):
            if str(r) in projections:
                parts["projections"] += conv_macs_at(projections[str(r)], r)
    for group, r in zip(model.latent_groups, model.group_resolutions):
        parts["priors"] += block(group.prior_block, r)
        parts["posteriors"] += block(group.posterior_block, r)
        parts["z projections"] += conv_macs_at(group.z_proj, r)
        parts["group residual blocks"] += block(group.resnet, r)
    return parts


def training_flops_per_image(model):
    """3 x 2 x forward multiply-adds over the encoder and decoder of a VAE, or over every
    convolution of the hierarchical VAE."""
    if hasattr(model, "latent_groups"):
        macs = sum(hierarchical_forward_macs(model).values())
    else:
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
