"""The model's choices, TensorFlow-free, so the options, the model and the memory estimate share
them: likelihood names, Gaussian sigma modes, architectures, the decoder's output channels, and the
hierarchical VAE's resolutions and gradient thresholds."""

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian", "discretized-logistic",
               "discretized-logistic-mixture")
GAUSSIAN_SIGMA_MODES = ("optimal", "learned")
# "plain" and "resnet" are common.build_vae's encoder/decoder stacks around one latent vector;
# "hierarchical" is kit/hierarchical_vae.py's VDVAE-style model with groups of latent maps.
CONV_ARCHITECTURES = ("plain", "resnet")
ARCHITECTURES = (*CONV_ARCHITECTURES, "hierarchical")
# VDVAE's CIFAR-10 thresholds (hps.py: grad_clip 200, skip_threshold 400) are for the gradient of
# the loss in nats per dimension; the kit's loss is nats per image, whose gradient is D times
# larger, so the same thresholds are these times D (see vdvae_thresholds).
VDVAE_GRAD_CLIP_PER_DIM = 200.0
VDVAE_SKIP_THRESHOLD_PER_DIM = 400.0
# The hierarchical VAE's running level of its gradient norm, to which --clip-factor and
# --skip-factor are relative: an exponential moving average at this rate per update (a memory of
# about 100 updates), so the thresholds follow the norm as it grows in training (docs/HIERARCHICAL.md).
NORM_LEVEL_RATE = 0.99


def decoder_output_channels(likelihood, image_channels, mixture_components=5):
    """Channels of the decoder's last layer: C (bernoulli, continuous-bernoulli, gaussian mean), 2C
    (discretized-logistic mean, log-scale), K*(1 + 3C) for the RGB mixture, K*(1 + 2C) otherwise."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
    if likelihood == "discretized-logistic":
        return 2 * image_channels
    if likelihood == "discretized-logistic-mixture":
        check_components(mixture_components)
        return mixture_components * mixture_channels_per_component(image_channels)
    return image_channels


def mixture_channels_per_component(image_channels):
    """1 logit + C means + C log-scales (+ 3 colour coefficients for RGB, PixelCNN++)."""
    return 1 + (3 if image_channels == 3 else 2) * image_channels


def check_components(components):
    if isinstance(components, bool) or int(components) != components or components < 1:
        raise ValueError(f"mixture_components must be an integer >= 1, not {components!r}")


def resolution_chain(size):
    """Resolutions of the hierarchical VAE's bottom-up pass for a square image of side `size`,
    largest first.

    Halve while the side is even and the half is at least 4, then one step to 1x1 (VDVAE's
    CIFAR-10 chain 32, 16, 8, 4, 1). Every step divides exactly, so odd sides need no padding:
    28 -> 28, 14, 7, 1 (Fashion-MNIST); 8 -> 8, 4, 1; 2 -> 2, 1.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"image side must be >= 1, not {size}")
    chain = [size]
    while chain[-1] % 2 == 0 and chain[-1] // 2 >= 4:
        chain.append(chain[-1] // 2)
    if chain[-1] > 1:
        chain.append(1)
    return chain


def vdvae_thresholds(image_shape):
    """(grad_clip, skip_threshold) for the per-image loss that equal VDVAE's per-dimension ones."""
    dims = 1
    for side in image_shape:
        dims *= int(side)
    return VDVAE_GRAD_CLIP_PER_DIM * dims, VDVAE_SKIP_THRESHOLD_PER_DIM * dims
