"""Prune a ResNet-20 at initialisation with PX on real Fashion-MNIST, offline, in about a minute on a CPU.

    bash scripts/setup.sh && python examples/prune_fashion_mnist.py

Scores on a class-balanced sample of the training split (10 images per class, as in the PX paper),
prunes iteratively (100 rounds by default for PX) to the requested sparsity, prints the density of every
pruned tensor, then prunes the same initial network with the one-shot baselines `random` and `magnitude`
to compare their smallest per-layer density. A tensor pruned to zero density ("layer collapse") cuts
every path through it; in a ResNet a residual branch at zero still leaves its shortcut, so the network
stays connected but loses that block. Zero-density tensors are always listed.
"""

import argparse
import time

import torch

import hf_px
from hf_px.data import FASHION_MNIST_CLASSES, balanced_indices, load_fashion_mnist
from hf_px.testing import resnet20

MEAN, STD = 0.2860, 0.3530            # Fashion-MNIST training-split pixel statistics (pixels in [0, 1])
BASELINES = ("random", "magnitude")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="px", choices=hf_px.list_methods(), help="pruning method (default: px)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of target weights removed (default: 0.9)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="pruning rounds (default: the method's own, 100 for px)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the network initialisation and the sample")
    parser.add_argument("--examples-per-class", type=int, default=10,
                        help="scoring images per class from the training split (default: 10)")
    parser.add_argument("--root", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files "
                        "(default: /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; this tiny model scales poorly, and on a shared "
                             "CPU extra OpenMP threads stall each other: 2 threads ran 9x slower under load)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the random/magnitude comparison")
    return parser.parse_args(argv)


def scoring_batches(per_class: int, seed: int, root: str | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch of `per_class` normalised training images of each class, shaped [N, 1, 28, 28]."""
    images, labels = load_fashion_mnist("train", root)
    index = torch.tensor(balanced_indices(labels, per_class, seed))
    x = ((images[index].float() / 255.0 - MEAN) / STD).unsqueeze(1)
    return [(x, labels[index])]


def fresh_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return resnet20(num_classes=len(FASHION_MNIST_CLASSES), in_channels=1)


def summary(masks: dict[str, torch.Tensor]) -> tuple[float, str, float, int]:
    """(global density, name and density of the sparsest tensor, tensors at zero density)."""
    densities = hf_px.layer_densities(masks)
    sparsest = min(densities, key=densities.get)
    return hf_px.global_density(masks), sparsest, densities[sparsest], sum(d == 0.0 for d in densities.values())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        batches = scoring_batches(args.examples_per_class, args.seed, args.root)
    except hf_px.DataError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Fashion-MNIST: {len(batches[0][1])} scoring images ({args.examples_per_class} per class) "
          f"from the training split, loaded in {time.perf_counter() - start:.1f}s")

    model = fresh_model(args.seed)
    tic = time.perf_counter()
    masks = hf_px.prune(model, batches, method=args.method, sparsity=args.sparsity, rounds=args.rounds,
                        seed=args.seed, progress=True)
    elapsed = time.perf_counter() - tic

    params = dict(model.named_parameters())
    densities = hf_px.layer_densities(masks)
    print(f"\n{args.method} on ResNet-20 at sparsity {args.sparsity}: {len(masks)} pruned tensors "
          "(the classifier head is kept dense)")
    print(f"{'tensor':<28} {'shape':<18} {'kept':>14} {'density':>8}")
    for name, mask in masks.items():
        shape = "x".join(map(str, params[name].shape))
        print(f"{name:<28} {shape:<18} {int(mask.sum()):>6}/{mask.numel():<7} {densities[name]:>8.4f}")
    overall, sparsest, lowest, zero = summary(masks)
    print(f"global density {overall:.4f}; sparsest tensor {sparsest} at {lowest:.4f}; "
          f"{zero} tensor(s) at zero density; pruning took {elapsed:.1f}s")
    if zero:
        print("at zero density: " + ", ".join(n for n, d in densities.items() if d == 0.0))

    if not args.no_baselines:
        print(f"\nsame initial network, sparsity {args.sparsity}, one-shot data-free baselines:")
        print(f"{'method':<12} {'global':>7} {'min layer density':>18}  {'sparsest tensor':<28} {'zero':>4} {'time':>6}")
        rows = [(args.method, overall, sparsest, lowest, zero, elapsed)]
        for method in BASELINES:
            if method == args.method:
                continue
            tic = time.perf_counter()
            base = hf_px.prune(fresh_model(args.seed), batches, method=method, sparsity=args.sparsity, seed=args.seed)
            rows.append((method, *summary(base), time.perf_counter() - tic))
        for method, overall, sparsest, lowest, zero, seconds in rows:
            print(f"{method:<12} {overall:>7.4f} {lowest:>18.4f}  {sparsest:<28} {zero:>4} {seconds:>5.1f}s")
    print(f"\ntotal wall time {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
