"""Crash safety: resume, Ctrl-C/SIGTERM, kill -9, NaN losses, determinism, atomic writes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import common  # noqa: F401  (registers the VAE classes for keras.models.load_model)
from kit.callbacks import StopOnSignal, TrainingStopped
from conftest import ROOT, TEST_VALIDATION, TINY_MODEL, run_in_process, run_script
from kit.atomic_files import atomic_path, read_csv, remove_leftover_temporaries

# Constant LR: a cosine schedule's length depends on --epochs, and these tests compare runs of
# different --epochs (docs/RELIABILITY.md: Interrupted runs).
QUICK = [*TINY_MODEL, *TEST_VALIDATION, "--iw-samples", "0", "--fd-images", "0", "--seed", "5", "--lr-schedule",
         "constant"]
LOSS_COLUMNS = ["loss", "reconstruction_loss", "kl_loss", "val_loss", "val_reconstruction_loss", "val_kl_loss"]
# The same seed and inputs give the same numbers up to float32 summation order in multithreaded
# CPU kernels; docs/RELIABILITY.md states this tolerance.
HISTORY_RTOL = 1e-4


def losses(history):
    return np.array([[row[c] for c in LOSS_COLUMNS] for row in history])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, fashion_dir):
    outdir = tmp_path_factory.mktemp("straight")
    result = run_script("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 3,
                        "--limit", 128, "--outdir", outdir, *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    return outdir


@pytest.mark.scenario
@pytest.mark.slow
def test_resume_continues_to_the_same_history_as_an_uninterrupted_run(straight_run, fashion_dir, tmp_path):
    """The same seed gives the same history (epoch 1, trained in this process, equals the straight
    run's, trained in another), and --resume continues it as if never stopped (epochs 2 and 3)."""
    first = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 1,
                           "--limit", 128, "--outdir", tmp_path, *QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    # Only --epochs is given again: everything else comes from the first run's config.json.
    resumed = run_in_process("vae_fashion_mnist.py", "--epochs", 3, "--outdir", tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = read_csv(tmp_path / "history.csv")
    assert [row["epoch"] for row in history] == [1, 2, 3]  # appended, not restarted
    # Weights, optimizer state, data order and sampling noise all carried over.
    np.testing.assert_allclose(losses(history), losses(read_csv(straight_run / "history.csv")),
                               rtol=HISTORY_RTOL)
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 3
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["latent_dim"], config["limit"], config["seed"], config["resume"]) == (2, 128, 5, True)


@pytest.mark.scenario
@pytest.mark.slow
def test_resume_with_a_different_latent_dim_is_refused_without_touching_outputs(straight_run, fashion_dir):
    before = (straight_run / "history.csv").read_bytes()
    result = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 5,
                            "--outdir", straight_run, "--resume", "--latent-dim", "7")
    assert result.returncode == 2 and "--latent-dim 7 does not match" in result.stderr
    assert "Traceback" not in result.stderr
    assert (straight_run / "history.csv").read_bytes() == before


@pytest.mark.scenario
@pytest.mark.slow
def test_resume_past_the_requested_epochs_is_refused(straight_run, fashion_dir):
    result = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 3,
                            "--outdir", straight_run, "--resume")
    assert result.returncode == 2 and "already at epoch 3" in result.stderr


def sigterm_at_batch(monkeypatch, n):
    """SIGTERM, as its handler receives it, just before the n-th training step of the run (counted
    over epochs from 1): the step still runs, then the run stops."""
    steps = []

    def on_train_batch_begin(self, batch, logs=None):
        steps.append(batch)
        if len(steps) == n:
            self._handle(signal.SIGTERM, None)
    monkeypatch.setattr(StopOnSignal, "on_train_batch_begin", on_train_batch_begin, raising=False)


@pytest.mark.slow
@pytest.mark.parametrize("step, epochs, batch, saved", [
    # Both in make test-scenarios, for make test's budget (5 min 25 s on a fresh clone, 2026-12-03);
    # the callback's part is test_checkpoints_inside_an_epoch_come_when_due... in make test.
    pytest.param(4 + 2, 1, 2, "1 epoch(s) and 2 batch(es) of epoch 2", marks=pytest.mark.scenario),
    pytest.param(4, 0, 4, "4 batch(es) of epoch 1", marks=pytest.mark.scenario)])
