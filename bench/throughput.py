"""Training throughput on Fashion-MNIST, run back to back: the plain keras.io loop and the kit.

    python bench/throughput.py --epochs 5 --runs reference keras-io default
    python bench/throughput.py --epochs 3 --runs keras-io keras-io-bf16 keras-io-xla keras-io-spe10

For each run: steady epoch seconds (median of the epochs after the first), training images/s,
peak resident memory, training FLOPs per image from the layer shapes, and the fraction of this
machine's float32 matmul throughput (timed here, in the same process) that the run achieves.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RESULTS = ROOT / "bench" / "results"
# name -> options of vae_fashion_mnist.py ("reference" is bench/keras_io_reference.py instead)
RUNS = {
    "keras-io": ["--preset", "keras-io"],
    "default": [],
    "keras-io-bf16": ["--preset", "keras-io", "--mixed-precision"],
    "keras-io-xla": ["--preset", "keras-io", "--jit-compile"],
    "keras-io-spe10": ["--preset", "keras-io", "--steps-per-execution", "10"],
    "default-bf16": ["--mixed-precision"],
}


def run_reference(epochs):
    out = RESULTS / "reference.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "keras_io_reference.py"), "--epochs", str(epochs),
                    "--json", str(out)], check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    return {"epoch_seconds": result["epoch_seconds"], "peak_rss_mb": result["peak_rss_mb"],
            "train_images": result["train_images"], "options": ["bench/keras_io_reference.py"]}


def run_kit(name, epochs):
    outdir = RESULTS / f"throughput_{name}"
    options = [*RUNS[name], "--epochs", str(epochs), "--iw-samples", "0", "--outdir", str(outdir)]
    subprocess.run([sys.executable, str(ROOT / "vae_fashion_mnist.py"), *options], check=True, cwd=ROOT)
    with open(outdir / "history.csv") as f:
        seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(f)]
    metrics = json.loads((outdir / "metrics.json").read_text())
    return {"epoch_seconds": seconds, "peak_rss_mb": metrics["peak_rss_mb"], "options": options,
            "train_images": json.loads((outdir / "config.json").read_text())["train_images"]}


def flops_of(name):
    """Training FLOPs per image of the architecture a run uses."""
    from flops import training_flops_per_image
    from kit.models import build_model
    from kit.config import parse_config
    from vae_fashion_mnist import FASHION_MNIST
    preset = "keras-io" if name == "reference" or "keras-io" in name else "default"
    config = parse_config(FASHION_MNIST, ["--preset", preset, "--outdir", str(RESULTS)])
    return training_flops_per_image(build_model(FASHION_MNIST.image_shape, dataset=None, seed=None,
                                                **config.model_options()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs", nargs="+", default=["reference", "keras-io", "default"],
                        choices=["reference", *RUNS])
    parser.add_argument("--out", default=str(RESULTS / "throughput.json"))
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {name: run_reference(args.epochs) if name == "reference" else run_kit(name, args.epochs)
               for name in args.runs}

    from flops import matmul_gflops
    peak = matmul_gflops()
    print(f"\nfloat32 2048x2048 matmul: {peak:.1f} GFLOP/s\n")
    print("| run | steady s/epoch | images/s | peak RSS MB | training MFLOP/image | achieved GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        steady = statistics.median(r["epoch_seconds"][1:] or r["epoch_seconds"])
        flops = flops_of(name)
        achieved = flops * r["train_images"] / steady / 1e9
        r.update(steady_epoch_seconds=steady, images_per_second=r["train_images"] / steady,
                 training_flops_per_image=flops, achieved_gflops=achieved, fraction_of_matmul_peak=achieved / peak)
        print(f"| {name} | {steady:.2f} | {r['images_per_second']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{flops / 1e6:.1f} | {achieved:.1f} | {100 * achieved / peak:.0f}% |")
    Path(args.out).write_text(json.dumps({"matmul_gflops": peak, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
