"""Where a training step's time goes: the TensorFlow profiler over N steps, summed by op type.

    python bench/profile_epoch.py --preset keras-io --steps 200
    python bench/profile_epoch.py --dataset cifar10 --data-dir <copy> --preset hierarchical --steps 30

Captures a trace with tf.profiler (the TensorBoard profile format, under bench/results/profile/),
then reads its XSpace protobuf and sums the host time of each TensorFlow op type, so no profiler
plugin is needed to see the answer. Also times the input pipeline alone.
"""
import argparse
import collections
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from kit.models import build_model  # noqa: E402
from kit.config import parse_config  # noqa: E402
from kit.run import adam, train_batches  # noqa: E402
from vae_cifar10 import CIFAR10  # noqa: E402
from vae_fashion_mnist import FASHION_MNIST  # noqa: E402

SPECS = {"fashion-mnist": FASHION_MNIST, "cifar10": CIFAR10}


def op_times(logdir, key=None):
    """{op type: total milliseconds} from the newest .xplane.pb under logdir (host TF ops); with
    `key`, summed by key(op name, op type) instead."""
    path = max(Path(logdir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    totals = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # TF ops are traced as "name:Type"; "A::B" events and __inference_* function
                # calls are executor and function wrappers that contain the ops.
                op_type = name.rsplit(":", 1)[-1].strip()
                if ":" in name and "::" not in name and not op_type.startswith("__inference"):
                    group = op_type if key is None else key(name.rsplit(":", 1)[0], op_type)
                    totals[group] += event.duration_ps / 1e9
    return totals


HIERARCHICAL_PARTS = [  # (pattern in the op's name scope, part of kit/hierarchical_vae.py)
    (re.compile(r"(^|/)stem(_\d+)?/"), "stem (3x3 conv)"),
    (re.compile(r"(^|/)enc_(?P<side>\d+)_\d+(_\d+)?/"), "encoder blocks at {side}x{side}"),
    (re.compile(r"(^|/)dec_(?P<side>\d+)_\d+(_\d+)?/"), "plain decoder block(s) at {side}x{side}"),
    (re.compile(r"(^|/)prior(_\d+)?/"), "latent groups: prior blocks"),
    (re.compile(r"(^|/)posterior(_\d+)?/"), "latent groups: posterior blocks"),
    (re.compile(r"(^|/)resnet(_\d+)?/"), "latent groups: residual blocks"),
    (re.compile(r"(^|/)z_proj(_\d+)?/"), "latent groups: z projections"),
    (re.compile(r"(^|/)outputs(_\d+)?/"), "output 1x1 conv"),
]


def hierarchical_part(name, op_type):
    """The part of the hierarchical VAE an op (forward or gradient) belongs to, from its name scope
    (the latent groups' blocks are scoped by kind, not by group)."""
    for pattern, label in HIERARCHICAL_PARTS:
        found = pattern.search(name)
        if found:
            return label.format(**found.groupdict())
    if op_type in ("StridedSlice", "StridedSliceGrad"):
        return "slicing outside the blocks (StridedSlice and its gradient)"
    if op_type.startswith(("ResourceApply", "AssignVariable", "AssignAdd", "AssignSub", "ReadVariable")) \
            or "optimizer" in name.lower() or "adamw" in name.lower():
        return "optimizer, EMA and variables"
    return "the rest (likelihood, KL, top-down glue, gradient norm, ...)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist", choices=sorted(SPECS))
    parser.add_argument("--data-dir", help="the data set's folder (default: the kit's loader's)")
    parser.add_argument("--preset", default="keras-io", choices=sorted(FASHION_MNIST.presets))
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    spec = SPECS[args.dataset]
    config = parse_config(spec, ["--preset", args.preset, "--epochs", "2", "--outdir",
                                 str(ROOT / "bench" / "results" / "profile")])
    keras.utils.set_random_seed(0)
    x = spec.load(args.data_dir).x_train
    model = build_model(spec.image_shape, dataset=None, seed=0, **config.model_options())
    model.compile(optimizer=adam(config, args.steps))

    # Input pipeline alone: how fast can batches arrive?
    ds = train_batches(config, x, first_epoch=1).take(args.steps)
    start = time.perf_counter()
    for _ in ds:
        pass
    pipeline_ms = (time.perf_counter() - start) / args.steps * 1e3

    warm = train_batches(config, x, first_epoch=0)
    model.fit(warm, steps_per_epoch=20, epochs=1, verbose=0, shuffle=False)  # tracing happens outside the trace
    logdir = ROOT / "bench" / "results" / "profile" / f"{args.dataset}-{args.preset}"
    tf.profiler.experimental.start(str(logdir))
    start = time.perf_counter()
    model.fit(train_batches(config, x, first_epoch=1), steps_per_epoch=args.steps, epochs=1, verbose=0,
              shuffle=False)
    step_ms = (time.perf_counter() - start) / args.steps * 1e3
    tf.profiler.experimental.stop()

    totals = op_times(logdir)
    traced = sum(totals.values())
    print(f"{args.dataset}, preset {args.preset}: {step_ms:.1f} ms per training step while profiled; "
          f"input pipeline alone {pipeline_ms:.2f} ms per batch")
    print(f"op time summed over host threads: {traced / args.steps:.1f} ms per step (2 cores run ops in parallel)\n")
    print("| op type | ms per step | share |")
    print("|---|---|---|")
    for op, ms in totals.most_common(12):
        print(f"| {op} | {ms / args.steps:.2f} | {100 * ms / traced:.0f}% |")
    if args.preset == "hierarchical":
        parts = op_times(logdir, key=hierarchical_part)
        print("\n| part of the model (forward and gradient ops) | ms per step | share |")
        print("|---|---|---|")
        for part, ms in parts.most_common():
            print(f"| {part} | {ms / args.steps:.2f} | {100 * ms / traced:.0f}% |")


if __name__ == "__main__":
    main()
