"""End to end: the kit's reliability guarantees (docs/RELIABILITY.md, Exit codes) hold for real runs.

Each refused or failed run exits with its documented code, says why in one line (no traceback),
and leaves the run folder as it was wherever that is promised. One tiny trained run folder is
shared; every test that damages or continues it works on a copy.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TEST_VALIDATION, TINY_MODEL, run_in_process, run_script
from kit.atomic_files import read_csv
from kit.errors import TrainingStopped, WriteError

FASHION = "vae_fashion_mnist.py"
TINY_RUN = [*TINY_MODEL, *TEST_VALIDATION, "--iw-samples", "0", "--fd-images", "0"]  # no IWAE, no Fréchet distance
LOCK = ".lock"


# --- helpers ------------------------------------------------------------------------------------

def snapshot(folder):
    """{relative path: bytes} of every file under folder, except the lock file (its pid changes)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


# TensorFlow's C++ start-up log (absl format), which TF_CPP_MIN_LOG_LEVEL=3 alone does not silence
# (the scripts drop it, kit/quiet_start.py): "WARNING: All log messages before absl::InitializeLog() ..."
# and "I0000 00:00:1795906466.975212   13262 cudart_stub.cc:31] Could not find cuda drivers ...".
TF_LOG_LINE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)"
                         r"|[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
PYTHON_WARNING = re.compile(r"\S+\.py:\d+: \w*Warning: ")  # then an indented source line


def python_warnings(stderr):
    """The Python warnings (warnings.warn) in stderr, one line each."""
    return [line for line in stderr.splitlines() if PYTHON_WARNING.match(line)]


def message_lines(stderr):
    """stderr's non-blank lines that the kit wrote as its message: without its 'warning: ' lines
    (the tiny data set is a modified copy of Fashion-MNIST, so every run that loads it warns),
    TensorFlow's start-up log and Python warnings (test_training_writes_no_python_warnings)."""
    lines, in_warning = [], False
    for line in stderr.splitlines():
        if PYTHON_WARNING.match(line):
            in_warning = True
            continue
        if in_warning and line.startswith(" "):
            continue
        in_warning = False
        if line.strip() and not line.startswith("warning: ") and not TF_LOG_LINE.match(line):
            lines.append(line)
    return lines


def assert_one_line(result, code):
    """Exit `code`, and stderr is one line of message: no traceback, no hint."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = message_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def resume_hint_lines(lines):
    """The kit's hint after a stopped run: 'nothing to resume' (one line) or 'Resume with:' and the
    command (two lines). Returns the number of epochs the hint says are saved (0 for nothing)."""
    if lines == ["no epoch finished, so there is nothing to resume"]:
        return 0
    assert len(lines) == 2 and lines[0].endswith("Resume with:") and "--resume" in lines[1], lines
    return int(re.match(r"(\d+) epoch\(s\) are saved in ", lines[0]).group(1))


def copy_run(trained_run, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(trained_run, target)
    return target


def train_tiny(fashion_dir, outdir, *extra, epochs=1, limit=64, fresh=False):
    """A tiny run in this process, or in a fresh one (fresh=True: where its Python warnings count)."""
    run = run_script if fresh else run_in_process
    return run(FASHION, "--data-dir", fashion_dir, "--epochs", epochs, "--limit", limit,
               "--outdir", outdir, *TINY_RUN, *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_dir):
    """One finished tiny run (1 epoch, Bernoulli): a checkpoint, config.json, history.csv, ..."""
    outdir = tmp_path_factory.mktemp("reliability") / "trained"
    result = train_tiny(fashion_dir, outdir, fresh=True)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((outdir / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1 and (outdir / "checkpoint" / state["model"]).is_file()
    return outdir, result


@pytest.fixture(scope="module")
def trained_run(trained):
    return trained[0]


@pytest.mark.slow
def test_training_writes_no_python_warnings(trained):
    _, result = trained
    assert python_warnings(result.stderr) == []


@pytest.mark.slow
def test_a_fresh_run_starts_without_tensorflows_log_and_warns_of_a_modified_copy_once(trained):
    """No line of TensorFlow's C++ start-up log (absl format, as TF_LOG_LINE above) at the default
    log level, and the tiny data set's four modified files in one warning line."""
    _, result = trained
    assert not [line for line in result.stderr.splitlines() if TF_LOG_LINE.match(line)], result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "4 of its 4 Fashion-MNIST files differ from the official ones" in warnings[0]


