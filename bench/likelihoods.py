"""Likelihoods compared back to back on CIFAR-10 (or Fashion-MNIST) within one training budget.

    python bench/likelihoods.py --script vae_cifar10.py --data-dir ../shared/data/cifar10-jpeg-proxy
    python bench/likelihoods.py --script vae_fashion_mnist.py --runs bce gaussian discretized-logistic

Each run is the script at its defaults plus the run's options, in bench/results/likelihoods/<data>/
<run>/ (a finished run is not repeated). Prints a Markdown table of the shared numbers and draws
test images above their reconstructions by the first run and by --pick.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The network CIFAR-10 had by default before this comparison (latent 128, Dense 512 on both
# sides), so the runs stay what they were after the default changed.
SEED_NETWORK = ["--latent-dim", "128", "--encoder-dense", "512", "--decoder-dense", "512"]
RUNS = {  # name -> options added to the script's defaults
    "bce": ["--likelihood", "bernoulli"],
    "continuous-bernoulli": ["--likelihood", "continuous-bernoulli"],
    "gaussian": ["--likelihood", "gaussian"],
    "gaussian-learned": ["--likelihood", "gaussian", "--gaussian-sigma", "learned"],
    "discretized-logistic": ["--likelihood", "discretized-logistic"],
    "mixture": ["--likelihood", "discretized-logistic-mixture"],
    "gaussian-wide": ["--likelihood", "gaussian", "--latent-dim", "256", "--encoder-dense", "",
                      "--decoder-dense", ""],
    # The longer run of issue 9: the best discretized likelihood with the wide latent, ~1 h here.
    "mixture-long": ["--likelihood", "discretized-logistic-mixture", "--latent-dim", "256",
                     "--encoder-dense", "", "--decoder-dense", "", "--epochs", "36"],
    "resnet-gaussian": ["--likelihood", "gaussian", "--arch", "resnet", "--epochs", "5"],
}


def options_of(script, name):
    """The run's options: on CIFAR-10 on top of the seed's network, elsewhere on the defaults."""
    return (SEED_NETWORK if "cifar" in script else []) + RUNS[name]


COLUMNS = [("epochs", "{:.0f}"), ("train_seconds", "{:.0f} s"), ("test_neg_elbo", "{:.1f}"),
           ("test_kl", "{:.1f}"), ("bits_per_dim_8bit", "{:.3f}"), ("iwae_bits_per_dim_8bit", "{:.3f}"),
           ("test_psnr_db", "{:.2f}"), ("test_ssim", "{:.3f}"), ("test_mse", "{:.4f}"),
           ("fd_prior_samples", "{:.3f}"), ("fd_gmm_samples", "{:.3f}")]


def run(script, name, options, data_dir, outdir):
    if (outdir / "metrics.json").exists():
        print(f"{name}: done before, reusing {outdir}")
        return
    command = [sys.executable, str(ROOT / script), "--outdir", str(outdir), *options]
    if data_dir:
        command += ["--data-dir", data_dir]
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    with open(outdir.parent / f"{name}.log", "w") as log:
        subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)


def table(script, results, split="test"):
    lines = ["| run | options | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 2)]
    for name, metrics in results.items():
        cells = [("—" if metrics.get(c) is None else f.format(metrics[c])) for c, f in COLUMNS]
        options = " ".join(repr(o) if o == "" else o for o in RUNS[name])
        lines.append(f"| {name} | `{options or '(defaults)'}` | " + " | ".join(cells) + " |")
    if "cifar" in script:
        lines.insert(0, f"Every run's options come on top of `{' '.join(SEED_NETWORK)}` (the network "
                        f"CIFAR-10 had by default before this comparison).\n")
    first = next(iter(results.values()))
    lines.append(f"\nPNG of the same {split} images: {first.get('png_bits_per_dim')} bits/dim; "
                 f"WebP lossless: {first.get('webp_bits_per_dim')} bits/dim.")
    return "\n".join(lines)


def side_by_side(folder, names, data_title, path, n=10):
    """Test images above their reconstructions (decoder mean at the posterior mean) by each run."""
    import keras
    import numpy as np

    import common  # noqa: F401  (registers the model classes)
    from kit.evaluate import decode_images, posterior_means
    from kit.pictures import plot_image_rows
    models = {name: keras.models.load_model(folder / name / "model.keras") for name in names}
    spec = json.loads((folder / names[0] / "config.json").read_text())
    x = load_test_images(spec)[:n]
    rows = [x] + [decode_images(m, posterior_means(m, x)) for m in models.values()]
    plot_image_rows(np.stack(rows), ["input", f"{names[0]} (old default)", f"{names[1]} (new default)"], path,
                    f"Test images and reconstructions — {data_title}")


def samples_side_by_side(folder, names, data_title, path, width=1400):
    """Each run's samples.png (prior) above its samples_gmm.png, one labelled column per run."""
    from PIL import Image, ImageChops, ImageDraw, ImageFont

    def grid(png):  # the image grid without its title and margins
        image = Image.open(png).convert("L")
        image = image.crop((0, 30, image.width, image.height))
        return image.crop(ImageChops.difference(image, Image.new("L", image.size, 255)).getbbox())

    font, label_height, gap = ImageFont.load_default(size=22), 36, 20
    columns = []
    for name in names:
        prior, gmm = grid(folder / name / "samples.png"), grid(folder / name / "samples_gmm.png")
        gmm = gmm.resize((prior.width, round(gmm.height * prior.width / gmm.width)))
        column = Image.new("L", (prior.width, 2 * label_height + prior.height + gmm.height), 255)
        draw = ImageDraw.Draw(column)
        draw.text((prior.width // 2, label_height // 2), f"{name}: z ~ N(0, I)", font=font, anchor="mm")
        column.paste(prior, (0, label_height))
        draw.text((prior.width // 2, label_height + prior.height + label_height // 2),
                  f"{name}: GMM of the training codes", font=font, anchor="mm")
        column.paste(gmm, (0, 2 * label_height + prior.height))
        columns.append(column)
    out = Image.new("L", (sum(c.width for c in columns) + gap * (len(columns) - 1),
                          label_height + max(c.height for c in columns)), 255)
    ImageDraw.Draw(out).text((out.width // 2, label_height // 2), f"Samples: {data_title}", font=font,
                             anchor="mm")
    x = 0
    for column in columns:
        out.paste(column, (x, label_height))
        x += column.width + gap
    out.thumbnail((width, width))
    out.save(path, optimize=True)


def validation_metrics(run_folder):
    """The run's numbers on its own held-out validation images (never the test split): the same
    compute_metrics and Fréchet distances as metrics.json, for choosing defaults."""
    import keras

    import common  # noqa: F401  (registers the model classes)
    from kit import sample_quality
    from kit.data import load_cifar10, load_fashion_mnist
    from kit.evaluate import compute_metrics
    config = json.loads((run_folder / "config.json").read_text())
    load = load_cifar10 if config["dataset"] == "cifar10" else load_fashion_mnist
    loaded = load(config["data_dir"])
    splits = loaded.hold_out(config["validation_images"], config["seed"])
    model = keras.models.load_model(run_folder / "model.keras")
    metrics = compute_metrics(model, splits.x_val, iw_samples=0, iwae_images=0, seed=config["seed"])
    features = sample_quality.feature_extractor(sample_quality.shipped_feature_network(config["dataset"])[0])
    gmm = sample_quality.LatentGMM.load(run_folder / "latent_gmm.npz")
    metrics.update(sample_quality.sample_quality_metrics(model, features, splits.x_train, splits.x_val,
                                                         gmm, len(splits.x_val), config["seed"]))
    metrics["train_seconds"] = json.loads((run_folder / "metrics.json").read_text())["train_seconds"]
    metrics["epochs"] = config["epochs"]
    return metrics


def load_test_images(config):
    from kit.data import load_cifar10, load_fashion_mnist
    load = load_cifar10 if config["dataset"] == "cifar10" else load_fashion_mnist
    return load(config["data_dir"]).x_test


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", default="vae_cifar10.py")
    parser.add_argument("--data-dir")
    parser.add_argument("--runs", nargs="+", default=["bce", "gaussian", "discretized-logistic", "mixture",
                                                      "gaussian-wide", "resnet-gaussian"], choices=list(RUNS))
    parser.add_argument("--pick", help="the run shown beside the first in the picture")
    parser.add_argument("--picture", help="PNG path for the side-by-side reconstructions")
    parser.add_argument("--samples-picture", help="PNG path for every run's prior and GMM samples")
    parser.add_argument("--title", default="CIFAR-10 (JPEG copy)")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="the numbers of the table: metrics.json's (test split), or recomputed on "
                             "each run's held-out validation images (for choosing defaults)")
    args = parser.parse_args()
    folder = ROOT / "bench" / "results" / "likelihoods" / Path(args.script).stem
    results = {}
    for name in args.runs:
        outdir = folder / name
        outdir.mkdir(parents=True, exist_ok=True)
        run(args.script, name, options_of(args.script, name), args.data_dir, outdir)
        results[name] = (validation_metrics(outdir) if args.split == "validation"
                         else json.loads((outdir / "metrics.json").read_text()))
    print(f"\n{args.title}, {args.split} split; commands: {args.script} --data-dir ... + options\n")
    print(table(args.script, results, args.split))
    if args.picture and args.pick:
        side_by_side(folder, [args.runs[0], args.pick], args.title, args.picture)
    if args.samples_picture:
        samples_side_by_side(folder, args.runs, args.title, args.samples_picture)


if __name__ == "__main__":
    main()
