"""The kit's hierarchical VAE and the official VDVAE code (openai/vdvae, PyTorch) side by side:
one training step each, at the kit's CIFAR-10 `--preset hierarchical` configuration, timed
interleaved on this machine's CPU.

    python3 -m venv .venv-vdvae
    .venv-vdvae/bin/pip install -r bench/requirements-vdvae.txt   # CPU PyTorch, its own venv
    git clone https://github.com/openai/vdvae ../vdvae                  # or any copy of it
    python bench/vdvae_peer.py --vdvae ../vdvae --torch-python .venv-vdvae/bin/python \\
        --data-dir <CIFAR-10 folder> --rounds 8 --steps 6

--vdvae is a work tree of the repository or a bare git directory of it (read with git show). Its
files are never copied into this repository: they are read at run time into a temporary folder,
patched there only so that they run in one CPU process (no CUDA, no MPI, no NVIDIA apex: the
patches are listed in PATCHES), and imported from there by a worker process running under
--torch-python. The VDVAE step is its train.py's own training_step (forward, backward,
clip_grad_norm_, the NaN checks, the update of its AdamW unless skipped, the EMA update) followed
by the scheduler's step, as its train_loop runs them, with the model and optimizer from its
train_helpers.load_vaes and load_opt and the hyperparameters from its hps.py argument parser.

Sides, each in its own long-lived process (TensorFlow and PyTorch never share one), timed in turn
round after round (bench/interleave.py), with 2 intra-op and 2 inter-op threads unless named:
  kit-preset     the kit at --preset hierarchical (8 latent groups, a plain residual block at 32x32)
  kit-matched    the kit with the architecture VDVAE's block strings can express (vdvae_hps below):
                 the plain block at 32x32 becomes a ninth latent group there
  vdvae          the official code at that architecture
  vdvae-passive  the same with OMP_WAIT_POLICY=PASSIVE (PyTorch's OpenMP threads sleep, not spin,
                 while they wait: on cores that other jobs share, spinning stalls every kernel)
  kit-matched-1thread, vdvae-1thread   1 intra- and 1 inter-op thread each
  kit-matched-onednn-1thread           the same with TensorFlow's oneDNN kernels on
                                       (TF_ENABLE_ONEDNN_OPTS=1; off by default without AVX-512)
The default runs all but the last. kit-matched against vdvae is the like-for-like ratio;
kit-preset says what the preset itself costs.
"""
import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from interleave import run_interleaved, summarize  # noqa: E402
from kit.model_options import resolution_chain  # noqa: E402  (TensorFlow-free, as this file)

# The kit's CIFAR-10 --preset hierarchical (vae_cifar10.py's DEFAULT table and "hierarchical"
# preset, kit/config.py's HIERARCHICAL_TRAINING), written out so that this file needs no
# TensorFlow (its VDVAE worker runs in PyTorch's venv); tests/test_bench.py checks it against the
# preset.
KIT_CIFAR_PRESET = dict(image_shape=(32, 32, 3), widths=64, blocks=[1, 1, 2, 2, 1], latent_channels=8,
                        latent_resolutions=[1, 4, 4, 8, 8, 8, 16, 16], bottleneck_ratio=0.25,
                        mixture_components=5, batch_size=32, lr=2e-3, adam_beta2=0.9, weight_decay=0.01,
                        warmup_steps=100, ema=0.99, grad_clip=0.0, skip_threshold=0.0, clip_factor=4.0,
                        skip_factor=20.0)
# VDVAE's thresholds are fixed norms, and it has no running level: it gets the kit's fixed ones from
# before they were made relative (nats per image). Timing is the same either way: both compute the
# norm and scale by it every step, and no update of a timing run is skipped.
VDVAE_FIXED_THRESHOLDS = dict(grad_clip=130_000.0, skip_threshold=650_000.0)

# Text patches of the official files, each applied exactly once: only what one CPU process needs.
PATCHES = {
    "utils.py": [(".detach().cuda().float()", ".detach().float()")],  # get_cpu_stats_over_ranks
    "train_helpers.py": [
        # NVIDIA apex's FusedAdam (CUDA only; adam_w_mode, decoupled weight decay, by default) ->
        # PyTorch's AdamW, the same update rule.
        ("from apex.optimizers import FusedAdam as AdamW", "from torch.optim import AdamW"),
        ("vae = vae.cuda(H.local_rank)", "vae = vae"),
        ("ema_vae = ema_vae.cuda(H.local_rank)", "ema_vae = ema_vae"),
        # one process: no DistributedDataParallel wrapper (and no NCCL process group)
        ("vae = DistributedDataParallel(vae, device_ids=[H.local_rank], output_device=H.local_rank)", "pass"),
    ],
}
# Modules the official files import but the training step does not use, stood in for by stubs:
# mpi4py (one process: size 1, rank 0), imageio (writes sample pictures), data (needs torchvision
# and scikit-learn to load data sets; the step gets its batches from vdvae_batches below).
FILES = ("hps.py", "vae.py", "vae_helpers.py", "utils.py", "train_helpers.py", "train.py")
# VDVAE's CIFAR-10 preprocessing (data.py): the input standardized, the target on [-1, 1].
VDVAE_CIFAR_SHIFT, VDVAE_CIFAR_SCALE = -120.63838, 1.0 / 64.16736