# --- 1. --resume refuses options that contradict the checkpoint ---------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("option, given, saved", [
    (["--likelihood", "continuous-bernoulli"], "--likelihood continuous-bernoulli", "(bernoulli)"),
    (["--beta", "2"], "--beta 2", "(1.0)"),
    (["--batch-size", "7"], "--batch-size 7", "(32)"),
    (["--encoder-filters", "4,4"], "--encoder-filters 4,4", "(8,16)"),
])
def test_resume_refuses_an_option_that_contradicts_the_checkpoint(trained_run, tmp_path, option,
                                                                   given, saved):
    outdir = copy_run(trained_run, tmp_path)
    before = snapshot(outdir)
    result = run_in_process(FASHION, "--resume", "--outdir", outdir, "--epochs", 2, *option)
    line = assert_one_line(result, 2)
    assert given in line and saved in line and "does not match" in line, line
    assert snapshot(outdir) == before
    assert json.loads((outdir / "config.json").read_text())["likelihood"] == "bernoulli"


@pytest.mark.slow
def test_resume_with_the_same_options_and_more_epochs_trains_on(trained_run, fashion_dir, tmp_path):
    outdir = copy_run(trained_run, tmp_path)
    result = run_in_process(FASHION, "--resume", "--outdir", outdir, "--epochs", 2, "--data-dir",
                            fashion_dir, "--limit", 64, "--likelihood", "bernoulli", *TINY_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["epoch"] for row in read_csv(outdir / "history.csv")] == [1, 2]
    config = json.loads((outdir / "config.json").read_text())
    assert (config["likelihood"], config["epochs"], config["resume"]) == ("bernoulli", 2, True)
    assert json.loads((outdir / "checkpoint" / "state.json").read_text())["epoch"] == 2


# --- 2. one run per output folder ---------------------------------------------------------------

def wait_for_lock_pid(path, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip() == str(process.pid):
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.1)
    pytest.fail(f"{path} did not get pid {process.pid} within {timeout} s")


@pytest.mark.scenario
@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_lock_never_blocks(fashion_dir, tmp_path):
    outdir = tmp_path / "busy"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, str(ROOT / FASHION), "--data-dir", str(fashion_dir),
                              "--epochs", "500", "--limit", "256", "--outdir", str(outdir), *TINY_RUN],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for_lock_pid(outdir / LOCK, first)
        second = train_tiny(fashion_dir, outdir)
        line = assert_one_line(second, 2)
        assert f"another run (pid {first.pid}) is using" in line, line
        assert first.poll() is None  # the refused run did not disturb the first one
    finally:
        first.kill()  # SIGKILL: the first run's lock file keeps its pid, no handler runs
        first.communicate(timeout=240)
    assert first.returncode == -signal.SIGKILL
    assert (outdir / LOCK).read_text().strip() == str(first.pid)  # a stale lock file is left
    third = train_tiny(fashion_dir, outdir)
    assert third.returncode == 0, third.stderr[-3000:]
    assert [row["epoch"] for row in read_csv(outdir / "history.csv")] == [1]


