"""Train a VAE on Fashion-MNIST (28x28 grey), then evaluate it and draw its pictures.

    python vae_fashion_mnist.py --help

Top to bottom: the defaults table, then main(): options, data, model, fit, evaluation, pictures.
The models are in common.py and kit/hierarchical_vae.py, their likelihoods in kit/likelihoods.py;
the named helpers in kit/.
"""
import sys

from kit.config import HIERARCHICAL_TRAINING, KERAS_IO_PRESET, DatasetSpec, parse_config
from kit.data import load_fashion_mnist
from kit.errors import exit_code_of
from kit.guards import claim_outdir

# Tuned for quality per second on a 2-core CPU: see docs/BENCHMARKS.md.
DEFAULT = dict(latent_dim=32, epochs=20, batch_size=128, beta=1.0, lr=1e-3,
               lr_schedule="cosine", kl_warmup=0, likelihood="bernoulli",
               gaussian_sigma="optimal", mixture_components=5, arch="plain",
               blocks_per_resolution=1,
               encoder_filters=[32, 64], encoder_dense=[256],
               decoder_filters=[64, 32], decoder_dense=[256],
               # --arch hierarchical (kit/hierarchical_vae.py; resolutions 28, 14, 7, 1): the
               # configuration its author measured (bench/hierarchical_smoke.py). The gradient norm
               # grows in training, so the thresholds are relative to its running level: the clip at
               # the 99th percentile of norm / level after the warm-up (5.14, rounded up), the skip 5
               # times that (docs/BENCHMARKS.md, bench/optimizer_comparison.py).
               hvae_widths=[32], hvae_blocks=[1, 1, 2, 1], latent_channels=4,
               latent_resolutions=[1, 7, 7, 7, 14, 14],
               grad_clip=0.0, skip_threshold=0.0, clip_factor=6.0, skip_factor=30.0)

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist", title="Fashion-MNIST", image_shape=(28, 28, 1), load=load_fashion_mnist,
    default_outdir="outputs/fashion_mnist",
    presets={
        "default": DEFAULT,
        # The hierarchical VAE with the likelihood, batch size and learning rate of its author's runs,
        # trained as VDVAE trains (kit/config.py's HIERARCHICAL_TRAINING).
        "hierarchical": {**DEFAULT, "arch": "hierarchical", "likelihood": "discretized-logistic-mixture",
                         "batch_size": 32, "lr": 2e-3, **HIERARCHICAL_TRAINING},
        "keras-io": {**DEFAULT, **KERAS_IO_PRESET},  # the example's model; the hierarchical options stay
    })


def main(argv=None):
    config = parse_config(FASHION_MNIST, argv)  # a bad option: one line, exit 2, no TensorFlow yet
    claim_outdir(config.outdir)  # one run per folder: another run there is refused with exit 2
    from kit.quiet_start import import_tensorflow
    import_tensorflow()  # seconds; without its C++ start-up log (TF_CPP_MIN_LOG_LEVEL=0 shows it)
    from kit.models import build_model
    from kit import run

    strategy = run.set_up_runtime(config)  # seeds, precision policy, tf.distribute strategy
    if config.eval_only:
        return run.evaluate_saved_model(config, FASHION_MNIST)
    splits = run.load_data(config, FASHION_MNIST)

    steps_per_epoch = run.steps_per_epoch(config, splits, strategy)
    with strategy.scope():
        if config.resume:  # weights, optimizer state, history (and the place inside an epoch)
            model, history, inside_epoch = run.resume_from_checkpoint(config, FASHION_MNIST)
        else:
            model, history, inside_epoch = build_model(FASHION_MNIST.image_shape, dataset=FASHION_MNIST.name,
                                                       seed=config.seed, **config.model_options()), [], None
            model.compile(optimizer=run.adam(config, steps_per_epoch), jit_compile=config.jit_compile,
                          steps_per_execution=config.steps_per_execution)
    model.summary()
    run.start_run_folder(config, FASHION_MNIST, splits)  # config.json; an older run's results go

    with run.resume_hint_on_stop(config, history):
        model.fit(run.train_batches(config, splits.x_train, len(history), steps_per_epoch, inside_epoch),
                  validation_data=run.validation_batches(splits), epochs=config.epochs,
                  initial_epoch=len(history), steps_per_epoch=steps_per_epoch, shuffle=False,
                  callbacks=run.training_callbacks(config, FASHION_MNIST, splits, history, inside_epoch))
    if not run.is_chief():
        return 0  # in a cluster, the chief writes the results
    with run.finish_hint_on_stop(config, history):  # Ctrl-C here says how to finish with --resume
        run.save_model(model, config)
        gmm = run.fit_latent_gmm(model, config, splits)  # ex-post sampler (Ghosh et al. 2020), or None
        evaluation = run.evaluate(model, config, FASHION_MNIST, splits, history, gmm)  # the test split
        run.draw_pictures(model, config, FASHION_MNIST, splits, history, gmm, evaluation)
        run.save_metrics(config, evaluation.metrics)  # last: metrics.json marks a finished run
    return 0


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
