"""A PX round streams its scoring batches: its peak memory does not grow with their number (the data term is
a sum, and each batch's recorded gates are consumed before the next batch runs).

Measured in a fresh process: the resident-set high-water mark (reset through /proc/self/clear_refs) over the
memory in use just before the call, after malloc_trim, for one batch and for eight batches of the same size.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MEASURE = textwrap.dedent("""
    import ctypes, gc, json, sys
    import torch
    import hf_px
    from hf_px.testing import random_batches, resnet20

    torch.manual_seed(0)
    model = resnet20().eval()
    batches = random_batches(8, 64, seed=0)          # all eight exist before anything is measured

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def peak_increase(call):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = rss()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        call()
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        return (peak - before) / 2**20

    hf_px.score(model, batches[:1], method="px")     # warm-up: one-time allocations out of the way
    result = {}
    for count in (1, 8, 1, 8):
        result.setdefault(count, []).append(peak_increase(lambda: hf_px.score(model, batches[:count], method="px")))
    print(json.dumps(result))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_round_memory_does_not_grow_with_the_number_of_batches():
    done = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = {int(k): min(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    # one batch's gates and activations (ResNet-20, 64 images at 32 px) are tens of MiB: holding all eight
    # would add hundreds; streaming keeps eight within measurement noise of one
    assert peaks[1] > 20, peaks
    assert peaks[8] <= peaks[1] * 1.25 + 8, peaks