# --- 3. bounded memory --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("option", [["--latent-dim", "5000000"], ["--encoder-filters", "100000"]])
def test_a_model_too_big_for_memory_is_refused_before_anything_is_made(tmp_path, option):
    from kit.guards import estimate_memory_bytes, physical_memory_bytes
    from vae_fashion_mnist import FASHION_MNIST
    table = {**FASHION_MNIST.presets["default"],
             **({"latent_dim": 5_000_000} if option[0] == "--latent-dim" else {"encoder_filters": [100_000]})}
    needed = estimate_memory_bytes(FASHION_MNIST.image_shape, table["latent_dim"], table["encoder_filters"],
                                   table["encoder_dense"], table["decoder_filters"], table["decoder_dense"],
                                   table["batch_size"])
    if int(needed) <= physical_memory_bytes() / 2:
        pytest.skip(f"this machine has memory for the {int(needed) / 1e9:.0f} GB model")
    outdir = tmp_path / "big"
    result = run_in_process(FASHION, "--outdir", outdir, "--epochs", 1, *option, timeout=240)
    line = assert_one_line(result, 2)
    assert "GB" in line and "memory" in line, line
    assert not outdir.exists()


def test_iwae_with_many_samples_is_the_same_however_k_is_sliced():
    """A K far above the decodes of one call (IWAE_DECODES_PER_CALL, 4,000), as --iw-samples 100000
    --iwae-images 1: bounded slices of K give the one-call estimate."""
    from common import build_vae
    from kit.evaluate import iwae_nll
    model = build_vae((28, 28, 1), latent_dim=2, encoder_filters=(4,), encoder_dense=(),
                      decoder_filters=(4,), decoder_dense=(), seed=0)
    x = (np.random.default_rng(0).random((1, 28, 28, 1)) > 0.5).astype(np.float32)
    one_call = iwae_nll(model, x, 10_000, seed=1, decodes_per_call=10_000)
    default = iwae_nll(model, x, 10_000, seed=1)  # 3 slices, the last short
    sliced = iwae_nll(model, x, 10_000, seed=1, decodes_per_call=900)  # 12 slices, the last short
    assert one_call.shape == default.shape == sliced.shape == (1,) and np.isfinite(one_call).all()
    np.testing.assert_allclose(default, one_call, rtol=1e-5)
    np.testing.assert_allclose(sliced, one_call, rtol=1e-5)
    # and it is an estimate of -log p(x) for 784 Bernoulli pixels of a random model: near 784 ln 2
    assert 784 * np.log(2) * 0.8 < one_call[0] < 784 * np.log(2) * 1.2


# --- 4. damaged run folders on --resume ---------------------------------------------------------

def edit_json(relative, **changes):
    def damage(outdir):
        path = outdir / relative
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return damage


def checkpoint_model(outdir):
    state = json.loads((outdir / "checkpoint" / "state.json").read_text())
    return outdir / "checkpoint" / state["model"]


def truncate_model(outdir):
    path = checkpoint_model(outdir)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def model_outside(outdir):
    shutil.copy(checkpoint_model(outdir), outdir / "x.keras")  # a loadable model where ../ points
    edit_json("checkpoint/state.json", model="../x.keras")(outdir)


