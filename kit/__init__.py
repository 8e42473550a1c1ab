"""Support modules of the VAE kit: data, options, training run, evaluation, pictures."""
