"""Options that could only fail after training are refused before it (kit.config), in-process:
no TensorFlow is needed to refuse them, so these tests take milliseconds."""
import json
import os
import subprocess

import pytest

from kit import config as kc
from kit.config import data_problem, parse_config
from kit.errors import DamagedRunError, UsageError
from vae_cifar10 import CIFAR10
from vae_fashion_mnist import FASHION_MNIST


def refusal(argv, spec=FASHION_MNIST):
    """The one-line message of the UsageError that parse_config raises for argv."""
    with pytest.raises(UsageError) as err:
        parse_config(spec, argv)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.fixture
def outdir(tmp_path):
    return str(tmp_path / "out")


# --- values that break a step after training -----------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--fd-images", "1"], "--fd-images must be 0 (off) or at least 2"),
    (["--limit", "5"], "--limit 5 is below --gmm-components 10"),
    (["--limit", "30", "--gmm-components", "31"], "--limit 30 is below --gmm-components 31"),
    (["--gmm-components", "20001"], "--gmm-components must be at most 20,000"),
    (["--limit", "1", "--gmm-components", "1"], "--limit 1 leaves too few training images for the Fréchet"),
    (["--seed", "-1"], "--seed must be in 0 .. 2**32 - 1"),
    (["--seed", str(2 ** 32)], "--seed must be in 0 .. 2**32 - 1"),
    (["--epochs", str(2 ** 63)], "--epochs must be at most 2**63 - 1"),
    (["--kl-warmup", str(10 ** 30)], "--kl-warmup must be at most 2**63 - 1"),
    (["--iw-samples", str(10 ** 30)], "--iw-samples must be at most 2**63 - 1"),
    (["--limit", str(10 ** 30)], "--limit must be at most 2**63 - 1"),
    (["--beta", "1e39"], "--beta must be a finite number >= 0 (at most 3.403e+38, float32)"),
    (["--lr", "1e300"], "--lr must be a finite number > 0 (at most 3.403e+38, float32)"),
])
def test_values_that_would_fail_after_training_are_refused_naming_the_option(outdir, args, message):
    assert message in refusal([*args, "--outdir", outdir])
    assert not os.path.exists(outdir)


@pytest.mark.parametrize("args", [
    ["--fd-images", "2"], ["--fd-images", "0", "--limit", "1", "--gmm-components", "1"],
    ["--limit", "10"], ["--seed", str(2 ** 32 - 1)], ["--epochs", str(2 ** 63 - 1)],
    ["--beta", "3e38"],
])
def test_the_limits_themselves_are_allowed(outdir, args):
    parse_config(FASHION_MNIST, [*args, "--outdir", outdir])


def test_a_gmm_too_big_for_memory_is_refused(outdir, monkeypatch):
    monkeypatch.setattr(kc, "physical_memory_bytes", lambda: 16 * 10 ** 9)
    # 20,000 components of 256 x 256 covariances: 4 x 10.5 GB, and 6 x 3.2 GB of responsibilities.
    message = refusal(["--gmm-components", "20000", "--outdir", outdir], CIFAR10)
    assert message.startswith("--gmm-components 20000 at --latent-dim 256 needs about 61.2 GB"), message
    parse_config(CIFAR10, ["--gmm-components", "100", "--outdir", outdir])  # 0.2 GB
    monkeypatch.setattr(kc, "physical_memory_bytes", lambda: 10 ** 12)
    parse_config(FASHION_MNIST, ["--gmm-components", "20000", "--outdir", outdir])  # the most allowed


@pytest.mark.parametrize("train, test, args, message", [
    (9, 100, [], "--gmm-components 10 needs as many training images, the data has 9"),
    (100, 1, ["--fd-images", "2"], "needs at least 2 training and test images, the data has 100 and 1"),
    (100, 100, ["--batch-size", "10", "--steps-per-execution", "11"],
     "--steps-per-execution 11 is more than the 10 steps of an epoch"),
    (100, 100, ["--batch-size", "10", "--steps-per-execution", "3"],
     "--steps-per-execution 3 must divide the 10 steps of an epoch"),
])
def test_data_too_small_for_the_options_is_a_problem(outdir, train, test, args, message):
    config = parse_config(FASHION_MNIST, [*args, "--outdir", outdir])
    assert message in data_problem(config, train, test)


