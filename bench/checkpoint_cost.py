"""What a checkpoint costs: seconds to write one (model with optimizer state, then state.json, as
kit/callbacks.py's save_checkpoint does inside and at the end of an epoch), against seconds per
training step, for the default Fashion-MNIST VAE and the hierarchical CIFAR-10 preset.

    python bench/checkpoint_cost.py [--cifar-dir <folder holding cifar-10-batches-py>] [--repeats 5]

Prints, per model: the checkpoint's size, the median and largest of --repeats writes, the median
training step (after the first, which traces), and the share of training time that checkpoints
every --checkpoint-minutes M take for a few M (largest write / (M * 60 s)). Each model trains
--steps steps first, so the optimizer's state is there to be written.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from kit.callbacks import metric_states, save_checkpoint  # noqa: E402
from kit.config import parse_config  # noqa: E402
from kit.models import build_model  # noqa: E402
from kit import run  # noqa: E402
from vae_cifar10 import CIFAR10  # noqa: E402
from vae_fashion_mnist import FASHION_MNIST  # noqa: E402


def measure(spec, argv, data_dir, steps, repeats):
    """(checkpoint MB, write seconds list, step seconds list) for one script's configuration."""
    config = parse_config(spec, [*argv, "--outdir", tempfile.mkdtemp(prefix="ckpt-bench-")])
    splits = spec.load(data_dir)
    model = build_model(spec.image_shape, dataset=spec.name, seed=0, **config.model_options())
    model.compile(optimizer=run.adam(config, 1000))
    x = splits.x_train[:config.batch_size * steps]
    step_seconds = []
    for i in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x[i * config.batch_size:(i + 1) * config.batch_size])
        step_seconds.append(time.perf_counter() - start)
    folder = Path(config.outdir) / "checkpoint"
    writes = []
    for i in range(repeats):  # alternately inside an epoch and at its end, as training does
        start = time.perf_counter()
        save_checkpoint(model, folder, 1, [], inside_epoch={"batch": i + 1, "metric_states": metric_states(model),
                                                             "epoch_seconds": 1.0} if i % 2 == 0 else None)
        writes.append(time.perf_counter() - start)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    return size, writes, step_seconds[1:]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fashion-dir", default=None, help="Fashion-MNIST folder (default: the kit's search)")
    p.add_argument("--cifar-dir", default=None, help="CIFAR-10 folder (default: the kit's search)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    for name, spec, argv, data_dir in (
            ("Fashion-MNIST, default VAE", FASHION_MNIST, [], args.fashion_dir),
            ("CIFAR-10 (JPEG copy), hierarchical preset", CIFAR10, ["--preset", "hierarchical"], args.cifar_dir)):
        size, writes, steps = measure(spec, argv, data_dir, args.steps, args.repeats)
        worst = max(writes)
        shares = ", ".join(f"M={m:g}: {100 * worst / (m * 60):.2f} %" for m in (1, 5, 10))
        print(f"{name}: checkpoint {size:.2f} MB; write median {np.median(writes):.3f} s, max {worst:.3f} s "
              f"({args.repeats} writes); training step median {np.median(steps):.3f} s; "
              f"share of training time at the largest write: {shares}", flush=True)


if __name__ == "__main__":
    main()
