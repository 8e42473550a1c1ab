"""Peak memory of the training input pipeline on CIFAR-10: the images as an 8-bit constant in the
tf.data graph (the kit) against a float32 constant (before issue 16). Each in a fresh process.

    python bench/pipeline_memory.py --data-dir ../shared/data/cifar10-jpeg-proxy
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import tensorflow as tf
from kit.config import parse_config
from kit.data import load_cifar10
from kit.pipeline import shuffled_batches
from kit.run import train_batches
from vae_cifar10 import CIFAR10
splits = load_cifar10({data_dir!r}).hold_out(5000, seed=0)
config = parse_config(CIFAR10, ["--outdir", "/tmp/pipeline-memory", "--epochs", "1"])
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
loaded = peak_mb()
start = time.perf_counter()
if {kind!r} == "uint8":
    ds = train_batches(config, splits.x_train, first_epoch=0)
else:  # the pipeline before issue 16: the float32 images themselves as the constant
    ds = shuffled_batches((splits.x_train,), config.batch_size, config.seed, 0, config.epochs)
for i, batch in enumerate(ds):
    if i == 50:
        break
seconds, peak = time.perf_counter() - start, peak_mb()
graph_mb = len(ds._as_serialized_graph().numpy()) / 2**20  # after the peak: it copies the graph
print(json.dumps({{"kind": {kind!r}, "peak_after_loading_mb": loaded, "peak_mb": peak,
                  "graph_mb": graph_mb, "seconds_for_50_batches": seconds}}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    for kind in ("float32", "uint8"):
        code = PROBE.format(root=str(ROOT), data_dir=args.data_dir, kind=kind)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""})
        print(json.loads(out.stdout.splitlines()[-1]))


if __name__ == "__main__":
    main()
