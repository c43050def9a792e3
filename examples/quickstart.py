"""The embedded default job, offline: `hf-px prune` end to end on real Fashion-MNIST and a small model.

1. writes a local dataset folder (`datasets.save_to_disk`) of real Fashion-MNIST images from the Debian
   package `dataset-fashion-mnist` — the same code path as a Hub dataset;
2. saves a small randomly initialised transformers ResNet as a local model folder — the layout of a Hub repo;
3. runs `hf-px prune MODEL_DIR --dataset DATA_DIR --sparsity 0.9 --output OUT` (PX at initialisation,
   100 rounds, 10 images per class, a ridge-probe head);
4. loads the sparse checkpoint back with plain transformers (no hf_px) and checks its zeros against the
   exact masks from `hf_px.load_sparse`.

    python examples/quickstart.py [--workdir hf-px-quickstart] [--sparsity 0.9] [--method px]
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch


def build_model(folder: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    # 1000 unnamed classes, like an ImageNet checkpoint: hf-px replaces the head for the task's 10 classes
    # and fits it as a ridge probe, so that the data term and the probe accuracies are meaningful
    config = tf.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[2, 2, 2],
                             layer_type="basic", num_labels=1000)
    tf.ResNetForImageClassification(config).save_pretrained(folder)
    # 28x28 grey images, upsampled to 32x32 and replicated to 3 channels; Fashion-MNIST's mean and std
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.286] * 3,
                         image_std=[0.353] * 3).save_pretrained(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="hf-px-quickstart")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--method", default="px")
    parser.add_argument("--examples-per-class", type=int, default=10)
    args = parser.parse_args(argv)

    from hf_px.cli import main as hf_px_main
    from hf_px.testing import write_fashion_mnist_dataset

    started = time.perf_counter()
    workdir = Path(args.workdir)
    data_dir, model_dir, output = workdir / "fashion-mnist", workdir / "resnet-small", workdir / "resnet-small-sparse"
    if not data_dir.exists():
        write_fashion_mnist_dataset(data_dir, per_class_train=100, per_class_test=50, layout="save_to_disk")
    build_model(model_dir)

    command = ["prune", str(model_dir), "--dataset", str(data_dir), "--method", args.method,
               "--sparsity", str(args.sparsity), "--examples-per-class", str(args.examples_per_class),
               "--eval-examples", "200", "--output", str(output), "--overwrite"]
    print("$ hf-px " + shlex.join(command), flush=True)
    code = hf_px_main(command)
    if code:
        return code

    # what a user without hf_px gets, and what hf_px.load_sparse adds
    import hf_px
    from transformers import AutoModelForImageClassification

    plain = AutoModelForImageClassification.from_pretrained(output)
    _, masks = hf_px.load_sparse(str(output))
    params = dict(plain.named_parameters())
    agree = all(bool((params[n][~m] == 0).all()) for n, m in masks.items())
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    print(f"\nplain transformers loads {output}: {sum(p.numel() for p in plain.parameters()):,} parameters; "
          f"masks keep {kept:,} of {total:,} target weights ({kept / total:.2%}); pruned weights are zero: {agree}")
    print(f"inspect it with: hf-px inspect {output}")
    print(f"total wall time {time.perf_counter() - started:.1f}s")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
