"""Training throughput of the real EfficientNet-Lite0 in the default memory layout and channels-last (what
`hf-px finetune` uses for models with 2-d convolutions, `channels_last: true`): images per second of one
SGD step (forward, backward, update) at 32x32 and 64x64, batch 64, best of 5 steps after one warm-up.

    python benchmarks/bench_channels_last.py [--threads N]
"""

import argparse
import time

import torch
import torch.nn.functional as F


def throughput(channels_last: bool, size: int, batch: int = 64, steps: int = 5) -> float:
    from hf_px.testing import efficientnet_lite0

    model = efficientnet_lite0().train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    best = float("inf")
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:   # the first step warms up the kernels
            best = min(best, time.perf_counter() - start)
    return batch / best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"EfficientNet-Lite0 training step, batch 64, {torch.get_num_threads()} torch threads")
    for size in (32, 64):
        plain, fast = throughput(False, size), throughput(True, size)
        print(f"{size}x{size}: {plain:6.0f} img/s default layout, {fast:6.0f} img/s channels-last ({fast / plain:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
