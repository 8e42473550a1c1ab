#!/usr/bin/env bash
# Every measurement behind docs/BENCHMARKS.md, one after another (about 2 hours on 2 cores).
# Run it on an otherwise quiet machine: everything here is timed.
#   CIFAR_DIR=path/to/cifar-10-batches-py-parent bash bench/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p bench/results docs
CIFAR_ARGS=${CIFAR_DIR:+--data-dir $CIFAR_DIR}

# 1 + 3. Throughput and distance to the matmul limit: the keras.io loop and the kit back to back.
$PY bench/throughput.py --epochs 5 --runs reference keras-io default | tee bench/results/throughput.md
# What else was tried (kept only where faster).
$PY bench/throughput.py --epochs 3 --runs keras-io-bf16 keras-io-xla keras-io-spe10 \
    --out bench/results/throughput_tried.json | tee bench/results/throughput_tried.md

# oneDNN and thread settings, each against the same baseline run just before it.
$PY bench/throughput.py --epochs 3 --runs keras-io --out bench/results/threads_baseline.json
TF_ENABLE_ONEDNN_OPTS=0 $PY bench/throughput.py --epochs 3 --runs keras-io --out bench/results/threads_onednn_off.json
TF_NUM_INTEROP_THREADS=1 $PY bench/throughput.py --epochs 3 --runs keras-io --out bench/results/threads_interop1.json

# What a checkpoint costs (the --checkpoint-minutes default), for both scripts' heaviest defaults.
$PY bench/checkpoint_cost.py ${CIFAR_DIR:+--cifar-dir $CIFAR_DIR} | tee bench/results/checkpoint_cost.txt

# 2. Time to quality on Fashion-MNIST: the keras-io preset for its 30 epochs, then the defaults.
$PY vae_fashion_mnist.py --preset keras-io --outdir outputs/keras_io
$PY vae_fashion_mnist.py --outdir outputs/fashion_mnist
$PY bench/time_to_quality.py --run "keras-io preset (latent 2)=outputs/keras_io" --run "kit defaults (latent 32)=outputs/fashion_mnist" \
    --target 240 --plot docs/elbo_vs_time.png | tee bench/results/time_to_quality.json

# The same exercise for CIFAR-10 (on this machine only the JPEG copy exists: label it so).
$PY vae_cifar10.py --preset keras-io --epochs 10 $CIFAR_ARGS --outdir outputs/cifar10_keras_io
$PY vae_cifar10.py $CIFAR_ARGS --outdir outputs/cifar10
$PY bench/time_to_quality.py --run "keras-io preset (latent 2)=outputs/cifar10_keras_io" --run "kit defaults (latent 128)=outputs/cifar10" \
    --title "CIFAR-10 (JPEG copy) test −ELBO against training time" \
    --plot docs/cifar10_elbo_vs_time.png | tee bench/results/cifar10_time_to_quality.json

# Feature networks of the Fréchet distance: accuracy and training time (cached afterwards).
$PY bench/feature_nets.py ${CIFAR_DIR:+--cifar-dir $CIFAR_DIR} | tee bench/results/feature_nets.md

# Likelihoods and architectures back to back at the scripts' defaults (docs/EVALUATION.md: Likelihoods).
$PY bench/likelihoods.py --script vae_cifar10.py $CIFAR_ARGS --title "CIFAR-10 (JPEG copy)" \
    --runs bce gaussian discretized-logistic mixture gaussian-wide resnet-gaussian \
    --pick gaussian-wide --picture docs/cifar10_likelihoods.png | tee bench/results/likelihoods_cifar10.md
$PY bench/likelihoods.py --script vae_fashion_mnist.py --title "Fashion-MNIST" \
    --runs bce gaussian discretized-logistic | tee bench/results/likelihoods_fashion_mnist.md

# Memory: the discretized logistic's mean against the same loops run ten at once (issue 17).
$PY bench/mean_memory.py --runs 20 | tee bench/results/mean_memory.md

# The hierarchical preset's optimizer, EMA rate and gradient norms (issue 24; docs/BENCHMARKS.md,
# "Hierarchical VAE: optimizer, EMA and gradient norms"): compared by images seen, not timed.
$PY bench/optimizer_comparison.py --configs adam,adam-b2,adamw --steps 1500 --eval-every 500 \
    --eval-images 1000 --ema 0.99,0.998 --json bench/results/optimizer_comparison.json
$PY bench/optimizer_comparison.py --dataset cifar10 $CIFAR_ARGS --configs adamw --steps 300 --eval-every 0 \
    --json bench/results/gradient_norms_cifar10.json

# The hierarchical preset's FLOPs, share of the matmul peak, profile, and what XLA, batch 64 and
# thread settings buy, all timed interleaved (issue 24, item 4; docs/BENCHMARKS.md, "Hierarchical
# VAE: FLOPs, profile and the official VDVAE code side by side").
$PY bench/hierarchical_variants.py $CIFAR_ARGS \
    --rounds 8 --steps 6 --json bench/results/hierarchical_variants.json | tee bench/results/hierarchical_variants.md
$PY bench/profile_epoch.py --dataset cifar10 $CIFAR_ARGS --preset hierarchical --steps 30 \
    | tee bench/results/profile_hierarchical_cifar10.md
# Optional (item 5): the official openai/vdvae training step beside the kit's. It needs PyTorch in a
# venv of its own (never the kit's) and a copy of github.com/openai/vdvae:
#   python3 -m venv .venv-vdvae && .venv-vdvae/bin/pip install -r bench/requirements-vdvae.txt
#   git clone https://github.com/openai/vdvae ../vdvae
# $PY bench/vdvae_peer.py --vdvae ../vdvae $CIFAR_ARGS \
#     --rounds 8 --steps 6 --json bench/results/vdvae_peer.json | tee bench/results/vdvae_peer.md