def damage_weights(path, where):
    """Rewrite the .keras file at `path` with 4 bytes of its model.weights.h5 overwritten at each
    offset `where(weights bytes)` names: the archive stays sound, its weights file is not."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    weights = bytearray(members["model.weights.h5"])
    for offset in where(bytes(weights)):
        weights[offset:offset + 4] = b"\xde\xad\xbe\xef"
    members["model.weights.h5"] = bytes(weights)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def inside_the_largest_array(weights):
    """Two offsets inside the weights' largest array: damage that still loads (as 342 of 400 random
    damages did, kit/callbacks.py)."""
    import io
    import h5py
    arrays = []
    with h5py.File(io.BytesIO(weights), "r") as h5:
        h5.visititems(lambda name, item: arrays.append((item.nbytes, item.id.get_offset()))
                      if isinstance(item, h5py.Dataset) else None)
    size, start = max(arrays)
    return [start + size // 3, start + 2 * size // 3]


# Damage to model.weights.h5 inside a sound archive, in several places or one, each measured to
# raise a different error in h5py (RuntimeError "bad local heap signature" and "wrong B-tree
# signature", OSError for the superblock), or none at all.
WEIGHT_DAMAGES = {
    "every local heap": lambda w: [i for i in range(len(w)) if w.startswith(b"HEAP", i)],
    "B-tree signature": lambda w: [w.find(b"TREE")],
    "superblock": lambda w: [0],
    "inside an array": inside_the_largest_array,
}
STRUCTURAL_DAMAGES = [name for name in WEIGHT_DAMAGES if name != "inside an array"]


def damage_checkpoint_weights(where, forget_digest=False):
    """The checkpoint's weights damaged; forget_digest: as a checkpoint from before digests were
    recorded, which only the loader can find damaged."""
    def damage(outdir):
        damage_weights(checkpoint_model(outdir), where)
        if forget_digest:
            path = outdir / "checkpoint" / "state.json"
            path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                        if k != "model_sha256"}))
    return damage


DAMAGES = {  # the digest is checked the same way for any damage: two kinds; the loader, two more
    **{f"weights: {name}": damage_checkpoint_weights(WEIGHT_DAMAGES[name])
       for name in ("every local heap", "inside an array")},
    **{f"weights: {name}, no digest": damage_checkpoint_weights(WEIGHT_DAMAGES[name], forget_digest=True)
       for name in ("every local heap", "superblock")},
    "digest not hex": edit_json("checkpoint/state.json", model_sha256="abc"),
    "state.json not JSON": lambda d: (d / "checkpoint" / "state.json").write_text('{"epoch": 1,'),
    "epoch a string": edit_json("checkpoint/state.json", epoch="1"),
    "epoch negative": edit_json("checkpoint/state.json", epoch=-1),
    "epoch a fraction": edit_json("checkpoint/state.json", epoch=1.5),
    "model outside the folder": model_outside,
    "model truncated": truncate_model,
    "model deleted": lambda d: checkpoint_model(d).unlink(),
    "model empty": lambda d: checkpoint_model(d).write_bytes(b""),
    "config.json not JSON": lambda d: (d / "config.json").write_text("latent_dim: 2\n"),
    "config latent_dim a word": edit_json("config.json", latent_dim="two"),
    "config lr a word": edit_json("config.json", lr="fast"),
    "config encoder_filters zero": edit_json("config.json", encoder_filters=[0]),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_resume_from_a_damaged_folder_exits_4_and_changes_nothing(trained_run, fashion_dir, tmp_path,
                                                                   damage):
    outdir = copy_run(trained_run, tmp_path)
    DAMAGES[damage](outdir)
    before = snapshot(outdir)
    result = run_in_process(FASHION, "--resume", "--outdir", outdir, "--epochs", 2, "--data-dir",
                            fashion_dir)  # refused before training: in this process, 12 times faster
    line = assert_one_line(result, 4)
    assert line.startswith("error: ") and "damaged" in line, line
    assert snapshot(outdir) == before


# --- 5. disk full -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_disk_run(trained_run, fashion_dir, tmp_path_factory):
    """A 2-epoch run onto a tmpfs with room for config.json but not for the first checkpoint
    (half its size): (outdir, CompletedProcess)."""
    model_bytes = checkpoint_model(trained_run).stat().st_size
    mount_point = tmp_path_factory.mktemp("small_disk")
    size_kb = max(16, model_bytes // 2 // 1024)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount_point)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.strip() or mount.returncode}")
    try:
        outdir = mount_point / "run"
        yield outdir, train_tiny(fashion_dir, outdir, epochs=2)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def saved_epoch(outdir):
    """The checkpoint's epoch, 0 without one."""
    state = outdir / "checkpoint" / "state.json"
    return json.loads(state.read_text())["epoch"] if state.exists() else 0


