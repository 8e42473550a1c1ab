"""The benchmark's FLOP count against a hand count for the keras.io architecture."""
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from flops import layer_macs, training_flops_per_image  # noqa: E402

from common import build_vae  # noqa: E402


def test_flops_of_the_keras_io_architecture_match_a_hand_count():
    model = build_vae((28, 28, 1), 2, encoder_filters=(32, 64), encoder_dense=(16,),
                      decoder_filters=(64, 32), decoder_dense=())
    encoder = (14 * 14 * 32 * 9 * 1      # Conv2D 32, stride 2: 14x14 outputs, 3x3x1 inputs each
               + 7 * 7 * 64 * 9 * 32     # Conv2D 64, stride 2
               + 3136 * 16 + 2 * 16 * 2)  # Dense 16, z_mean and z_log_var
    decoder = (2 * 3136                  # Dense 7*7*64
               + 7 * 7 * 64 * 9 * 64     # Conv2DTranspose 64: each of 7x7x64 inputs scatters 3x3x64
               + 14 * 14 * 64 * 9 * 32   # Conv2DTranspose 32
               + 28 * 28 * 32 * 9 * 1)   # final Conv2DTranspose to 1 channel, stride 1
    assert sum(layer_macs(layer) for layer in model.encoder.layers) == encoder
    assert training_flops_per_image(model) == 6 * (encoder + decoder) == 39_965_568


def test_flops_of_a_tiny_hierarchical_vae_match_a_hand_count():
    from flops import hierarchical_forward_macs
    from kit.hierarchical_vae import build_hierarchical_vae

    # Resolutions 4 and 1, width 8 (middle width 2), one encoder block each, a 2-channel latent
    # group at each resolution (so no plain decoder blocks), one Bernoulli output channel.
    model = build_hierarchical_vae((4, 4, 1), 8, 1, 2, [1, 4], likelihood="bernoulli")
    at4, at1 = 4 * 4, 1  # pixels per map
    block4 = at4 * (8 * 2 + 9 * 2 * 2 + 9 * 2 * 2 + 2 * 8)  # 1x1, 3x3, 3x3, 1x1 (residual, 8 -> 8)
    block1 = at1 * (8 * 2 + 2 * 2 + 2 * 2 + 2 * 8)          # 1x1 only at sides <= 2
    prior = at4 * (8 * 2 + 9 * 2 * 2 + 9 * 2 * 2 + 2 * (2 * 2 + 8)) + at1 * (8 * 2 + 2 * 2 + 2 * 2 + 2 * (2 * 2 + 8))
    posterior = at4 * (16 * 2 + 9 * 2 * 2 + 9 * 2 * 2 + 2 * 4) + at1 * (16 * 2 + 2 * 2 + 2 * 2 + 2 * 4)
    assert hierarchical_forward_macs(model) == {
        "stem": at4 * 9 * 1 * 8, "encoder blocks": block4 + block1, "projections": 0,
        "priors": prior, "posteriors": posterior, "z projections": (at4 + at1) * 2 * 8,
        "group residual blocks": block4 + block1, "decoder blocks": 0, "output": at4 * 8 * 1}
    assert training_flops_per_image(model) == 6 * 8640 == 51_840


def test_the_vdvae_mapping_of_the_cifar_hierarchical_preset():
    import vdvae_peer
    from vae_cifar10 import CIFAR10

    preset, kit = CIFAR10.presets["hierarchical"], vdvae_peer.KIT_CIFAR_PRESET
    assert (preset["hvae_widths"], preset["hvae_blocks"], preset["latent_channels"]) == (
        [kit["widths"]], kit["blocks"], kit["latent_channels"])
    assert [preset[k] for k in ("latent_resolutions", "mixture_components", "batch_size", "lr", "adam_beta2",
                                "weight_decay", "warmup_steps", "ema", "grad_clip", "skip_threshold",
                                "clip_factor", "skip_factor")] == [
        kit[k] for k in ("latent_resolutions", "mixture_components", "batch_size", "lr", "adam_beta2",
                         "weight_decay", "warmup_steps", "ema", "grad_clip", "skip_threshold",
                         "clip_factor", "skip_factor")]
    hps, matched, _ = vdvae_peer.vdvae_hps()
    # 1, 1, 2, 2, 1 blocks at 32, 16, 8, 4, 1, pooling after each but the last: VDVAE's "RdF" is a
    # block then pooling by F. Groups 1, 4, 4, 8, 8, 8, 16, 16 plus one for the plain block at 32.
    assert hps["enc_blocks"] == "32d2,16d2,8x1,8d2,4x1,4d4,1x1"
    assert hps["dec_blocks"] == "1x1,4m1,4x1,8m4,8x2,16m8,16x1,32m16"
    assert matched == [1, 4, 4, 8, 8, 8, 16, 16, 32]
    assert (hps["width"], hps["zdim"], hps["n_batch"], hps["num_mixtures"]) == (64, 8, 32, 5)
    assert hps["grad_clip"] == 130_000 / 3072 and hps["skip_threshold"] == 650_000 / 3072


@pytest.mark.parametrize("script, required", [("step_versions.py", "--before"), ("gradient_norms.py", "model")])
def test_bench_scripts_start_and_name_their_options(script, required):
    """These bench scripts parse their options before TensorFlow and refuse a missing one (exit 2)."""
    import subprocess
    path = ROOT / "bench" / script
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert required in done.stdout and "--data-dir" in done.stdout
    missing = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and required in missing.stderr
