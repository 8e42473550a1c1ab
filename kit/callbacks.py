"""Keras callbacks for timing, KL warm-up, crash-safe checkpoints, NaN and Ctrl-C handling."""
import io
import math
import signal
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from kit.atomic_files import atomic_path, file_sha256, write_csv, write_json
from kit.errors import DamagedRunError, TrainingStopped
from kit.guards import read_json_object, validate_state


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` to the epoch's logs: wall time of training only, not validation. A run
    resumed inside an epoch counts the `seconds_before` its checkpoint recorded too."""

    def __init__(self, seconds_before=0.0):
        super().__init__()
        self.seconds_before = seconds_before

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.end = time.perf_counter() - self.seconds_before, None
        self.seconds_before = 0.0

    def on_test_begin(self, logs=None):
        if self.end is None:
            self.end = time.perf_counter()

    def elapsed(self):
        """Seconds of training in the running epoch so far."""
        return (self.end or time.perf_counter()) - self.start

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_seconds"] = self.elapsed()


class KLWarmup(keras.callbacks.Callback):
    """beta rises linearly from 0 to its target over `epochs` epochs (Bowman et al., 2016)."""

    def __init__(self, beta, epochs):
        super().__init__()
        self.target, self.epochs = beta, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.beta.assign(self.target * min(1.0, epoch / self.epochs))


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops at the first NaN/Inf loss, naming epoch and step, before any checkpoint of the
    broken weights (why not TerminateOnNaN: docs/TESTS.md, Engineering notes)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingStopped(f"loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}; "
                                  f"the last good checkpoint and outputs are kept (try a lower --lr)", 3)


class SkippedUpdatesWarning(keras.callbacks.Callback):
    """A warning line when more than `fraction` of an epoch's updates were skipped (the hierarchical
    VAE skips an update whose gradient norm is above its skip threshold or not finite)."""

    def __init__(self, fraction):
        super().__init__()
        self.fraction = fraction

    def on_epoch_begin(self, epoch, logs=None):
        self.before = float(self.model.skipped_updates.numpy())

    def on_epoch_end(self, epoch, logs=None):
        skipped, steps = float(self.model.skipped_updates.numpy()) - self.before, self.params.get("steps")
        if steps and skipped > self.fraction * steps:
            print(f"warning: epoch {epoch + 1} skipped {skipped:.0f} of its {steps} updates "
                  f"({skipped / steps:.1%}, more than {self.fraction:.0%}): their gradient norm was not "
                  f"finite or above {skip_rule(self.model)}", file=sys.stderr)


def skip_rule(model):
    """The model's skip thresholds in words, as its options name them."""
    rules = [f"--skip-threshold {model.skip_threshold:g}" if model.skip_threshold else "",
             f"--skip-factor {model.skip_factor:g} times the norm's running level" if model.skip_factor else ""]
    return " or ".join(rule for rule in rules if rule) or "no skip threshold (--skip-threshold 0)"


class StopWhenFrozen(keras.callbacks.Callback):
    """Stops training (exit 3) once `limit` updates in a row were skipped: the weights no longer
    move, so the rest of the run would change nothing (a 7-epoch CIFAR-10 run froze so:
    docs/BENCHMARKS.md). The last checkpoint stays; its weights are the frozen ones."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def counts(self):
        return int(self.model.optimizer.iterations.numpy()), float(self.model.skipped_updates.numpy())

    def on_train_begin(self, logs=None):
        self.applied, self.skipped_at_last_update = self.counts()

    def on_train_batch_end(self, batch, logs=None):
        applied, skipped = self.counts()
        if applied != self.applied:
            self.applied, self.skipped_at_last_update = applied, skipped
        elif skipped - self.skipped_at_last_update >= self.limit:
            raise TrainingStopped(
                f"the last {skipped - self.skipped_at_last_update:.0f} updates were all skipped, their gradient "
                f"norm above {skip_rule(self.model)} or not finite: the weights no longer move. A --resume "
                f"keeps that threshold; train anew with a higher one (0: skip only non-finite updates)", 3)


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C / SIGTERM stop training after the running step; a second Ctrl-C exits at once."""

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self):
        super().__init__()
        self.received = None

    def _handle(self, signum, frame):
        if self.received is not None:  # second signal: the user really wants out
            sys.stderr.write("\nsecond interrupt: exiting now\n")
            sys.exit(self.EXIT_CODES.get(signum, 1))
        self.received = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name} received: stopping after this step "
                         f"(again to exit at once)\n")

    def on_train_begin(self, logs=None):
        self.previous = {s: signal.signal(s, self._handle) for s in self.EXIT_CODES}

    def on_train_end(self, logs=None):
        self.restore()

    def restore(self):
        for s, handler in getattr(self, "previous", {}).items():
            signal.signal(s, handler)
        self.previous = {}

    def on_train_batch_end(self, batch, logs=None):
        if self.received is not None:
            self.restore()
            raise TrainingStopped(f"interrupted by {signal.Signals(self.received).name}",
                                  self.EXIT_CODES[self.received])


class RankOneStepOutputs(keras.callbacks.Callback):
    """Multi-worker runs: step outputs as shape (1,) instead of scalars.

    Keras 3 reduces step outputs across workers with reduce(MEAN, axis=0), which fails on
    scalars (tensorflow/tensorflow#72388); rank-1 values reduce back to scalars. fit() hands
    the model to its callbacks before it wraps the steps in tf.functions, so wrapping them here
    is early enough.
    """

    def set_model(self, model):
        super().set_model(model)
        if getattr(model, "_rank_one_outputs", False):
            return
        model._rank_one_outputs = True
        for name in ("train_step", "test_step"):
            step = getattr(model, name)
            setattr(model, name, lambda data, step=step: {
                key: keras.ops.reshape(value, (1,)) for key, value in step(data).items()})


# A stop by signal checkpoints first when the last checkpoint is older than this: a minute's work
# is worth the seconds a checkpoint takes (docs/BENCHMARKS.md, Checkpoints).
SIGNAL_CHECKPOINT_AGE_S = 60.0


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: a checkpoint (model, then state.json naming it: the commit point), then
    history.csv and the loss curves, each replaced atomically (docs/TESTS.md, Engineering notes). Inside
    an epoch, a checkpoint every `minutes` of training (0: none), and one before a stop by
    signal (`stop`, the StopOnSignal that follows this callback) when the last is older than
    SIGNAL_CHECKPOINT_AGE_S: it records the batches done, the epoch's metric sums so far and its
    seconds (from `timer`, the run's EpochTimer)."""

    def __init__(self, outdir, history, plot_history, is_chief=True, minutes=0.0, stop=None, timer=None):
        super().__init__()
        self.outdir = Path(outdir)
        self.dir = self.outdir / "checkpoint"
        self.history = history  # list of per-epoch dicts, continued on resume
        self.plot_history = plot_history  # callable(rows) that redraws loss_curves.png
        self.is_chief = is_chief
        self.period_s, self.stop, self.timer = minutes * 60.0, stop, timer

    def on_train_begin(self, logs=None):
        self.last_saved = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        age = time.monotonic() - self.last_saved
        signalled = self.stop is not None and self.stop.received is not None
        due = (self.period_s and age >= self.period_s) or (signalled and age >= SIGNAL_CHECKPOINT_AGE_S)
        last = batch + 1 >= (self.params.get("steps") or math.inf)
        if not due or (last and not signalled):  # the epoch's end checkpoints its last batch, unless
            return                               # the stop comes first
        if self.is_chief:
            save_checkpoint(self.model, self.dir, len(self.history), self.history, inside_epoch={
                "batch": batch + 1, "metric_states": metric_states(self.model),
                "epoch_seconds": self.timer.elapsed() if self.timer else None})
        self.last_saved = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        if self.is_chief:  # the checkpoint commits first: the history is never ahead of it
            save_checkpoint(self.model, self.dir, epoch + 1, [*self.history, row])
        self.last_saved = time.monotonic()
        self.history.append(row)
        if self.is_chief:
            write_csv(self.outdir / "history.csv", self.history)
            self.plot_history(self.history)


class ResumeInsideEpoch(keras.callbacks.Callback):
    """Continues an epoch from a checkpoint taken inside it (`inside`: its state.json's batch,
    metric_states and epoch_seconds). The data already lacks the batches done (train_batches); fit
    still counts them, so their steps run a no-op train function that trains nothing and reads no
    data, and the epoch's metric sums and counts are restored so its means equal an uninterrupted
    epoch's (EpochTimer adds the seconds trained before the stop)."""

    def __init__(self, inside):
        super().__init__()
        self.inside = inside

    def on_epoch_begin(self, epoch, logs=None):
        if self.inside is None:
            return
        restore_metric_states(self.model, self.inside["metric_states"])
        self.train_function = self.model.train_function
        self.model.train_function = lambda iterator: self.model.get_metrics_result()

    def on_train_batch_begin(self, batch, logs=None):
        if self.inside is not None and batch >= self.inside["batch"]:
            self.trains_again()

    def on_epoch_end(self, epoch, logs=None):  # a checkpoint after the epoch's last step
        if self.inside is not None:
            self.trains_again()

    def trains_again(self):
        self.model.train_function = self.train_function
        self.inside = None


def metric_states(model):
    """{metric name: its variables' values} for the model's metrics (a Mean's total and count)."""
    return {m.name: [float(keras.ops.convert_to_numpy(v)) for v in m.variables] for m in model.metrics}


def restore_metric_states(model, states):
    for m in model.metrics:
        for variable, value in zip(m.variables, states.get(m.name, [])):
            variable.assign(value)


def sampling_seed_generator(model):
    """The SeedGenerator of training's posterior samples: the seed VAE's Sampling layer's, or the
    hierarchical VAE's own."""
    if hasattr(model, "encoder"):
        return model.encoder.get_layer("sampling").seed_generator
    return model.seed_generator


def save_checkpoint(model, directory, epoch, history, inside_epoch=None):
    """The model (weights and optimizer state) after `epoch` epochs, then state.json naming it. A
    checkpoint inside the next epoch has `inside_epoch` (batch, metric_states, epoch_seconds)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = (f"ckpt-epoch{epoch + 1:04d}-batch{inside_epoch['batch']:06d}.keras" if inside_epoch
            else f"ckpt-epoch{epoch:04d}.keras")
    with atomic_path(directory / name) as tmp:
        model.save(tmp)
    state = {"epoch": epoch, "model": name, "history": history,
             "model_sha256": file_sha256(directory / name),  # checked before --resume loads it
             # .keras files do not hold the SeedGenerator's state; without it a resumed run
             # would draw the same eps as epoch 1 again.
             "sampling_seed_state": keras.ops.convert_to_numpy(sampling_seed_generator(model).state).tolist(),
             **(inside_epoch or {})}
    write_json(directory / "state.json", state)
    for old in directory.glob("ckpt-epoch*.keras"):
        if old.name != name:
            old.unlink()


def load_checkpoint(directory):
    """(model, state) from the newest consistent checkpoint in `directory`; DamagedRunError if
    state.json or the model file it names cannot be trusted."""
    state = read_json_object(Path(directory) / "state.json", "the checkpoint is damaged:")
    path = validate_state(state, directory)
    model = load_model_file(path, lambda why: DamagedRunError(
        f"the checkpoint in {directory} is damaged: cannot load {path.name} ({why})"))
    seed_state = sampling_seed_generator(model).state
    seed_state.assign(np.asarray(state["sampling_seed_state"], dtype=seed_state.dtype))
    return model, state


# What keras.models.load_model raises for a file that is no loadable model, as measured on Keras
# 3.15: a cut archive or a missing member (ValueError, KeyError, BadZipFile, EOFError, zlib.error),
# config.json that is not JSON or names no Keras object (ValueError), weights of the wrong shapes
# (ValueError), a damaged weights file inside a sound archive (h5py's OSError, KeyError, ValueError
# and RuntimeError, its class for HDF5 errors it does not map; 58 of 400 files with 1-5 random
# spans of model.weights.h5 overwritten failed so, the other 342 loaded: the SHA-256 recorded
# beside a checkpoint or model.keras catches those). IndexError: h5py's other class for bad bytes.
UNLOADABLE_MODEL_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, ValueError, KeyError, OSError,
                           RuntimeError, IndexError)
# ... and an unknown custom class (TypeError: "Could not locate class 'X'"). Any other TypeError,
# such as "... could not be deserialized properly" around a bug in a constructor, is a bug.
UNKNOWN_OBJECT_MESSAGES = ("Could not locate class", "Could not locate function")


def load_model_file(path, error):
    """keras.models.load_model(path); for a file that is no loadable model, raises `error(why)`
    (why: the exception's type and first line). Any other TypeError, a programming error,
    propagates, unless the archive's bytes show damage (weights_problem: h5py raises TypeError for
    some): then it is `error` too."""
    try:
        return keras.models.load_model(path)
    except (*UNLOADABLE_MODEL_ERRORS, TypeError) as err:
        known = not isinstance(err, TypeError) or str(err).startswith(UNKNOWN_OBJECT_MESSAGES)
        damage = None if known else weights_problem(path)
        if not known and not damage:
            raise
        raise error(f"{type(err).__name__}: {first_line(err)}" + (f"; {damage}" if damage else "")) from None


def weights_problem(path):
    """Why a .keras archive's bytes cannot be read, or None: every member against its CRC, then every
    array of its model.weights.h5 read with h5py."""
    import h5py  # Keras' own reader of the weights

    def read(name, item):
        if isinstance(item, h5py.Dataset):
            item[()]

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad:
                return f"{bad} in the archive fails its CRC check"
            weights = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(weights), "r") as h5:
            h5.visititems(read)
    except (*UNLOADABLE_MODEL_ERRORS, TypeError) as err:  # what zipfile and h5py raise for bad bytes
        return f"the weights cannot be read ({type(err).__name__}: {first_line(err)})"
    return None


@contextmanager
def stop_on_signal_at_once():
    """Ctrl-C / SIGTERM raise TrainingStopped (130 / 143) at once, for work outside model.fit (the
    evaluation): there is no step to finish first. The previous handlers are back afterwards."""
    stops = []

    def handle(signum, frame):
        restore()  # a second signal gets the default handling
        stops.append(TrainingStopped(f"interrupted by {signal.Signals(signum).name}",
                                     StopOnSignal.EXIT_CODES[signum]))
        raise stops[0]

    def restore():
        for s, handler in previous.items():
            signal.signal(s, handler)

    previous = {s: signal.signal(s, handle) for s in StopOnSignal.EXIT_CODES}
    try:
        yield
    except BaseException as err:  # always re-raised: a signal's stop, or the error itself
        # A signal that lands while TensorFlow traces a function comes out as TensorFlow's own
        # error ("RuntimeError: in user code"): the stop is still what happened.
        if stops and err is not stops[0]:
            raise stops[0] from None
        raise
    finally:
        restore()


def first_line(err, limit=200):
    """An exception's message cut to its first line (Keras' messages can be kilobytes long)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if len(text) <= limit else text[:limit] + " ..."