def test_sigterm_inside_an_epoch_checkpoints_and_resume_continues_to_the_same_history(
        straight_run, fashion_dir, tmp_path, monkeypatch, step, epochs, batch, saved):
    """SIGTERM after batch 2 of epoch 2 (4 batches an epoch), or after epoch 1's last batch (before
    its end), writes a checkpoint there, the last being older than SIGNAL_CHECKPOINT_AGE_S (0 here;
    a minute in real runs); --resume trains the rest of that epoch on the same data, noise and
    metric sums, then the next: the history equals the uninterrupted run's, the interrupted
    epoch's row too."""
    from kit import callbacks
    monkeypatch.setattr(callbacks, "SIGNAL_CHECKPOINT_AGE_S", 0.0)
    sigterm_at_batch(monkeypatch, step)
    stopped = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 3,
                             "--limit", 128, "--outdir", tmp_path, *QUICK)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert f"{saved} are saved in {tmp_path}. Resume with:" in stopped.stderr
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["batch"], state["model"]) == (
        epochs, batch, f"ckpt-epoch{epochs + 1:04d}-batch{batch:06d}.keras")
    assert sorted(state["metric_states"]) == ["kl_loss", "loss", "reconstruction_loss"]
    assert len(state["history"]) == epochs and not (tmp_path / "metrics.json").exists()
    monkeypatch.undo()
    resumed = run_in_process("vae_fashion_mnist.py", "--epochs", 3, "--outdir", tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming inside epoch {epochs + 1}, after its batch {batch}, of {tmp_path}" in resumed.stdout
    history = read_csv(tmp_path / "history.csv")
    assert [row["epoch"] for row in history] == [1, 2, 3]
    np.testing.assert_allclose(losses(history), losses(read_csv(straight_run / "history.csv")),
                               rtol=HISTORY_RTOL)
    assert history[epochs]["epoch_seconds"] > state["epoch_seconds"] > 0  # the time before the stop counts


def test_checkpoints_inside_an_epoch_come_when_due_and_a_stop_on_the_last_step_saves_it(tmp_path, monkeypatch):
    """Due by --checkpoint-minutes: after any step but an epoch's last (its end saves that); due by
    a signal: after the last step too, which the stop would otherwise lose."""
    from types import SimpleNamespace
    from kit import callbacks
    saved = []
    monkeypatch.setattr(callbacks, "save_checkpoint", lambda model, folder, epoch, history, inside_epoch=None:
                        saved.append((epoch, inside_epoch["batch"])))
    stop = StopOnSignal()
    checkpoint = callbacks.EpochCheckpoint(tmp_path, [], lambda rows: None, minutes=1e-9, stop=stop)
    checkpoint.set_params({"steps": 4})
    checkpoint.set_model(SimpleNamespace(metrics=[]))
    checkpoint.on_train_begin()
    for batch in range(4):
        checkpoint.on_train_batch_end(batch)
    assert saved == [(0, 1), (0, 2), (0, 3)]
    monkeypatch.setattr(callbacks, "SIGNAL_CHECKPOINT_AGE_S", 0.0)
    checkpoint.period_s = 0.0  # signals only
    checkpoint.on_train_batch_end(2)
    assert len(saved) == 3  # no signal, nothing due
    stop._handle(signal.SIGTERM, None)
    checkpoint.on_train_batch_end(3)
    assert saved[-1] == (0, 4)


@pytest.mark.slow
def test_sigterm_soon_after_a_checkpoint_writes_none(fashion_dir, tmp_path, monkeypatch):
    """The last checkpoint (here: the start of training) is younger than a minute: the stop saves
    nothing more, so a stop in epoch 1 leaves nothing to resume."""
    sigterm_at_batch(monkeypatch, 2)
    stopped = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 1,
                             "--limit", 128, "--outdir", tmp_path, *QUICK)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "no epoch finished, so there is nothing to resume" in stopped.stderr
    assert not (tmp_path / "checkpoint").exists()


