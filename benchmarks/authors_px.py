"""A stand-alone re-implementation of the authors' PX procedure: our parity and speed reference.

Iurada, Ciccone, Tommasi, CVPR 2024 (public code: github iurada/px-ntk-pruning, lib/pruners.py class PX
and main.py's prune loop). Nothing here is copied from that code; it restates, in our own code, what
that procedure computes and how much work it does, quirks included (PX_SPEC §2):

* three deep copies of the model per round: a *kernel* copy (train mode) whose parameters are squared,
  a *data* copy (train mode) whose parameters are set to 1, and an *activation* copy (eval mode);
  parameters whose name contains "bn" or a head prefix ("fc") are left as they are in the first two;
* the authors keep masks as separate buffers multiplied in forward; we emulate that by writing the
  masked value into each copy (kernel: theta^2 * mask, data: 1 * mask, activation: theta * mask; a head
  among the targets: theta * mask in all three);
* `torch.nn.functional.relu` is replaced globally for the duration of a round (restored in `finally`):
  the activation copy's pass records every pre-activation, the data copy's pass multiplies its input by
  (recorded pre-activation > 0) in call order, the kernel copy's pass is the identity. `nn.ReLU` calls
  `F.relu`, so modules are caught as well;
* every batch costs four full passes: activation copy on x and data copy on x**2 (no grad), kernel copy
  on an all-ones batch *of the same size* forward and backward; (z1 * z2).sum() is backpropagated per
  batch and the kernel copy's gradients accumulate over batches;
* score = |grad of the kernel copy's parameter| * theta^2 (theta the original parameter); pruned: 0;
* schedule: round r of R keeps density d ** ((r + 1) / R); threshold: k = int((1 - density) * N) over all
  targets' scores, the k-th smallest (`torch.kthvalue`), and every score <= it is pruned.

Run `python benchmarks/authors_px.py` to check parity with `hf_px` on a bias-free ReLU CNN in float64.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import deque

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _images_of(batch) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["pixel_values"]
    return batch[0]


def _logits_of(output) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def _left_as_is(name: str, head_prefixes) -> bool:
    """The authors' name-based skip list: norms ('bn') and the classifier ('fc') are not transformed."""
    return "bn" in name or any(name.startswith(p) or p in name for p in head_prefixes)


def authors_px_round(model: nn.Module, batches, targets: list[str], masks: dict[str, Tensor] | None = None,
                     head_prefixes=("fc",)) -> dict[str, Tensor]:
    """One round of the authors' PX scores for `targets` (names from `model.named_parameters()`).

    masks: boolean masks of (some of) the targets; None keeps everything. The model is not modified.
    """
    masks = masks or {}
    device = next(model.parameters()).device
    originals = {n: p.detach() for n, p in model.named_parameters()}

    kernel_copy = copy.deepcopy(model).train()
    data_copy = copy.deepcopy(model).train()
    activation_copy = copy.deepcopy(model).eval()
    with torch.no_grad():
        for copy_kind, net in (("kernel", kernel_copy), ("data", data_copy), ("activation", activation_copy)):
            for name, param in net.named_parameters():
                if copy_kind != "activation" and not _left_as_is(name, head_prefixes):
                    if copy_kind == "kernel":
                        param.pow_(2)
                    else:
                        param.fill_(1.0)
                if name in masks:
                    param.mul_(masks[name].to(device=param.device, dtype=param.dtype))
    for param in kernel_copy.parameters():
        param.requires_grad_(True)
        param.grad = None

    pre_activations: deque[Tensor] = deque()
    real_relu = F.relu

    def recording_relu(input, inplace=False):
        pre_activations.append(input.detach().clone())
        return real_relu(input, inplace)

    def gated_relu(input, inplace=False):
        return input * (pre_activations.popleft() > 0).to(input.dtype)

    def identity_relu(input, *args, **kwargs):
        return input

    try:
        for batch in batches:
            x = _images_of(batch).to(device)
            with torch.no_grad():
                pre_activations.clear()
                torch.nn.functional.relu = recording_relu
                activation_copy(x)
                torch.nn.functional.relu = gated_relu
                z1 = _logits_of(data_copy(x.pow(2)))
            if pre_activations:
                raise RuntimeError(f"{len(pre_activations)} recorded pre-activations were not consumed")
            torch.nn.functional.relu = identity_relu
            z2 = _logits_of(kernel_copy(torch.ones_like(x)))
            (z1 * z2).sum().backward()
            torch.nn.functional.relu = real_relu
    finally:
        torch.nn.functional.relu = real_relu

    kernel_params = dict(kernel_copy.named_parameters())
    scores = {}
    with torch.no_grad():
        for name in targets:
            grad = kernel_params[name].grad
            theta = originals[name]
            score = torch.zeros_like(theta) if grad is None else grad.abs() * theta.pow(2)
            if name in masks:
                score = score * masks[name].to(device=score.device, dtype=score.dtype)
            scores[name] = score
    del kernel_copy, data_copy, activation_copy
    return scores