@pytest.mark.slow
def test_a_full_disk_stops_with_exit_5_naming_the_file(full_disk_run):
    outdir, result = full_disk_run
    assert result.returncode == 5, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = message_lines(result.stderr)
    match = re.fullmatch(r"error: disk full while writing (\S+)", lines[0])
    assert match, lines
    assert Path(match.group(1)).parent in (outdir, outdir / "checkpoint"), lines[0]
    resume_hint_lines(lines[1:])  # the resume hint or "nothing to resume", nothing else
    # history.csv is never ahead of the checkpoint.
    if (outdir / "history.csv").exists():
        assert [row["epoch"] for row in read_csv(outdir / "history.csv")] == \
            list(range(1, saved_epoch(outdir) + 1))
    assert not list(outdir.rglob(".*tmp*"))  # no half-written temporary file left behind


@pytest.mark.slow
def test_after_a_full_disk_the_hint_counts_only_saved_epochs(full_disk_run):
    outdir, result = full_disk_run
    assert result.returncode == 5, result.stderr[-3000:]
    hinted = resume_hint_lines(message_lines(result.stderr)[1:])
    assert hinted == saved_epoch(outdir), (result.stderr[-1000:], saved_epoch(outdir))


STOPS = {"write error": lambda: WriteError("disk full while writing x"),
         "non-finite loss": lambda: TrainingStopped("loss became nan", 3)}


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stopped_run_says_how_to_resume_only_when_epochs_are_saved(tmp_path, stop):
    from kit.config import parse_config
    from kit.run import resume_hint_on_stop
    from vae_fashion_mnist import FASHION_MNIST
    config = parse_config(FASHION_MNIST, ["--outdir", str(tmp_path / "run"), "--epochs", "5"])
    error = STOPS[stop]()
    with pytest.raises(type(error)) as raised:
        with resume_hint_on_stop(config, [{"epoch": 1}, {"epoch": 2}]):
            raise error
    hint = raised.value.hint
    assert "2 epoch(s) are saved" in hint and "--resume" in hint, hint
    assert f"--outdir {config.outdir}" in hint and "--epochs 5" in hint, hint
    error = STOPS[stop]()
    with pytest.raises(type(error)) as raised:
        with resume_hint_on_stop(config, []):
            raise error
    assert raised.value.hint == "no epoch finished, so there is nothing to resume"


# --- 6. --tensorboard onto a file ---------------------------------------------------------------

@pytest.mark.slow
def test_tensorboard_onto_a_file_is_refused_before_anything_is_written(tmp_path):
    outdir = tmp_path / "run"
    outdir.mkdir()
    (outdir / "tensorboard").write_text("not a folder")
    result = run_in_process(FASHION, "--outdir", outdir, "--epochs", 1, "--tensorboard", timeout=240)
    line = assert_one_line(result, 2)
    assert "--tensorboard" in line and "not a folder" in line, line
    assert sorted(p.name for p in outdir.iterdir()) == ["tensorboard"]  # no config.json, no lock


# --- 7. a fresh run that fails leaves no stale results ------------------------------------------

@pytest.mark.slow
def test_a_fresh_run_stopped_by_nan_leaves_no_stale_results(fashion_dir, tmp_path):
    outdir = tmp_path / "run"
    outdir.mkdir()
    (outdir / "metrics.json").write_text('{"test_neg_elbo": 1.0}')
    (outdir / "model.keras").write_bytes(b"an older run's model")
    (outdir / "report.html").write_text("an older run's page")
    result = run_in_process(FASHION, "--data-dir", fashion_dir, "--epochs", 3, "--limit", 256, "--lr", "1e12",
                            "--lr-schedule", "constant", "--seed", 5, "--outdir", outdir, *TINY_RUN)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not [name for name in ("metrics.json", "model.keras", "report.html") if (outdir / name).exists()]


# --- 8. --eval-only of a file that is no model of this data set ---------------------------------

@pytest.mark.slow
def test_eval_only_of_an_empty_file_is_refused_without_making_the_outdir(tmp_path):
    model = tmp_path / "x.keras"
    model.write_bytes(b"")
    outdir = tmp_path / "out"
    result = run_in_process(FASHION, "--eval-only", model, "--outdir", outdir)
    line = assert_one_line(result, 2)
    assert str(model) in line and "empty" in line, line
    assert not outdir.exists()


