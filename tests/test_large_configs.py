"""No overflow or underflow on deep models at random initialisation (docs/px.md section 9).

Products of ~50 layers of squared weights and fan-ins leave float32's range; PX must still return
finite scores with a sensible spread, and no tensor collapsed to all zeros.

The range is set by depth, memory by width: ViT-L/16's 24 blocks at a quarter of its width put the true
scores near 2^920 (2^980 at full width) in about 1 GB, where the full ViT-L/16 peaks near 9.3 GiB.
benchmarks/bench_large_configs.py runs the same checks on the full width.
"""

import sys
from pathlib import Path

import pytest

import hf_px

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_large_configs  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("case", ["resnet152", "vit_large_16_quarter"])
def test_px_scores_are_finite_and_non_degenerate_at_scale(case):
    model, batches = bench_large_configs.build_case(case)
    if case.startswith("vit_large"):
        assert len(model.blocks) == 24       # ViT-L/16's depth, which sets the range
    scores = hf_px.score(model, batches, method="px")
    assert bench_large_configs.range_problems(scores) == []
