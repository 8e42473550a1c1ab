"""The steps of a run that the scripts call by name: runtime, data, resume, batches, callbacks,
evaluation and pictures. The training loop itself (`model.fit`) stays in the scripts."""
import csv
import hashlib
import json
import math
import resource
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import common  # noqa: F401  (registers the model classes for keras.models.load_model)
from kit.atomic_files import atomic_path, file_sha256, read_csv, write_json, write_text
from kit.callbacks import (EpochCheckpoint, EpochTimer, KLWarmup, RankOneStepOutputs, ResumeInsideEpoch,
                           SkippedUpdatesWarning, StopWhenFrozen,
                           StopOnNonFinite, StopOnSignal, first_line, load_checkpoint, load_model_file,
                           stop_on_signal_at_once)
from kit.config import FROZEN_UPDATES_LIMIT, GMM_FIT_IMAGES, SKIPPED_UPDATES_WARNING_FRACTION, data_problem
from kit.errors import DamagedRunError, TrainingStopped, UsageError, WriteError
from kit.guards import digest_problem, estimate_for, free_space_warning, is_chief, is_int
from kit import sample_quality
from kit.evaluate import EVAL_BATCH, compute_metrics, decode_images, posterior_means, reconstruct, to_uint8
from kit.models import KIT_MODELS, describe, is_hierarchical, latent_groups_note
from kit.picture_arrays import picture_arrays
from kit.pictures import format_metrics, write_hierarchical_pictures, write_loss_curves, write_pictures
from kit.pipeline import shuffled_batches
from kit.report import write_report


# --- runtime ------------------------------------------------------------------------------------

def make_strategy(kind):
    """The tf.distribute strategy for --distribute; CPU-only machines get two logical CPUs."""
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # cluster from TF_CONFIG
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()  # all local GPUs
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def set_up_runtime(config):
    """Seeds, deterministic kernels, precision policy and distribution strategy, in the order
    TensorFlow needs them; says which precision and kernels the run uses."""
    strategy = make_strategy(config.distribute)  # logical devices must precede any TF op
    keras.utils.set_random_seed(config.seed)  # Python, NumPy and Keras/TF at once
    gpus = tf.config.list_physical_devices("GPU")
    if config.deterministic and gpus:  # cuDNN's fastest kernels add in a varying order
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision:
        capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability")
                        for g in gpus]
        keras.mixed_precision.set_dtype_policy(mixed_precision_policy(capabilities))
    kernels = ("deterministic" if config.deterministic and gpus else
               "fastest (--no-deterministic)" if gpus else "CPU")
    print(f"Runtime: {keras.config.dtype_policy().name} precision, {kernels} kernels, "
          f"{strategy.num_replicas_in_sync} replica(s)")
    return strategy


def mixed_precision_policy(gpu_capabilities):
    """mixed_bfloat16 on CPUs and on GPUs that compute in bfloat16 (compute capability 8.0+, Ampere
    on); mixed_float16, whose loss scaling Keras adds, on older GPUs."""
    if any(c is None or tuple(c) < (8, 0) for c in gpu_capabilities):
        return "mixed_float16"
    return "mixed_bfloat16"


def describe_runtime(config):
    """{"precision": dtype policy, "deterministic_ops": bool}, as config.json records them."""
    return {"precision": keras.config.dtype_policy().name,
            "deterministic_ops": bool(config.deterministic and tf.config.list_physical_devices("GPU"))}


# --- data ---------------------------------------------------------------------------------------

def load_data(config, spec):
    """The data set's splits (--limit applied); prints where they came from and, in one line,
    whether they are a modified copy; refuses at once an own cached feature network made from other
    data (not after training)."""
    splits = spec.load(config.data_dir)
    if config.validation_images >= len(splits.x_train):
        raise UsageError(f"--validation-images {config.validation_images} leaves no training images "
                         f"(the training split has {len(splits.x_train)})")
    splits = splits.hold_out(config.validation_images, config.seed).limit(config.limit)
    if splits.warnings:  # one line; config.json and metrics.json keep every file's
        print(f"warning: {splits.source}: {len(splits.warnings)} of its {len(splits.sha256)} {spec.title} files "
              f"differ from the official ones, a modified copy: results do not compare with {spec.title}'s "
              f"(data_warnings in config.json and metrics.json name them)", file=sys.stderr)
    print(f"Data: {splits.source} — {len(splits.x_train)} train / {len(splits.x_val)} validation "
          f"(held out of the training split) / {len(splits.x_test)} test images")
    if config.fd_images and config.feature_net == "own" and not config.refresh_feature_net:
        sample_quality.check_feature_cache(spec.name, sample_quality.files_checksum(splits.sha256))
    refuse_data_too_small(config, splits)
    return splits


