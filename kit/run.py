"""A whole run, as a story: runtime set-up, model, data, training, evaluation, pictures."""
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kit.callbacks import (EpochCheckpoint, EpochTimer, KLWarmup, StopOnNonFinite, StopOnSignal,
                       TrainingStopped, load_checkpoint)
from common import build_vae
from kit.data import DataError
from kit.evaluate import EVAL_BATCH, compute_metrics
from kit.atomic_files import atomic_path, read_csv, write_json
from kit.pictures import format_metrics, write_loss_curves, write_pictures


class UsageError(Exception):
    """A problem with what the user asked for that only shows once TensorFlow is loaded (exit 2)."""


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


def is_chief():
    """True unless this process is a non-chief worker of a multi-worker cluster (TF_CONFIG)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    if task.get("type") in (None, "chief"):
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 \
        and "chief" not in tf_config.get("cluster", {})


def set_up_runtime(config):
    """Seeds, precision policy and distribution strategy, in the order TensorFlow needs them."""
    strategy = make_strategy(config.distribute)  # logical devices must precede any TF op
    keras.utils.set_random_seed(config.seed)  # Python, NumPy and Keras/TF at once
    if config.mixed_precision:
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
        keras.mixed_precision.set_dtype_policy("mixed_float16" if on_gpu else "mixed_bfloat16")
    return strategy


# --- model --------------------------------------------------------------------------------------

def build_model(config, spec):
    return build_vae(spec.image_shape, config.latent_dim,
                     encoder_filters=config.encoder_filters, encoder_dense=config.encoder_dense,
                     decoder_filters=config.decoder_filters, decoder_dense=config.decoder_dense,
                     beta=config.beta, likelihood=config.likelihood, dataset=spec.name,
                     seed=config.seed)


def compile_model(model, config, steps_per_epoch):
    lr = config.lr
    if config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.lr, config.epochs * steps_per_epoch,
                                                    alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(lr), jit_compile=config.jit_compile,
                  steps_per_execution=config.steps_per_execution)


def load_saved_model(path, spec, config):
    """A .keras VAE for this dataset, or UsageError saying why not."""
    try:
        model = keras.models.load_model(path)
    except Exception as err:  # a zip that is no Keras model, a missing custom object, ...
        raise UsageError(f"cannot load {path} as a VAE: {type(err).__name__}: {err}") from None
    if not hasattr(model, "encode") or not hasattr(model, "image_shape"):
        raise UsageError(f"{path} is a Keras model, but not one of this kit's VAEs")
    check_model_matches(model, spec, config, str(path))
    return model


def check_model_matches(model, spec, config, what):
    if model.image_shape != tuple(spec.image_shape) or model.dataset not in (None, spec.name):
        raise UsageError(f"{what} was trained on {model.dataset} {model.image_shape} images, "
                         f"not {spec.name} {tuple(spec.image_shape)}")
    if "latent_dim" in config.explicit and config.latent_dim != model.latent_dim:
        raise UsageError(f"--latent-dim {config.latent_dim} does not match {what} "
                         f"(latent dim {model.latent_dim})")


# --- data ---------------------------------------------------------------------------------------

def make_train_dataset(x, batch_size, seed, first_epoch, epochs):
    """Batches for epochs [first_epoch, epochs): a fresh permutation per epoch, keyed by
    (seed, epoch) so a resumed run sees exactly the batches the uninterrupted one would."""
    images = tf.constant(x)
    n = len(x)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    # Gathering whole batches from one tensor is far cheaper than slicing images one by one.
    ds = ds.map(lambda idx: tf.gather(images, idx), num_parallel_calls=tf.data.AUTOTUNE)
    return with_sharding(ds.prefetch(tf.data.AUTOTUNE))


def make_eval_dataset(x):
    return with_sharding(tf.data.Dataset.from_tensor_slices(x).batch(EVAL_BATCH).cache()
                         .prefetch(tf.data.AUTOTUNE))


def with_sharding(ds):
    """Multi-worker runs split each dataset by elements (these datasets come from no files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


# --- the run ------------------------------------------------------------------------------------

def run(config, spec):
    """Train (or with --eval-only just evaluate) and write every output. Returns the exit code."""
    outdir = Path(config.outdir)
    if config.resume:
        restore_saved_options(config)  # before the runtime: seed, precision and strategy too
    strategy = set_up_runtime(config)
    try:
        with strategy.scope():
            if config.eval_only:
                model, state = load_saved_model(config.eval_only, spec, config), None
            elif config.resume:
                model, state = resume_model(config, spec)
            else:
                model, state = build_model(config, spec), None
        splits = spec.load(config.data_dir).limit(config.limit)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for warning in splits.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    title = spec.title + data_label(splits)

    if config.eval_only:
        return evaluate_and_report(model, splits, config, spec, title, outdir,
                                   history=history_beside(config.eval_only))
    print(f"Data: {splits.source} — {len(splits.x_train)} train / {len(splits.x_test)} test images")
    model.summary(expand_nested=False)
    history = list(state["history"]) if state else []
    chief = is_chief()
    if chief:
        write_json(outdir / "config.json", run_record(config, splits))
    try:
        train_model(model, splits, config, strategy, outdir, history, chief, title, resumed=bool(state))
    except TrainingStopped as stop:
        print(f"\nstopped: {stop}", file=sys.stderr)
        if history:
            print(f"{len(history)} epoch(s) are saved in {outdir}. Resume with:\n"
                  f"  python {Path(sys.argv[0]).name} --resume --outdir {outdir} --epochs {config.epochs}",
                  file=sys.stderr)
        else:
            print("no epoch finished, so there is nothing to resume", file=sys.stderr)
        return stop.exit_code
    if not chief:
        return 0
    with atomic_path(outdir / "model.keras") as tmp:
        model.save(tmp)
    return evaluate_and_report(model, splits, config, spec, title, outdir, history)


def data_label(splits):
    """What plot titles add when the files are not the official ones (a copy must say so)."""
    if not splits.warnings:
        return ""
    return " (JPEG copy)" if "jpeg" in splits.source.lower() else " (modified copy)"


def resume_model(config, spec):
    model, state = load_checkpoint(Path(config.outdir) / "checkpoint")
    check_model_matches(model, spec, config, f"the checkpoint in {config.outdir}")
    if state["epoch"] >= config.epochs:
        raise UsageError(f"the checkpoint is already at epoch {state['epoch']}; "
                         f"pass --epochs larger than that to train on")
    return model, state


def restore_saved_options(config):
    """On --resume, options not given again come from the interrupted run's config.json, so the
    continued run uses the same batches, seed and schedule, and config.json stays true."""
    path = Path(config.outdir) / "config.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in saved.items():
        if hasattr(config, key) and key not in config.explicit \
                and key not in ("resume", "eval_only", "dataset"):
            setattr(config, key, value)


def run_record(config, splits):
    """config.json: every option, the software versions and where the data came from."""
    return {**config.to_dict(),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "numpy": np.__version__, "python": sys.version.split()[0]},
            "data_source": splits.source, "data_warnings": splits.warnings,
            "data_sha256": splits.sha256, "train_images": len(splits.x_train),
            "test_images": len(splits.x_test)}