def vdvae_hps(preset=KIT_CIFAR_PRESET):
    """(VDVAE hyperparameters as hps.py's command-line options, the kit's latent resolutions of the
    same architecture, notes on what differs) for a kit hierarchical configuration.

    Encoder: the kit runs n residual blocks at each resolution, then average-pools; VDVAE's "RdF"
    block is a residual block followed by pooling by F, so n blocks then pooling are "Rx(n-1),RdF":
    the same blocks and pools. (VDVAE keeps, for the top-down pass, the activation after the last
    block *before* the pooling block, the kit after all n blocks: the same computation, another
    tap.) Decoder: VDVAE has only latent-group blocks (DecBlock), the first at each resolution
    mixing in the coarser state ("RmP"); a kit resolution with plain residual blocks and no group
    (the preset's 32x32) gets one DecBlock per plain block, so the matched kit model has a latent
    group there instead."""
    side, _, channels = preset["image_shape"]
    if channels != 3:
        raise ValueError("VDVAE's DmolNet is for RGB images only (10 parameters per mixture component)")
    chain = resolution_chain(side)
    blocks = preset["blocks"]
    blocks = dict(zip(chain, blocks if isinstance(blocks, (list, tuple)) else [blocks] * len(chain)))
    groups = {r: preset["latent_resolutions"].count(r) for r in chain}
    enc = []
    for r, down in zip(chain, chain[1:] + [None]):
        if blocks[r] < 1:
            raise ValueError(f"VDVAE pools inside a block: resolution {r} needs at least one encoder block")
        if down is None:
            enc.append(f"{r}x{blocks[r]}")
        else:
            enc += ([f"{r}x{blocks[r] - 1}"] if blocks[r] > 1 else []) + [f"{r}d{r // down}"]
    dec, matched, previous = [], [], None
    for r in reversed(chain):
        plain = blocks[r] if groups[r] == 0 else 0  # the kit's default decoder blocks
        count = groups[r] or plain or (1 if r == side else 0)
        if not count:
            continue
        dec.append(f"{r}x{count}" if previous is None else f"{r}m{previous}")
        if previous is not None and count > 1:
            dec.append(f"{r}x{count - 1}")
        matched += [r] * count
        previous = r
    dims = side * side * channels
    hps = {"width": preset["widths"], "zdim": preset["latent_channels"],
           "bottleneck_multiple": preset["bottleneck_ratio"], "enc_blocks": ",".join(enc),
           "dec_blocks": ",".join(dec), "num_mixtures": preset["mixture_components"],
           "n_batch": preset["batch_size"], "lr": preset["lr"], "wd": preset["weight_decay"],
           "adam_beta2": preset["adam_beta2"], "warmup_iters": preset["warmup_steps"],
           "ema_rate": preset["ema"], "dataset": "cifar10",
           # VDVAE's loss is nats per dimension, the kit's nats per image: thresholds / D.
           "grad_clip": VDVAE_FIXED_THRESHOLDS["grad_clip"] / dims,
           "skip_threshold": VDVAE_FIXED_THRESHOLDS["skip_threshold"] / dims}
    notes = []
    if sorted(matched) != sorted(preset["latent_resolutions"]):
        extra = sorted(set(matched) - set(preset["latent_resolutions"]))
        notes.append(f"VDVAE has no plain decoder block: the kit's plain residual block(s) at {extra} "
                     f"become latent groups there (kit-matched: latent resolutions {sorted(matched)})")
    notes.append("learning rate: the kit's cosine decay after the warm-up is VDVAE's constant rate "
                 "(the same work per step)")
    notes.append("std of the Gaussians: VDVAE exp(raw), the kit softplus (elementwise; the same convolutions)")
    return hps, sorted(matched), notes


# --- the VDVAE worker (runs under --torch-python; imports torch, never TensorFlow) -------------------

