"""One frozen configuration per run, from the data set's defaults table and the command line.

Precedence: RUN_DEFAULTS < the data set's preset table < (on --resume) the run's config.json <
options given explicitly. The configuration is complete before it is checked and never changes
afterwards. Nothing here imports TensorFlow, so a bad option costs no start-up time.
"""
import argparse
import dataclasses
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from kit.errors import DamagedRunError, UsageError
from kit.guards import (GB, SMALLER_HIERARCHICAL_MODEL, SMALLER_MODEL, estimate_for, feature_cache_problem,
                        folder_problem, is_int, is_number, memory_problem, physical_memory_bytes, read_json_object,
                        shipped_feature_net_problem)
from kit.model_options import ARCHITECTURES, GAUSSIAN_SIGMA_MODES, LIKELIHOODS, resolution_chain

DISTRIBUTE = ("none", "mirrored", "multiworker")
# The Fréchet distance's feature network: the kit's, the same on every machine, or one trained here.
FEATURE_NETS = ("shipped", "own")
LR_SCHEDULES = ("constant", "cosine")

# The keras.io "Variational AutoEncoder" example's architecture and optimiser.
KERAS_IO_PRESET = dict(latent_dim=2, epochs=30, batch_size=128, beta=1.0, lr=1e-3,
                       lr_schedule="constant", kl_warmup=0, likelihood="bernoulli",
                       gaussian_sigma="optimal", mixture_components=5, arch="plain",
                       blocks_per_resolution=1, encoder_filters=[32, 64], encoder_dense=[16],
                       decoder_filters=[64, 32], decoder_dense=[])

CHECKPOINT_MINUTES = 10.0
# The optimizer: Adam (Kingma & Ba 2015) at --lr, no warm-up, no weight decay, no EMA, as every
# preset but the hierarchical ones (HIERARCHICAL_TRAINING) trains.
OPTIMIZER_DEFAULTS = dict(adam_beta2=0.999, weight_decay=0.0, warmup_steps=0, ema=0.0)
# The hierarchical presets: VDVAE's recipe (Child 2021, hps.py and train_helpers.py), AdamW
# (Loshchilov & Hutter 2019) with beta_2 0.9, weight decay 0.01 and a linear warm-up over 100 steps,
# evaluated with an EMA of the weights at the rate that won after 1,500 updates (0.99; 0.998 still
# held too much of the early weights there: docs/BENCHMARKS.md, "Hierarchical VAE: optimizer").
HIERARCHICAL_TRAINING = dict(adam_beta2=0.9, weight_decay=0.01, warmup_steps=100, ema=0.99)
# The warning line when more than this fraction of an epoch's updates were skipped (issue 25).
SKIPPED_UPDATES_WARNING_FRACTION = 0.01
# Training stops (exit 3) after this many skipped updates in a row: the weights no longer move
# (a tenth of a CIFAR-10 epoch of the hierarchical preset; one skipped spike is nowhere near).
FROZEN_UPDATES_LIMIT = 200

# Options that are the same for every data set (the data sets' tables hold the rest).
RUN_DEFAULTS = dict(**OPTIMIZER_DEFAULTS, seed=0, data_dir=None, limit=None, validation_images=5000, iw_samples=100,
                    iwae_images=1000, temperature=1.0,
                    fd_images=10_000, gmm_components=10, feature_net="shipped", refresh_feature_net=False,
                    eval_only=None, resume=False, tensorboard=False, distribute="none",
                    mixed_precision=False, deterministic=True,
                    jit_compile=False,  # XLA is slower on CPU: docs/BENCHMARKS.md
                    steps_per_execution=1,
                    # A checkpoint inside an epoch every so many minutes of training: 0.9 % of the
                    # time for the slowest one measured, the hierarchical CIFAR-10 preset's 5.4 s
                    # (docs/BENCHMARKS.md, Checkpoints); 5 minutes would be 1.8 %.
                    checkpoint_minutes=CHECKPOINT_MINUTES)

