"""The hierarchical preset's optimizer settings compared step for step on the validation split, and
its gradient norms (from which the presets' --clip-factor and --skip-factor are set).

    python bench/optimizer_comparison.py --configs adam,adam-b2,adamw --steps 1500 --eval-every 500 \
        --eval-images 1000 --ema 0.99,0.998
    python bench/optimizer_comparison.py --dataset cifar10 --data-dir <copy> --configs adamw --steps 300 \
        --eval-every 0

Each configuration trains the data set's `--preset hierarchical` model (the script's table) from the
same initial weights on the same batches (seed 0; 5,000 validation images held out as the scripts
do), with clipping and skipping off, so the recorded gradient norms are the raw ones. Every
--eval-every steps: the validation -ELBO in bits/dim of the first --eval-images validation images
with fixed noise, with the raw weights and with an EMA of them at each --ema rate (kept here as
Keras' use_ema keeps it: not debiased, the first step copies the weights). The
configurations run back to back in one process, so their times compare (ratios), though the
comparison is by images seen, not by time. At the end: the gradient norms' quantiles per
configuration after the first WARMUP_STEPS updates (the hierarchical preset's warm-up), and the
quantiles of every norm over the running level of the norms before it.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kit.data import load_cifar10, load_fashion_mnist  # noqa: E402
from kit.model_options import NORM_LEVEL_RATE  # noqa: E402
from kit.models import build_model  # noqa: E402

# name -> (optimizer class, keyword arguments, warm-up steps)
CONFIGS = {
    "adam": ("Adam", dict(learning_rate=2e-3), 0),  # the preset before issue 24
    "adam-b2": ("Adam", dict(learning_rate=2e-3, beta_2=0.9), 100),  # bench/hierarchical_smoke.py's
    "adamw": ("AdamW", dict(learning_rate=2e-3, beta_2=0.9, weight_decay=0.01), 100),  # VDVAE's
    "adamw-lr1e-3": ("AdamW", dict(learning_rate=1e-3, beta_2=0.9, weight_decay=0.01), 100),
}
QUANTILES = (50, 90, 99, 99.9, 100)
WARMUP_STEPS = 100  # left out of the quantiles, for every configuration


def ratios_to_running_level(norms, rate):
    """Each norm over the running level of the norms before it (the hierarchical VAE's: an EMA at
    `rate` that starts at the first norm), from which --clip-factor and --skip-factor are set."""
    level, ratios = None, []
    for norm in norms:
        if level is not None:
            ratios.append(norm / level)
        level = norm if level is None else rate * level + (1 - rate) * norm
    return np.array(ratios)


def preset(dataset):
    if dataset == "cifar10":
        from vae_cifar10 import CIFAR10 as spec
    else:
        from vae_fashion_mnist import FASHION_MNIST as spec
    return spec, spec.presets["hierarchical"]


def build_preset_model(spec, table, seed):
    """The preset's model with clipping and skipping off (the raw gradient norms are measured)."""
    options = {k: table[k] for k in ("arch", "likelihood", "mixture_components", "gaussian_sigma", "beta",
                                     "latent_dim", "encoder_filters", "encoder_dense", "decoder_filters",
                                     "decoder_dense", "blocks_per_resolution", "hvae_widths", "hvae_blocks",
                                     "latent_channels", "latent_resolutions")}
    return build_model(spec.image_shape, dataset=spec.name, seed=seed, grad_clip=0, skip_threshold=0,
                       **options)


def make_optimizer(name):
    kind, kwargs, warmup = CONFIGS[name]
    kwargs = dict(kwargs)
    lr = kwargs.pop("learning_rate")
    if warmup:
        lr = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=10**9, warmup_target=lr,
                                                    warmup_steps=warmup)
    return getattr(keras.optimizers, kind)(lr, **kwargs)


def validation_bits_per_dim(model, x, noise):
    reconstruction, kl = model.elbo_terms(x, noise)
    return float(np.mean(reconstruction + kl)) / (np.prod(x.shape[1:]) * math.log(2.0))


