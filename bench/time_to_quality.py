"""Time to quality: test −ELBO against training wall-clock seconds for finished runs.

    python bench/time_to_quality.py --run keras-io=outputs/keras_io --run default=outputs/fashion_mnist \
        --target 240 --plot docs/elbo_vs_time.png
    python bench/time_to_quality.py --run logistic=DIR --bits-per-dim 3072 --line PNG=5.985 ...
    python bench/time_to_quality.py --run hierarchical=DIR --points "older run=237:5.815,795:4.929" ...

Reads each run's history.csv: the validation terms are single-sample estimates over the whole test
split with beta = 1 (val_reconstruction_loss + val_kl_loss, so KL warm-up does not hide anything),
and time is the summed epoch_seconds (training only). Reports when each run first goes below
--target, and how long the others take to reach the first run's final −ELBO.
"""
import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit.atomic_files import read_csv  # noqa: E402
from kit.pictures import plt, save_figure  # noqa: E402


def plot_curves_vs_time(curves, path, title, ylabel, lines=None):
    """curves: {name: (seconds, values)} against wall-clock time; lines: {label: level} drawn flat."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (seconds, values) in curves.items():
        ax.plot(seconds, values, "o-", markersize=3, label=name)
    for (label, level), style in zip((lines or {}).items(), (":", "--", "-.")):
        ax.axhline(level, color="gray", linestyle=style, label=f"{label} {level:g}")
    ax.set_xlabel("wall-clock training time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    save_figure(fig, path)


def elbo_curve(run_dir):
    """(cumulative training seconds, test −ELBO) after each epoch of a finished run."""
    seconds, neg_elbo, total = [], [], 0.0
    for row in read_csv(Path(run_dir) / "history.csv"):
        total += row["epoch_seconds"]
        seconds.append(total)
        neg_elbo.append(row["val_reconstruction_loss"] + row["val_kl_loss"])
    return seconds, neg_elbo


def seconds_to_reach(curve, level):
    """Training seconds at the first epoch whose −ELBO is at or below `level` (None if never)."""
    return next((s for s, v in zip(*curve) if v <= level), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--target", type=float, help="−ELBO level, nats/image")
    parser.add_argument("--plot", required=True)
    parser.add_argument("--title", default="Fashion-MNIST test −ELBO against training time")
    parser.add_argument("--bits-per-dim", type=int, metavar="D",
                        help="plot −ELBO / (D ln 2): bits/dim (of 8-bit data for the discretized likelihoods)")
    parser.add_argument("--line", action="append", default=[], metavar="NAME=LEVEL",
                        help="a flat reference line, e.g. PNG=5.985")
    parser.add_argument("--points", action="append", default=[], metavar="NAME=S:V,S:V,...",
                        help="a curve from a published table (seconds:value, in the plotted unit), for a run "
                             "whose folder is gone; plotted after the --run curves")
    parser.add_argument("--ylabel", help="the y axis' label (default: test −ELBO and its unit)")
    args = parser.parse_args()
    curves = dict((name, elbo_curve(path)) for name, path in (r.split("=", 1) for r in args.run))
    unit = "nats/image"
    if args.bits_per_dim:
        curves = {name: (t, [v / (args.bits_per_dim * math.log(2.0)) for v in values])
                  for name, (t, values) in curves.items()}
        unit = "bits/dim"
    for name, points in (p.split("=", 1) for p in args.points):
        pairs = [tuple(map(float, point.split(":"))) for point in points.split(",")]
        curves[name] = ([s for s, _ in pairs], [v for _, v in pairs])
    reference_name, reference = next(iter(curves.items()))
    reference_final = reference[1][-1]
    report = {"target": args.target, "reference": reference_name, "reference_final_neg_elbo": reference_final,
              "reference_seconds": reference[0][-1], "runs": {}}
    for name, curve in curves.items():
        to_reference = seconds_to_reach(curve, reference_final)
        report["runs"][name] = {
            "epochs": len(curve[0]), "train_seconds": curve[0][-1], "final_neg_elbo": curve[1][-1],
            "best_neg_elbo": min(curve[1]),
            "seconds_to_target": None if args.target is None else seconds_to_reach(curve, args.target),
            "seconds_to_reference_final": to_reference,
            "fraction_of_reference_time": None if to_reference is None else to_reference / reference[0][-1]}
    print(json.dumps(report, indent=2))
    lines = dict((name, float(level)) for name, level in (line.split("=", 1) for line in args.line))
    if args.target is not None:
        lines["target"] = args.target
    plot_curves_vs_time(curves, args.plot, args.title, args.ylabel or f"test −ELBO ({unit})", lines)


if __name__ == "__main__":
    main()