# What --resume may change: the rest is fixed by the checkpoint (weights, optimizer, data order).
RESUMABLE = ("epochs", "iw_samples", "iwae_images", "temperature", "fd_images", "gmm_components",
             "feature_net", "refresh_feature_net", "tensorboard", "checkpoint_minutes", "data_dir", "outdir",
             "resume")
# What --eval-only honours: the model file fixes the model, and nothing is trained (the validation
# images are still held out of the training images that the latent GMM is fitted to).
EVAL_ONLY_OPTIONS = ("eval_only", "seed", "outdir", "data_dir", "limit", "validation_images",
                     "iw_samples", "iwae_images", "temperature", "fd_images", "gmm_components",
                     "feature_net", "refresh_feature_net")

GMM_FIT_IMAGES = 20_000  # posterior means the latent GMM is fitted to: enough for 10 components
FD_MIN_IMAGES = 2  # a covariance of the features needs at least two images per set
INT64_MAX = 2 ** 63 - 1  # TensorFlow's counters and shapes are int64
SEED_MAX = 2 ** 32 - 1  # NumPy's global seed, which keras.utils.set_random_seed sets, takes 0 .. 2**32 - 1
FLOAT32_MAX = 3.4028234663852886e38  # beta and the learning rate live in float32 variables


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the two scripts: the data and its defaults tables."""
    name: str                 # machine name, e.g. "fashion_mnist"
    title: str                # for plot titles, e.g. "Fashion-MNIST"
    image_shape: tuple
    load: Callable            # data_dir or None -> kit.data.Splits
    presets: dict             # preset name -> every model and training value
    default_outdir: str

    def __post_init__(self):
        for name, table in self.presets.items():
            missing = set(MODEL_FIELDS) - set(table)
            if missing:
                raise ValueError(f"preset {name!r} of {self.name} lacks {sorted(missing)}")


@dataclass(frozen=True)
class Config:
    dataset: str
    preset: str
    # the model and its training: from the data set's table
    latent_dim: int
    epochs: int
    batch_size: int
    beta: float
    lr: float
    lr_schedule: str
    kl_warmup: int
    # the optimizer: OPTIMIZER_DEFAULTS, HIERARCHICAL_TRAINING for the hierarchical presets
    adam_beta2: float
    weight_decay: float
    warmup_steps: int
    ema: float
    likelihood: str
    gaussian_sigma: str
    mixture_components: int
    arch: str
    blocks_per_resolution: int
    encoder_filters: list
    encoder_dense: list
    decoder_filters: list
    decoder_dense: list
    # --arch hierarchical only (the plain and resnet models ignore these)
    hvae_widths: list
    hvae_blocks: list
    latent_channels: int
    latent_resolutions: list
    grad_clip: float
    skip_threshold: float
    clip_factor: float
    skip_factor: float
    # the run: RUN_DEFAULTS
    seed: int
    outdir: str
    data_dir: Optional[str]
    limit: Optional[int]
    validation_images: int
    iw_samples: int
    iwae_images: int
    temperature: float
    fd_images: int
    gmm_components: int
    feature_net: str
    refresh_feature_net: bool
    eval_only: Optional[str]
    resume: bool
    tensorboard: bool
    distribute: str
    mixed_precision: bool
    deterministic: bool
    jit_compile: bool
    steps_per_execution: int
    checkpoint_minutes: float
    explicit: frozenset = frozenset()  # the options given on the command line

    def to_dict(self):
        """Every option, as config.json records it."""
        values = dataclasses.asdict(self)
        del values["explicit"]
        return values

    def model_options(self):
        """The keyword arguments of kit.models.build_model that come from the options (it passes
        each architecture the ones it uses)."""
        return {name: getattr(self, name) for name in
                ("latent_dim", "encoder_filters", "encoder_dense", "decoder_filters",
                 "decoder_dense", "beta", "likelihood", "gaussian_sigma", "mixture_components",
                 "arch", "blocks_per_resolution", *HIERARCHICAL_FIELDS)}


# The hierarchical VAE's own options (kit/hierarchical_vae.py), in every data set's tables.
HIERARCHICAL_FIELDS = ("hvae_widths", "hvae_blocks", "latent_channels", "latent_resolutions",
                       "grad_clip", "skip_threshold", "clip_factor", "skip_factor")
MODEL_FIELDS = ("latent_dim", "epochs", "batch_size", "beta", "lr", "lr_schedule", "kl_warmup",
                "likelihood", "gaussian_sigma", "mixture_components", "arch", "blocks_per_resolution",
                "encoder_filters", "encoder_dense", "decoder_filters", "decoder_dense",
                *HIERARCHICAL_FIELDS)
FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageError: one line, exit 2 (kit.errors.exit_code_of)."""

    def error(self, message):
        raise UsageError(message)


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
    p.add_argument("--beta", type=float, help="KL weight")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="learning-rate schedule over training")
    p.add_argument("--adam-beta2", type=float, metavar="B2",
                   help="Adam's beta_2, in [0, 1) (default 0.999; hierarchical preset 0.9, VDVAE)")
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help="AdamW's decoupled weight decay; 0 = Adam (default 0; hierarchical preset 0.01)")
    p.add_argument("--warmup-steps", type=int, metavar="N",
                   help="the learning rate rises linearly from 0 over the first N steps (default 0; "
                        "hierarchical preset 100)")
    p.add_argument("--ema", type=float, metavar="RATE",
                   help="validate, evaluate, sample and save with an exponential moving average of the "
                        "weights at RATE per step, in [0, 1); 0 = off (default 0; hierarchical preset "
                        f"{HIERARCHICAL_TRAINING['ema']})")
    p.add_argument("--kl-warmup", type=int, metavar="EPOCHS", help="beta rises linearly from 0 over EPOCHS")
    p.add_argument("--likelihood", choices=LIKELIHOODS, help="p(x|z) (docs/EVALUATION.md: Likelihoods)")
    p.add_argument("--gaussian-sigma", choices=GAUSSIAN_SIGMA_MODES,
                   help="gaussian: the batch's optimal shared sigma, or a learned one (default optimal)")
    p.add_argument("--mixture-components", type=int, metavar="K",
                   help="discretized-logistic-mixture: logistics per pixel (default 5)")
    p.add_argument("--arch", choices=ARCHITECTURES,
                   help="plain conv stacks, residual blocks, or the hierarchical VAE (docs/HIERARCHICAL.md)")
    p.add_argument("--blocks-per-resolution", type=int, metavar="N",
                   help="resnet: residual blocks after each stride-2 layer (default 1)")
    p.add_argument("--encoder-filters", type=int_list, metavar="F1,F2", help="strided Conv2D widths")
    p.add_argument("--encoder-dense", type=int_list, metavar="U1,..", help="Dense widths after the convs")
    p.add_argument("--decoder-filters", type=int_list, metavar="F1,F2", help="Conv2DTranspose widths")
    p.add_argument("--decoder-dense", type=int_list, metavar="U1,..", help="Dense widths before the reshape")
    p.add_argument("--hvae-widths", type=int_list, metavar="W1,..",
                   help=f"hierarchical: channels of the stream, one width or one per resolution "
                        f"{','.join(map(str, resolution_chain(spec.image_shape[0])))}")
    p.add_argument("--hvae-blocks", type=int_list, metavar="N1,..",
                   help="hierarchical: encoder residual blocks, one count or one per resolution")
    p.add_argument("--latent-channels", type=int, metavar="C", help="hierarchical: channels of each latent group")
    p.add_argument("--latent-resolutions", type=int_list, metavar="R1,..",
                   help="hierarchical: the resolution of every latent group (repeat one for several "
                        "groups there); in any order, recorded coarse first as the model builds them")
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="hierarchical: clip the gradient's global norm (of the per-image loss) to NORM; "
                        "0 = off (default 0: --clip-factor instead)")
    p.add_argument("--skip-threshold", type=float, metavar="NORM",
                   help="hierarchical: skip updates whose gradient norm is above NORM; 0 = only "
                        "non-finite ones (default 0: --skip-factor instead)")
    p.add_argument("--clip-factor", type=float, metavar="F",
                   help="hierarchical: clip the gradient's norm to F times its running level (an EMA "
                        "of the norms); 0 = off (default: the data set's table)")
    p.add_argument("--skip-factor", type=float, metavar="F",
                   help="hierarchical: skip updates whose gradient norm is above F (> 1) times its "
                        "running level; 0 = off (default: the data set's table)")
    p.add_argument("--seed", type=int, help="seeds Python, NumPy and Keras (default 0)")
    p.add_argument("--outdir", help=f"where outputs go (default {spec.default_outdir})")
    p.add_argument("--data-dir", help="folder with the official data files (no fallback)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="train on the first N training images (after the validation images are held out)")
    p.add_argument("--validation-images", type=int, metavar="N",
                   help="training images held out to validate each epoch, chosen by --seed; 0 = none "
                        "(default 5000). The test split is evaluated once, at the end")
    p.add_argument("--iw-samples", type=int, metavar="K", help="IWAE samples per image, 0 = off (default 100)")
    p.add_argument("--iwae-images", type=int, metavar="N", help="test images for IWAE (default 1000)")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="samples.png and the prior samples' Fréchet distance: the prior's std times T "
                        "(default 1)")
    p.add_argument("--fd-images", type=int, metavar="N",
                   help="images per set for the Fréchet distances, 0 = off (default 10000)")
    p.add_argument("--gmm-components", type=int, metavar="K",
                   help="components of the ex-post latent GMM sampler (default 10)")
    p.add_argument("--feature-net", choices=FEATURE_NETS,
                   help="the Fréchet distances' features: the network the kit ships (the same on every "
                        "machine), or one trained on this machine's data and cached (default shipped)")
    p.add_argument("--refresh-feature-net", action="store_true",
                   help="--feature-net own: retrain the cached network")
    p.add_argument("--eval-only", metavar="MODEL.keras", help="evaluate a saved model; no training")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in outdir")
    p.add_argument("--checkpoint-minutes", type=float, metavar="M",
                   help=f"also checkpoint inside an epoch every M minutes of training, so a stop loses "
                        f"at most M minutes; 0 = at epoch ends only (default {CHECKPOINT_MINUTES:g})")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs under outdir")
    p.add_argument("--distribute", choices=DISTRIBUTE, help="tf.distribute strategy (default none)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="bfloat16 where the device has it (CPUs, GPUs of compute capability 8.0+), "
                        "else float16 with loss scaling; losses stay float32")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                   help="deterministic GPU kernels, so a seed gives the same numbers (default on; "
                        "--no-deterministic may be faster on a GPU)")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, help="XLA-compile the train step")
    p.add_argument("--steps-per-execution", type=int, metavar="N", help="train steps per tf.function call")
    return p


