"""The model an --arch names: the seed VAE with plain or residual stacks (common.build_vae), or the
hierarchical VAE (kit/hierarchical_vae.py). Each gets the options it uses and ignores the rest."""
from common import VAE, build_vae
from kit.hierarchical_vae import HierarchicalVAE, build_hierarchical_vae

KIT_MODELS = (VAE, HierarchicalVAE)


def build_model(image_shape, dataset, seed, arch, likelihood, mixture_components, gaussian_sigma, beta,
                latent_dim, encoder_filters, encoder_dense, decoder_filters, decoder_dense,
                blocks_per_resolution, hvae_widths, hvae_blocks, latent_channels, latent_resolutions,
                grad_clip, skip_threshold, clip_factor=0, skip_factor=0):
    """A built model for the options of kit.config.Config.model_options(). The hierarchical VAE's
    widths and blocks are one value or one per resolution; grad_clip, skip_threshold, clip_factor,
    skip_factor: 0 is off."""
    if arch == "hierarchical":
        return build_hierarchical_vae(
            image_shape, one_or_all(hvae_widths), one_or_all(hvae_blocks), latent_channels,
            list(latent_resolutions), likelihood=likelihood, mixture_components=mixture_components,
            gaussian_sigma=gaussian_sigma, beta=beta, dataset=dataset, seed=seed,
            grad_clip=grad_clip or None, skip_threshold=skip_threshold or None,
            clip_factor=clip_factor or None, skip_factor=skip_factor or None)
    return build_vae(image_shape, latent_dim, encoder_filters, encoder_dense, decoder_filters, decoder_dense,
                     beta=beta, likelihood=likelihood, dataset=dataset, seed=seed,
                     gaussian_sigma=gaussian_sigma, mixture_components=mixture_components, arch=arch,
                     blocks_per_resolution=blocks_per_resolution)


def one_or_all(values):
    """[w] -> w (every resolution), [w1, w2, ...] -> the list (one per resolution)."""
    return values[0] if len(values) == 1 else list(values)


def is_hierarchical(model):
    return isinstance(model, HierarchicalVAE)


def describe(model):
    """The model in a few words, for picture titles."""
    if is_hierarchical(model):
        return latent_groups_note(model.group_resolutions, model.latent_channels)
    return f"latent dim {model.latent_dim}"


def latent_groups_note(resolutions, channels):
    """'hierarchical, 6 latent groups (1,7,7,7,14,14) x 4 channels'."""
    resolutions = sorted(resolutions)
    return (f"hierarchical, {len(resolutions)} latent group{'s' if len(resolutions) != 1 else ''} "
            f"({','.join(map(str, resolutions))}) × {channels} channels")