def refuse_data_too_small(config, splits):
    """UsageError now, before training, for options the loaded data is too small for."""
    problem = data_problem(config, len(splits.x_train), len(splits.x_test))
    if problem:
        raise UsageError(problem)


def data_title(spec, splits):
    """The data set's name for plot titles, saying so when the files are a copy, not the official ones."""
    if not splits.warnings:
        return spec.title
    return spec.title + (" (JPEG copy)" if "jpeg" in splits.source.lower() else " (modified copy)")


def steps_per_epoch(config, splits, strategy):
    """Batches per epoch, after checking that every batch splits over the strategy's replicas:
    Keras builds the model from the first batch's replica shares, which must be equal, and an empty
    share of the last batch breaks TensorFlow's CPU convolutions: a last batch with fewer images
    than replicas is left out of each epoch (train_batches), saying so."""
    n, batch, replicas = len(splits.x_train), config.batch_size, strategy.num_replicas_in_sync
    if replicas > 1 and min(batch, n) % replicas:
        raise UsageError(f"--batch-size {batch} ({n} training images) does not split evenly over "
                         f"{replicas} replicas; use a multiple of {replicas}")
    if replicas > 1 and 0 < n % batch < replicas:
        steps = n // batch
        if steps % config.steps_per_execution:
            raise UsageError(f"--steps-per-execution {config.steps_per_execution} must divide the {steps} "
                             f"steps of an epoch ({n} images, --batch-size {batch}, the last {n % batch} "
                             f"left out)")
        print(f"Each epoch leaves out {n % batch} of its {n} training images, the last of its shuffled "
              f"order (others each epoch): a batch of {n % batch} cannot be split over {replicas} replicas")
        return steps
    return math.ceil(n / batch)


def train_batches(config, x, first_epoch, steps_per_epoch=None, inside_epoch=None):
    """Batches for epochs [first_epoch, epochs): a fresh permutation per epoch, keyed by
    (seed, epoch) so a resumed run sees exactly the batches the uninterrupted one would (from a
    checkpoint `inside_epoch`, without the batches first_epoch had done), `steps_per_epoch` of them
    when given (a last batch that steps_per_epoch left out is dropped). The images stay 8-bit in the pipeline
    (a quarter of float32, for every worker) and become k / 255 per batch, the same float32 values
    as the loaders'."""
    done = inside_epoch["batch"] if inside_epoch else 0
    ds = shuffled_batches((to_uint8(x),), config.batch_size, config.seed, first_epoch, config.epochs, done,
                          drop_remainder=bool(steps_per_epoch) and steps_per_epoch * config.batch_size < len(x))
    ds = ds.map(lambda images: tf.cast(images, tf.float32) / 255.0, num_parallel_calls=tf.data.AUTOTUNE)
    return with_sharding(ds.prefetch(tf.data.AUTOTUNE))


def validation_batches(splits):
    """The held-out validation images for fit's per-epoch validation (None without any)."""
    if splits.x_val is None or not len(splits.x_val):
        return None
    return with_sharding(tf.data.Dataset.from_tensor_slices(splits.x_val).batch(EVAL_BATCH).cache()
                         .prefetch(tf.data.AUTOTUNE))