@pytest.mark.parametrize("args", [[], ["--batch-size", "10", "--steps-per-execution", "5"],
                                  ["--batch-size", "1000"], ["--fd-images", "0"]])
def test_data_big_enough_is_no_problem(outdir, args):
    assert data_problem(parse_config(FASHION_MNIST, [*args, "--outdir", outdir]), 100, 2) is None


# --- --eval-only honours only the evaluation's options -----------------------------------------

@pytest.fixture
def model_file(tmp_path):
    """A file that passes the pre-TensorFlow checks of --eval-only (a .keras zip)."""
    import zipfile
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return str(path)


@pytest.mark.parametrize("args", [
    ["--likelihood", "gaussian"], ["--latent-dim", "2"], ["--encoder-filters", "8"], ["--arch", "resnet"],
    ["--epochs", "3"], ["--lr", "0.01"], ["--batch-size", "7"], ["--beta", "2"], ["--preset", "keras-io"],
    ["--tensorboard"], ["--mixed-precision"], ["--jit-compile"], ["--steps-per-execution", "2"],
    ["--distribute", "mirrored"], ["--kl-warmup", "1"],
])
def test_eval_only_refuses_options_it_cannot_honour(model_file, outdir, args):
    message = refusal(["--eval-only", model_file, *args, "--outdir", outdir])
    assert message.startswith(f"{args[0]} cannot be used with --eval-only"), message


def test_eval_only_accepts_the_evaluation_options(model_file, outdir):
    config = parse_config(FASHION_MNIST, ["--eval-only", model_file, "--seed", "3", "--limit", "100",
                                          "--iw-samples", "5", "--iwae-images", "50", "--fd-images", "0",
                                          "--gmm-components", "4", "--outdir", outdir])
    assert (config.seed, config.limit, config.gmm_components) == (3, 100, 4)


# --- --resume: another data set's run, options the checkpoint fixes -----------------------------

def fake_run(folder, spec, **changes):
    """A run folder as far as parse_config reads one: config.json and checkpoint/state.json."""
    saved = parse_config(spec, ["--outdir", str(folder)]).to_dict()
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "state.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({**saved, **changes}))
    return str(folder)


@pytest.mark.parametrize("run_of, resumed_by", [(CIFAR10, FASHION_MNIST), (FASHION_MNIST, CIFAR10)])
def test_resume_of_another_data_sets_run_is_refused_both_ways(tmp_path, run_of, resumed_by):
    folder = fake_run(tmp_path / "run", run_of)
    message = refusal(["--resume", "--outdir", folder], resumed_by)
    assert message == (f"--resume: {folder} holds another data set's run ({run_of.name}, not "
                       f"{resumed_by.name}); resume it with vae_{run_of.name}.py")


def test_resume_with_a_dataset_that_is_no_string_is_a_damaged_folder(tmp_path):
    folder = fake_run(tmp_path / "run", FASHION_MNIST, dataset=7)
    with pytest.raises(DamagedRunError, match="config.json: dataset is 7, not a string"):
        parse_config(FASHION_MNIST, ["--resume", "--outdir", folder])


@pytest.mark.parametrize("args", [["--jit-compile"], ["--mixed-precision"], ["--steps-per-execution", "2"],
                                  ["--distribute", "mirrored"], ["--limit", "50"], ["--seed", "1"]])
def test_resume_refuses_options_the_checkpoint_fixes(tmp_path, args):
    folder = fake_run(tmp_path / "run", FASHION_MNIST)
    message = refusal(["--resume", "--outdir", folder, *args])
    assert message.startswith(f"{args[0]} ") and "does not match the run in" in message, message


# --- folders that cannot be made, caches that cannot be written ----------------------------------

def test_an_outdir_name_longer_than_the_file_system_allows_is_refused(tmp_path):
    outdir = tmp_path / ("a" * 300) / "run"
    message = refusal(["--outdir", str(outdir)])
    assert message.startswith(f"--outdir {outdir} cannot be written: the name aaaa")
    assert "is 300 bytes long, more than the 255" in message
    assert list(tmp_path.iterdir()) == []


def test_an_outdir_path_longer_than_the_file_system_allows_is_refused(tmp_path):
    outdir = tmp_path.joinpath(*["b" * 200] * 21)  # 21 x 201 bytes > PATH_MAX 4096
    assert "files inside it would pass the 4096 bytes" in refusal(["--outdir", str(outdir)])
    assert list(tmp_path.iterdir()) == []