def read_official_files(source, folder):
    """Copy FILES of the official repository (a work tree or a bare git directory) into `folder`,
    patched; returns the commit when known."""
    source = Path(source)
    commit = None
    for name in FILES:
        text = (source / name).read_text() if (source / name).exists() else subprocess.run(
            ["git", "--git-dir", str(source), "show", f"HEAD:{name}"], check=True, capture_output=True,
            text=True).stdout
        for old, new in PATCHES.get(name, []):
            if text.count(old) != 1:
                raise RuntimeError(f"{name}: expected exactly one {old!r} to patch, found {text.count(old)}")
            text = text.replace(old, new)
        (Path(folder) / name).write_text(text)
    git_dir = source if not (source / ".git").exists() else source / ".git"
    found = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    if found.returncode == 0:
        commit = found.stdout.strip()
    return commit


def install_stubs():
    import types
    mpi = types.ModuleType("mpi4py")

    class World:
        Get_size = staticmethod(lambda: 1)
        Get_rank = staticmethod(lambda: 0)
        bcast = staticmethod(lambda value, root=0: value)

    mpi.MPI = types.SimpleNamespace(COMM_WORLD=World())
    data = types.ModuleType("data")
    data.mkdir_p = lambda path: os.makedirs(path, exist_ok=True)
    data.set_up_data = None
    for name, module in (("mpi4py", mpi), ("imageio", types.ModuleType("imageio")), ("data", data)):
        sys.modules[name] = module


def cifar_images(data_dir, count):
    """The first `count` training images (N, 32, 32, 3) uint8 of the cifar-10-batches-py folder in
    data_dir (the kit's loaders read the same files in the same order)."""
    import numpy as np
    folder = Path(data_dir)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    with open(folder / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    return np.asarray(batch[b"data"][:count]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def vdvae_worker(args):
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    folder = tempfile.mkdtemp(prefix="vdvae_official_")
    commit = read_official_files(args.vdvae, folder)
    install_stubs()
    sys.path.insert(0, folder)
    import hps as vdvae_hps_module
    import train as vdvae_train
    import train_helpers

    hps = json.loads(args.hps)
    parser = vdvae_hps_module.add_vae_arguments(__import__("argparse").ArgumentParser())
    H = vdvae_hps_module.Hyperparams()
    vdvae_hps_module.parse_args_and_update_hparams(H, parser, s=["--hps=cifar10"] + [f"--{k}={v}" for k, v in hps.items()])
    # What set_up_data and setup_mpi would set for CIFAR-10 in one process.
    H.update(image_size=32, image_channels=3, local_rank=0, rank=0, mpi_size=1)
    used = {k: H[k] for k in ("width", "zdim", "bottleneck_multiple", "enc_blocks", "dec_blocks",
                              "num_mixtures", "n_batch", "lr", "wd", "adam_beta1", "adam_beta2",
                              "warmup_iters", "ema_rate", "grad_clip", "skip_threshold", "no_bias_above",
                              "custom_width_str", "dataset")}
    torch.manual_seed(0)
    np.random.seed(0)
    vae, ema_vae = train_helpers.load_vaes(H, lambda *a, **k: None)
    optimizer, scheduler, _, iterate, _ = train_helpers.load_opt(H, vae, lambda *a, **k: None)
    H.ema_rate = torch.as_tensor(H.ema_rate)  # train_loop does this (on the GPU)
    batch = H.n_batch
    if args.data_dir:
        images = cifar_images(args.data_dir, args.batches * batch)
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.batches * batch, 32, 32, 3), dtype=np.uint8)
    batches = []
    for i in range(args.batches):  # data.py's preprocess_func for CIFAR-10, on the CPU
        x = torch.as_tensor(images[i * batch:(i + 1) * batch]).float()
        batches.append(((x + VDVAE_CIFAR_SHIFT) * VDVAE_CIFAR_SCALE, (x - 127.5) / 127.5))
    state = {"iterate": iterate, "skipped": 0}

    def step():
        data_input, target = batches[state["iterate"] % len(batches)]
        stats = vdvae_train.training_step(H, data_input, target, vae, ema_vae, optimizer, state["iterate"])
        scheduler.step()
        state["skipped"] += stats["skipped_updates"]
        state["iterate"] += 1

    import time
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    parameters = sum(p.numel() for p in vae.parameters())
    info = {"framework": f"PyTorch {torch.__version__}", "vdvae_commit": commit, "batch_size": batch,
            "parameters": int(parameters), "first_step_seconds": first,
            "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
            "hps": used, "data": args.data_dir or "random 8-bit images"}
    from interleave import serve
    serve(step, info)
    print(f"vdvae: {state['iterate']} steps, skipped updates {state['skipped']}", file=sys.stderr)


