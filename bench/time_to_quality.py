"""Time to quality: test −ELBO against training wall-clock seconds for finished runs.

    python bench/time_to_quality.py --run keras-io=outputs/keras_io --run default=outputs/fashion_mnist \
        --target 240 --plot docs/elbo_vs_time.png

Reads each run's history.csv: the validation terms are single-sample estimates over the whole test
split with beta = 1 (val_reconstruction_loss + val_kl_loss, so KL warm-up does not hide anything),
and time is the summed epoch_seconds (training only). Reports when each run first goes below
--target, and how long the others take to reach the first run's final −ELBO.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit.atomic_files import read_csv  # noqa: E402
from kit.pictures import plt, save_figure  # noqa: E402


def plot_curves_vs_time(curves, path, title, ylabel, target=None):
    """curves: {name: (seconds, values)}; used by bench/ for test −ELBO against wall-clock time."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (seconds, values) in curves.items():
        ax.plot(seconds, values, "o-", markersize=3, label=name)
    if target is not None:
        ax.axhline(target, color="gray", linestyle=":", label=f"target {target:g}")
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
    args = parser.parse_args()
    curves = dict((name, elbo_curve(path)) for name, path in (r.split("=", 1) for r in args.run))
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
    plot_curves_vs_time(curves, args.plot, args.title, "test −ELBO (nats/image)", target=args.target)


if __name__ == "__main__":
    main()