def train_model(model, splits, config, strategy, outdir, history, chief, title, resumed):
    """model.fit with the kit's callbacks; history (a list of per-epoch dicts) grows in place."""
    steps = math.ceil(len(splits.x_train) / config.batch_size)
    first_epoch = len(history)
    if not resumed:
        with strategy.scope():
            compile_model(model, config, steps)

    def draw(rows):
        write_loss_curves(rows, outdir, title, model.latent_dim)

    callbacks = [EpochTimer(), StopOnNonFinite(), StopOnSignal(),
                 EpochCheckpoint(outdir, history, draw, is_chief=chief)]
    if config.kl_warmup:
        callbacks.insert(0, KLWarmup(config.beta, config.kl_warmup))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(outdir / "tensorboard")))
    model.fit(make_train_dataset(splits.x_train, config.batch_size, config.seed, first_epoch,
                                 config.epochs),
              epochs=config.epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
              validation_data=make_eval_dataset(splits.x_test), callbacks=callbacks, shuffle=False,
              verbose="auto")


def history_beside(model_path):
    """history.csv from the folder of a saved model, if the run that saved it left one."""
    path = Path(model_path).parent / "history.csv"
    return read_csv(path) if path.is_file() else []


def evaluate_and_report(model, splits, config, spec, title, outdir, history):
    """metrics.json, the pictures and (given a history) the loss curves; prints the results."""
    print(f"\nEvaluating on {len(splits.x_test)} test images ...")
    start = time.perf_counter()
    metrics = compute_metrics(model, splits.x_test, config.iw_samples, config.iwae_images, config.seed,
                              progress=True)
    metrics.update(eval_seconds=time.perf_counter() - start, dataset=spec.name,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   data_source=splits.source, data_warnings=splits.warnings,
                   epochs=history[-1]["epoch"] if history else None,
                   train_seconds=sum(r["epoch_seconds"] for r in history) if history else None)
    write_json(outdir / "metrics.json", metrics)
    print(format_metrics(metrics))
    if history:
        write_loss_curves(history, outdir, title, model.latent_dim)
    epoch_note = f", epoch {history[-1]['epoch']}" if history else ""
    write_pictures(model, splits, outdir, f"{title}{epoch_note}, latent dim {model.latent_dim}",
                   seed=config.seed)
    print(f"\nOutputs written to {outdir}/:")
    for path in sorted(outdir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            print(f"  {path.name}")
    return 0