def test_resume_into_a_too_long_outdir_is_refused_not_a_traceback(tmp_path):
    assert "cannot be written: the name" in refusal(["--resume", "--outdir", str(tmp_path / ("c" * 256))])


def test_a_feature_cache_on_a_file_is_refused_when_the_frechet_distance_is_on(tmp_path, monkeypatch, outdir):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("VAE_KIT_CACHE", str(tmp_path / "file"))
    parse_config(FASHION_MNIST, ["--outdir", outdir])  # the shipped network needs no cache
    message = refusal(["--feature-net", "own", "--outdir", outdir])
    assert message == (f"the feature network of the Fréchet distance cannot be cached in "
                       f"{tmp_path}/file/feature-nets/fashion_mnist: {tmp_path}/file is not a folder "
                       f"(set VAE_KIT_CACHE to a writable folder, or pass --fd-images 0)")
    parse_config(FASHION_MNIST, ["--fd-images", "0", "--outdir", outdir])  # no cache needed


def test_the_shipped_feature_network_is_the_default_and_cannot_be_refreshed(outdir):
    assert parse_config(FASHION_MNIST, ["--outdir", outdir]).feature_net == "shipped"
    assert parse_config(CIFAR10, ["--feature-net", "own", "--outdir", outdir]).feature_net == "own"
    assert refusal(["--refresh-feature-net", "--outdir", outdir]) == (
        "--refresh-feature-net retrains a feature network of this machine's own; the shipped one is "
        "fixed (add --feature-net own)")
    assert "argument --feature-net: invalid choice: 'inception'" in refusal(["--feature-net", "inception"])


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody may write to, root included: a read-only tmpfs (skipped where none can be
    mounted and the tests run as root, to whom permission bits mean nothing)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode == 0:
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
        return
    if os.geteuid() == 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {mount.stderr.strip()}")
    folder.chmod(0o500)
    yield folder
    folder.chmod(0o700)


def test_a_feature_cache_that_cannot_be_written_is_refused(read_only_folder, monkeypatch, outdir):
    monkeypatch.setenv("VAE_KIT_CACHE", str(read_only_folder))
    message = refusal(["--feature-net", "own", "--outdir", outdir])
    assert message.startswith("the feature network of the Fréchet distance cannot be cached in "
                              f"{read_only_folder}/feature-nets/fashion_mnist: permission denied on "
                              f"{read_only_folder}"), message


def test_a_cached_network_in_a_read_only_cache_is_enough_unless_refreshed(tmp_path, monkeypatch, outdir):
    cache = tmp_path / "cache"
    (cache / "feature-nets" / "fashion_mnist").mkdir(parents=True)
    (cache / "feature-nets" / "fashion_mnist" / "info.json").write_text("{}")
    monkeypatch.setenv("VAE_KIT_CACHE", str(cache))
    real_access = os.access
    monkeypatch.setattr("kit.guards.os.access",  # nothing in the cache can be written
                        lambda path, mode: not str(path).startswith(str(cache)) and real_access(path, mode))
    parse_config(FASHION_MNIST, ["--feature-net", "own", "--outdir", outdir])  # reading the cached network is enough
    assert "cannot be cached" in refusal(["--feature-net", "own", "--refresh-feature-net", "--outdir", outdir])


def test_resume_of_a_run_from_before_the_optimizer_options_keeps_its_adam(tmp_path):
    # Its config.json has no adam_beta2, weight_decay, warmup_steps or ema: it trained with Adam,
    # and its checkpoint's optimizer has no EMA to swap in, whatever the preset's values are now.
    folder = fake_run(tmp_path / "run", FASHION_MNIST, preset="hierarchical", arch="hierarchical")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    for name in ("adam_beta2", "weight_decay", "warmup_steps", "ema"):
        del saved[name]
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    for argv in (["--resume"], ["--resume", "--preset", "hierarchical"]):
        config = parse_config(FASHION_MNIST, [*argv, "--outdir", folder])
        assert (config.adam_beta2, config.weight_decay, config.warmup_steps, config.ema) == (0.999, 0.0, 0, 0.0)


