"""Peak memory growth of the discretized logistic's mean (kit/likelihoods.py) on a 12.3 MB input
(a 5-component mixture's decode of 200 CIFAR images), each run in a fresh process: in slices, one
level at a time (as the kit runs it), and with the graph loops' default of up to ten slices and
levels at once:

    python bench/mean_memory.py --runs 20

The growth is VmHWM's (the process's own peak, tests/conftest.py's peak_memory_growth_mb, as
tests/test_likelihoods.py measures it); the bound of that test sits between the two."""
import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import peak_memory_growth_mb  # noqa: E402

SETUP = """
import importlib.util, pathlib, tempfile
import numpy as np
# kit/likelihoods.py with the loop's option changed, as a module file (AutoGraph reads the source)
source = pathlib.Path("kit/likelihoods.py").read_text()
path = pathlib.Path(tempfile.mkdtemp()) / "likelihoods_variant.py"
path.write_text(source.replace("parallel_iterations=1", "parallel_iterations={levels}"))
spec = importlib.util.spec_from_file_location("likelihoods_variant", path)
variant = importlib.util.module_from_spec(spec)
spec.loader.exec_module(variant)
mean_of = variant.discretized_logistic_mean
rng = np.random.default_rng(0)
mean = rng.uniform(0, 1, (200, 32, 32, 3, 5)).astype(np.float32)
log_scale = rng.uniform(-4, 0, mean.shape).astype(np.float32)
mean_of(mean[:2], log_scale[:2])  # trace the graph first"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    growth = {1: [], 10: []}
    for run in range(args.runs):
        for levels in growth:  # alternating, so that the machine's drift touches both alike
            growth[levels].append(peak_memory_growth_mb(SETUP.format(levels=levels), "mean_of(mean, log_scale)"))
        print(f"run {run + 1}: " + ", ".join(f"{k} at once {v[-1]:.0f} MB" for k, v in growth.items()), flush=True)
    for levels, values in growth.items():
        print(f"up to {levels} level(s) at once: peak growth {min(values):.0f}-{max(values):.0f} MB "
              f"(median {statistics.median(values):.0f}) over {len(values)} runs")


if __name__ == "__main__":
    main()