def with_sharding(ds):
    """Multi-worker runs split each dataset by elements (these datasets come from no files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


# --- model --------------------------------------------------------------------------------------

def adam(config, steps_per_epoch):
    """Adam at --lr with beta_2 --adam-beta2; AdamW's decoupled weight decay (Loshchilov & Hutter
    2019) with --weight-decay; the rate rising linearly from 0 over --warmup-steps (VDVAE's
    linear_warmup); with --lr-schedule cosine decayed along a cosine to 5 % of it over the rest of
    the run; with --ema an exponential moving average of the weights (Keras' use_ema, not debiased:
    its first step copies the weights), which the scripts validate, evaluate, sample and save with."""
    total_steps = config.epochs * steps_per_epoch
    lr = config.lr
    if config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if config.warmup_steps else config.lr, max(1, total_steps - config.warmup_steps), alpha=0.05,
            warmup_target=config.lr if config.warmup_steps else None, warmup_steps=config.warmup_steps)
    elif config.warmup_steps:  # alpha 1: after the warm-up the rate stays at --lr
        lr = keras.optimizers.schedules.CosineDecay(0.0, 1, alpha=1.0, warmup_target=config.lr,
                                                    warmup_steps=config.warmup_steps)
    options = dict(beta_2=config.adam_beta2, use_ema=config.ema > 0, ema_momentum=config.ema or 0.99)
    if config.weight_decay:
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay, **options)
    return keras.optimizers.Adam(lr, **options)


def resume_from_checkpoint(config, spec):
    """(model with its optimizer state, history so far, where inside the next epoch) from the
    checkpoint in outdir; the last is None for a checkpoint at an epoch's end, else its state.json's
    batch, metric_states and epoch_seconds. A run whose training is done but whose evaluation never
    finished resumes to finish it (fit runs no epoch)."""
    model, state = load_checkpoint(Path(config.outdir) / "checkpoint")
    check_model_matches(model, config, spec, f"the checkpoint in {config.outdir}")
    for name, said, has in described_options(model, config):  # config.json must describe the model
        if said != has:
            raise DamagedRunError(f"the checkpoint in {config.outdir} is damaged: config.json says "
                                  f"{name} {said}, its model has {has}")
    epoch = state["epoch"]
    if "batch" in state:
        inside = {key: state[key] for key in ("batch", "metric_states", "epoch_seconds")}
        if config.epochs <= epoch:
            raise UsageError(f"the checkpoint is inside epoch {epoch + 1} (batch {state['batch']}); pass "
                             f"--epochs {epoch + 1} or more to finish it")
        print(f"Resuming inside epoch {epoch + 1}, after its batch {state['batch']}, of {config.outdir}")
        return model, list(state["history"]), inside
    if evaluated_epoch(config.outdir) == epoch >= config.epochs:
        raise UsageError(f"the checkpoint is already at epoch {epoch} and its run is finished; "
                         f"pass --epochs larger than that to train on")
    if epoch > config.epochs:
        raise UsageError(f"the checkpoint is already at epoch {epoch}; pass --epochs {epoch} to "
                         f"finish its evaluation, or larger than that to train on")
    if epoch == config.epochs:
        print(f"Training of {config.outdir} is done (epoch {state['epoch']}): finishing its evaluation")
    else:
        print(f"Resuming from epoch {state['epoch']} of {config.outdir}")
    return model, list(state["history"]), None


def described_options(model, config):
    """(option, config's value, the model's value) for the options a checkpoint's model fixes."""
    arch = "hierarchical" if is_hierarchical(model) else "plain or resnet"
    said = "hierarchical" if config.arch == "hierarchical" else "plain or resnet"
    rows = [("arch", said, arch), ("likelihood", config.likelihood, model.likelihood)]
    if is_hierarchical(model) and config.arch == "hierarchical":
        rows += [("latent_resolutions", config.latent_resolutions, model.group_resolutions),
                 ("latent_channels", config.latent_channels, model.latent_channels)]
    elif arch == said:
        rows.append(("latent_dim", config.latent_dim, model.latent_dim))
    return rows


def evaluated_epoch(outdir):
    """The epoch whose evaluation outdir's metrics.json holds (written last, so that run finished),
    or None when there is none to read."""
    try:
        metrics = json.loads((Path(outdir) / "metrics.json").read_text())
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not JSON
        return None
    epochs = metrics.get("epochs") if isinstance(metrics, dict) else None
    return epochs if is_int(epochs) else None


def load_saved_model(config, spec):
    """The --eval-only .keras VAE, checked to fit this data set."""
    path = config.eval_only
    problem = digest_problem(path, recorded_digest(path), digest_path(path).name)
    if problem:
        raise UsageError(f"cannot load {path} as a VAE: {problem} (damaged?)")
    model = load_model_file(path, lambda why: UsageError(f"cannot load {path} as a VAE: {why}"))
    if not isinstance(model, KIT_MODELS):  # common.VAE or the hierarchical VAE
        raise UsageError(f"{path} is a Keras model, but not one of this kit's VAEs")
    check_model_matches(model, config, spec, str(path))
    return model


