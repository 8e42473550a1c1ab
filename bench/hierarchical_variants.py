"""What XLA, a larger batch and TensorFlow's thread settings buy the hierarchical VAE's training step,
timed interleaved (bench/interleave.py), with its FLOPs per image and share of the matmul peak.

    python bench/hierarchical_variants.py --data-dir <CIFAR-10 folder> --rounds 8 --steps 6

Every variant is the kit's --preset hierarchical step (bench/hierarchical_step.py) in a worker
process of its own; the kit's defaults are not changed. FLOPs per image come from bench/flops.py
(convolutions only), the matmul peak from a 2048x2048 float32 matmul in the baseline worker (best
of 20), so "share of peak" = FLOPs per image x images/s / peak. bfloat16 (--mixed-precision) is
offered only where the CPU has AVX512-BF16 (/proc/cpuinfo's avx512_bf16 flag): elsewhere it runs
emulated and says nothing about the option.
"""
import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from interleave import run_interleaved, summarize  # noqa: E402

# name: (data set, options of bench/hierarchical_step.py[, environment variables])
# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX
# ("oneDNN custom operations are on" in its start-up log); elsewhere TF_ENABLE_ONEDNN_OPTS=1 does.
ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "1"}
VARIANTS = {
    "cifar-b32": ("cifar10", ["--matmul"]),  # the preset: batch 32, 2 intra- and 2 inter-op threads
    "cifar-b32-xla": ("cifar10", ["--jit-compile"]),
    "cifar-b64": ("cifar10", ["--batch-size", "64"]),
    "cifar-b32-intra2-inter1": ("cifar10", ["--intra", "2", "--inter", "1"]),
    "cifar-b32-intra1-inter1": ("cifar10", ["--intra", "1", "--inter", "1"]),
    "cifar-b32-onednn": ("cifar10", [], ONEDNN),
    "cifar-b32-onednn-intra1-inter1": ("cifar10", ["--intra", "1", "--inter", "1"], ONEDNN),
    "cifar-b32-bf16": ("cifar10", ["--mixed-precision"]),
    "fmnist-b32": ("fashion-mnist", []),
}
BASELINE = "cifar-b32"


def has_avx512_bf16(cpuinfo="/proc/cpuinfo"):
    try:
        return "avx512_bf16" in Path(cpuinfo).read_text().split()
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="the CIFAR-10 folder (default: random images)")
    p.add_argument("--fashion-data-dir", help="the Fashion-MNIST folder (default: the kit's loader's)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"default: all of {','.join(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    names = args.variants.split(",")
    if "cifar-b32-bf16" in names and not has_avx512_bf16():
        print("cifar-b32-bf16 left out: this CPU has no AVX512-BF16 (no avx512_bf16 in /proc/cpuinfo)")
        names.remove("cifar-b32-bf16")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    sides = {}
    for name in names:
        dataset, options, *extra = VARIANTS[name]
        data = args.data_dir if dataset == "cifar10" else args.fashion_data_dir
        sides[name] = ([sys.executable, str(ROOT / "bench" / "hierarchical_step.py"), "--worker", "--dataset",
                        dataset, *(["--data-dir", data] if data else []), *options],
                       {**env, **(extra[0] if extra else {})})
    infos, timings = run_interleaved(sides, args.rounds, args.steps)
    peak = infos.get(BASELINE, {}).get("matmul_gflops")
    results = {}
    print(f"\nmatmul peak (baseline worker, 2048x2048 float32, best of 20): {peak:.0f} GFLOP/s" if peak else "")
    print("| variant | batch | ms/step | images/s | vs cifar-b32 (images/s) | per-round ratio range | "
          "training MFLOP/image | GFLOP/s | of matmul peak | first step (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in sides:
        r = {**infos[name], **summarize(timings[name], infos[name]["batch_size"])}
        gflops = r["training_flops_per_image"] * r["images_per_second"] / 1e9
        r.update(achieved_gflops=gflops, share_of_peak=gflops / peak if peak else None)
        results[name] = r
    for name, r in results.items():
        ratio, spread = "", ""
        if BASELINE in results and name.startswith("cifar"):
            base = results[BASELINE]
            ratio = f"{r['images_per_second'] / base['images_per_second']:.2f}x"
            # images/s ratio of the same round (both sides timed within it)
            per_round = sorted((r["batch_size"] / a) / (base["batch_size"] / b) for a, b in
                               zip(r["ms_per_step_rounds"], base["ms_per_step_rounds"]))
            spread = f"{per_round[0]:.2f}-{per_round[-1]:.2f}"
        share = f"{100 * r['share_of_peak']:.1f} %" if r["share_of_peak"] is not None else ""
        print(f"| {name} | {r['batch_size']} | {r['ms_per_step']:.0f} | {r['images_per_second']:.1f} | {ratio} | "
              f"{spread} | {r['training_flops_per_image'] / 1e6:.1f} | {r['achieved_gflops']:.1f} | {share} | "
              f"{r['first_step_seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "steps": args.steps, "matmul_gflops": peak,
                                               "avx512_bf16": has_avx512_bf16(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
