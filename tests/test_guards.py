"""Guards: one run per output folder, models too big for memory, low disk, damaged checkpoints."""
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections import namedtuple

import numpy as np
import pytest

from conftest import ROOT, peak_memory_growth_mb
from kit import guards
from kit.atomic_files import atomic_path, write_error_message
from kit.errors import WriteError
from kit.guards import (DamagedRunError, LockedError, estimate_hierarchical_memory_bytes, estimate_memory_bytes,
                        free_space_warning, hierarchical_layer_table, memory_problem, outdir_lock,
                        read_json_object, validate_state, vae_parameter_count)
from vae_cifar10 import CIFAR10
from vae_fashion_mnist import FASHION_MNIST


def defaults_of(spec):
    """A script's default model: (image_shape, latent, encoder filters, encoder dense, decoder
    filters, decoder dense, batch), from its presets table, so it cannot go stale."""
    table = spec.presets["default"]
    return (spec.image_shape, table["latent_dim"], table["encoder_filters"], table["encoder_dense"],
            table["decoder_filters"], table["decoder_dense"], table["batch_size"])


FASHION_DEFAULTS = defaults_of(FASHION_MNIST)
CIFAR_DEFAULTS = defaults_of(CIFAR10)
GiB = 2 ** 30

# --- outdir_lock --------------------------------------------------------------------------------

HOLD_LOCK = """
import sys
sys.path.insert(0, {root!r})
from kit.guards import outdir_lock
with outdir_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the parent closes stdin (or kills this process)
"""