# --- the parent -------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vdvae", required=True, help="openai/vdvae: a work tree or a bare git directory")
    p.add_argument("--torch-python", default=str(ROOT / ".venv-vdvae" / "bin" / "python"),
                   help="the Python of the venv with bench/requirements-vdvae.txt")
    p.add_argument("--data-dir", help="the CIFAR-10 folder (cifar-10-batches-py); default: random images")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps per side and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    p.add_argument("--batches", type=int, default=8, help="distinct batches cycled through")
    p.add_argument("--threads", type=int, default=2, help="intra- and inter-op threads of both frameworks")
    p.add_argument("--sides", default="kit-preset,kit-matched,vdvae,vdvae-passive,kit-matched-1thread,vdvae-1thread")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--worker", choices=["vdvae"], help=argparse.SUPPRESS)
    p.add_argument("--hps", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return vdvae_worker(args)

    hps, matched, notes = vdvae_hps()
    print("Mapping of the kit's CIFAR-10 --preset hierarchical onto VDVAE's hps.py:")
    for key, value in KIT_CIFAR_PRESET.items():
        print(f"  kit {key} = {value}")
    for key, value in hps.items():
        print(f"  vdvae --{key}={value}")
    for note in notes:
        print(f"  note: {note}")
    common = ["--warmup", str(args.warmup), "--batches", str(args.batches)]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    kit = [sys.executable, str(ROOT / "bench" / "hierarchical_step.py"), "--dataset", "cifar10", "--worker",
           "--intra", str(args.threads), "--inter", str(args.threads), *common, *data]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    torch = [args.torch_python, str(Path(__file__).resolve()), "--worker", "vdvae", "--vdvae", args.vdvae,
             "--hps", json.dumps(hps), *common, *data]
    matched_kit = kit + ["--latent-resolutions", ",".join(map(str, matched))]
    one = ["--intra", "1", "--inter", "1"]
    sides = {
        "kit-preset": (kit + ["--matmul"], env),
        "kit-matched": (matched_kit, env),
        "vdvae": (torch + ["--threads", str(args.threads)], env),
        # PyTorch's OpenMP threads spin while they wait at each parallel region's end; on cores that
        # other jobs share, a descheduled thread stalls the other: the passive policy sleeps instead.
        "vdvae-passive": (torch + ["--threads", str(args.threads)], {**env, "OMP_WAIT_POLICY": "PASSIVE"}),
        "kit-matched-1thread": (matched_kit + one, env),  # the later --intra/--inter win
        "vdvae-1thread": (torch + ["--threads", "1"], env),
        # TensorFlow leaves its oneDNN kernels off on CPUs without AVX-512 VNNI/BF16 or AMX (PyTorch
        # uses oneDNN for its convolutions everywhere): the kit with them on, at 1 thread.
        "kit-matched-onednn-1thread": (matched_kit + one, {**env, "TF_ENABLE_ONEDNN_OPTS": "1"}),
    }
    sides = {name: sides[name] for name in args.sides.split(",")}
    infos, timings = run_interleaved(sides, args.rounds, args.steps)
    results = {name: {**infos[name], **summarize(timings[name], infos[name]["batch_size"])} for name in sides}
    print("\n| side | framework | parameters | ms/step (median of rounds) | images/s | median step | fastest step |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['framework']} | {r['parameters']:,} | {r['ms_per_step']:.0f} | "
              f"{r['images_per_second']:.1f} | {r['ms_per_step_median_of_steps']:.0f} | {r['ms_per_step_min']:.0f} |")
    pairs = [("kit-preset", "vdvae"), ("kit-matched", "vdvae"), ("kit-matched", "vdvae-passive"),
             ("kit-matched-1thread", "vdvae-1thread"), ("kit-matched-onednn-1thread", "vdvae-1thread")]
    for kit_side, peer in pairs:
        if kit_side in results and peer in results:
            ratios = sorted(k / v for k, v in zip(results[kit_side]["ms_per_step_rounds"],
                                                   results[peer]["ms_per_step_rounds"]))
            print(f"{kit_side} / {peer} step time: "
                  f"{results[kit_side]['ms_per_step'] / results[peer]['ms_per_step']:.2f} "
                  f"(same rounds: {ratios[0]:.2f} to {ratios[-1]:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"mapping": {"kit": KIT_CIFAR_PRESET, "vdvae": hps, "notes": notes},
                                               "rounds": args.rounds, "steps": args.steps, "results": results},
                                              indent=1, default=str))


if __name__ == "__main__":
    main()
