"""Hierarchical VAE smoke run: train kit/hierarchical_vae.py for a fixed number of minutes on
CIFAR-10 (or Fashion-MNIST) and print the test bits/dim of held-out images as it goes.

    python bench/hierarchical_smoke.py --minutes 8 --data-dir /path/to/cifar-10-batches-py
    python bench/hierarchical_smoke.py --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist

Every --eval-every steps: the test -ELBO of the first --eval-images test images with fixed noise
(seed 0, beta = 1) in bits/dim = nats / (D ln 2), its per-group KL, seconds per training step
(training only; the first step, which traces the graph, is left out) and the skipped updates.
Defaults: a configuration for a 2-core CPU. Measured on a shared 2-core CPU (2026-11-29):
CIFAR-10 (JPEG copy), 8 minutes: 0.28 s per step of 32 images, 1724 steps, test bits/dim 6.57
after 150 steps, 5.53 after 450, 5.21 after 900, 4.76-4.98 from 1350 on (4.89 at the end);
Fashion-MNIST, 2 minutes: 0.12 s per step, 4.20 after 150 steps, 3.69 after 1033.
"""
import argparse
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

from common import LOGISTIC_MIN_LOG_SCALE, split_logistic_outputs, split_mixture_outputs  # noqa: E402
from kit.data import load_cifar10, load_fashion_mnist  # noqa: E402
from kit.hierarchical_vae import (VDVAE_GRAD_CLIP_PER_DIM, VDVAE_SKIP_THRESHOLD_PER_DIM,  # noqa: E402
                                  build_hierarchical_vae, resolution_chain)

# Per data set: (widths, encoder blocks per resolution, latent resolutions, latent channels).
PRESETS = {
    "cifar10": dict(widths="64", blocks="1,1,2,2,1", latent_resolutions="1,4,4,8,8,8,16,16", latent_channels=8),
    "fashion-mnist": dict(widths="32", blocks="1,1,2,1", latent_resolutions="1,7,7,7,14,14", latent_channels=4),
}