def check_model_matches(model, config, spec, what):
    """UsageError for a model of another data set (--eval-only refuses model options before this)."""
    if model.image_shape != tuple(spec.image_shape) or model.dataset not in (None, spec.name):
        raise UsageError(f"{what} was trained on {model.dataset} {model.image_shape} images, "
                         f"not {spec.name} {tuple(spec.image_shape)}")


# --- training -----------------------------------------------------------------------------------

def start_run_folder(config, spec, splits):
    """config.json (every option, the software versions, where the data came from); a fresh run
    first removes an older run's results and checkpoint, and warns when the disk looks short."""
    if not is_chief():
        return
    outdir = Path(config.outdir)
    if not config.resume:  # and the pictures that only one architecture (or a 2-D latent) draws
        for stale in ("metrics.json", "report.html", "model.keras", "model.keras.sha256", "latent_gmm.npz",
                      "history.csv",
                      "checkpoint/state.json", "samples_gmm.png", "latent_manifold.png",
                      "samples_temperatures.png", "kl_per_group.png"):
            (outdir / stale).unlink(missing_ok=True)
    warning = free_space_warning(outdir, estimate_for(config, spec.image_shape).model_file_bytes)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    write_json(outdir / "config.json", {
        **config.to_dict(),
        "runtime": describe_runtime(config),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "data_source": splits.source, "data_warnings": splits.warnings,
        "data_sha256": splits.sha256, "train_images": len(splits.x_train),
        "validation_images_held_out": len(splits.x_val),
        "validation_indices_sha256": hashlib.sha256(splits.validation_indices.astype("<i8").tobytes()).hexdigest(),
        "test_images": len(splits.x_test)})


def training_callbacks(config, spec, splits, history, inside_epoch=None):
    """Epoch timer, KL warm-up, NaN and signal stops, the checkpoints (every epoch, which appends
    to `history` and redraws the loss curves, and every --checkpoint-minutes inside one), and, from
    a checkpoint `inside_epoch`, the rest of that epoch; with --ema validation with the EMA weights;
    for the hierarchical VAE a warning when many updates were skipped, and a stop when none moves."""
    outdir = Path(config.outdir)
    title = data_title(spec, splits)
    note = (latent_groups_note(config.latent_resolutions, config.latent_channels)
            if config.arch == "hierarchical" else f"latent dim {config.latent_dim}")

    def draw(rows):
        write_loss_curves(rows, outdir, title, note)

    timer = EpochTimer((inside_epoch or {}).get("epoch_seconds") or 0.0)
    stop = StopOnSignal()  # after the checkpoint, which saves before a stop by signal
    callbacks = [timer, StopOnNonFinite(), ResumeInsideEpoch(inside_epoch),
                 EpochCheckpoint(outdir, history, draw, is_chief=is_chief(), minutes=config.checkpoint_minutes,
                                 stop=stop, timer=timer), stop]
    if config.ema:  # validation with the EMA weights (the checkpoint keeps the raw ones as well)
        callbacks.insert(0, keras.callbacks.SwapEMAWeights())
    if config.arch == "hierarchical":
        callbacks += [SkippedUpdatesWarning(SKIPPED_UPDATES_WARNING_FRACTION), StopWhenFrozen(FROZEN_UPDATES_LIMIT)]
    if config.kl_warmup:
        callbacks.insert(0, KLWarmup(config.beta, config.kl_warmup))
    if config.tensorboard and is_chief():  # one log, not one per worker
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(outdir / "tensorboard")))
    if config.distribute == "multiworker":
        callbacks.append(RankOneStepOutputs())
    return callbacks


@contextmanager
def resume_hint_on_stop(config, history):
    """A stopped training run (signal, NaN, a failed write) says how to resume it."""
    try:
        yield
    except (TrainingStopped, WriteError) as stop:
        batches = batches_saved_inside_epoch(config.outdir, len(history))
        if history or batches:
            saved = " and ".join(([f"{len(history)} epoch(s)"] if history else [])
                                 + ([f"{batches} batch(es) of epoch {len(history) + 1}"] if batches else []))
            stop.hint = (f"{saved} are saved in {config.outdir}. Resume with:\n"
                         f"  python {Path(sys.argv[0]).name} --resume --outdir {config.outdir} "
                         f"--epochs {config.epochs}")
        else:
            stop.hint = "no epoch finished, so there is nothing to resume"
        raise


