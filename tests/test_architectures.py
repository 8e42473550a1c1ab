"""arch = "resnet": shapes, residual blocks with batch-independent normalisation, training; the
decoder's last layer follows the likelihood for both architectures."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from common import LIKELIHOODS, build_decoder, build_encoder, build_vae


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("blocks", [1, 2])
def test_resnet_shapes_and_blocks_per_resolution(blocks):
    encoder = build_encoder((32, 32, 3), 8, conv_filters=(16, 32, 64), dense_units=(32,), arch="resnet",
                            blocks_per_resolution=blocks)
    assert [tuple(o.shape) for o in encoder.outputs] == [(None, 8)] * 3
    decoder = build_decoder(8, (32, 32, 3), conv_filters=(64, 32, 16), dense_units=(32,),
                            likelihood="discretized-logistic-mixture", mixture_components=4,
                            arch="resnet", blocks_per_resolution=blocks)
    assert decoder.output_shape == (None, 32, 32, 40)
    for model in (encoder, decoder):
        types = layer_types(model)
        assert types.count("Add") == 3 * blocks  # blocks at each of the three resolutions
        assert "GroupNormalization" in types and "BatchNormalization" not in types
    # Strided convs between resolutions: 16x16, 8x8, 4x4 in the encoder; 8, 16, 32 in the decoder.
    strided = [layer.output.shape[1] for layer in encoder.layers
               if type(layer).__name__ == "Conv2D" and layer.strides == (2, 2)]
    assert strided == [16, 8, 4]
    upsampled = [layer.output.shape[1] for layer in decoder.layers if type(layer).__name__ == "Conv2DTranspose"]
    assert upsampled == [8, 16, 32]


def test_resnet_blocks_start_as_the_identity():
    decoder = build_decoder(4, (8, 8, 1), conv_filters=(8,), dense_units=(), arch="resnet", blocks_per_resolution=2)
    adds = [layer for layer in decoder.layers if type(layer).__name__ == "Add"]
    probe = keras.Model(decoder.inputs, [adds[0].input[0], adds[-1].output])
    before, after = probe([np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)])
    np.testing.assert_array_equal(before.numpy(), after.numpy())


@pytest.mark.parametrize("likelihood,channels", [("bernoulli", 1), ("gaussian", 3), ("discretized-logistic", 6)])
def test_plain_decoder_output_channels_follow_the_likelihood(likelihood, channels):
    image_channels = 1 if likelihood == "bernoulli" else 3
    decoder = build_decoder(2, (8, 8, image_channels), conv_filters=(4,), dense_units=(),
                            likelihood=likelihood)
    assert decoder.output_shape == (None, 8, 8, channels)
    assert decoder.get_layer("outputs").dtype_policy.compute_dtype == "float32"


def test_a_resnet_vae_trains():
    keras.utils.set_random_seed(0)
    model = build_vae((8, 8, 3), 2, encoder_filters=(8,), encoder_dense=(8,), decoder_filters=(8,),
                      decoder_dense=(), likelihood="gaussian", seed=0, arch="resnet", blocks_per_resolution=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = np.random.default_rng(0).random((32, 8, 8, 3)).astype(np.float32) * 0.2
    x[:, 2:6, 2:6] += 0.7
    history = model.fit(x, epochs=3, batch_size=16, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("arch", ["plain", "resnet"])
def test_every_likelihood_under_mixed_precision_keeps_float32_losses(likelihood, arch):
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = build_vae((4, 4, 3), 2, encoder_filters=(4,), encoder_dense=(4,), decoder_filters=(4,),
                          decoder_dense=(), likelihood=likelihood, mixture_components=2, seed=0,
                          arch=arch)
        assert model.decoder.layers[-2].compute_dtype == "bfloat16"  # the network computes in bf16
        x = np.random.default_rng(1).integers(0, 256, (8, 4, 4, 3)).astype(np.float32) / 255
        with tf.GradientTape() as tape:
            reconstruction, kl = model.per_image_losses(x, training=True)
        assert reconstruction.dtype == "float32" and kl.dtype == "float32"
        assert np.all(np.isfinite(reconstruction.numpy()))
        gradients = tape.gradient(reconstruction, model.trainable_weights)
        assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in gradients)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_architecture_options_are_checked():
    with pytest.raises(ValueError, match="arch"):
        build_encoder((8, 8, 1), 2, (4,), (), arch="unet")
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="blocks_per_resolution"):
            build_decoder(2, (8, 8, 1), (4,), (), arch="resnet", blocks_per_resolution=bad)