@pytest.mark.slow
def test_eval_only_of_a_crafted_archive_is_refused_in_one_short_line(tmp_path):
    model = tmp_path / "x.keras"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Nope"}))
    outdir = tmp_path / "out"
    result = run_in_process(FASHION, "--eval-only", model, "--outdir", outdir)
    line = assert_one_line(result, 2)
    assert len(line) < 400, line  # Keras' own message is cut to its first line
    assert f"cannot load {model}" in line, line
    assert not outdir.exists()  # the refused run removed the folder it made for its lock


@pytest.mark.slow
def test_eval_only_of_the_other_data_sets_model_leaves_no_outdir(trained_run, cifar_dir, tmp_path):
    outdir = tmp_path / "out"
    result = run_in_process("vae_cifar10.py", "--eval-only", trained_run / "model.keras", "--data-dir",
                            cifar_dir, "--outdir", outdir)
    line = assert_one_line(result, 2)
    assert "fashion_mnist" in line and "cifar10" in line, line
    assert not outdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(WEIGHT_DAMAGES))
def test_eval_only_of_damaged_weights_in_a_sound_archive_is_one_line(trained_run, tmp_path, damage):
    """Checked against the SHA-256 written beside model.keras; without that file (a model from
    elsewhere), the loader's error is one line too, whatever its class."""
    model = tmp_path / "model.keras"
    shutil.copy(trained_run / "model.keras", model)
    shutil.copy(trained_run / "model.keras.sha256", tmp_path)
    damage_weights(model, WEIGHT_DAMAGES[damage])
    result = run_in_process(FASHION, "--eval-only", model, "--outdir", tmp_path / "out")
    line = assert_one_line(result, 2)
    assert f"cannot load {model} as a VAE: model.keras has changed since it was written" in line, line
    (tmp_path / "model.keras.sha256").unlink()
    if damage in STRUCTURAL_DAMAGES:
        result = run_in_process(FASHION, "--eval-only", model, "--outdir", tmp_path / "out")
        line = assert_one_line(result, 2)
        assert f"cannot load {model} as a VAE: " in line and len(line) < 400, line
    assert not (tmp_path / "out").exists()


# --- 9. what could only fail after training is refused before it (issue 16's probes) -------------

@pytest.mark.slow
def test_a_feature_cache_on_a_file_is_refused_before_training(fashion_dir, tmp_path):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    outdir = tmp_path / "out"
    result = run_in_process(FASHION, "--data-dir", fashion_dir, "--epochs", 1, "--limit", 64, "--outdir",
                            outdir, "--feature-net", "own", *TINY_MODEL, timeout=60,
                            env={"VAE_KIT_CACHE": str(blocker)})
    line = assert_one_line(result, 2)
    assert f"cannot be cached in {blocker}/feature-nets/fashion_mnist: {blocker} is not a folder" in line
    assert "Epoch 1" not in result.stdout and not outdir.exists()


def write_damaged_feature_cache(cache, fashion_dir):
    """A cached feature network for the fixture data whose file no longer matches its info.json."""
    from kit.data import load_fashion_mnist
    from kit.sample_quality import FEATURE_NET_VERSION, files_checksum
    folder = cache / "feature-nets" / "fashion_mnist"
    folder.mkdir(parents=True)
    (folder / "feature_net.keras").write_bytes(b"PK\x03\x04 half a network")
    (folder / "info.json").write_text(json.dumps({
        "data_checksum": files_checksum(load_fashion_mnist(str(fashion_dir)).sha256),
        "net_version": FEATURE_NET_VERSION, "feature_net_sha256": "0" * 64}))
    return folder