def batches_saved_inside_epoch(outdir, epochs):
    """The batches of epoch `epochs` + 1 that outdir's checkpoint holds (0 when it holds none)."""
    try:
        state = json.loads((Path(outdir) / "checkpoint" / "state.json").read_text())
    except (OSError, ValueError):
        return 0
    return state.get("batch", 0) if state.get("epoch") == epochs else 0


@contextmanager
def finish_hint_on_stop(config, history):
    """Ctrl-C / SIGTERM (or a failed write) during the evaluation stop it at once, saying how to
    finish it: --resume of a trained run, the same command again for --eval-only."""
    try:
        with stop_on_signal_at_once():
            yield
    except (TrainingStopped, WriteError) as stop:
        if config.eval_only:
            stop.hint = "metrics.json was not written; run the same --eval-only command again"
        else:
            stop.hint = (f"training is done ({len(history)} epoch(s) saved in {config.outdir}), the "
                         f"evaluation is not. Finish it with:\n"
                         f"  python {Path(sys.argv[0]).name} --resume --outdir {config.outdir}")
        raise


def save_model(model, config):
    """model.keras, then model.keras.sha256 (sha256sum's format), which --eval-only checks: damage
    that still loads must not be evaluated. The old digest goes first, so none is ever stale."""
    path = Path(config.outdir) / "model.keras"
    digest_path(path).unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        model.save(tmp)
    write_text(digest_path(path), f"{file_sha256(path)}  {path.name}\n")


def digest_path(model_path):
    """Where the SHA-256 of a model file that a run saved is kept: beside it, + .sha256."""
    return Path(f"{model_path}.sha256")


def recorded_digest(model_path):
    """The SHA-256 recorded for a model file when it was saved (None when none was), as its
    .sha256 file holds it; a file that cannot be read or holds no digest counts as damage."""
    path = digest_path(model_path)
    if not path.exists():
        return None
    try:
        return path.read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return "(unreadable)"


# --- evaluation and pictures --------------------------------------------------------------------

def fit_latent_gmm(model, config, splits):
    """The ex-post GMM sampler fitted to the training images' posterior means (at most
    GMM_FIT_IMAGES of them), saved as latent_gmm.npz beside the model. None for the hierarchical
    VAE: the sampler models one latent vector, and its latents are groups of maps that depend on
    each other (docs/HIERARCHICAL.md)."""
    if is_hierarchical(model):
        return None
    z_train = posterior_means(model, splits.x_train[:GMM_FIT_IMAGES])
    gmm = sample_quality.fit_latent_gmm(z_train, config.gmm_components, config.seed)
    gmm.save(Path(config.outdir) / "latent_gmm.npz")
    return gmm


@dataclass
class Evaluation:
    """What evaluate() measured and what the pictures reuse: the test split's posterior means and
    their decoder mean images, computed once. For the hierarchical VAE z_test is None
    (picture_arrays computes its top group's posterior means) and the reconstructions come from
    its reconstruct: every group at its posterior mean."""
    metrics: dict
    z_test: object  # np.ndarray, or None
    reconstructions: np.ndarray


def evaluate(model, config, spec, splits, history, gmm):
    """The metrics (test −ELBO, IWAE, bits/dim, Fréchet distances, ...) on the test split, the only
    time a run touches it, printed as a table; save_metrics writes them to metrics.json once the
    pictures are drawn. Returns an Evaluation."""
    print(f"\nEvaluating on {len(splits.x_test)} test images ...", flush=True)
    metrics = {}
    if config.fd_images:
        features, metrics["feature_net"], metrics["feature_net_test_accuracy"] = frechet_features(
            config, spec, splits)
    start = time.perf_counter()  # feature-network training is not evaluation time
    if is_hierarchical(model):
        z_test, reconstructions = None, reconstruct(model, splits.x_test)
    else:
        z_test = posterior_means(model, splits.x_test)
        reconstructions = decode_images(model, z_test)
    metrics.update(compute_metrics(model, splits.x_test, config.iw_samples, config.iwae_images,
                                   config.seed, progress=True, reconstructions=reconstructions))
    if config.fd_images:
        metrics.update(sample_quality.sample_quality_metrics(
            model, features, splits.x_train, splits.x_test, gmm, config.fd_images, config.seed,
            reconstructions=reconstructions, temperature=config.temperature))
    if is_hierarchical(model):  # updates skipped for a gradient norm above the threshold or not finite
        metrics["skipped_updates"] = int(model.skipped_updates.numpy())
    seconds = [row.get("epoch_seconds") for row in history]
    metrics.update(eval_seconds=time.perf_counter() - start, dataset=spec.name, temperature=config.temperature,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   data_source=splits.source, data_warnings=splits.warnings,
                   epochs=history[-1]["epoch"] if history else None,
                   train_seconds=sum(seconds) if seconds and None not in seconds else None)
    metrics.update(data_title=data_title(spec, splits), model=describe(model))  # for report.html
    print(format_metrics(metrics))
    return Evaluation(metrics, z_test, reconstructions)