def start_long_run(fashion_dir, outdir, resume=False):
    """A 500-epoch run in its own process (or, resume=True, the --resume of the run in outdir)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    options = (["--resume"] if resume else ["--data-dir", str(fashion_dir), "--limit", "256", *QUICK])
    return subprocess.Popen([sys.executable, str(ROOT / "vae_fashion_mnist.py"), "--epochs", "500",
                             "--outdir", str(outdir), *options],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(outdir, n, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = outdir / "checkpoint" / "state.json"
        if state.exists() and json.loads(state.read_text())["epoch"] >= n:
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"no checkpoint of epoch {n} within {timeout} s")


def leftover_temporaries(outdir):
    return list(outdir.rglob(".*tmp*"))


def assert_consistent_checkpoint(outdir, temporaries_allowed=False):
    import keras
    state = json.loads((outdir / "checkpoint" / "state.json").read_text())
    model = keras.models.load_model(outdir / "checkpoint" / state["model"])
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert len(state["history"]) == state["epoch"]
    models = sorted(path.name for path in (outdir / "checkpoint").glob("*.keras"))
    if temporaries_allowed:  # kill -9 may land between state.json's commit and the removal of the
        assert state["model"] in models  # file it replaced; the next checkpoint removes that one
    else:
        assert models == [state["model"]]
    if not temporaries_allowed:  # a handled stop removes its half-written temporary files
        assert not leftover_temporaries(outdir)
    return state


@pytest.mark.scenario
@pytest.mark.slow
def test_sigterm_stops_at_a_safe_point_and_kill_9_of_the_resumed_run_loses_at_most_its_running_epoch(
        fashion_dir, tmp_path):
    """One run's life on a cluster that preempts: SIGTERM (a safe stop, exit 143, with the command
    to resume; Ctrl-C is the same handler: the next test), --resume, then kill -9 (no handler runs),
    and a second --resume that carries on from the last whole checkpoint."""
    process = start_long_run(fashion_dir, tmp_path)
    wait_for_epochs(tmp_path, 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 143, stderr[-3000:]
    assert "Resume with:" in stderr and "--resume" in stderr and "Traceback" not in stderr
    stopped = assert_consistent_checkpoint(tmp_path)
    assert len(read_csv(tmp_path / "history.csv")) == stopped["epoch"]
    assert (tmp_path / "loss_curves.png").exists() and (tmp_path / "config.json").exists()

    process = start_long_run(fashion_dir, tmp_path, resume=True)
    wait_for_epochs(tmp_path, stopped["epoch"] + 1, process)
    process.kill()  # SIGKILL: no handler runs
    process.communicate(timeout=240)
    # kill -9 may land inside a write: its temporary file stays, but every committed file is whole.
    state = assert_consistent_checkpoint(tmp_path, temporaries_allowed=True)
    assert state["epoch"] > stopped["epoch"]
    (tmp_path / ".loss_curves.tmp999999.png").write_bytes(b"half a png")  # as a kill mid-write leaves
    resumed = run_in_process("vae_fashion_mnist.py", "--epochs", state["epoch"] + 1, "--outdir", tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in read_csv(tmp_path / "history.csv")] == list(range(1, state["epoch"] + 2))
    assert not leftover_temporaries(tmp_path)  # the resumed run cleared what the killed one left
    assert_consistent_checkpoint(tmp_path)  # and any checkpoint file the killed one had replaced


@pytest.mark.scenario
@pytest.mark.slow
def test_kill_9_inside_an_epoch_loses_only_the_steps_since_the_last_checkpoint(straight_run, fashion_dir,
                                                                               tmp_path):
    """A checkpoint after every step (--checkpoint-minutes 1e-9) and kill -9 as soon as one inside
    epoch 2 is committed: --resume continues from there to the uninterrupted run's history."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, str(ROOT / "vae_fashion_mnist.py"), "--data-dir", str(fashion_dir),
                                "--epochs", "3", "--limit", "128", "--outdir", str(tmp_path), *QUICK,
                                "--checkpoint-minutes", "1e-9"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    state_path, deadline = tmp_path / "checkpoint" / "state.json", time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("epoch") == 1 and "batch" in state:
            break
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.kill()
    process.communicate(timeout=60)
    from kit.guards import state_problem
    state = json.loads(state_path.read_text())  # the older model file may still be there: a kill
    assert state_problem(state, tmp_path / "checkpoint") is None  # between commit and clean-up
    assert state["epoch"] >= 1  # inside epoch 2 unless the kill landed after its end
    resumed = run_in_process("vae_fashion_mnist.py", "--epochs", 3, "--outdir", tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    np.testing.assert_allclose(losses(read_csv(tmp_path / "history.csv")),
                               losses(read_csv(straight_run / "history.csv")), rtol=HISTORY_RTOL)


def test_ctrl_c_stops_after_the_running_step_with_exit_130():
    """A real SIGINT to this process, with the handler fit() installs."""
    before = signal.getsignal(signal.SIGINT)
    handler = StopOnSignal()
    handler.on_train_begin()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # Python runs the handler between bytecodes, at once here
        assert handler.received == signal.SIGINT
        with pytest.raises(TrainingStopped, match="interrupted by SIGINT") as stop:
            handler.on_train_batch_end(0)
        assert stop.value.exit_code == 130
        assert signal.getsignal(signal.SIGINT) is before  # restored on the stop
    finally:
        handler.restore()


def test_a_second_interrupt_exits_at_once():
    handler = StopOnSignal()
    handler._handle(signal.SIGINT, None)  # first: only remembered
    with pytest.raises(TrainingStopped, match="interrupted by SIGINT"):
        handler.on_train_batch_end(0)
    handler = StopOnSignal()
    handler._handle(signal.SIGINT, None)
    with pytest.raises(SystemExit) as exit_info:
        handler._handle(signal.SIGINT, None)
    assert exit_info.value.code == 130


@pytest.mark.slow
def test_a_non_finite_loss_stops_training_naming_epoch_and_step(fashion_dir, tmp_path):
    result = run_in_process("vae_fashion_mnist.py", "--data-dir", fashion_dir, "--epochs", 3, "--limit", 256,
                            "--lr", "1e12", "--outdir", tmp_path, *QUICK)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "at epoch 1, step" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "model.keras").exists()  # nothing broken is saved as the result


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_leftover_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    leftovers = [tmp_path / ".loss_curves.tmp4242.png", tmp_path / "checkpoint" / ".epoch_0003.tmp17.keras",
                 tmp_path / ".history.tmp9.csv"]
    (tmp_path / "data").mkdir()  # not a folder the kit writes to: left alone
    kept = [tmp_path / "loss_curves.png", tmp_path / ".hidden", tmp_path / ".notes.tmpfile.txt",
            tmp_path / "checkpoint" / "epoch_0002.keras", tmp_path / "data" / ".own.tmp1.png"]
    for path in leftovers + kept:
        path.write_text("x")
    remove_leftover_temporaries(tmp_path)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)