@pytest.mark.slow
def test_a_damaged_shipped_feature_network_is_refused_before_training(fashion_dir, tmp_path, monkeypatch):
    from kit import guards
    nets = tmp_path / "nets"
    shutil.copytree(guards.SHIPPED_FEATURE_NETS, nets)
    monkeypatch.setattr(guards, "SHIPPED_FEATURE_NETS", nets)
    weights = nets / "fashion_mnist.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-100])  # cut short, as by an interrupted copy
    outdir = tmp_path / "out"
    result = run_in_process(FASHION, "--data-dir", fashion_dir, "--epochs", 1, "--limit", 64, "--outdir",
                            outdir, *TINY_MODEL, timeout=60)
    line = assert_one_line(result, 2)
    assert f"the shipped feature network {weights} is damaged: its SHA-256 is " in line, line
    assert "Epoch 1" not in result.stdout and not outdir.exists()


@pytest.mark.slow
def test_a_damaged_cached_feature_network_is_refused_before_training(fashion_dir, tmp_path):
    folder = write_damaged_feature_cache(tmp_path / "cache", fashion_dir)
    outdir = tmp_path / "out"
    result = run_in_process(FASHION, "--data-dir", fashion_dir, "--epochs", 1, "--limit", 64, "--outdir",
                            outdir, "--feature-net", "own", *TINY_MODEL, timeout=120,
                            env={"VAE_KIT_CACHE": str(tmp_path / "cache")})
    line = assert_one_line(result, 2)
    assert f"{folder}/feature_net.keras is missing or does not match info.json" in line, line
    assert "--refresh-feature-net" in line
    assert "Epoch 1" not in result.stdout and not outdir.exists()


@pytest.mark.slow
def test_an_outdir_name_too_long_is_refused_before_anything_is_made(tmp_path):
    outdir = tmp_path / "missing" / ("n" * 300)
    result = run_in_process(FASHION, "--outdir", outdir, "--epochs", 1, timeout=60)
    line = assert_one_line(result, 2)
    assert "cannot be written: the name nnnn" in line and "300 bytes long" in line, line
    assert list(tmp_path.iterdir()) == []  # not even the missing parent


# Folders that pass every check short of making them: a virtual file system (/proc) and sysfs,
# where even root's mkdir fails (ENOENT and EPERM), though os.access says they may be written.
UNMAKEABLE = ["/proc/vae-kit-test/run", "/sys/vae-kit-test/run"]


@pytest.mark.slow
@pytest.mark.parametrize("folder", UNMAKEABLE)
def test_an_outdir_that_cannot_be_made_is_refused_in_one_line(tmp_path, folder):
    result = run_in_process(FASHION, "--outdir", folder, "--epochs", 1, timeout=60)
    line = assert_one_line(result, 2)
    assert f"--outdir {folder} cannot be written: cannot make {Path(folder).parent}: " in line, line


@pytest.mark.slow
@pytest.mark.parametrize("folder", UNMAKEABLE)
def test_a_feature_cache_that_cannot_be_made_is_refused_before_training(fashion_dir, tmp_path, folder):
    outdir = tmp_path / "out"
    result = run_in_process(FASHION, "--data-dir", fashion_dir, "--epochs", 1, "--limit", 64, "--outdir",
                            outdir, "--feature-net", "own", *TINY_MODEL, timeout=60,
                            env={"VAE_KIT_CACHE": folder})
    line = assert_one_line(result, 2)
    assert f"cannot be cached in {folder}/feature-nets/fashion_mnist: cannot make {Path(folder).parent}: " in line
    assert "Epoch 1" not in result.stdout and not outdir.exists()


def test_the_folder_check_removes_the_folders_it_made(tmp_path):
    from kit.guards import folder_problem
    assert folder_problem(tmp_path / "a" / "b" / "c") is None
    assert list(tmp_path.iterdir()) == []


def test_runs_checking_the_same_new_folder_at_once_all_pass(tmp_path):
    """Six checks at once of one folder that does not exist yet: none refused, nothing left behind
    (each made and removed the others' folders when the check made the missing folders themselves)."""
    from concurrent.futures import ThreadPoolExecutor
    from kit.guards import folder_problem
    with ThreadPoolExecutor(6) as pool:
        problems = list(pool.map(lambda _: folder_problem(tmp_path / "a" / "b" / "c"), range(600)))
    assert problems == [None] * 600
    assert list(tmp_path.iterdir()) == []