def parse_config(spec, argv=None):
    """The run's Config: defaults, then (on --resume) the saved run, then the command line; checked.

    Raises UsageError (exit 2) for a bad option, before any data is loaded or file written.
    """
    explicit = in_canonical_order(vars(build_parser(spec).parse_args(argv)))
    preset = explicit.get("preset", "default")
    defaults = {**RUN_DEFAULTS, **spec.presets[preset], "outdir": spec.default_outdir,
                "preset": preset}
    values = {**defaults, **explicit}
    if values["resume"]:
        problem = outdir_problem(values["outdir"])
        if problem:
            raise UsageError(problem)
        saved = saved_options(values["outdir"], explicit, spec)
        # What may change on resume is checked as given (a run stopped by its --gmm-components
        # resumes with a smaller one); the rest as saved.
        changes = {name: value for name, value in explicit.items() if name in RESUMABLE}
        problem = value_problem({**defaults, **saved, **changes}, spec)
        if problem:
            raise DamagedRunError(f"the checkpoint in {values['outdir']} is damaged: config.json: "
                                  f"{problem}")
        values = {**values, **saved, **explicit}
    config = Config(**in_canonical_order(values), dataset=spec.name, explicit=frozenset(explicit))
    problem = find_problem(config, spec)
    if problem:
        raise UsageError(problem)
    return config


