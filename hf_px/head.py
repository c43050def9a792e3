"""The classifier head: replace it for a new label set, and fit it as a ridge linear probe.

When the task's labels differ from the checkpoint's, the head is replaced and fitted as a ridge linear probe
on the scoring sample's features before scoring (docs/px.md section 6). The head is the Linear (or 1x1 Conv)
whose output is the logits, found structurally by `targets.find_head`, so no name lists are needed.
"""

import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .batches import first_images, iter_batches, logits_of, reiterable
from .errors import ConfigError, DataError, ModelError
from .models import LoadedModel, set_label_names_
from .targets import find_head

_PLACEHOLDER = re.compile(r"LABEL_\d+")


def head_module(model: nn.Module, example: Tensor) -> tuple[str, nn.Module]:
    """The qualified name and module of the layer that produces `model`'s logits on `example`."""
    names = find_head(model, example)
    if not names:
        raise ModelError(
            f"no Linear/Conv layer of {type(model).__name__} produces its logits, so it has no head to "
            "replace or fit; give a model whose last layer is a Linear or 1x1 Conv classifier"
        )
    module_name = names[0].rpartition(".")[0]
    return module_name, model.get_submodule(module_name)


def labels_differ(checkpoint_names: list[str] | None, num_checkpoint_classes: int, task_names: list[str]) -> bool:
    """Whether the task's classes are not the checkpoint's, i.e. whether the head must be replaced.

    True when the counts differ, or when any name differs (compared stripped and case-insensitively, in
    order). An unnamed checkpoint (None, or all `LABEL_i` placeholders) counts as differing even with the
    same count: nothing says its outputs are in the task's order, so its head cannot be trusted.
    """
    if num_checkpoint_classes != len(task_names):
        return True
    if not checkpoint_names or all(_PLACEHOLDER.fullmatch(str(name)) for name in checkpoint_names):
        return True
    if len(checkpoint_names) != len(task_names):
        return True
    return [_normal(name) for name in checkpoint_names] != [_normal(name) for name in task_names]


def replace_head_(loaded: LoadedModel, label_names: list[str], example: Tensor) -> list[str]:
    """Swap the classifier for a fresh one with `len(label_names)` outputs; returns its parameter names.

    transformers: a new Linear with the old `in_features` and bias (initialised like the model's own,
    N(0, initializer_range)), and `config.num_labels` / `id2label` / `label2id` updated.
    timm: `model.reset_classifier(n)`, and `loaded.pretrained_cfg["num_classes"]` / `["label_names"]` updated.
    """
    if not label_names:
        raise ConfigError("replace_head_ needs at least one label name; got an empty list")
    model, count = loaded.model, len(label_names)
    example = example.to(_device_of(model))
    if loaded.library == "timm":
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        model.reset_classifier(count)
        heads = model.get_classifier()   # built on the CPU in float32: move it to where the model lives
        for head in heads if isinstance(heads, tuple) else (heads,):
            head.to(device=example.device, dtype=dtype)
        loaded.pretrained_cfg = dict(loaded.pretrained_cfg or {}, num_classes=count)
        loaded.pretrained_cfg.pop("label_descriptions", None)
    elif loaded.library == "transformers":
        name, old = head_module(model, example)
        if not isinstance(old, nn.Linear):
            raise ModelError(
                f"the head {name!r} of {type(model).__name__} is a {type(old).__name__}, not a Linear; "
                "replace it by hand, then fit it with fit_ridge_head_"
            )
        new = nn.Linear(old.in_features, count, bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)
        nn.init.normal_(new.weight, std=getattr(model.config, "initializer_range", 0.02))
        if new.bias is not None:
            nn.init.zeros_(new.bias)
        model.set_submodule(name, new)
        model.config.num_labels = count
        if hasattr(model, "num_labels"):   # transformers heads keep their own copy for the loss
            model.num_labels = count
    else:
        raise ModelError(f"cannot replace the head of a {loaded.library!r} model; only 'transformers' and 'timm'")
    set_label_names_(loaded, list(label_names))
    with torch.no_grad():   # a second head (e.g. a distillation head) left at the old size shows up here
        logits = logits_of(_eval_forward(model, example))
    if logits.shape[-1] != count:
        raise ModelError(
            f"after replacing the head, {type(model).__name__} still outputs {logits.shape[-1]} logits, not "
            f"{count}; it likely has more than one head, which replace_head_ does not handle"
        )
    return find_head(model, example)


