"""No overflow or underflow on deep, wide models at random initialisation (docs/px.md section 9).

Products of ~50 layers of squared weights and fan-ins leave float32's range; PX must still return
finite scores with a sensible spread, and no tensor collapsed to all zeros.
"""

import pytest
import timm
import torch

import hf_px


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,size", [
    ("resnet152", {"zero_init_last": False}, 64),
    ("vit_large_patch16_224", {"img_size": 32}, 32),
], ids=["resnet152", "vit_large_16"])
def test_px_scores_are_finite_and_non_degenerate_at_scale(name, kwargs, size):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    batches = [(torch.randn(2, 3, size, size), torch.tensor([0, 1]))]
    scores = hf_px.score(model, batches, method="px")
    values = torch.cat([s.flatten() for s in scores.values()])
    assert torch.isfinite(values).all()
    assert (values > 0).float().mean() > 0.5, "most scores vanished (underflow)"
    assert values.max() < torch.finfo(torch.float32).max / 2, "scores at the edge of overflow"
    dead = [n for n, s in scores.items() if not (s > 0).any()]
    assert not dead, f"tensors scored all-zero: {dead[:5]}"
    positive = values[values > 0].double()
    assert positive.log10().std() > 0.3, "scores carry no ranking"