def evaluate_with(model, weights, x, noise):
    kept = [w.numpy() for w in model.trainable_weights]
    for w, value in zip(model.trainable_weights, weights):
        w.assign(value)
    bits = validation_bits_per_dim(model, x, noise)
    for w, value in zip(model.trainable_weights, kept):
        w.assign(value)
    return bits


def run(name, args, spec, table, splits, initial):
    keras.utils.set_random_seed(args.seed)
    model = build_preset_model(spec, table, args.seed)
    model.set_weights(initial)
    model.compile(optimizer=make_optimizer(name))
    x_val = splits.x_val[:args.eval_images]
    noise = model.draw_noise(len(x_val), seed=0)
    data = (tf.data.Dataset.from_tensor_slices(splits.x_train).shuffle(len(splits.x_train), seed=args.seed)
            .batch(table["batch_size"], drop_remainder=True).repeat().take(args.steps).prefetch(2))
    norms, curve = [], []
    started = time.perf_counter()

    rates = [float(r) for r in args.ema.split(",")]
    averages = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            norms.append(float(model.gradient_norm.numpy()))
            step = len(norms)
            weights = [w.numpy() for w in model.trainable_weights]
            for rate in rates:  # Keras' use_ema: the first step copies, then m * average + (1 - m) * w
                averages[rate] = ([rate * a + (1 - rate) * w for a, w in zip(averages[rate], weights)]
                                  if rate in averages else weights)
            if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
                seconds = time.perf_counter() - started
                row = {"step": step, "images": step * table["batch_size"], "seconds": seconds,
                       "raw": validation_bits_per_dim(model, x_val, noise)}
                row.update({f"ema {rate}": evaluate_with(model, averages[rate], x_val, noise) for rate in rates})
                curve.append(row)
                print(f"{name:14s} step {step:5d} ({row['images']:6d} images)  validation bits/dim "
                      + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k == "raw" or k.startswith("ema"))
                      + f"  grad norm median {np.median(norms[-args.eval_every:]):.1f}  [{seconds:.0f} s]",
                      flush=True)

    model.fit(data, epochs=1, steps_per_epoch=args.steps, callbacks=[Record()], verbose=0)
    seconds = time.perf_counter() - started
    q = np.percentile(norms[WARMUP_STEPS:] or norms, QUANTILES).tolist()  # all of a short run
    ratios = ratios_to_running_level(norms, NORM_LEVEL_RATE)[WARMUP_STEPS - 1:]  # of norms after the warm-up
    r = np.percentile(ratios if len(ratios) else [np.nan], QUANTILES).tolist()
    print(f"{name:14s} done: {args.steps} steps in {seconds:.0f} s; gradient norm quantiles after "
          f"update {WARMUP_STEPS} {'/'.join(map(str, QUANTILES))}: {[round(v, 1) for v in q]}; "
          f"over their running level (EMA {NORM_LEVEL_RATE}): {[round(v, 2) for v in r]}", flush=True)
    return {"curve": curve, "seconds": seconds, "norm_quantiles": dict(zip(map(str, QUANTILES), q)),
            "level_ratio_quantiles": dict(zip(map(str, QUANTILES), r)), "norms": norms}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("fashion_mnist", "cifar10"), default="fashion_mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=500, help="0: only gradient norms")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--ema", default="0.99,0.998", help="EMA momenta evaluated beside the raw weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    spec, table = preset(args.dataset)
    loader = load_cifar10 if args.dataset == "cifar10" else load_fashion_mnist
    splits = loader(args.data_dir).hold_out(5000, args.seed)
    print(f"data: {splits.source}{' (copy: ' + splits.warnings[0][:60] + '...)' if splits.warnings else ''}; "
          f"{len(splits.x_train)} train, {len(splits.x_val)} validation images; preset hierarchical, "
          f"batch {table['batch_size']}, {args.steps} steps per configuration, EMA {args.ema}", flush=True)
    keras.utils.set_random_seed(args.seed)
    initial = build_preset_model(spec, table, args.seed).get_weights()
    results = {name: run(name, args, spec, table, splits, initial) for name in args.configs.split(",")}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
