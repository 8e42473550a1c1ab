"""The model's choices, TensorFlow-free, so the options, the model and the memory estimate share
them: likelihood names, Gaussian sigma modes, architectures, and the decoder's output channels."""

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian", "discretized-logistic",
               "discretized-logistic-mixture")
GAUSSIAN_SIGMA_MODES = ("optimal", "learned")
ARCHITECTURES = ("plain", "resnet")


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