def in_canonical_order(values):
    """The options with the latent groups' resolutions coarse first, the order the hierarchical VAE
    builds them in: 14,7,1 and 1,7,14 are one model, recorded and compared as 1,7,14."""
    if isinstance(values.get("latent_resolutions"), list):
        return {**values, "latent_resolutions": sorted(values["latent_resolutions"])}
    return values


def saved_options(outdir, explicit, spec):
    """The interrupted run's options from its config.json, refusing a run of another data set and
    explicit options that would contradict the checkpoint (it fixes the model, optimizer and data
    order)."""
    path = Path(outdir) / "config.json"
    if not (Path(outdir) / "checkpoint").is_dir():
        return {}  # find_problem reports the missing checkpoint
    saved = read_json_object(path, "the checkpoint is damaged:")
    dataset = saved.get("dataset", spec.name)
    if not isinstance(dataset, str):
        raise DamagedRunError(f"the checkpoint in {outdir} is damaged: config.json: dataset is "
                              f"{dataset!r}, not a string")
    if dataset != spec.name:
        raise UsageError(f"--resume: {outdir} holds another data set's run ({dataset}, not "
                         f"{spec.name}); resume it with vae_{dataset}.py")
    saved = {k: v for k, v in saved.items()
             if k in FIELD_TYPES and k not in ("dataset", "explicit", "resume", "eval_only", "outdir")}
    # A run from before the optimizer options trained with Adam's defaults, whatever its preset says
    # now; one from before the relative thresholds, without them.
    saved = {**OPTIMIZER_DEFAULTS, "clip_factor": 0.0, "skip_factor": 0.0, **saved}
    for name, value in saved.items():
        if not has_type(value, FIELD_TYPES[name]):
            raise DamagedRunError(f"the checkpoint in {outdir} is damaged: config.json: {name} is "
                                  f"{value!r}, not {type_name(FIELD_TYPES[name])}")
    saved = in_canonical_order(saved)  # a run from before the order was canonical
    for name, value in explicit.items():
        if name in saved and name not in RESUMABLE and value != saved[name]:
            raise UsageError(f"{option(name)} {shown(value)} does not match the run in {outdir} "
                             f"({shown(saved[name])}); on --resume only "
                             f"{', '.join(option(n) for n in RESUMABLE if n not in ('outdir', 'resume'))} may change")
    return saved


