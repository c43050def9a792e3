"""Head replacement and the ridge linear probe (docs/px.md section 6): brute-force oracles first, then tiny real models."""

import numpy as np
import pytest
import torch
from torch import nn

from hf_px.errors import ConfigError, DataError, ModelError
from hf_px.head import L2_GRID, LOGIT_RANGE, _loo_temperature, _ridge, fit_ridge_head_, head_features, head_module, labels_differ, probe_accuracy, replace_head_
from hf_px.models import LoadedModel


def _conv_net(bias: bool = True) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3, bias=bias))


def _batches(seed: int = 0, count: int = 3, size: int = 8, classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=generator), torch.randint(0, classes, (size,), generator=generator))
            for _ in range(count)]


def _oracle(features: np.ndarray, labels: np.ndarray, classes: int, l2: float, bias: bool):
    """Ridge by least squares on the augmented system [X 1; √λ I 0] θ = [Y; 0] (the bias column unpenalised)."""
    targets = np.eye(classes)[labels]
    centred = features - features.mean(0) if bias else features
    penalty = l2 * np.trace(centred.T @ centred) / features.shape[1]
    count, width = features.shape
    data_rows = np.hstack([features, np.ones((count, 1))]) if bias else features
    penalty_rows = np.sqrt(penalty) * np.eye(width, data_rows.shape[1])   # zero in the bias column
    design = np.vstack([data_rows, penalty_rows])
    rhs = np.vstack([targets, np.zeros((width, classes))])
    theta = np.linalg.lstsq(design, rhs, rcond=None)[0]
    return theta[:width].T, (theta[-1] if bias else None)


# ------------------------------------------------------------------------------------------ labels_differ


@pytest.mark.parametrize("checkpoint, count, task, differ", [
    (["cat", "dog"], 2, ["cat", "dog"], False),
    ([" Cat", "DOG "], 2, ["cat", "dog"], False),          # case and whitespace do not matter
    (["dog", "cat"], 2, ["cat", "dog"], True),             # order does
    (["cat", "dog"], 2, ["cat", "dog", "bird"], True),     # counts differ
    (["cat", "dog"], 3, ["cat", "dog"], True),
    (None, 2, ["cat", "dog"], True),                       # unnamed, same count: order unknown -> differ
    (["LABEL_0", "LABEL_1"], 2, ["cat", "dog"], True),     # placeholders count as unnamed
    (["LABEL_0", "LABEL_1"], 2, ["LABEL_0", "LABEL_1"], True),
    (["cat", "fish"], 2, ["cat", "dog"], True),
])
def test_labels_differ(checkpoint, count, task, differ):
    assert labels_differ(checkpoint, count, task) is differ


# ---------------------------------------------------------------------------------------- ridge oracles