def head_features(model: nn.Module, batches: Iterable, example: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The head's inputs `[N, F]` (float64, CPU) and the labels `[N]` over `batches` of (images, labels).

    Runs in eval mode without gradients; the model's mode is restored and the hook removed, even on error.
    """
    batches = reiterable(batches)
    device = _device_of(model)
    if example is None:
        example = first_images(batches, device)
    name, head = head_module(model, example.to(device))
    features, labels = [], []

    def keep_input(module, args, kwargs):
        inputs = args[0] if args else next(iter(kwargs.values()))
        _check_head_input(name, module, inputs)
        features.append(inputs.detach().flatten(1).to("cpu", torch.float64))

    handle = head.register_forward_pre_hook(keep_input, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, (images, batch_labels) in enumerate(iter_batches(batches, device)):
                if batch_labels is None:
                    raise DataError(f"batch {index} has no labels; head_features needs (images, labels) batches")
                if batch_labels.dim() != 1 or batch_labels.is_floating_point():
                    raise DataError(
                        f"batch {index} has labels of shape {tuple(batch_labels.shape)} and dtype "
                        f"{batch_labels.dtype}; give one integer class index per image"
                    )
                model(images)
                labels.append(batch_labels.to("cpu", torch.long))
    finally:
        handle.remove()
        model.train(was_training)
    features, labels = torch.cat(features), torch.cat(labels)
    if len(features) != len(labels):
        raise ModelError(
            f"the head {name!r} saw {len(features)} feature rows for {len(labels)} images; it is called more "
            "than once per image, so it cannot be fit as one linear probe"
        )
    return features, labels


def fit_ridge_head_(model: nn.Module, batches: Iterable, l2: float | None = None,
                    temperature: bool = True) -> dict:
    """Fit the head's weight and bias in closed form as a ridge probe; returns what was chosen.

    With features X [N, F] and one-hot labels Y [N, C], both centred by their means (mx, my):
        W = (XcᵀXc + λI)⁻¹ XcᵀYc,    b = my − mx W,    λ = l2 · trace(XcᵀXc) / F,
    i.e. λ is `l2` times the mean eigenvalue of the Gram matrix, so the fit does not change if the features
    are rescaled, and the bias is not penalised. A head without bias is fit without centring.

    l2=None chooses it on a grid by exact leave-one-out squared error (closed form for ridge). With fewer
    images than features a small fixed λ interpolates the sample: the head gets weights in the hundreds,
    which are harmless on the sample but blow up the logits as soon as the features move (train-mode
    BatchNorm, a pruned backbone), and fine-tuning from there diverges.
    temperature=True then multiplies W and b by the T >= 1 that minimises the cross-entropy of the
    leave-one-out predictions, so the logits are calibrated rather than flat one-hot regression outputs: T
    grows only as far as held-out images support it. With nothing to learn, λ grows, W shrinks and the
    logits stay near 0 (cross-entropy near ln C).
    Returns {"l2", "temperature", "loo_accuracy", "loo_cross_entropy"}. Solved in float64 by an SVD,
    written into the head in place.
    """
    if l2 is not None and not l2 > 0:
        raise ConfigError(f"l2 must be > 0 for the ridge head (or None to choose it); got {l2}")
    batches = reiterable(batches)
    example = first_images(batches, _device_of(model))
    _, head = head_module(model, example)
    features, labels = head_features(model, batches, example)
    classes = head.weight.shape[0]
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(
            f"labels range over [{int(labels.min())}, {int(labels.max())}] but the head has {classes} outputs; "
            "replace the head for the task's classes first (replace_head_)"
        )
    targets = nn.functional.one_hot(labels, classes).to(torch.float64)
    fit = _ridge(features, targets, l2, fit_bias=head.bias is not None)
    scale = _loo_temperature(fit["loo_predictions"], labels) if temperature else 1.0
    loo_logits = scale * fit["loo_predictions"]
    with torch.no_grad():
        head.weight.copy_((scale * fit["weight"]).T.reshape(head.weight.shape))
        if head.bias is not None:
            head.bias.copy_(scale * fit["bias"])
    return {"l2": fit["l2"], "temperature": scale,
            "loo_accuracy": float((loo_logits.argmax(-1) == labels).double().mean()),
            "loo_cross_entropy": float(nn.functional.cross_entropy(loo_logits, labels))}


def probe_accuracy(model: nn.Module, batches: Iterable) -> float:
    """Top-1 accuracy of the model's logits on labelled `batches` (eval mode, no gradients, mode restored)."""
    correct = total = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, (images, labels) in enumerate(iter_batches(batches, _device_of(model))):
                if labels is None:
                    raise DataError(f"batch {index} has no labels; probe_accuracy needs (images, labels) batches")
                predicted = logits_of(model(images)).argmax(dim=-1)
                correct += int((predicted == labels.reshape(predicted.shape)).sum())
                total += labels.numel()
    finally:
        model.train(was_training)
    return correct / total


L2_GRID = tuple(10.0 ** (k / 4) for k in range(-24, 13))   # 1e-6 ... 1e3, four steps a decade


def _ridge(features: Tensor, targets: Tensor, l2: float | None, fit_bias: bool = True) -> dict:
    """Closed-form ridge minimising |Y − XW − b|² + λ|W|² (float64), with its leave-one-out predictions.

    From the thin SVD Xc = U S Vᵀ: W = V diag(s/(s²+λ)) UᵀYc, and the hat matrix of the fit is
    H = 11ᵀ/N + U diag(s²/(s²+λ)) Uᵀ (the 11ᵀ/N term is the unpenalised bias), so the leave-one-out
    residuals are (Y − Ŷ)ᵢ / (1 − Hᵢᵢ) without refitting (the PRESS identity of linear smoothers).
    l2=None picks the `L2_GRID` value with the least leave-one-out squared error.
    Returns weight [F, C], bias [C] (None without bias), l2, loo_predictions [N, C].
    """
    x, y = features.to(torch.float64), targets.to(torch.float64)
    count = x.shape[0]
    mean_x = x.mean(0) if fit_bias else torch.zeros(x.shape[1], dtype=x.dtype)
    mean_y = y.mean(0) if fit_bias else torch.zeros(y.shape[1], dtype=y.dtype)
    x, y = x - mean_x, y - mean_y
    u, s, vt = torch.linalg.svd(x, full_matrices=False)
    squares = s * s
    mean_eigenvalue = float(squares.sum()) / x.shape[1]
    unit = mean_eigenvalue if mean_eigenvalue > 0 else 1.0    # all-constant features: any λ > 0 will do
    projected = u.T @ y                                        # UᵀYc [k, C]
    leverage_base = 1.0 / count if fit_bias else 0.0

    def solve(relative: float):
        shrink = squares / (squares + relative * unit)         # s²/(s²+λ)
        fitted = u @ (shrink[:, None] * projected)
        leverage = leverage_base + (u * u) @ shrink
        residual = (y - fitted) / (1.0 - leverage).clamp_min(1e-12)[:, None]
        return shrink, residual

    if l2 is None:
        l2 = min(L2_GRID, key=lambda value: float(solve(value)[1].square().sum()))
    shrink, residual = solve(l2)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    weight = vt.T @ ((torch.where(s > 0, shrink / safe, torch.zeros_like(s)))[:, None] * projected)
    return {"weight": weight, "bias": (mean_y - mean_x @ weight) if fit_bias else None, "l2": l2,
            "loo_predictions": y + mean_y - residual}


LOGIT_RANGE = 10.0   # the median spread of a fitted head's logits is at most this (top probability <= 1 - 5e-5)


def _loo_temperature(predictions: Tensor, labels: Tensor) -> float:
    """The T >= 1 minimising the mean cross-entropy of T·predictions (convex in T: golden section).

    T is capped where the median per-image logit spread reaches LOGIT_RANGE: on separable samples the
    cross-entropy falls for ever as T grows, and a head that starts fine-tuning saturated learns nothing.
    """
    def loss(value: float) -> float:
        return float(nn.functional.cross_entropy(value * predictions, labels))

    spread = float((predictions.max(-1).values - predictions.min(-1).values).median())
    high = LOGIT_RANGE / spread if spread > 0 else 1.0
    # never below 1 (the ridge fit itself): a flatter head would predict less than the fit, and at T -> 0 its
    # argmax (the probe) and its weights (PX's data term with head="real") would carry nothing
    low = min(1.0, high)
    ratio = (5 ** 0.5 - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(80):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return (low + high) / 2


def _check_head_input(name: str, head: nn.Module, inputs: Tensor) -> None:
    """A ridge fit on flattened inputs is the head only for a Linear on [N, F] or a 1x1 Conv on [N, C, 1, ...]."""
    if isinstance(head, nn.Linear) and inputs.dim() == 2:
        return
    if (isinstance(head, nn.modules.conv._ConvNd) and head.groups == 1 and all(k == 1 for k in head.kernel_size)
            and all(size == 1 for size in inputs.shape[2:])):
        return
    raise ModelError(
        f"the head {name!r} ({type(head).__name__}) gets inputs of shape {tuple(inputs.shape)}; a ridge probe "
        "can be fit only into a Linear on [N, F] or a 1x1 Conv on pooled [N, C, 1, 1] features"
    )


def _eval_forward(model: nn.Module, images: Tensor):
    was_training = model.training
    model.eval()
    try:
        return model(images)
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _normal(name) -> str:
    return str(name).strip().lower()