def option(name):
    return "--" + name.replace("_", "-")


def shown(value):
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def has_type(value, kind):
    """Does a value read from config.json have the type of a Config field (as argparse makes it)?"""
    if kind is float:
        return is_number(value)
    if kind is list:
        return isinstance(value, list) and all(is_int(v) and v > 0 for v in value)
    if kind in (Optional[int], Optional[str]):
        return value is None or has_type(value, kind.__args__[0])
    return is_int(value) if kind is int else isinstance(value, kind)


def type_name(kind):
    return {float: "a number", int: "a whole number", list: "a list of positive whole numbers",
            str: "a string", bool: "true or false"}.get(kind, "a " + str(kind).replace("typing.", ""))


def value_problem(v, spec):
    """The first out-of-range option value in a dict of options, as a message, or None."""
    for name in ("epochs", "batch_size", "latent_dim", "iwae_images", "steps_per_execution",
                 "mixture_components", "blocks_per_resolution", "latent_channels"):
        if v[name] <= 0:
            return f"{option(name)} must be > 0, got {v[name]}"
    if v["limit"] is not None and v["limit"] <= 0:
        return f"--limit must be > 0, got {v['limit']}"
    for name in ("beta", "lr"):
        if not math.isfinite(v[name]) or v[name] > FLOAT32_MAX:
            return f"{option(name)} must be a finite number{' >= 0' if name == 'beta' else ' > 0'} " \
                   f"(at most {FLOAT32_MAX:.4g}, float32), got {v[name]}"
    if v["beta"] < 0:
        return f"--beta must be a finite number >= 0, got {v['beta']}"
    for name, off in (("temperature", ""), ("grad_clip", "0 is off; "), ("skip_threshold", "0 is off; "),
                      ("clip_factor", "0 is off; "), ("skip_factor", "0 is off; "),
                      ("checkpoint_minutes", "0: at epoch ends only; ")):
        if not (math.isfinite(v[name]) and 0 <= v[name] <= FLOAT32_MAX):
            return (f"{option(name)} must be a finite number >= 0 ({off}at most {FLOAT32_MAX:.4g}, "
                    f"float32), got {v[name]}")
    if 0 < v["skip_factor"] <= 1:  # the level would follow the skipped norms down: every update skipped
        return f"--skip-factor must be 0 (off) or above 1, got {v['skip_factor']}"
    if v["lr"] <= 0:
        return f"--lr must be a finite number > 0, got {v['lr']}"
    if v["gmm_components"] <= 0:
        return f"--gmm-components must be > 0, got {v['gmm_components']}"
    for name in ("adam_beta2", "ema"):
        if not (math.isfinite(v[name]) and 0 <= v[name] < 1):
            return f"{option(name)} must be a number in [0, 1), got {v[name]}"
    if not (math.isfinite(v["weight_decay"]) and 0 <= v["weight_decay"] <= FLOAT32_MAX):
        return (f"--weight-decay must be a finite number >= 0 (0 is off; at most {FLOAT32_MAX:.4g}, "
                f"float32), got {v['weight_decay']}")
    for name in ("iw_samples", "kl_warmup", "fd_images", "validation_images", "warmup_steps"):
        if v[name] < 0:
            return f"{option(name)} must be >= 0, got {v[name]}"
    for name, kind in FIELD_TYPES.items():
        if kind in (int, Optional[int]) and v.get(name) is not None and v[name] > INT64_MAX:
            return f"{option(name)} must be at most 2**63 - 1, got {v[name]}"
        if kind is list and any(width > INT64_MAX for width in v[name]):
            return f"{option(name)}: values must be at most 2**63 - 1, got {shown(v[name])}"
    if not 0 <= v["seed"] <= SEED_MAX:
        return f"--seed must be in 0 .. 2**32 - 1 (NumPy's seed range), got {v['seed']}"
    if 0 < v["fd_images"] < FD_MIN_IMAGES:
        return (f"--fd-images must be 0 (off) or at least {FD_MIN_IMAGES}: a Fréchet distance needs "
                f"the covariance of {FD_MIN_IMAGES} or more images, got {v['fd_images']}")
    hierarchical = v["arch"] == "hierarchical"  # it has no single latent vector: no GMM sampler
    if v["gmm_components"] > GMM_FIT_IMAGES:
        return (f"--gmm-components must be at most {GMM_FIT_IMAGES:,}, the posterior means the GMM is "
                f"fitted to, got {v['gmm_components']}")
    if v["limit"] is not None and v["limit"] < v["gmm_components"] and not hierarchical:
        return (f"--limit {v['limit']} is below --gmm-components {v['gmm_components']}: the GMM is "
                f"fitted to the training images' posterior means, one or more per component")
    if v["limit"] is not None and v["fd_images"] and v["limit"] < FD_MIN_IMAGES:
        return (f"--limit {v['limit']} leaves too few training images for the Fréchet distance "
                f"(at least {FD_MIN_IMAGES}); raise it or pass --fd-images 0")
    for name, choices in (("likelihood", LIKELIHOODS), ("gaussian_sigma", GAUSSIAN_SIGMA_MODES),
                          ("arch", ARCHITECTURES), ("lr_schedule", LR_SCHEDULES),
                          ("distribute", DISTRIBUTE), ("feature_net", FEATURE_NETS),
                          ("preset", tuple(spec.presets))):
        if v[name] not in choices:
            return f"{option(name)} must be one of {', '.join(choices)}, got {v[name]!r}"
    problem = hierarchical_problem(v, spec)
    if problem or hierarchical:  # the hierarchical VAE has no encoder or decoder filters
        return problem
    if not v["encoder_filters"] or not v["decoder_filters"]:
        return "--encoder-filters and --decoder-filters need at least one width"
    height, width = spec.image_shape[:2]
    scale = 2 ** len(v["decoder_filters"])
    if height % scale or width % scale:
        return (f"--decoder-filters: {len(v['decoder_filters'])} stride-2 layers cannot produce "
                f"{height}x{width} images (needs a size divisible by {scale})")
    return None