@pytest.mark.parametrize("build, bias", [(_conv_net, True), (lambda: _conv_net(bias=False), False)])
def test_ridge_matches_lstsq_oracle(build, bias):
    torch.manual_seed(0)
    model, batches, l2 = build(), _batches(), 0.05
    features, labels = head_features(model, batches)
    assert features.dtype == torch.float64 and features.shape == (24, 6)
    assert labels.tolist() == torch.cat([batch[1] for batch in batches]).tolist()

    fit_ridge_head_(model, batches, l2=l2, temperature=False)

    weight, bias_ = _oracle(features.numpy(), labels.numpy(), 3, l2, bias)
    _, head = head_module(model, batches[0][0])
    np.testing.assert_allclose(head.weight.detach().numpy(), weight, rtol=1e-4, atol=1e-6)
    if bias:
        np.testing.assert_allclose(head.bias.detach().numpy(), bias_, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_leave_one_out_predictions_match_refitting_without_each_image(bias):
    # brute force: refit the ridge 12 times, each without one image (same absolute λ), and predict that image
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    targets = nn.functional.one_hot(torch.arange(3).repeat(4), 3).to(torch.float64)
    centred = features - features.mean(0) if bias else features
    unit = float(centred.square().sum()) / 5          # λ = l2 · mean eigenvalue of the full sample's Gram matrix
    for l2 in (1e-3, 0.3, 10.0):
        fit = _ridge(features, targets, l2, fit_bias=bias)
        for i in range(12):
            keep = torch.arange(12) != i
            x_mean = features[keep].mean(0) if bias else torch.zeros(5, dtype=torch.float64)
            y_mean = targets[keep].mean(0) if bias else torch.zeros(3, dtype=torch.float64)
            x, y = features[keep] - x_mean, targets[keep] - y_mean
            weight = torch.linalg.solve(x.T @ x + l2 * unit * torch.eye(5, dtype=torch.float64), x.T @ y)
            torch.testing.assert_close(fit["loo_predictions"][i], (features[i] - x_mean) @ weight + y_mean)


def test_chosen_l2_has_the_least_leave_one_out_error_on_the_grid():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(16, 40, generator=generator, dtype=torch.float64)   # more features than images
    labels = torch.arange(4).repeat(4)
    targets = nn.functional.one_hot(labels, 4).to(torch.float64)
    errors = {l2: float((_ridge(features, targets, l2)["loo_predictions"] - targets).square().sum()) for l2 in L2_GRID}
    assert _ridge(features, targets, None)["l2"] == min(errors, key=errors.get)


def test_temperature_minimises_the_cross_entropy_and_is_capped():
    generator = torch.Generator().manual_seed(4)
    labels = torch.arange(5).repeat(8)
    predictions = 0.3 * nn.functional.one_hot(labels, 5).double() + 0.25 * torch.randn(40, 5, generator=generator,
                                                                                      dtype=torch.float64)
    chosen = _loo_temperature(predictions, labels)
    grid = torch.linspace(0, 60, 6001, dtype=torch.float64)
    losses = torch.stack([nn.functional.cross_entropy(t * predictions, labels) for t in grid])
    assert abs(chosen - float(grid[losses.argmin()])) < 0.02
    # separable predictions: the loss falls for ever; T stops where the median logit spread is LOGIT_RANGE
    separable = nn.functional.one_hot(labels, 5).double()
    assert _loo_temperature(separable, labels) == pytest.approx(LOGIT_RANGE, rel=1e-6)
    # uninformative predictions: the best T would be 0; it stays at 1, the ridge fit itself
    assert _loo_temperature(torch.randn(40, 5, generator=generator, dtype=torch.float64), labels) == pytest.approx(1.0)


def test_head_fit_does_not_interpolate_few_images_with_many_features():
    """The failure the leave-one-out choice fixes: 20 images, 64 correlated features, labels unrelated to them.
    A fixed small λ memorises the sample; the chosen fit finds nothing to learn and keeps the logits near 0,
    near the cross-entropy of a uniform guess (ln C) on fresh images."""
    generator = torch.Generator().manual_seed(5)
    mixing = torch.randn(3, 64, generator=generator)

    def draw(count):
        return torch.randn(count, 3, generator=generator) @ mixing + 0.01 * torch.randn(count, 64, generator=generator)

    model, labels = nn.Sequential(nn.Identity(), nn.Linear(64, 4)), torch.arange(4).repeat(5)
    batches = [(draw(20), labels)]
    fit_ridge_head_(model, batches, l2=1e-6, temperature=False)
    assert probe_accuracy(model, batches) == 1.0      # the sample is memorised
    chosen = fit_ridge_head_(model, batches)
    assert chosen["l2"] > 1.0 and chosen["temperature"] == pytest.approx(1.0) and chosen["loo_accuracy"] < 0.5
    fresh = model(draw(40)).detach()
    assert float((fresh.max(-1).values - fresh.min(-1).values).max()) < 0.2   # flat: nothing was learnt
    assert float(nn.functional.cross_entropy(fresh, torch.arange(4).repeat(10))) == pytest.approx(np.log(4), abs=0.02)


def test_ridge_is_invariant_to_feature_scale():
    # λ = l2 · trace(XcᵀXc)/F scales with the features, so scaling the features scales W by the inverse
    torch.manual_seed(0)
    model, batches = _conv_net(), _batches()
    fit_ridge_head_(model, batches)
    logits = torch.cat([model(images) for images, _ in batches])
    with torch.no_grad():
        model[0].weight.mul_(10)
        model[0].bias.mul_(10)
    fit_ridge_head_(model, batches)
    torch.testing.assert_close(torch.cat([model(images) for images, _ in batches]), logits, rtol=1e-4, atol=1e-5)


def test_ridge_separates_separable_features():
    generator = torch.Generator().manual_seed(1)
    centres = 5 * torch.randn(4, 16, generator=generator)
    labels = torch.arange(4).repeat(50)
    features = centres[labels] + 0.1 * torch.randn(200, 16, generator=generator)
    batches = list(zip(features.split(50), labels.split(50)))
    model = nn.Sequential(nn.Identity(), nn.Linear(16, 4))
    assert probe_accuracy(model, batches) < 1.0
    fit_ridge_head_(model, batches)
    assert probe_accuracy(model, batches) == 1.0


def test_fit_leaves_the_model_as_found():
    model, batches = _conv_net().train(), _batches()
    model[0].weight.requires_grad_(False)
    fit_ridge_head_(model, batches)
    assert model.training and not model[0].weight.requires_grad and model[4].weight.requires_grad
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_head_features_removes_its_hook_on_error():
    model = _conv_net().train()
    batches = _batches() + [torch.randn(4, 3, 8, 8)]   # the last batch has no labels
    with pytest.raises(DataError, match="no labels"):
        head_features(model, batches)
    assert model.training and all(not m._forward_pre_hooks for m in model.modules())


def test_fit_rejects_bad_input():
    model = _conv_net()
    with pytest.raises(DataError, match="head has 3 outputs"):
        fit_ridge_head_(model, _batches(classes=5, seed=3, count=4))
    with pytest.raises(ConfigError, match="l2"):
        fit_ridge_head_(model, _batches(), l2=0)
    with pytest.raises(ModelError, match="ridge probe"):   # a Linear applied per token is not a probe
        fit_ridge_head_(nn.Sequential(nn.Linear(8, 3)), [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))])


