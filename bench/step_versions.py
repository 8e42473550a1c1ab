"""The hierarchical VAE's training step at two commits of the kit, timed interleaved.

    python bench/step_versions.py --before faf0671 --data-dir <cifar copy> --rounds 8 --steps 6

For a change meant to make the step faster without changing its numbers: the working tree ("after")
against a temporary `git worktree` of --before, each a bench/hierarchical_step.py worker at the
preset (bench/interleave.py: the sides take turns, so a change of the machine's load hits both).
Extra options after `--` go to both workers (e.g. `-- --intra 1 --inter 1`).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from interleave import run_interleaved, summarize  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the commit to compare the working tree with")
    p.add_argument("--dataset", choices=("cifar10", "fashion-mnist"), default="cifar10")
    p.add_argument("--data-dir", help="the data set's folder (default: random 8-bit images)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--json", help="write every figure here")
    p.add_argument("worker_options", nargs="*", help="after --: options of bench/hierarchical_step.py")
    args = p.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory(prefix="step_versions_") as scratch:
        tree = Path(scratch) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.before],
                       check=True)
        try:
            worker = ["--worker", "--dataset", args.dataset, *(["--data-dir", args.data_dir] if args.data_dir else []),
                      *args.worker_options]
            sides = {f"before ({args.before})": ([sys.executable, str(tree / "bench" / "hierarchical_step.py"), *worker], env),
                     "after (working tree)": ([sys.executable, str(ROOT / "bench" / "hierarchical_step.py"), *worker], env)}
            infos, timings = run_interleaved(sides, args.rounds, args.steps)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    before, after = sides
    results = {name: {**infos[name], **summarize(timings[name], infos[name]["batch_size"])} for name in sides}
    ratios = [statistics.mean(b) / statistics.mean(a) for b, a in zip(timings[before], timings[after])]
    print("| side | ms/step | images/s | speed-up (before / after, ms) | per round |")
    print("|---|---|---|---|---|")
    for name in sides:
        r = results[name]
        speedup = results[before]["ms_per_step"] / r["ms_per_step"]
        span = f"{min(ratios):.2f}–{max(ratios):.2f}" if name == after else ""
        print(f"| {name} | {r['ms_per_step']:.0f} | {r['images_per_second']:.1f} | {speedup:.2f}× | {span} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "per_round_speedup": ratios}, indent=1))


if __name__ == "__main__":
    main()