def hierarchical_problem(v, spec):
    """The first out-of-range value of the hierarchical VAE's options, as a message, or None.
    Checked whatever --arch is: a bad value is refused, not ignored until it is used."""
    chain = resolution_chain(spec.image_shape[0])
    shown_chain = ",".join(map(str, chain))
    for name, what in (("hvae_widths", "width"), ("hvae_blocks", "count")):
        if len(v[name]) not in (1, len(chain)):
            return (f"{option(name)} needs one {what} or one per resolution {shown_chain} "
                    f"({len(chain)}), got {shown(v[name])}")
    if not v["latent_resolutions"]:
        return "--latent-resolutions needs at least one latent group"
    for r in v["latent_resolutions"]:
        if r not in chain:
            return (f"--latent-resolutions: {r} is not a resolution of the hierarchical VAE on "
                    f"{spec.image_shape[0]}x{spec.image_shape[1]} images ({shown_chain})")
    return None


def gmm_memory_problem(c, fraction=0.5):
    """None, or one line when fitting the latent GMM (full covariances, scikit-learn, float64)
    would need more than `fraction` of this machine's memory: 4 arrays of K x L x L (covariances,
    precisions, their Cholesky factors, a working copy) and 6 of N x K (k-means distances, log
    probabilities, responsibilities). Measured: 139 MB for K 200, L 128, N 5,000 (estimate 158);
    996 MB for K 2,000, L 32, N 10,000 (estimate 1,027)."""
    if c.arch == "hierarchical":  # no latent GMM is fitted
        return None
    images = min(c.limit or GMM_FIT_IMAGES, GMM_FIT_IMAGES)
    k, latent = c.gmm_components, c.latent_dim
    needed = 8 * (4 * k * latent * latent + 6 * images * k + images * latent)
    physical = physical_memory_bytes()
    if needed <= fraction * physical:
        return None
    return (f"--gmm-components {k} at --latent-dim {latent} needs about {needed / GB:.1f} GB to fit the "
            f"latent GMM, more than half of this machine's {physical / GB:.1f} GB of memory; use fewer "
            f"components")