# ---------------------------------------------------------------------------------- replace_head_ on real models


def _tiny_vit(num_labels: int = 3):
    import transformers as tf

    config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=num_labels)
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(config).eval()
    return LoadedModel(model, "transformers", "tiny-vit", None, None, preprocess=lambda image: image, label_names=None)


def _tiny_timm():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3).eval()
    names = ["a", "b", "c"]
    return LoadedModel(model, "timm", "resnet18", None, None, preprocess=lambda image: image, label_names=names,
                       pretrained_cfg={**model.pretrained_cfg, "label_names": names})


@pytest.mark.parametrize("build, head_name", [(_tiny_vit, "classifier"), (_tiny_timm, "fc")])
def test_replace_head(build, head_name):
    loaded = build()
    example = torch.randn(2, 3, 32, 32)
    names = ["ant", "bee", "cow", "dog", "eel"]
    new_params = replace_head_(loaded, names, example)

    assert new_params == [f"{head_name}.weight", f"{head_name}.bias"]
    name, head = head_module(loaded.model, example)
    assert name == head_name and head.out_features == 5
    assert loaded.label_names == names
    if loaded.library == "transformers":
        config = loaded.model.config
        assert config.num_labels == 5 and config.id2label == dict(enumerate(names))
        assert config.label2id == {n: i for i, n in enumerate(names)} and loaded.model.num_labels == 5
    else:
        assert loaded.model.num_classes == 5
        assert loaded.pretrained_cfg["num_classes"] == 5 and loaded.pretrained_cfg["label_names"] == names

    batches = [(torch.randn(10, 3, 32, 32), torch.arange(10) % 5)]
    fit_ridge_head_(loaded.model, batches)
    from hf_px.batches import logits_of
    assert logits_of(loaded.model(example)).shape == (2, 5)
    assert 0.0 <= probe_accuracy(loaded.model, batches) <= 1.0


def test_replace_head_rejects_empty_labels():
    with pytest.raises(ConfigError, match="at least one"):
        replace_head_(_tiny_vit(), [], torch.randn(1, 3, 32, 32))


def test_one_by_one_conv_head_followed_by_flatten():
    """timm's MobileNetV3/GhostNet style: logits are a flattened view of a 1x1 Conv's [N, C, 1, 1] output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(6, 3, 1), nn.Flatten())
    batches = [(torch.randn(12, 3, 8, 8), torch.arange(3).repeat(4))]
    name, head = head_module(model, batches[0][0])
    assert name == "3" and head is model[3]
    features, labels = head_features(model, batches)
    fit_ridge_head_(model, batches, l2=0.05, temperature=False)
    weight, bias = _oracle(features.numpy(), labels.numpy(), 3, 0.05, True)
    np.testing.assert_allclose(head.weight.detach().flatten(1).numpy(), weight, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.bias.detach().numpy(), bias, rtol=1e-4, atol=1e-6)
