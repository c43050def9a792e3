"""Scoring batches: accept what users have, hand the criteria plain `(images, labels)` pairs."""

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .errors import DataError


def iter_batches(batches: Iterable, device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield `(images, labels-or-None)` from tuples, lists, dicts with `pixel_values`, or bare tensors.

    Raises `DataError` for an empty iterable, an unknown batch layout, a batch without images, integer
    (unnormalised) images, labels that are not integer class indices, or NaN/inf in the images.
    """
    count = 0
    for batch in batches:
        images, labels = _split(batch)
        if images.dim() < 2 or images.shape[0] == 0:
            raise DataError(f"batch {count} holds no images (shape {tuple(images.shape)}); every batch needs at least "
                            "one image [B, C, H, W]")
        if not images.is_floating_point():
            raise DataError(f"batch {count} holds {images.dtype} images; convert them to float and normalise them as "
                            "the model expects (e.g. x.float() / 255, then its mean and std)")
        if labels is not None and (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
            raise DataError(f"batch {count} has {labels.dtype} labels; give integer class indices (labels.long())")
        if not torch.isfinite(images).all():
            raise DataError(
                f"batch {count} holds NaN or inf values in its images (shape {tuple(images.shape)}); "
                "clean or re-normalise the scoring data"
            )
        if device is not None:
            images = images.to(device)
            labels = labels.to(device) if labels is not None else None
        count += 1
        yield images, labels
    if count == 0:
        raise DataError("no scoring batches were given; pass a non-empty DataLoader or list of (images, labels)")


def reiterable(batches: Iterable) -> Iterable:
    """Return something that can be iterated once per round: one-shot iterators are materialised."""
    if batches is None:
        raise DataError("batches is None; pass a DataLoader or a list of (images, labels) tuples")
    if isinstance(batches, torch.Tensor):
        raise DataError(f"batches is one tensor of shape {tuple(batches.shape)}, not a list of batches; wrap it: "
                        "[(images, labels)] or [images]")
    if isinstance(batches, Iterator):
        return list(batches)
    return batches


def first_images(batches: Iterable, device: torch.device | None = None) -> torch.Tensor:
    """The images of the first batch (used to trace the model and to shape all-ones inputs)."""
    for images, _ in iter_batches(batches, device):
        return images
    raise AssertionError("unreachable: iter_batches raises on empty input")


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        if "pixel_values" not in batch:
            raise DataError(f"a dict batch needs a 'pixel_values' key; got keys {sorted(batch.keys())}")
        return batch["pixel_values"], batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) >= 1 and isinstance(batch[0], torch.Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], labels
    inner = f" whose first item is a {type(batch[0]).__name__}" if isinstance(batch, (tuple, list)) and batch else ""
    raise DataError(
        f"cannot read a batch of type {type(batch).__name__}{inner} (images must be torch tensors); "
        "give (images, labels) tuples or dicts with 'pixel_values' (and 'labels')"
    )


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, an object or dict with `logits`, or a tuple's first item."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise DataError(f"cannot find logits in a model output of type {type(output).__name__}")