def ints(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def report_log_scale_floor(model, x):
    """How often the discretized logistics' log-scales (of the most probable component, at the
    posterior mean) sit at common.LOGISTIC_MIN_LOG_SCALE: where they do, a lower floor (PixelCNN++'s
    -7 on [-1, 1] is -7 - log 2 on [0, 1]) could lower the NLL; where they never do, it cannot."""
    if not model.likelihood.startswith("discretized-logistic"):
        return
    outputs = np.concatenate([model.decode_latents(model.posterior_latents(x[i:i + 100])).numpy()
                              for i in range(0, len(x), 100)])
    channels = x.shape[-1]
    if model.likelihood == "discretized-logistic":
        log_scales = split_logistic_outputs(outputs)[1].numpy()
    else:
        logits, _, scales, _ = split_mixture_outputs(outputs, channels, model.mixture_components)
        best = np.argmax(logits.numpy(), axis=-1)[..., None, None]               # (B, H, W, 1, 1)
        log_scales = np.take_along_axis(scales.numpy(), np.broadcast_to(best, (*best.shape[:3], channels, 1)),
                                        axis=-1)
    floor = LOGISTIC_MIN_LOG_SCALE
    print(f"log-scales (most probable component, {len(x)} test images at the posterior mean): min "
          f"{log_scales.min():.2f}, median {np.median(log_scales):.2f}; at or below the floor {floor:g}: "
          f"{np.mean(log_scales <= floor):.4%}, within 0.5 of it: {np.mean(log_scales <= floor + 0.5):.4%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget (evaluations excluded)")
    parser.add_argument("--dataset", choices=sorted(PRESETS), default="cifar10")
    parser.add_argument("--data-dir")
    parser.add_argument("--likelihood", default="discretized-logistic-mixture")
    parser.add_argument("--mixture-components", type=int, default=5)
    parser.add_argument("--widths", help="one width, or one per resolution of the chain")
    parser.add_argument("--blocks", help="encoder residual blocks: one count, or one per resolution")
    parser.add_argument("--latent-resolutions", help="one entry per latent group, e.g. 1,4,4,8")
    parser.add_argument("--latent-channels", type=int)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--grad-clip-per-dim", type=float, default=VDVAE_GRAD_CLIP_PER_DIM,
                        help="gradient-norm clip, per dimension (times D for the per-image loss); 0: off")
    parser.add_argument("--skip-threshold-per-dim", type=float, default=VDVAE_SKIP_THRESHOLD_PER_DIM,
                        help="skip updates above this gradient norm per dimension; 0: only non-finite ones")
    parser.add_argument("--eval-every", type=int, default=150, help="training steps between evaluations")
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    preset = PRESETS[args.dataset]
    widths = ints(args.widths or preset["widths"])
    blocks = ints(args.blocks or preset["blocks"])
    latent_resolutions = ints(args.latent_resolutions or preset["latent_resolutions"])
    latent_channels = args.latent_channels or preset["latent_channels"]

    keras.utils.set_random_seed(args.seed)
    splits = load_cifar10(args.data_dir) if args.dataset == "cifar10" else load_fashion_mnist(args.data_dir)
    x_train, x_test = splits.x_train, splits.x_test[:args.eval_images]
    image_shape = x_train.shape[1:]
    dims = int(np.prod(image_shape))
    model = build_hierarchical_vae(
        image_shape, widths[0] if len(widths) == 1 else widths, blocks[0] if len(blocks) == 1 else blocks,
        latent_channels, latent_resolutions, likelihood=args.likelihood,
        mixture_components=args.mixture_components, dataset=args.dataset, seed=args.seed,
        grad_clip=args.grad_clip_per_dim * dims or None,
        skip_threshold=args.skip_threshold_per_dim * dims or None)
    # Adam with beta_2 = 0.9 and a linear warm-up (VDVAE's optimiser settings, its lr scaled up
    # for a small model and a short run).
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=10**9, warmup_target=args.lr, warmup_steps=args.warmup_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule, beta_2=0.9))
    print(f"data: {splits.source} ({len(x_train)} train, {len(x_test)} test images)")
    for warning in splits.warnings[:1]:
        print(f"note: {warning}")
    print(f"model: chain {resolution_chain(image_shape[0])}, widths {widths}, encoder blocks {blocks}, "
          f"latent groups at {sorted(latent_resolutions)} x {latent_channels} channels "
          f"({model.latent_dim} latent variables), {model.count_params():,} parameters, {args.likelihood}, "
          f"batch {args.batch_size}, lr {args.lr}, grad_clip {model.grad_clip}, skip {model.skip_threshold}")

    data = (tf.data.Dataset.from_tensor_slices(x_train).shuffle(len(x_train), seed=args.seed)
            .batch(args.batch_size, drop_remainder=True).repeat().prefetch(2))
    noise = model.draw_noise(len(x_test), seed=0)
    norms = []

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.train_seconds, self.steps, self.started = 0.0, 0, None

        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            seconds = time.perf_counter() - self.started
            norms.append(float(model.gradient_norm.numpy()))
            self.steps += 1
            if self.steps > 1:  # the first step traces the graph
                self.train_seconds += seconds
            if self.train_seconds >= 60.0 * args.minutes:
                self.model.stop_training = True

    clock = Clock()

    def evaluate(epoch_logs):
        t = time.perf_counter()
        reconstruction, kls = model.elbo_terms(x_test, noise, per_group=True)
        bpd = float(np.mean(reconstruction + kls.sum(axis=1))) / (dims * math.log(2.0))
        per_step = clock.train_seconds / max(1, clock.steps - 1)
        recent = np.array(norms[-args.eval_every:])
        groups = " ".join(f"{v:.1f}" for v in kls.mean(axis=0))
        print(f"step {clock.steps:5d}  train {clock.train_seconds:6.0f} s ({per_step:.3f} s/step)  "
              f"train loss {epoch_logs.get('loss', float('nan')) / (dims * math.log(2.0)):.3f} bpd  "
              f"test {bpd:.4f} bits/dim (rec {np.mean(reconstruction):.0f}, KL {np.mean(kls.sum(1)):.0f} nats; "
              f"per group {groups})  grad norm median {np.median(recent):.0f} max {recent.max():.0f}  "
              f"skipped {int(model.skipped_updates.numpy())}  [eval {time.perf_counter() - t:.0f} s]",
              flush=True)
        return bpd

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            evaluate(logs or {})

    model.fit(data, epochs=10**6, steps_per_epoch=args.eval_every, callbacks=[clock, Evaluate()], verbose=0)
    report_log_scale_floor(model, x_test[:200])
    samples = model.sample(16, temperature=0.8, seed=0)
    print(f"done: {clock.steps} steps, {clock.train_seconds / max(1, clock.steps - 1):.3f} s/step; "
          f"samples at T=0.8 finite in [0, 1]: {bool(np.all(np.isfinite(samples)) and samples.min() >= 0 and samples.max() <= 1)}; "
          f"gradient norm quantiles 50/90/99/max: "
          f"{np.percentile(norms[10:], [50, 90, 99]).round(0).tolist()} / {max(norms):.0f}")


if __name__ == "__main__":
    main()