def test_the_lock_of_a_folder_that_cannot_be_made_is_one_line():
    """Should the file system change after the check, taking the lock still says why in one line."""
    from kit.errors import UsageError
    from kit.guards import outdir_lock
    with pytest.raises(UsageError, match="^--outdir /proc/vae-kit-test cannot be written: cannot make "):
        with outdir_lock("/proc/vae-kit-test"):
            pass


DAMAGED_HISTORIES = ["epoch,loss\n1,abc\n", "epoch,loss\n1,2.0,3.0\n", "loss\n2.0\n", "\xff\xfe not text",
                     "epoch,loss\n2,1.0\n"]


@pytest.mark.parametrize("content", DAMAGED_HISTORIES)
def test_a_damaged_history_is_one_warning_and_no_rows(tmp_path, capsys, content):
    from kit.run import read_history
    path = tmp_path / "history.csv"
    path.write_bytes(content.encode("latin-1"))
    assert read_history(path) == []
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {path} "), warnings
    assert warnings[0].endswith("; the loss curves are skipped"), warnings


@pytest.mark.slow
def test_eval_only_beside_a_damaged_history_warns_and_evaluates(trained_run, fashion_dir, tmp_path):
    """End to end for one of the damaged histories above: the evaluation goes on without curves."""
    run = copy_run(trained_run, tmp_path)
    (run / "history.csv").write_bytes(DAMAGED_HISTORIES[0].encode("latin-1"))
    outdir = tmp_path / "eval"
    result = run_in_process(FASHION, "--eval-only", run / "model.keras", "--data-dir", fashion_dir,
                            "--fd-images", 0, "--iw-samples", 0, "--outdir", outdir, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "history.csv" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {run / 'history.csv'} ")
    assert warnings[0].endswith("; the loss curves are skipped"), warnings
    assert (outdir / "metrics.json").is_file() and (outdir / "samples.png").is_file()
    assert not (outdir / "loss_curves.png").exists()
    assert json.loads((outdir / "metrics.json").read_text())["epochs"] is None


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, cifar_dir):
    """One finished tiny CIFAR-10 run folder."""
    outdir = tmp_path_factory.mktemp("cifar") / "run"
    result = run_in_process("vae_cifar10.py", "--data-dir", cifar_dir, "--epochs", 1, "--limit", 64,
                            "--outdir", outdir, *TINY_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return outdir


@pytest.mark.slow
@pytest.mark.parametrize("script, run_of, resumed_by", [(FASHION, "cifar10", "fashion_mnist"),
                                                        ("vae_cifar10.py", "fashion_mnist", "cifar10")])
def test_resume_of_the_other_data_sets_run_is_refused_both_ways(trained_run, cifar_run, tmp_path, script,
                                                                run_of, resumed_by):
    outdir = copy_run(cifar_run if run_of == "cifar10" else trained_run, tmp_path)
    before = snapshot(outdir)
    result = run_in_process(script, "--resume", "--outdir", outdir, "--epochs", 2)
    line = assert_one_line(result, 2)
    assert line.endswith(f"error: --resume: {outdir} holds another data set's run ({run_of}, not "
                         f"{resumed_by}); resume it with vae_{run_of}.py"), line
    assert snapshot(outdir) == before


@pytest.mark.slow
@pytest.mark.parametrize("option", [["--likelihood", "gaussian"], ["--latent-dim", "2"], ["--epochs", "5"]])
def test_eval_only_refuses_a_model_option_instead_of_ignoring_it(trained_run, tmp_path, option):
    outdir = tmp_path / "out"
    result = run_in_process(FASHION, "--eval-only", trained_run / "model.keras", *option, "--outdir", outdir)
    line = assert_one_line(result, 2)
    assert f"{option[0]} cannot be used with --eval-only: the model file fixes the model" in line, line
    assert not outdir.exists()
