"""Real scoring data offline: Fashion-MNIST from Debian's `dataset-fashion-mnist` package, and balanced samples.

The package installs the original gzip IDX files (60,000 train + 10,000 test 28x28 grey images, 10 balanced
classes) under /usr/share/datasets/fashion-mnist. Nothing is downloaded at run time.
"""

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_INSTALL = "install it with `apt-get update && apt-get install -y dataset-fashion-mnist` (or `bash scripts/setup.sh`)"


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST `split` ("train" or "test") as (uint8 images [N, 28, 28], int64 labels [N]).

    root: folder holding the four `*-ubyte.gz` IDX files; None means /usr/share/datasets/fashion-mnist.
    Raises `DataError` for an unknown split, missing files or files that are not Fashion-MNIST IDX files.
    """
    if split not in _FILES:
        raise DataError(f"split={split!r} is not one of {sorted(_FILES)}")
    folder = FASHION_MNIST_ROOT if root is None else Path(root)
    image_path, label_path = (folder / name for name in _FILES[split])
    missing = [str(p) for p in (image_path, label_path) if not p.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found ({', '.join(missing)} missing); {_INSTALL}")
    images = _read_idx(image_path, header=16, magic=2051)
    labels = _read_idx(label_path, header=8, magic=2049)
    count = images.size // (28 * 28)
    if images.size != count * 28 * 28 or labels.size != count:
        raise DataError(f"{image_path} holds {images.size} pixels and {label_path} {labels.size} labels; "
                        "expected 784 pixels per label: the files are truncated or mismatched")
    return (torch.from_numpy(images.reshape(count, 28, 28).copy()),
            torch.from_numpy(labels.astype(np.int64)))


def _read_idx(path: Path, header: int, magic: int) -> np.ndarray:
    """The uint8 payload of a gzip IDX file after its `header` bytes (first 4 bytes: big-endian `magic`)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path} as gzip ({error}); reinstall: {_INSTALL}") from error
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file with magic number {magic}; reinstall: {_INSTALL}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def balanced_indices(labels: Tensor, per_class: int, seed: int = 0) -> list[int]:
    """`per_class` random indices of every class present in `labels`, sorted by class then index.

    The draw depends only on `labels`, `per_class` and `seed`. Raises `DataError` naming the class and the
    counts if some class has fewer than `per_class` examples.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise DataError(f"per_class={per_class!r} must be a positive integer")
    labels = torch.as_tensor(labels).flatten().cpu()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        if members.numel() < per_class:
            raise DataError(f"class {cls} has {members.numel()} examples but per_class={per_class} were asked; "
                            "lower per_class or use a larger split")
        pick = members[torch.randperm(members.numel(), generator=generator)[:per_class]]
        chosen.extend(sorted(pick.tolist()))
    return chosen