def frechet_features(config, spec, splits):
    """(feature extractor, what metrics.json records of it, its accuracy on this test split) for the
    Fréchet distances: the network the kit ships, or with --feature-net own this machine's (trained
    on the whole training split the first time, then cached)."""
    if config.feature_net == "shipped":
        classifier, info = sample_quality.shipped_feature_network(spec.name)
        info = {**info, "kind": "shipped"}
        accuracy = sample_quality.classifier_accuracy(classifier, splits.x_test, splits.y_test)
        return sample_quality.feature_extractor(classifier), sample_quality.describe_feature_net(info), accuracy
    full = splits.full or splits
    features, info = sample_quality.feature_network(
        spec.name, full.x_train, full.y_train, full.x_test, full.y_test,
        sample_quality.files_checksum(splits.sha256), refresh=config.refresh_feature_net,
        seed=0, verbose=1 if sys.stdout.isatty() else 2)
    return features, sample_quality.describe_feature_net(info), info["test_accuracy"]


def save_metrics(config, metrics):
    """report.html, then metrics.json, written last: a run folder that has it holds a finished run.
    Lists the outputs."""
    outdir = Path(config.outdir)
    write_report(outdir, metrics, command_line())
    write_json(outdir / "metrics.json", metrics)
    print(f"\nOutputs written to {outdir}/:")
    for path in sorted(outdir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            print(f"  {path.name}")


def command_line():
    """This run's command, as a user would type it again."""
    return shlex.join(["python", Path(sys.argv[0]).name, *sys.argv[1:]])


def draw_pictures(model, config, spec, splits, history, gmm, evaluation):
    """Loss curves (for --eval-only and --resume; a fresh run's last epoch drew them), samples from
    the prior and from the GMM, reconstructions, latent space, interpolations: the arrays decoded
    once (reusing the test codes and reconstructions of `evaluation`), then drawn."""
    outdir = Path(config.outdir)
    title = data_title(spec, splits)
    if history and (config.eval_only or config.resume):
        write_loss_curves(history, outdir, title, describe(model))
    epoch_note = f", epoch {history[-1]['epoch']}" if history else ""
    arrays = picture_arrays(model, splits, gmm, evaluation.z_test, evaluation.reconstructions,
                            seed=config.seed, temperature=config.temperature)
    if is_hierarchical(model):  # no GMM; samples at several temperatures, the KL of each group
        write_hierarchical_pictures(arrays, splits, outdir, f"{title}{epoch_note}", evaluation.metrics,
                                    temperature=config.temperature)
    else:
        write_pictures(arrays, splits, outdir, f"{title}{epoch_note}, {describe(model)}",
                       temperature=config.temperature)


def read_history(path):
    """The rows of a saved run's history.csv; [] with a warning when it is missing or damaged
    (then the loss curves are skipped, not the evaluation)."""
    if not Path(path).is_file():
        return []
    try:
        rows = read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as err:
        print(f"warning: {path} cannot be read ({first_line(err)}); the loss curves are skipped",
              file=sys.stderr)
        return []
    if [row["epoch"] for row in rows] != list(range(1, len(rows) + 1)):
        print(f"warning: {path} does not list epochs 1, 2, ... in order; the loss curves are skipped",
              file=sys.stderr)
        return []
    return rows


def evaluate_saved_model(config, spec):
    """--eval-only: the saved model's metrics and pictures (and its run's loss curves)."""
    model = load_saved_model(config, spec)
    splits = load_data(config, spec)
    history = read_history(Path(config.eval_only).parent / "history.csv")
    with finish_hint_on_stop(config, history):
        gmm = fit_latent_gmm(model, config, splits)
        evaluation = evaluate(model, config, spec, splits, history, gmm)
        draw_pictures(model, config, spec, splits, history, gmm, evaluation)
        save_metrics(config, evaluation.metrics)
    return 0
