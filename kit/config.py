"""One configuration object per run: a dataclass filled by argparse from the dataset's presets.

Precedence: the kit's base values < the chosen preset of the dataset < options given explicitly.
Every check here runs before any data is loaded or any file is written; a failure is a one-line
message and exit code 2.
"""
import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

LIKELIHOODS = ("bernoulli", "continuous-bernoulli")  # the same as common.LIKELIHOODS
DISTRIBUTE = ("none", "mirrored", "multiworker")
LR_SCHEDULES = ("constant", "cosine")

# The keras.io "Variational AutoEncoder" example's architecture and optimiser.
KERAS_IO_PRESET = dict(latent_dim=2, batch_size=128, lr=1e-3, epochs=30,
                       encoder_filters=[32, 64], encoder_dense=[16],
                       decoder_filters=[64, 32], decoder_dense=[],
                       kl_warmup=0, lr_schedule="constant")


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the two scripts: the data and its defaults."""
    name: str                 # machine name, e.g. "fashion_mnist"
    title: str                # for plot titles, e.g. "Fashion-MNIST"
    image_shape: tuple
    load: Callable            # data_dir or None -> data.Splits
    presets: dict             # preset name -> values that differ from Config's defaults
    default_outdir: str


@dataclass
class Config:
    dataset: str = ""
    preset: str = "default"
    epochs: int = 10
    batch_size: int = 128
    latent_dim: int = 16
    beta: float = 1.0
    lr: float = 1e-3
    lr_schedule: str = "constant"
    kl_warmup: int = 0
    likelihood: str = "bernoulli"
    encoder_filters: list = field(default_factory=lambda: [32, 64])
    encoder_dense: list = field(default_factory=lambda: [16])
    decoder_filters: list = field(default_factory=lambda: [64, 32])
    decoder_dense: list = field(default_factory=list)
    seed: int = 0
    outdir: str = ""
    data_dir: Optional[str] = None
    limit: Optional[int] = None
    iw_samples: int = 100
    iwae_images: int = 1000
    eval_only: Optional[str] = None
    resume: bool = False
    tensorboard: bool = False
    distribute: str = "none"
    mixed_precision: bool = False
    jit_compile: bool = False  # XLA measured slower on CPU: see docs/BENCHMARKS.md
    steps_per_execution: int = 1

    def to_dict(self):
        return dataclasses.asdict(self)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports an error in one line (no usage block) and exits 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def int_list(text):
    """'32,64' -> [32, 64]; '' -> [] (for an empty dense stack)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def build_parser(spec):
    p = ArgumentParser(prog=f"vae_{spec.name}.py", argument_default=argparse.SUPPRESS,
                       description=f"Train (or evaluate) a VAE on {spec.title}.")
    p.add_argument("--preset", choices=sorted(spec.presets), help="defaults to start from (default: default)")
    p.add_argument("--epochs", type=int, help="total training epochs")
    p.add_argument("--batch-size", type=int, help="images per step")
    p.add_argument("--latent-dim", type=int, help="size of z")
    p.add_argument("--beta", type=float, help="KL weight (default 1.0)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="learning-rate schedule over training")
    p.add_argument("--kl-warmup", type=int, metavar="EPOCHS", help="beta rises linearly from 0 over EPOCHS")
    p.add_argument("--likelihood", choices=LIKELIHOODS, help="p(x|z) (default bernoulli)")
    p.add_argument("--encoder-filters", type=int_list, metavar="F1,F2", help="strided Conv2D widths")
    p.add_argument("--encoder-dense", type=int_list, metavar="U1,..", help="Dense widths after the convs")
    p.add_argument("--decoder-filters", type=int_list, metavar="F1,F2", help="Conv2DTranspose widths")
    p.add_argument("--decoder-dense", type=int_list, metavar="U1,..", help="Dense widths before the reshape")
    p.add_argument("--seed", type=int, help="seeds Python, NumPy and Keras (default 0)")
    p.add_argument("--outdir", help=f"where outputs go (default {spec.default_outdir})")
    p.add_argument("--data-dir", help="folder with the official data files (no fallback)")
    p.add_argument("--limit", type=int, metavar="N", help="train on the first N training images")
    p.add_argument("--iw-samples", type=int, metavar="K", help="IWAE samples per image, 0 = off (default 100)")
    p.add_argument("--iwae-images", type=int, metavar="N", help="test images for IWAE (default 1000)")
    p.add_argument("--eval-only", metavar="MODEL.keras", help="evaluate a saved model; no training")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in outdir")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs under outdir")
    p.add_argument("--distribute", choices=DISTRIBUTE, help="tf.distribute strategy (default none)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="float16 on GPUs, bfloat16 on CPUs; losses stay float32")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, help="XLA-compile the train step")
    p.add_argument("--steps-per-execution", type=int, metavar="N", help="train steps per tf.function call")
    return p


def parse_config(spec, argv=None):
    """Config from the command line, validated (exits 2 with one line on a bad value)."""
    parser = build_parser(spec)
    explicit = vars(parser.parse_args(argv))
    preset = explicit.get("preset", "default")
    values = {**spec.presets[preset], **explicit, "dataset": spec.name, "preset": preset}
    values.setdefault("outdir", spec.default_outdir)
    config = Config(**values)
    problem = find_problem(config, spec)
    if problem:
        parser.error(problem)
    config.explicit = sorted(explicit)  # which options the user gave (for --resume checks)
    return config


def find_problem(c, spec):
    """The first thing wrong with a config, as a message, or None."""
    for name in ("epochs", "batch_size", "latent_dim", "iwae_images", "steps_per_execution"):
        if getattr(c, name) <= 0:
            return f"--{name.replace('_', '-')} must be > 0, got {getattr(c, name)}"
    if c.limit is not None and c.limit <= 0:
        return f"--limit must be > 0, got {c.limit}"
    if not math.isfinite(c.beta) or c.beta < 0:
        return f"--beta must be a finite number >= 0, got {c.beta}"
    if not math.isfinite(c.lr) or c.lr <= 0:
        return f"--lr must be a finite number > 0, got {c.lr}"
    if c.iw_samples < 0:
        return f"--iw-samples must be >= 0, got {c.iw_samples}"
    if c.kl_warmup < 0:
        return f"--kl-warmup must be >= 0, got {c.kl_warmup}"
    if not c.encoder_filters or not c.decoder_filters:
        return "--encoder-filters and --decoder-filters need at least one width"
    height, width = spec.image_shape[:2]
    scale = 2 ** len(c.decoder_filters)
    if height % scale or width % scale:
        return (f"--decoder-filters: {len(c.decoder_filters)} stride-2 layers cannot produce "
                f"{height}x{width} images (needs a size divisible by {scale})")
    if c.eval_only and c.resume:
        return "--eval-only and --resume cannot be used together"
    if c.eval_only and not Path(c.eval_only).is_file():
        return f"--eval-only: no model file at {c.eval_only}"
    if c.eval_only and not c.eval_only.endswith(".keras"):
        return f"--eval-only expects a .keras file, got {c.eval_only}"
    if c.data_dir is not None and not Path(c.data_dir).is_dir():
        return f"--data-dir: {c.data_dir} is not a folder"
    if c.distribute == "multiworker" and not os.environ.get("TF_CONFIG"):
        return "--distribute multiworker needs the TF_CONFIG environment variable (see README, Scaling out)"
    if c.resume and not (Path(c.outdir) / "checkpoint" / "state.json").is_file():
        return f"--resume: no checkpoint in {c.outdir}/checkpoint (train without --resume first)"
    return outdir_problem(c.outdir)


def outdir_problem(outdir):
    """None if outdir exists or can be created and is writable, else why not."""
    path = Path(outdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"--outdir {outdir} cannot be written: {err.strerror or err}"
    return None
