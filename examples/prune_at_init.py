"""Prune at initialisation, offline: prune a small ResNet at its random initialisation with PX and with random pruning
on real Fashion-MNIST, train both tickets briefly with their masks fixed, and print both accuracies.

1. writes a local dataset folder (`datasets.save_to_disk`) of real Fashion-MNIST images from the Debian
   package `dataset-fashion-mnist` (the same code path as a Hub dataset);
2. saves a randomly initialised transformers ResNet as a local model folder (the layout of a Hub repo);
3. for each method: `hf-px prune MODEL --dataset DATA --method M --sparsity 0.95 --output ...` (10 images
   per class), then `hf-px finetune recipes/fashion-mnist-quick.yaml --model ... --output ...` (SGD, 2 epochs
   on 4,000 training images, 1,000 test images);
4. loads each trained checkpoint back with plain transformers (no hf_px) and checks that its pruned weights
   are still exactly zero.

    python examples/prune_at_init.py [--workdir hf-px-prune-at-init] [--sparsity 0.95] [--methods px random]
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fashion-mnist-quick.yaml"


def build_model(folder: Path, label_names) -> None:
    import transformers as tf

    torch.manual_seed(0)
    # the task's own 10 classes: pruning at initialisation keeps the (random) head and trains it with the rest
    config = tf.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[2, 2, 2],
                             layer_type="basic", num_labels=len(label_names), id2label=dict(enumerate(label_names)))
    tf.ResNetForImageClassification(config).save_pretrained(folder)
    # 28x28 grey images, upsampled to 32x32 and replicated to 3 channels; Fashion-MNIST's mean and std
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.286] * 3,
                         image_std=[0.353] * 3).save_pretrained(folder)


def run(command: list[str]) -> None:
    from hf_px.cli import main as hf_px_main

    print("\n$ hf-px " + shlex.join(command), flush=True)
    code = hf_px_main(command)
    if code:
        sys.exit(code)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="hf-px-prune-at-init")
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--methods", nargs="+", default=["px", "random"])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--train-examples", type=int, default=None, help="override the recipe's train_examples")
    args = parser.parse_args(argv)

    import hf_px
    from hf_px.data import FASHION_MNIST_CLASSES
    from hf_px.testing import write_fashion_mnist_dataset
    from transformers import AutoModelForImageClassification

    started = time.perf_counter()
    workdir = Path(args.workdir)
    data_dir, model_dir = workdir / "fashion-mnist", workdir / "resnet-small"
    if not data_dir.exists():
        write_fashion_mnist_dataset(data_dir, per_class_train=500, per_class_test=100, layout="save_to_disk")
    build_model(model_dir, list(FASHION_MNIST_CLASSES))
    overrides = []
    if args.epochs is not None:
        overrides += ["--epochs", str(args.epochs)]
    if args.train_examples is not None:
        overrides += ["--train-examples", str(args.train_examples)]

    rows = []
    for method in args.methods:
        pruned, trained = workdir / f"resnet-small-{method}", workdir / f"resnet-small-{method}-trained"
        run(["prune", str(model_dir), "--dataset", str(data_dir), "--method", method, "--sparsity",
             str(args.sparsity), "--eval-examples", "0", "--output", str(pruned), "--overwrite", "--no-progress",
             "--allow-empty-layers"])   # a tensor pruned away is a result here: the table below counts them
        run(["finetune", str(RECIPE), "--model", str(pruned), "--dataset", str(data_dir), "--output", str(trained),
             "--overwrite", *overrides])
        # what a user without hf_px gets: plain transformers, pruned weights still exactly zero
        plain = AutoModelForImageClassification.from_pretrained(trained)
        _, masks = hf_px.load_sparse(str(trained))
        params = dict(plain.named_parameters())
        zeros_hold = all(bool((params[n][~m] == 0).all()) for n, m in masks.items())
        record = json.loads((trained / "hf_px.json").read_text())
        rows.append((method, record["global_density"], [n for n, d in record["layer_densities"].items() if d == 0],
                     record["finetune"]["eval_accuracy"], record["finetune"]["eval_examples"], zeros_hold))

    print(f"\nprune at initialisation to {args.sparsity:.0%} sparsity, then train ({RECIPE.name}):")
    print(f"{'method':<8}  {'density':>7}  {'layers at 0':>11}  {'test accuracy':>13}  pruned weights still zero")
    for method, density, dead, accuracy, count, zeros_hold in rows:
        print(f"{method:<8}  {density:7.2%}  {len(dead):>11}  {accuracy:>13.2%}  {zeros_hold}")
    print(f"(accuracy on {rows[0][4]:,} Fashion-MNIST test images; one seed, a short run: a smoke comparison, "
          "not a benchmark)")
    print(f"inspect a result with: hf-px inspect {workdir / f'resnet-small-{args.methods[0]}-trained'}")
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