# --- a stopped evaluation, and the resume that finishes it ---------------------------------------

def start_run_with_a_long_evaluation(fashion_dir, outdir, resume=None):
    """A 1-epoch run whose IWAE estimate (3,000 samples for each of 128 images) takes many seconds,
    or with resume="--resume" the run that finishes its evaluation with that estimate; its stdout
    goes to outdir's sibling file, to be watched."""
    log = open(f"{outdir}.stdout", "w")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    options = (["--resume"] if resume else
               ["--data-dir", str(fashion_dir), "--epochs", "1", "--limit", "64", *TINY_MODEL, *TEST_VALIDATION,
                "--fd-images", "0", "--iwae-images", "128"])
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "vae_fashion_mnist.py"), "--outdir", str(outdir), *options, "--iw-samples", "3000"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.PIPE, text=True)
    return process


def wait_for_the_evaluation(outdir, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "IWAE estimate" in open(f"{outdir}.stdout").read():
            time.sleep(0.5)  # inside the estimate
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"the evaluation did not start within {timeout} s")


def assert_resume_finishes_the_evaluation(outdir):
    resumed = run_in_process("vae_fashion_mnist.py", "--resume", "--outdir", outdir, "--iw-samples", 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Training of {outdir} is done (epoch 1): finishing its evaluation" in resumed.stdout
    assert "Epoch 1/" not in resumed.stdout  # no training
    assert [row["epoch"] for row in read_csv(outdir / "history.csv")] == [1]
    metrics = json.loads((outdir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["iw_samples"] == 2
    for name in ("model.keras", "samples.png", "reconstructions.png", "latent_gmm.npz"):
        assert (outdir / name).is_file(), name
    assert not leftover_temporaries(outdir)
    again = run_in_process("vae_fashion_mnist.py", "--resume", "--outdir", outdir, timeout=60)
    assert again.returncode == 2 and "already at epoch 1 and its run is finished" in again.stderr


@pytest.mark.scenario
@pytest.mark.slow
def test_a_stopped_evaluation_says_how_to_finish_and_resume_finishes_it_even_after_kill_9(fashion_dir, tmp_path):
    """SIGTERM during the evaluation (Ctrl-C, SIGINT, is the same code path: see the next tests);
    then kill -9 during the evaluation that --resume starts; a second --resume finishes it."""
    outdir = tmp_path / "run"
    process = start_run_with_a_long_evaluation(fashion_dir, outdir)
    wait_for_the_evaluation(outdir, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "stopped: interrupted by SIGTERM" in stderr
    assert (f"training is done (1 epoch(s) saved in {outdir}), the evaluation is not. Finish it with:\n"
            f"  python vae_fashion_mnist.py --resume --outdir {outdir}\n") in stderr, stderr[-2000:]
    assert not (outdir / "metrics.json").exists()
    process = start_run_with_a_long_evaluation(fashion_dir, outdir, "--resume")
    wait_for_the_evaluation(outdir, process)
    process.kill()
    process.communicate(timeout=30)
    assert not (outdir / "metrics.json").exists()
    assert_resume_finishes_the_evaluation(outdir)


def test_a_signal_while_tensorflow_traces_a_function_is_still_a_stop():
    """TensorFlow re-raises an exception from a function it is tracing as its own RuntimeError; a
    SIGTERM there (found by CI: the IWAE's first trace on a busy machine) still exits 143."""
    import tensorflow as tf
    from kit.callbacks import stop_on_signal_at_once

    @tf.function
    def traced(x):
        os.kill(os.getpid(), signal.SIGTERM)  # raised by the handler inside the trace
        time.sleep(5)
        return x + 1.0

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped) as stop:
        with stop_on_signal_at_once():
            traced(tf.constant(1.0))
    assert stop.value.exit_code == 143 and str(stop.value) == "interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_signal_stops_the_evaluation_at_once_and_says_how_to_finish_it(tmp_path):
    from kit.config import parse_config
    from kit.run import finish_hint_on_stop
    from vae_fashion_mnist import FASHION_MNIST
    config = parse_config(FASHION_MNIST, ["--outdir", str(tmp_path / "run"), "--epochs", "3"])
    with pytest.raises(TrainingStopped) as stop:
        with finish_hint_on_stop(config, [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]):
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal: raised at once, not after a step
            time.sleep(5)
    assert stop.value.exit_code == 143 and str(stop.value) == "interrupted by SIGTERM"
    assert stop.value.hint == (f"training is done (3 epoch(s) saved in {config.outdir}), the evaluation "
                               f"is not. Finish it with:\n  python {os.path.basename(sys.argv[0])} "
                               f"--resume --outdir {config.outdir}")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone again
    model = tmp_path / "model.keras"
    model.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip passes the option checks
    config = parse_config(FASHION_MNIST, ["--eval-only", str(model), "--outdir", str(tmp_path / "e")])
    with pytest.raises(TrainingStopped) as stop:
        with finish_hint_on_stop(config, []):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert stop.value.exit_code == 130
    assert stop.value.hint == "metrics.json was not written; run the same --eval-only command again"


@pytest.mark.parametrize("content, message", [
    ("epoch,loss\n1,2.0,3.0\n", "line 2 has more cells than the header"),
    ("epoch,loss\n1\n", "line 2 has fewer cells than the header"),
    ("epoch,loss\n,2.0\n", "line 2 has no whole epoch number"),
    ("epoch,loss\n1.5,2.0\n", "line 2 has no whole epoch number"),
    ("epoch,loss\n1,abc\n", "could not convert string to float"),
])
def test_read_csv_refuses_a_file_write_csv_did_not_write_with_a_value_error(tmp_path, content, message):
    (tmp_path / "history.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_csv(tmp_path / "history.csv")