def eval_only_problem(c):
    """None, or the first explicit option that --eval-only cannot honour (it trains nothing)."""
    unhonoured = sorted(c.explicit - set(EVAL_ONLY_OPTIONS) - {"resume"})
    if not unhonoured:
        return None
    return (f"{option(unhonoured[0])} cannot be used with --eval-only: the model file fixes the model "
            f"and nothing is trained (with --eval-only only "
            f"{', '.join(option(n) for n in EVAL_ONLY_OPTIONS[1:])} apply)")


def find_problem(c, spec):
    """The first thing wrong with a config, as a message, or None."""
    advice = SMALLER_HIERARCHICAL_MODEL if c.arch == "hierarchical" else SMALLER_MODEL
    problem = (value_problem(c.to_dict(), spec)
               or memory_problem(estimate_for(c, spec.image_shape), advice=advice)
               or gmm_memory_problem(c))
    if problem:
        return problem
    if c.eval_only and c.resume:
        return "--eval-only and --resume cannot be used together"
    problem = outdir_problem(c.outdir)  # first: a name too long to look up fails every later check
    if problem:
        return problem
    if c.eval_only and not os.path.isfile(c.eval_only):
        return f"--eval-only: no model file at {c.eval_only}"
    if c.eval_only and not c.eval_only.endswith(".keras"):
        return f"--eval-only expects a .keras file, got {c.eval_only}"
    if c.eval_only and not zipfile.is_zipfile(c.eval_only):
        size = Path(c.eval_only).stat().st_size
        return f"--eval-only: {c.eval_only} is not a .keras archive ({size} bytes{', empty' if not size else ''})"
    if c.eval_only and eval_only_problem(c):
        return eval_only_problem(c)
    if c.tensorboard and (Path(c.outdir) / "tensorboard").exists() \
            and not (Path(c.outdir) / "tensorboard").is_dir():
        return f"--tensorboard: {Path(c.outdir) / 'tensorboard'} exists and is not a folder"
    if c.data_dir is not None and not os.path.isdir(c.data_dir):  # False, not OSError, for a bad name
        return f"--data-dir: {c.data_dir} is not a folder"
    if c.distribute == "multiworker" and not os.environ.get("TF_CONFIG"):
        return "--distribute multiworker needs the TF_CONFIG environment variable (see docs/SCALING.md)"
    if c.resume and not (Path(c.outdir) / "checkpoint" / "state.json").is_file():
        return f"--resume: no checkpoint in {c.outdir}/checkpoint (train without --resume first)"
    if c.refresh_feature_net and c.feature_net != "own":
        return ("--refresh-feature-net retrains a feature network of this machine's own; the shipped one "
                "is fixed (add --feature-net own)")
    if c.fd_images and c.feature_net == "own":
        return feature_cache_problem(spec.name, c.refresh_feature_net)
    if c.fd_images:
        return shipped_feature_net_problem(spec.name)
    return None


