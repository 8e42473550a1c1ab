"""The hierarchical VAE's gradient norms at a saved model or checkpoint, over random training batches.

    python bench/gradient_norms.py outputs/cifar10_hierarchical/checkpoint/ckpt-epoch0004.keras \
        --dataset cifar10 --data-dir <copy> --batches 100

Where a run's weights stand against its --grad-clip and --skip-threshold: each batch runs the
model's own train step with every update skipped (the skip threshold set to ~0), so the weights
and the optimizer stay as loaded and the step's global gradient norm (of the batch's mean per-image
loss, nats, before clipping) is read from the model. Prints the norms' quantiles and the share of
batches above the clip and the skip threshold the model was trained with.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUANTILES = (10, 50, 90, 99)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a hierarchical model.keras or checkpoint ckpt-*.keras")
    p.add_argument("--dataset", choices=("cifar10", "fashion-mnist"), default="cifar10")
    p.add_argument("--data-dir", help="the data set's folder (default: the kit's loader's)")
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1, help="which training images make the batches")
    args = p.parse_args()

    import keras
    import numpy as np

    import kit.hierarchical_vae  # noqa: F401  (registers the model's classes with Keras)
    from kit.data import load_cifar10, load_fashion_mnist
    model = keras.models.load_model(args.model)
    clip, skip = model.grad_clip, model.skip_threshold
    step, skipped = int(model.optimizer.iterations.numpy()), float(model.skipped_updates.numpy())
    model.skip_threshold = 1e-30  # every update skipped: the norm is computed, nothing changes
    x = (load_cifar10 if args.dataset == "cifar10" else load_fashion_mnist)(args.data_dir).x_train
    rng = np.random.default_rng(args.seed)
    norms = []
    for _ in range(args.batches):
        model.train_on_batch(x[rng.choice(len(x), args.batch_size, replace=False)], return_dict=True)
        norms.append(float(model.gradient_norm.numpy()))
    norms = np.array(norms)
    quantiles = ", ".join(f"{q}th {v:,.0f}" for q, v in zip(QUANTILES, np.percentile(norms, QUANTILES)))
    print(f"{args.model}: optimizer step {step}, {skipped:.0f} updates skipped in training; "
          f"{args.batches} batches of {args.batch_size}")
    print(f"gradient norm: {quantiles}, largest {norms.max():,.0f}")
    for name, value in (("--grad-clip", clip), ("--skip-threshold", skip)):
        if value:
            print(f"above {name} {value:,.0f}: {np.mean(norms > value):.0%} of batches")


if __name__ == "__main__":
    main()