def start_holder(outdir):
    """A child process that holds the lock on outdir until its stdin closes."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(root=str(ROOT)), str(outdir)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_lock_creates_the_folder_and_writes_our_pid(tmp_path):
    outdir = tmp_path / "new" / "run"
    with outdir_lock(outdir) as path:
        assert path == outdir / ".lock"
        assert path.read_text() == f"{os.getpid()}\n"
        assert os.listdir(outdir) == [".lock"]  # before anything else
    assert path.read_text() == ""  # released: no stale pid left


@pytest.fixture
def fail_if_blocked():
    """Turns a lock attempt that waits (instead of failing at once) into a test failure."""
    def give_up(signum, frame):
        raise AssertionError("outdir_lock waited for the other holder instead of refusing at once")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_second_lock_on_the_same_folder_is_refused_at_once(tmp_path, fail_if_blocked):
    with outdir_lock(tmp_path):
        with pytest.raises(LockedError, match=rf"^another run \(pid {os.getpid()}\) is using {tmp_path}$"):
            with outdir_lock(tmp_path):
                pass
    with outdir_lock(tmp_path):  # free again after the first block ends
        pass


def test_a_live_holder_in_another_process_is_named_by_pid(tmp_path, fail_if_blocked):
    child = start_holder(tmp_path)
    try:
        with pytest.raises(LockedError) as err:
            with outdir_lock(tmp_path):
                pass
        assert str(err.value) == f"another run (pid {child.pid}) is using {tmp_path}"
    finally:
        child.stdin.close()
        child.wait(timeout=120)
    with outdir_lock(tmp_path):  # the holder exited normally: the folder is free
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path, fail_if_blocked):
    child = start_holder(tmp_path)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=120) == -signal.SIGKILL
    child.stdin.close()
    assert (tmp_path / ".lock").read_text() == f"{child.pid}\n"  # the file stays behind...
    with outdir_lock(tmp_path) as path:  # ...but the flock died with its process
        assert path.read_text() == f"{os.getpid()}\n"


# --- memory estimate ----------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    FASHION_DEFAULTS[:6], CIFAR_DEFAULTS[:6],
    ((28, 28, 1), 2, [32, 64], [16], [64, 32], []),      # keras.io's example
    ((28, 28, 1), 3, [8, 16, 4], [], [16], [7, 5]),      # 28 -> 14 -> 7 -> 4; no encoder dense
])
def test_parameter_count_matches_the_built_model(config):
    from common import build_vae
    model = build_vae(*config)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert vae_parameter_count(*config) == trainable
    assert vae_parameter_count(*config) == model.count_params() - 1  # count_params includes beta


def test_parameter_count_by_hand_for_a_tiny_model():
    # 4x4x1 image, conv 2 filters: 9*1*2+2 = 20 -> 2x2x2 = 8 values; heads 2*(8*1+1) = 18;
    # decoder base 1 -> 2x2x2: 1*8+8 = 16; conv-transpose 2 -> 2: 9*2*2+2 = 38; logits 9*2*1+1 = 19.
    assert vae_parameter_count((4, 4, 1), 1, [2], [], [2], []) == 20 + 18 + 16 + 38 + 19
    # Two output channels per pixel (e.g. a mean and a scale) only change the last layer: 9*2*2+2.
    assert vae_parameter_count((4, 4, 1), 1, [2], [], [2], [], decoder_output_channels=2) == \
        20 + 18 + 16 + 38 + 38


def test_memory_estimate_adds_weights_adam_gradients_and_activations():
    estimate = estimate_memory_bytes((4, 4, 1), 1, [2], [], [2], [], batch_size=10)
    # Activations per image: image 16, conv 8, z_mean 1, z_log_var 1, z 1, base 8, conv-T 32, logits 16.
    activations = 16 + 8 + 1 + 1 + 1 + 8 + 32 + 16
    assert estimate.parameters == 111
    assert estimate.total_bytes == 4 * (4 * 111 + 3 * activations * 10)
    assert (estimate.largest_activation, estimate.largest_activation_layer) == (32, "decoder conv 1")
    assert int(estimate) == estimate.total_bytes and estimate.model_file_bytes == 4 * 111


def test_the_weights_average_is_one_more_copy_of_the_weights():
    without, with_ema = (estimate_memory_bytes((4, 4, 1), 1, [2], [], [2], [], batch_size=10, ema=ema)
                         for ema in (False, True))
    assert with_ema.total_bytes - without.total_bytes == 4 * 111  # one float32 per parameter
    h_without, h_with = (estimate_hierarchical_memory_bytes((32, 32, 3), [32], {32: 1, 16: 1}, 8, [16], 4, 50,
                                                            ema=ema) for ema in (False, True))
    assert h_with.total_bytes - h_without.total_bytes == 4 * h_without.parameters


def test_fashion_largest_activation_is_the_last_decoder_conv():
    estimate = estimate_memory_bytes(*FASHION_DEFAULTS)
    assert (estimate.largest_activation, estimate.largest_activation_layer) == (28 * 28 * 32, "decoder conv 2")


@pytest.mark.parametrize("defaults", [FASHION_DEFAULTS, CIFAR_DEFAULTS])
def test_the_scripts_defaults_fit_with_a_big_margin(defaults):
    estimate = estimate_memory_bytes(*defaults)
    assert estimate.total_bytes < 0.5e9  # about 0.11 and 0.15 GB
    assert memory_problem(estimate, physical_bytes=4 * GiB) is None  # even on a 4 GB machine


@pytest.mark.parametrize("change", [dict(latent_dim=5_000_000), dict(encoder_filters=[100000])])
@pytest.mark.parametrize("defaults", [FASHION_DEFAULTS, CIFAR_DEFAULTS])
def test_absurd_sizes_are_refused_even_on_a_big_machine(defaults, change):
    names = ("image_shape", "latent_dim", "encoder_filters", "encoder_dense", "decoder_filters",
             "decoder_dense", "batch_size")
    estimate = estimate_memory_bytes(**{**dict(zip(names, defaults)), **change})
    message = memory_problem(estimate, physical_bytes=137 * GiB)  # the H200 machine's RAM
    assert message is not None and "\n" not in message
    assert message.startswith(f"the model needs about {estimate.total_bytes / 1e9:.1f} GB "
                              f"({estimate.parameters:,} parameters, largest activation ")
    assert "more than half of this machine's 147.1 GB of memory" in message


def test_memory_problem_reads_physical_memory_from_sysconf(monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1_000_000}  # 4.096 GB
    monkeypatch.setattr(guards.os, "sysconf", lambda name: pages[name])
    assert memory_problem(2_048_000_000) is None  # exactly half is allowed
    assert memory_problem(2_048_000_001) == (
        "the model needs about 2.0 GB, more than half of this machine's 4.1 GB of memory; "
        "use smaller --latent-dim, filter or dense widths, or --batch-size")
    assert "more than 25% of" in memory_problem(1_100_000_000, fraction=0.25)


# --- the hierarchical VAE's memory estimate -------------------------------------------------------

def hierarchical_defaults_of(spec):
    """A script's --arch hierarchical model from its defaults table: (image_shape, widths, blocks,
    latent channels, latent resolutions)."""
    table = spec.presets["default"]
    return (spec.image_shape, table["hvae_widths"], table["hvae_blocks"], table["latent_channels"],
            table["latent_resolutions"])


@pytest.mark.parametrize("config, likelihood", [
    (hierarchical_defaults_of(FASHION_MNIST), "discretized-logistic-mixture"),
    (hierarchical_defaults_of(CIFAR10), "discretized-logistic-mixture"),
    (((28, 28, 1), [8, 16, 24, 32], [1, 2, 1, 1], 2, [1, 14]), "bernoulli"),  # widths change: projections
    (((32, 32, 3), [16], [2], 3, [4, 4, 32]), "gaussian"),                      # groups at the full size
])
def test_hierarchical_parameter_count_matches_the_built_model(config, likelihood):
    from kit.hierarchical_vae import build_hierarchical_vae
    from kit.model_options import decoder_output_channels
    from kit.models import one_or_all
    image_shape, widths, blocks, channels, resolutions = config
    model = build_hierarchical_vae(image_shape, one_or_all(widths), one_or_all(blocks), channels, resolutions,
                                   likelihood=likelihood)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    rows = hierarchical_layer_table(*config, decoder_output_channels(likelihood, image_shape[-1]))
    assert sum(weights for _, weights, _ in rows) == trainable
    estimate = estimate_hierarchical_memory_bytes(*config, 32, decoder_output_channels(likelihood, image_shape[-1]))
    assert estimate.parameters == trainable


def test_hierarchical_estimate_is_weights_and_activations_per_resolution():
    config = hierarchical_defaults_of(CIFAR10)
    small, large = (estimate_hierarchical_memory_bytes(*config, batch, 50) for batch in (32, 64))
    per_image = (large.total_bytes - small.total_bytes) / 32
    values = sum(size for _, _, size in hierarchical_layer_table(*config, 50))
    assert per_image == pytest.approx(4 * guards.HIERARCHICAL_COPIES_PER_VALUE * values)
    assert small.total_bytes - 32 * per_image == pytest.approx(4 * 4 * small.parameters)  # weights x 4 copies
    # The largest stage is at the full resolution, and wider streams cost more.
    assert "32x32" in small.largest_activation_layer or small.largest_activation_layer == "likelihood"
    wider = estimate_hierarchical_memory_bytes(config[0], [128], *config[2:], 32, 50)
    assert wider.total_bytes > 1.8 * small.total_bytes
    assert memory_problem(small, physical_bytes=4 * GiB) is None  # the defaults fit a 4 GB machine


def test_estimate_for_follows_the_arch(tmp_path):
    from kit.config import parse_config
    plain = parse_config(CIFAR10, ["--outdir", str(tmp_path)])
    hierarchical = parse_config(CIFAR10, ["--arch", "hierarchical", "--outdir", str(tmp_path)])
    table = CIFAR10.presets["default"]
    assert guards.estimate_for(hierarchical, CIFAR10.image_shape) == estimate_hierarchical_memory_bytes(
        *hierarchical_defaults_of(CIFAR10), table["batch_size"], 3,  # the Gaussian's 3 output channels
        ema=hierarchical.ema > 0)
    preset = parse_config(CIFAR10, ["--preset", "hierarchical", "--outdir", str(tmp_path)])
    with_ema, without = (guards.estimate_for(config, CIFAR10.image_shape)
                         for config in (preset, dataclasses.replace(preset, ema=0.0)))
    assert preset.ema > 0 and with_ema.total_bytes - without.total_bytes == 4 * with_ema.parameters
    assert guards.estimate_for(plain, CIFAR10.image_shape) == estimate_memory_bytes(*CIFAR_DEFAULTS, 3)


@pytest.mark.scenario
@pytest.mark.slow  # a fresh process trains one batch of 128 CIFAR-sized images, ~27 s
def test_hierarchical_estimate_is_near_the_measured_training_memory():
    """The estimate against the peak memory growth of a training step (which also holds TensorFlow's
    traced graphs, that no estimate from layer shapes counts): measured 993-1,102 MB in 20 runs
    for this model (2026-12-01, the process's own peak), whose estimate is 974 MB."""
    blocks, resolutions = [1, 1, 1, 1, 1], [1, 4, 8, 16]
    setup = "\n".join([
        "import keras, numpy as np",
        "from kit.hierarchical_vae import build_hierarchical_vae",
        f"model = build_hierarchical_vae((32, 32, 3), 32, {blocks}, 8, {resolutions})",
        "model.compile(optimizer=keras.optimizers.Adam(1e-3))",
        "x = np.random.default_rng(0).random((128, 32, 32, 3)).astype('float32')"])
    measured_mb = peak_memory_growth_mb(setup, "model.fit(x, batch_size=128, epochs=1, verbose=0)")
    estimate_mb = estimate_hierarchical_memory_bytes((32, 32, 3), [32], blocks, 8, resolutions, 128,
                                                     50).total_bytes / 2 ** 20
    assert 0.5 * measured_mb < estimate_mb < 1.5 * measured_mb, (estimate_mb, measured_mb)


# --- free disk space ----------------------------------------------------------------------------

def test_free_space_warning_when_the_disk_cannot_hold_the_checkpoints(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(guards.shutil, "disk_usage", lambda path: usage(10 ** 12, 0, 300_000_000))
    assert free_space_warning(tmp_path, 50_000_000) is None  # 4 x 50 MB + 52 MB margin < 300 MB
    warning = free_space_warning(tmp_path, 70_000_000)  # 4 x 70 MB + 52 MB > 300 MB
    assert warning.startswith(f"only 0.30 GB free on the disk of {tmp_path}; ")
    assert "about 0.33 GB (4 copies of a 0.07 GB model)" in warning


def test_free_space_warning_uses_the_real_disk(tmp_path):
    assert free_space_warning(tmp_path, 1000) is None
    assert free_space_warning(tmp_path, 10 ** 18) is not None  # an exabyte model fits nowhere


def test_write_errors_say_disk_full():
    full = OSError(errno.ENOSPC, "No space left on device", "/out/model.keras")
    assert write_error_message(full, "/out/model.keras") == "disk full while writing /out/model.keras"
    denied = PermissionError(errno.EACCES, "Permission denied", "/out/x.png")
    assert write_error_message(denied, "/out/x.png") == "cannot write /out/x.png: Permission denied"


def test_a_failed_atomic_write_is_one_write_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "history.csv"
    target.write_text("old")
    with pytest.raises(WriteError, match=f"^disk full while writing {target}$") as err:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.exit_code == 5
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


# --- checkpoint state ---------------------------------------------------------------------------

def write_model_file(directory, name="ckpt-epoch0002.keras"):
    with zipfile.ZipFile(directory / name, "w") as archive:
        archive.writestr("config.json", "{}")
    return name


def good_state(directory):
    return {"epoch": 2, "model": write_model_file(directory),
            "history": [{"epoch": 1, "loss": 2.5, "kl_loss": None}, {"epoch": 2, "loss": 2.0, "kl_loss": 1.0}],
            "sampling_seed_state": [0, 4]}


def test_a_sound_state_gives_the_model_path(tmp_path):
    assert validate_state(good_state(tmp_path), tmp_path) == tmp_path / "ckpt-epoch0002.keras"
    empty = {"epoch": 0, "model": write_model_file(tmp_path, "ckpt-epoch0000.keras"), "history": [],
             "sampling_seed_state": [7, 0]}
    assert validate_state(empty, tmp_path) == tmp_path / "ckpt-epoch0000.keras"


@pytest.mark.parametrize("change, message", [
    (dict(epoch="2"), r"epoch must be a whole number >= 0, got '2'"),
    (dict(epoch=-1), "epoch must be a whole number >= 0, got -1"),
    (dict(epoch=2.5), "epoch must be a whole number >= 0, got 2.5"),
    (dict(epoch=2.0), "epoch must be a whole number >= 0, got 2.0"),
    (dict(epoch=True), "epoch must be a whole number >= 0, got True"),
    (dict(epoch=None), "epoch must be a whole number >= 0, got None"),
    (dict(epoch=3), "history must list 3 epoch"),
    (dict(history={"1": {}}), "history must list 2 epoch.*got dict"),
    (dict(history=[{"epoch": 1}, [2.0]]), "history row 2 is a list"),
    (dict(history=[{"epoch": 1}, {"epoch": 3}]), "history row 2 has epoch 3"),
    (dict(history=[{"epoch": 1}, {"epoch": True}]), "history row 2 has epoch True"),
    (dict(history=[{"epoch": 1}, {"epoch": 2, "loss": "nan"}]), "history row 2: loss is 'nan'"),
    (dict(model="../x.keras"), "model must be a .keras file name.*'../x.keras'"),
    (dict(model="/tmp/x.keras"), "model must be a .keras file name"),
    (dict(model=".."), "model must be a .keras file name"),
    (dict(model="ckpt.h5"), "model must be a .keras file name"),
    (dict(model=".ckpt-epoch0002.tmp1.keras"), "model must be a .keras file name"),
    (dict(model=["ckpt-epoch0002.keras"]), "model must be a .keras file name"),
    (dict(model="ckpt-epoch0009.keras"), "model file ckpt-epoch0009.keras is missing"),
    (dict(sampling_seed_state="0,4"), "sampling_seed_state must be a list of integers"),
    (dict(sampling_seed_state=[0, 4.0]), "sampling_seed_state must be a list of integers"),
    (dict(sampling_seed_state=[True, 4]), "sampling_seed_state must be a list of integers"),
    (dict(sampling_seed_state=[]), "sampling_seed_state must be a list of integers"),
])
def test_damaged_states_are_refused_with_what_is_wrong(tmp_path, change, message):
    state = {**good_state(tmp_path), **change}
    with pytest.raises(DamagedRunError, match=f"^the checkpoint in {tmp_path} is damaged: {message}"):
        validate_state(state, tmp_path)


@pytest.mark.parametrize("key", ["epoch", "model", "history", "sampling_seed_state"])
def test_a_state_without_a_key_is_refused(tmp_path, key):
    state = good_state(tmp_path)
    del state[key]
    with pytest.raises(DamagedRunError, match=f"damaged: state.json has no '{key}'"):
        validate_state(state, tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"), (b"PK\x03\x04 cut short", "is not a .keras archive")])
def test_an_empty_or_cut_model_file_is_refused(tmp_path, content, message):
    state = good_state(tmp_path)
    (tmp_path / state["model"]).write_bytes(content)
    with pytest.raises(DamagedRunError, match=f"model file ckpt-epoch0002.keras {message}"):
        validate_state(state, tmp_path)


def test_a_model_link_or_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    write_model_file(outside, "real.keras")
    (tmp_path / "ckpt").mkdir()
    state = good_state(tmp_path / "ckpt")
    (tmp_path / "ckpt" / state["model"]).unlink()
    (tmp_path / "ckpt" / state["model"]).symlink_to(outside / "real.keras")
    with pytest.raises(DamagedRunError, match="is missing"):
        validate_state(state, tmp_path / "ckpt")
    (tmp_path / "ckpt" / state["model"]).unlink()
    (tmp_path / "ckpt" / state["model"]).mkdir()
    with pytest.raises(DamagedRunError, match="is missing"):
        validate_state(state, tmp_path / "ckpt")


def test_a_state_that_is_not_a_dict_is_refused(tmp_path):
    with pytest.raises(DamagedRunError, match="damaged: state.json holds a list, not an object"):
        validate_state([1, 2], tmp_path)


# --- reading JSON -------------------------------------------------------------------------------

def test_read_json_object_returns_the_dict(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"epoch": 1, "loss": float("nan")}))
    value = read_json_object(path, "checkpoint state")
    assert value["epoch"] == 1 and np.isnan(value["loss"])


@pytest.mark.parametrize("content, message", [
    (b'{"epoch": 1,', r"is not valid JSON \(line 1, column 13: Expecting property name"),
    (b"", r"is not valid JSON \(line 1, column 1: Expecting value\)"),
    (b"\xff\xfe{}", r"is not text \(not UTF-8\)"),
    (b"[1, 2]", "holds a JSON list, not an object"),
    (b'"epoch"', "holds a JSON str, not an object"),
    (b"[" * 100000 + b"]" * 100000, r"is not valid JSON \(nested too deeply\)"),
])
def test_bad_json_files_are_one_line_damaged_run_errors(tmp_path, content, message):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(DamagedRunError, match=f"^checkpoint state {path} {message}") as err:
        read_json_object(path, "checkpoint state")
    assert "\n" not in str(err.value)


def test_missing_or_unreadable_json_files(tmp_path):
    with pytest.raises(DamagedRunError, match=f"^run options {tmp_path}/config.json is missing$"):
        read_json_object(tmp_path / "config.json", "run options")
    with pytest.raises(DamagedRunError, match="cannot be read: Is a directory"):
        read_json_object(tmp_path, "run options")
