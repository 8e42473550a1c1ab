"""One training step of the kit's hierarchical VAE at its --preset hierarchical, timed.

    python bench/hierarchical_step.py --dataset cifar10 --data-dir <copy> --steps 20
    python bench/hierarchical_step.py --dataset fashion-mnist --batch-size 64 --jit-compile --steps 20

The model, optimizer and compiled train step are the ones vae_cifar10.py / vae_fashion_mnist.py
build (kit.models.build_model, kit.run.adam, model.compile with the preset's jit_compile and
steps_per_execution); a step is model.train_on_batch on a batch already in memory (the same
compiled train_function that fit runs; fit's input pipeline delivers a batch in well under a
millisecond, docs/BENCHMARKS.md), ending in the host copy of its logs. Batches: the first training
images (8-bit, as k / 255) of --data-dir, or uniform random 8-bit images without it.

--worker: serve bench/interleave.py's protocol instead (warm up, then time steps on request).
Standalone or as a worker it reports the model's training FLOPs per image (bench/flops.py) and,
with --matmul, this process's best float32 matmul throughput.
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
sys.path.insert(0, str(ROOT / "bench"))

DATASETS = ("cifar10", "fashion-mnist")


def options():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=DATASETS, default="cifar10")
    p.add_argument("--data-dir", help="the data set's folder (default: random 8-bit images)")
    p.add_argument("--batch-size", type=int, help="default: the preset's (32)")
    p.add_argument("--latent-resolutions", help="comma-separated; default: the preset's")
    p.add_argument("--jit-compile", action="store_true", help="XLA (the kit's --jit-compile)")
    p.add_argument("--mixed-precision", action="store_true", help="the kit's --mixed-precision (bfloat16 on CPU)")
    p.add_argument("--intra", type=int, default=2, help="TensorFlow intra-op threads (0: TensorFlow's default)")
    p.add_argument("--inter", type=int, default=2, help="TensorFlow inter-op threads (0: TensorFlow's default)")
    p.add_argument("--batches", type=int, default=8, help="distinct batches cycled through")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (tracing) one")
    p.add_argument("--steps", type=int, default=20, help="timed steps (standalone)")
    p.add_argument("--matmul", action="store_true", help="also time a 2048x2048 float32 matmul (best of 20)")
    p.add_argument("--worker", action="store_true", help="serve bench/interleave.py's protocol")
    return p.parse_args()


def main():
    args = options()
    import tensorflow as tf
    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    import keras
    import numpy as np

    from flops import hierarchical_forward_macs, matmul_gflops, training_flops_per_image
    from kit import run
    from kit.config import parse_config
    from kit.models import build_model
    if args.dataset == "cifar10":
        from vae_cifar10 import CIFAR10 as spec
    else:
        from vae_fashion_mnist import FASHION_MNIST as spec

    argv = ["--preset", "hierarchical", "--outdir", tempfile.mkdtemp(prefix="hierarchical_step_")]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    if args.latent_resolutions:
        argv += ["--latent-resolutions", args.latent_resolutions]
    if args.jit_compile:
        argv += ["--jit-compile"]
    if args.mixed_precision:
        argv += ["--mixed-precision"]
    config = parse_config(spec, argv)
    run.set_up_runtime(config)  # seeds and the precision policy, as the scripts
    batch = config.batch_size
    if args.data_dir:
        images = spec.load(args.data_dir).x_train[:args.batches * batch]
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.batches * batch, *spec.image_shape)) / 255.0
    batches = [tf.constant(images[i * batch:(i + 1) * batch], tf.float32) for i in range(args.batches)]

    model = build_model(spec.image_shape, dataset=spec.name, seed=config.seed, **config.model_options())
    steps_per_epoch = -(-(50_000 - 5_000 if args.dataset == "cifar10" else 55_000) // batch)
    model.compile(optimizer=run.adam(config, steps_per_epoch), jit_compile=config.jit_compile,
                  steps_per_execution=config.steps_per_execution)
    count = [0]

    def step():
        model.train_on_batch(batches[count[0] % len(batches)], return_dict=True)
        count[0] += 1

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    info = {"framework": f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
            "batch_size": batch, "parameters": int(model.count_params()),
            "training_flops_per_image": training_flops_per_image(model),
            "forward_macs_by_part": hierarchical_forward_macs(model),
            "latent_resolutions": list(config.latent_resolutions), "jit_compile": config.jit_compile,
            "precision": keras.config.dtype_policy().name,
            "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                        "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
            "first_step_seconds": first, "data": args.data_dir or "random 8-bit images"}
    if args.matmul:
        info["matmul_gflops"] = matmul_gflops()
    if args.worker:
        from interleave import serve
        serve(step, info)
        info["skipped_updates"] = float(model.skipped_updates.numpy())
        print(f"{args.dataset}: {count[0]} steps, skipped updates {info['skipped_updates']:.0f}", file=sys.stderr)
        return
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    ms = 1e3 * float(np.median(seconds))
    print({**info, "ms_per_step_median": ms, "images_per_second": batch / ms * 1e3,
           "skipped_updates": float(model.skipped_updates.numpy())})


if __name__ == "__main__":
    main()