def _keep_authors(flat: Tensor, alive: Tensor, density: float) -> Tensor:
    """The authors' rule: prune every score <= the k-th smallest, k = int((1 - density) * N)."""
    k = int((1.0 - density) * flat.numel())
    if k < 1:
        return alive.clone()     # the authors leave the masks unchanged
    threshold = torch.kthvalue(flat, k).values
    return flat > threshold


def _keep_exact(flat: Tensor, alive: Tensor, density: float) -> Tensor:
    """The authors' count, N - int((1 - density) * N), of the highest alive scores, exactly: ties at the
    threshold are broken by position (the lower global flat index is kept) instead of all pruned."""
    count = min(flat.numel() - int((1.0 - density) * flat.numel()), int(alive.sum()))
    ranked = torch.where(alive, flat.double(), torch.tensor(float("-inf"), dtype=torch.float64))
    order = torch.sort(ranked, descending=True, stable=True).indices
    keep = torch.zeros_like(alive)
    keep[order[:count]] = True
    return keep


def authors_px_prune(model: nn.Module, batches, targets: list[str], density: float, rounds: int = 100,
                     count: str = "authors", head_prefixes=("fc",)) -> dict[str, Tensor]:
    """Iterative PX with the authors' exponential schedule; prunes `model` in place, returns bool masks.

    count: "authors" (<= k-th smallest, k = int((1 - d) N)) or "exact" (the same count, ties at the
    threshold broken by position: hf_px's rule, for mask parity where scores tie).
    """
    if count not in ("authors", "exact"):
        raise ValueError(f"count={count!r} must be 'authors' or 'exact'")
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in targets}
    sizes = [params[n].numel() for n in targets]
    for r in range(rounds):
        round_density = density ** ((r + 1) / rounds)
        scores = authors_px_round(model, batches, targets, masks, head_prefixes)
        flat = torch.cat([scores[n].detach().flatten().cpu() for n in targets])
        alive = torch.cat([masks[n].flatten().cpu() for n in targets])
        keep = (_keep_authors if count == "authors" else _keep_exact)(flat, alive, round_density)
        for name, part in zip(targets, keep.split(sizes)):
            masks[name] = part.view_as(params[name]).to(params[name].device)
        with torch.no_grad():     # the authors multiply the parameters by their masks
            for name in targets:
                params[name].mul_(masks[name].to(params[name].dtype))
    return masks


# --- parity check against hf_px ----------------------------------------------------------------------------

def verify(rounds: int = 100, density: float = 0.05, seed: int = 0) -> bool:
    import hf_px
    from hf_px.testing import PlainCNN, random_batches

    torch.manual_seed(seed)
    model = PlainCNN(in_channels=3, batchnorm=False, bias=False, maxpool=False).double()
    batches = random_batches(2, 8, dtype=torch.float64, seed=seed)
    targets = hf_px.prunable_weights(model)
    print(f"targets: {targets}")

    ours = hf_px.score(model, batches, method="px", targets=targets)
    theirs = authors_px_round(model, batches, targets)
    worst = max(float(((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max())) for n in targets)
    print(f"one round, no masks: max |hf_px - authors| / max|authors| per tensor = {worst:.3e}")
    ok = worst < 1e-10

    # one round with masks (random 50%), so that the masked conventions are checked too
    generator = torch.Generator().manual_seed(seed + 1)
    params = dict(model.named_parameters())
    masks = {n: torch.rand(params[n].shape, generator=generator) < 0.5 for n in targets}
    ours = hf_px.score(model, batches, method="px", targets=targets, masks=masks)
    theirs = authors_px_round(model, batches, targets, masks)
    worst_masked = max(float(((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max())) for n in targets)
    print(f"one round, random 50% masks: max relative difference = {worst_masked:.3e}")
    ok &= worst_masked < 1e-10

    sparsity = 1.0 - density
    model_b = copy.deepcopy(model)
    masks_ours = hf_px.prune(model_b, batches, "px", sparsity=sparsity, rounds=rounds, targets=targets)
    total = sum(m.numel() for m in masks_ours.values())
    for count in ("authors", "exact"):
        reference = copy.deepcopy(model)
        masks_theirs = authors_px_prune(reference, batches, targets, density, rounds, count=count)
        differ = sum(int((masks_ours[n] != masks_theirs[n]).sum()) for n in targets)
        print(f"{rounds} rounds to density {density}, count={count!r}: kept hf_px "
              f"{sum(int(m.sum()) for m in masks_ours.values())}/{total}, reference "
              f"{sum(int(m.sum()) for m in masks_theirs.values())}/{total}; differing mask entries: {differ}")
        if count == "authors" and differ:
            print("  (the authors' rule prunes every score tied at the threshold; see count='exact')")
        if count == "exact":
            ok &= differ == 0
    weights_equal = all(torch.equal(dict(reference.named_parameters())[n], dict(model_b.named_parameters())[n])
                        for n in targets)
    print(f"pruned weights identical: {weights_equal}")
    ok &= weights_equal
    print("PARITY OK" if ok else "PARITY FAILED")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.exit(0 if verify(args.rounds, args.density, args.seed) else 1)
