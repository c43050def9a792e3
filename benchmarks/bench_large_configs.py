"""PX scores at full scale: the checks of tests/test_large_configs.py on full-width ResNet-152 and ViT-L/16
at random initialisation, with the time and peak memory each takes.

The test suite runs ResNet-152 and ViT-L/16's 24 blocks at a quarter of its width: the range the scores
must survive is set by depth (their true values reach about 2^920 at a quarter width, 2^980 at full width,
2^265 with 6 blocks), while memory is set by width. A PX round and these checks on the full ViT-L/16
(303 M weights) peak near 9.3 GiB of RSS on CPU, past the suite's 6 GB budget, so the full width is
checked here.
Each case runs in a fresh process, so every peak is its own.

    python benchmarks/bench_large_configs.py [--cases resnet152 vit_large_16 vit_large_16_quarter]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

# name: (timm model, timm kwargs, image size)
CASES = {
    "resnet152": ("resnet152", {"zero_init_last": False}, 64),
    "vit_large_16": ("vit_large_patch16_224", {"img_size": 32}, 32),
    # ViT-L/16's depth (24 blocks, 16-px patches, 64-dim heads) at a quarter of its width: the suite's case
    "vit_large_16_quarter": ("vit_large_patch16_224", {"img_size": 32, "embed_dim": 256, "num_heads": 4}, 32),
}


def build_case(name: str):
    """The randomly initialised model of case `name` and one batch of 2 random images for it."""
    import timm

    model_name, kwargs, size = CASES[name]
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=10, **kwargs)
    return model, [(torch.randn(2, 3, size, size), torch.tensor([0, 1]))]


def range_problems(scores: dict[str, torch.Tensor]) -> list[str]:
    """What is wrong with PX scores of a deep model: non-finite values, most of them vanished (underflow),
    the largest at the edge of overflow, a tensor scored all zero, or no spread to rank by. Empty if none."""
    values = torch.cat([s.flatten() for s in scores.values()])
    problems = []
    if not torch.isfinite(values).all():
        problems.append("non-finite scores")
    if not (values > 0).float().mean() > 0.5:
        problems.append(f"most scores vanished (underflow): {float((values > 0).float().mean()):.1%} positive")
    if not values.max() < torch.finfo(torch.float32).max / 2:
        problems.append(f"scores at the edge of overflow: max {float(values.max()):.3g}")
    dead = [n for n, s in scores.items() if not (s > 0).any()]
    if dead:
        problems.append(f"{len(dead)} tensors scored all-zero: {dead[:5]}")
    spread = float(values[values > 0].double().log10().std())
    if not spread > 0.3:
        problems.append(f"scores carry no ranking: std of log10 scores {spread:.2f}")
    return problems


def worker(name: str) -> dict:
    import hf_px

    model, batches = build_case(name)
    start = time.perf_counter()
    scores = hf_px.score(model, batches, method="px")
    seconds = time.perf_counter() - start
    problems = range_problems(scores)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # the round and its checks, as in the test
    values = torch.cat([s.flatten() for s in scores.values()])
    return {"case": name, "weights_m": sum(p.numel() for p in model.parameters()) / 1e6, "score_s": seconds,
            "peak_rss_mb": peak_mb, "positive": float((values > 0).float().mean()),
            "log10_std": float(values[values > 0].double().log10().std()), "problems": problems}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    failed = False
    for name in args.cases:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", name],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            return done.returncode
        row = json.loads(done.stdout.strip().splitlines()[-1])
        failed |= bool(row["problems"])
        print(f"{name:<22} {row['weights_m']:6.1f} M weights: PX round {row['score_s']:6.1f} s, peak RSS "
              f"{row['peak_rss_mb'] / 1024:5.1f} GiB, {row['positive']:.1%} positive, std log10 "
              f"{row['log10_std']:.2f}: {'; '.join(row['problems']) or 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