def outdir_problem(outdir):
    """None if outdir is a writable folder or can be made one, else why not (creates nothing)."""
    problem = folder_problem(outdir)
    return f"--outdir {outdir} cannot be written: {problem}" if problem else None


def data_problem(c, train_images, test_images):
    """What the loaded data is too small for (checked before training), as a message, or None."""
    if train_images < c.gmm_components and c.arch != "hierarchical":
        return (f"--gmm-components {c.gmm_components} needs as many training images, the data has "
                f"{train_images}")
    if c.fd_images and min(train_images, test_images) < FD_MIN_IMAGES:
        return (f"--fd-images: a Fréchet distance needs at least {FD_MIN_IMAGES} training and test "
                f"images, the data has {train_images} and {test_images}; pass --fd-images 0")
    steps = -(-train_images // c.batch_size)
    if c.eval_only is None and c.steps_per_execution > steps:
        return (f"--steps-per-execution {c.steps_per_execution} is more than the {steps} steps of an "
                f"epoch ({train_images} images, --batch-size {c.batch_size})")
    if c.eval_only is None and steps % c.steps_per_execution:
        # Keras would run the last call's steps on into the next epoch's batches
        return (f"--steps-per-execution {c.steps_per_execution} must divide the {steps} steps of an "
                f"epoch ({train_images} images, --batch-size {c.batch_size}), or Keras carries steps "
                f"over into the next epoch")
    return None