def test_resume_of_a_run_from_before_the_relative_thresholds_keeps_its_fixed_ones(tmp_path):
    # Its config.json has no clip_factor or skip_factor: its model clips and skips at fixed norms only.
    folder = fake_run(tmp_path / "run", FASHION_MNIST, preset="hierarchical", arch="hierarchical",
                      grad_clip=16_000.0, skip_threshold=80_000.0)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["clip_factor"], saved["skip_factor"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    config = parse_config(FASHION_MNIST, ["--resume", "--preset", "hierarchical", "--outdir", folder])
    assert (config.grad_clip, config.skip_threshold, config.clip_factor, config.skip_factor) == (
        16_000.0, 80_000.0, 0.0, 0.0)


def test_resume_may_mend_an_evaluation_option_that_stopped_the_run(tmp_path):
    # A run saved with --limit 5 and --gmm-components 10 (older kits failed only after training):
    # its evaluation can be finished with fewer components, given on the command line.
    folder = fake_run(tmp_path / "run", FASHION_MNIST, limit=5, gmm_components=10)
    assert parse_config(FASHION_MNIST, ["--resume", "--outdir", folder, "--gmm-components", "5"]).gmm_components == 5
    assert "--limit 5 is below --gmm-components 10" in str(
        pytest.raises(DamagedRunError, parse_config, FASHION_MNIST, ["--resume", "--outdir", folder]).value)


# --- the hierarchical VAE's options ---------------------------------------------------------------

@pytest.mark.parametrize("spec, args, message", [
    (FASHION_MNIST, ["--hvae-widths", "8,8"], "--hvae-widths needs one width or one per resolution 28,14,7,1 (4), got 8,8"),
    (CIFAR10, ["--hvae-blocks", "1,1,1,1"], "--hvae-blocks needs one count or one per resolution 32,16,8,4,1 (5), got 1,1,1,1"),
    (FASHION_MNIST, ["--latent-resolutions", "1,4"], "--latent-resolutions: 4 is not a resolution of the hierarchical VAE on 28x28 images (28,14,7,1)"),
    (CIFAR10, ["--latent-resolutions", "1,7"], "--latent-resolutions: 7 is not a resolution of the hierarchical VAE on 32x32 images (32,16,8,4,1)"),
    (CIFAR10, ["--latent-resolutions", ""], "--latent-resolutions needs at least one latent group"),
    (FASHION_MNIST, ["--latent-channels", "0"], "--latent-channels must be > 0, got 0"),
    (FASHION_MNIST, ["--temperature", "-0.5"], "--temperature must be a finite number >= 0"),
    (FASHION_MNIST, ["--grad-clip", "nan"], "--grad-clip must be a finite number >= 0 (0 is off;"),
    (FASHION_MNIST, ["--skip-threshold", "-1"], "--skip-threshold must be a finite number >= 0 (0 is off;"),
    (CIFAR10, ["--clip-factor", "inf"], "--clip-factor must be a finite number >= 0 (0 is off;"),
    (CIFAR10, ["--skip-factor", "-2"], "--skip-factor must be a finite number >= 0 (0 is off;"),
    # At or below the level, the level would follow the skipped norms down until every update is skipped.
    (FASHION_MNIST, ["--skip-factor", "1"], "--skip-factor must be 0 (off) or above 1, got 1.0"),
    # Refused whatever --arch is: a bad value is not left lying until the model is switched.
    (FASHION_MNIST, ["--arch", "plain", "--latent-resolutions", "5"], "--latent-resolutions: 5 is not a resolution"),
])
def test_hierarchical_options_are_checked(outdir, spec, args, message):
    assert message in refusal([*args, "--outdir", outdir], spec)


def test_each_architecture_ignores_the_others_options(outdir):
    # Decoder filters that cannot make 28x28 images do not stop the hierarchical VAE, and the
    # hierarchical VAE's options do not change the plain one.
    config = parse_config(FASHION_MNIST, ["--arch", "hierarchical", "--decoder-filters", "8,8,8", "--outdir", outdir])
    assert (config.arch, config.hvae_widths, config.latent_resolutions) == ("hierarchical", [32], [1, 7, 7, 7, 14, 14])
    assert "--decoder-filters: 3 stride-2 layers cannot produce 28x28" in refusal(["--decoder-filters", "8,8,8",
                                                                                  "--outdir", outdir])
    parse_config(FASHION_MNIST, ["--latent-channels", "3", "--hvae-widths", "8,8,8,8", "--outdir", outdir])
    # No latent GMM is fitted to the hierarchical VAE: its limits on --limit do not apply.
    assert parse_config(FASHION_MNIST, ["--arch", "hierarchical", "--limit", "5", "--outdir", outdir]).limit == 5
    assert data_problem(parse_config(FASHION_MNIST, ["--arch", "hierarchical", "--outdir", outdir]), 5, 10) is None


def test_the_hierarchical_preset_and_the_scripts_thresholds(outdir):
    # From each preset's measured gradient norms (docs/BENCHMARKS.md): relative to their running
    # level, the clip at the 99th percentile of norm / level after the warm-up, rounded up; the skip
    # 5 times the clip; no fixed thresholds (they froze a CIFAR-10 run once the norm had grown).
    thresholds = {"fashion_mnist": (0.0, 0.0, 6.0, 30.0), "cifar10": (0.0, 0.0, 4.0, 20.0)}
    for spec in (FASHION_MNIST, CIFAR10):
        config = parse_config(spec, ["--preset", "hierarchical", "--outdir", outdir])
        assert (config.arch, config.likelihood, config.batch_size, config.lr) == (
            "hierarchical", "discretized-logistic-mixture", 32, 2e-3)
        assert (config.adam_beta2, config.weight_decay, config.warmup_steps, config.ema) == (0.9, 0.01, 100, 0.99)
        assert (config.grad_clip, config.skip_threshold, config.clip_factor, config.skip_factor) == \
            thresholds[spec.name]
        assert parse_config(spec, ["--outdir", outdir]).arch == "plain"  # the seed VAE stays the default
        keras_io = parse_config(spec, ["--preset", "keras-io", "--outdir", outdir])
        assert (keras_io.latent_dim, keras_io.hvae_widths) == (2, config.hvae_widths)


def test_a_hierarchical_model_too_big_for_memory_names_its_options(outdir):
    message = refusal(["--arch", "hierarchical", "--hvae-widths", "20000", "--outdir", outdir], CIFAR10)
    assert message.startswith("the model needs about") and message.endswith(
        "use smaller --hvae-widths, fewer --hvae-blocks or latent groups, or a smaller --batch-size"), message


def test_eval_only_and_resume_take_a_new_temperature_but_not_the_models_options(model_file, outdir, tmp_path):
    assert parse_config(FASHION_MNIST, ["--eval-only", model_file, "--temperature", "0.7",
                                        "--outdir", outdir]).temperature == 0.7
    for args in (["--arch", "hierarchical"], ["--hvae-widths", "8"], ["--latent-resolutions", "1"],
                 ["--grad-clip", "1"]):
        message = refusal(["--eval-only", model_file, *args, "--outdir", outdir])
        assert message.startswith(f"{args[0]} cannot be used with --eval-only"), message
    folder = fake_run(tmp_path / "run", FASHION_MNIST, arch="hierarchical")
    assert parse_config(FASHION_MNIST, ["--resume", "--outdir", folder, "--temperature", "0.5"]).temperature == 0.5
    assert "--latent-channels 3 does not match the run in" in refusal(
        ["--resume", "--outdir", folder, "--latent-channels", "3"])


def test_latent_resolutions_are_recorded_and_compared_coarse_first(outdir, tmp_path):
    """14,7,1 is the model 1,7,14 (the hierarchical VAE builds its groups coarse first): config.json
    records it so, and resuming a run with either order, or a run recorded fine first by an older
    kit, is not refused."""
    config = parse_config(FASHION_MNIST, ["--arch", "hierarchical", "--latent-resolutions", "14,7,1,7",
                                          "--outdir", outdir])
    assert config.latent_resolutions == config.to_dict()["latent_resolutions"] == [1, 7, 7, 14]
    folder = fake_run(tmp_path / "run", FASHION_MNIST, arch="hierarchical", latent_resolutions=[14, 7, 1])
    for given in ("1,7,14", "14,7,1", "7,1,14"):
        resumed = parse_config(FASHION_MNIST, ["--resume", "--outdir", folder, "--latent-resolutions", given])
        assert resumed.latent_resolutions == [1, 7, 14]
    assert "--latent-resolutions 1,7 does not match the run in" in refusal(
        ["--resume", "--outdir", folder, "--latent-resolutions", "7,1"])
