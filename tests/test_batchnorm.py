"""BatchNorm recalibration: known answers (the statistics of one train-mode pass), invariants, and prune's
between-rounds option, on a small BatchNorm CNN whose running statistics are far from fresh."""

import copy

import pytest
import torch
from torch import nn

import hf_px
from hf_px.batchnorm import batchnorm_layers, recalibrate_batchnorm_


def _trained_bn_net(seed: int = 0) -> nn.Module:
    """A BatchNorm CNN with non-trivial running statistics and weights: 30 SGD steps on shifted inputs."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(30):
        x = 2.0 * torch.randn(16, 3, 8, 8) + 1.5
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 4, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _bn_inputs(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """Oracle: every BN layer's inputs over `batches`, from a forward pass with only the BN layers in train
    mode, concatenated and flattened to [values, channels] (float64)."""
    probe = copy.deepcopy(model)   # the pass updates running statistics: run it on a copy
    seen = {name: [] for name in batchnorm_layers(probe)}
    handles = [layer.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].detach()))
               for name, layer in batchnorm_layers(probe).items()]
    probe.eval()
    for layer in batchnorm_layers(probe).values():
        layer.train()
    with torch.no_grad():
        for images, _ in batches:
            probe(images)
    for handle in handles:
        handle.remove()
    return {name: torch.cat([x.movedim(1, -1).reshape(-1, x.shape[1]) for x in values]).double()
            for name, values in seen.items()}


def _calibration(count: int = 1, size: int = 24, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=generator), torch.zeros(size, dtype=torch.long))
            for _ in range(count)]


@pytest.mark.parametrize("batches", [1, 3])
def test_recalibrated_statistics_are_those_of_one_train_mode_pass(batches):
    model = _trained_bn_net()
    hf_px.prune(model, _calibration(), method="magnitude", sparsity=0.5)
    calibration = _calibration(batches)
    expected = _bn_inputs(model, calibration)
    stale = {name: layer.running_mean.clone() for name, layer in batchnorm_layers(model).items()}

    assert recalibrate_batchnorm_(model, calibration) == 3
    for name, layer in batchnorm_layers(model).items():
        values = expected[name]
        torch.testing.assert_close(layer.running_mean.double(), values.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_var.double(), values.var(0, unbiased=True), rtol=1e-5, atol=1e-6)
        assert int(layer.num_batches_tracked) == batches
        assert not torch.allclose(layer.running_mean, stale[name], atol=1e-3)   # the statistics really were stale


def test_one_batch_gives_eval_mode_what_train_mode_computes():
    """After recalibrating on one batch, eval mode on that batch normalises with its own statistics, i.e.
    reproduces the train-mode forward pass (up to BN's unbiased-variance factor n/(n-1))."""
    model = _trained_bn_net()
    hf_px.prune(model, _calibration(), method="magnitude", sparsity=0.7)
    images = _calibration(size=256)[0][0]
    model.eval()
    for layer in batchnorm_layers(model).values():
        layer.train()
    with torch.no_grad():
        train_mode = copy.deepcopy(model)(images)
    model.eval()
    with torch.no_grad():
        stale = model(images)
        recalibrate_batchnorm_(model, [images])
        recalibrated = model(images)
    assert (stale - train_mode).abs().max() > 0.1
    torch.testing.assert_close(recalibrated, train_mode, rtol=0.02, atol=0.02)


def test_model_is_left_as_found():
    model = _trained_bn_net().train()
    model[0].weight.requires_grad_(False)
    momenta = [layer.momentum for layer in batchnorm_layers(model).values()]
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    recalibrate_batchnorm_(model, _calibration(2))
    assert all(module.training for module in model.modules())
    assert [layer.momentum for layer in batchnorm_layers(model).values()] == momenta
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())


def test_dropout_is_off_during_recalibration():
    # the Dropout sits before the last BN: with it active the statistics would change from run to run
    model = _trained_bn_net()
    recalibrate_batchnorm_(model, _calibration(2))
    first = model[10].running_var.clone()
    recalibrate_batchnorm_(model, _calibration(2))
    assert torch.equal(first, model[10].running_var)


def test_model_without_batchnorm_is_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6]), nn.Flatten(), nn.Linear(144, 2))
    state = copy.deepcopy(model.state_dict())
    assert recalibrate_batchnorm_(model, _calibration()) == 0
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in state.items())


def test_prune_recalibrates_between_rounds():
    """With calibration batches, every round ends with the masked model's own statistics, so the model
    prune returns carries the statistics recalibrate_batchnorm_ computes for its final masks."""
    calibration = _calibration(2)
    model = _trained_bn_net()
    masks = hf_px.prune(model, _calibration(), method="magnitude", sparsity=0.8, rounds=3, calibration=calibration)
    oracle = copy.deepcopy(model)
    recalibrate_batchnorm_(oracle, calibration)
    for name, layer in batchnorm_layers(model).items():
        torch.testing.assert_close(layer.running_var, batchnorm_layers(oracle)[name].running_var)
    assert hf_px.global_density(masks) == pytest.approx(0.2, abs=1e-3)
    plain = _trained_bn_net()
    hf_px.prune(plain, _calibration(), method="magnitude", sparsity=0.8, rounds=3)
    assert not torch.allclose(plain[1].running_var, model[1].running_var)   # without it: the dense statistics


# ---------------------------------------------------------------------------------------------- hf-px prune


@pytest.fixture(scope="module")
def resnet_folder(tmp_path_factory):
    """A tiny transformers BatchNorm ResNet with unnamed classes, saved as a local folder."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                             layer_type="basic", num_labels=10)
    folder = tmp_path_factory.mktemp("resnet") / "dense"
    tf.ResNetForImageClassification(config).save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.286] * 3,
                         image_std=[0.353] * 3).save_pretrained(folder)
    return folder


@pytest.mark.needs_fashion_mnist
def test_prune_recalibrates_and_records_it(resnet_folder, dataset, tmp_path):
    import json

    from hf_px.cli import main

    common = [str(resnet_folder), "--dataset", str(dataset), "--method", "magnitude", "--sparsity", "0.6",
              "--examples-per-class", "2", "--eval-examples", "10", "--no-progress"]
    assert main(["prune", *common, "--output", str(tmp_path / "on"), "--calibration-examples", "40"]) == 0
    assert main(["prune", *common, "--output", str(tmp_path / "off"), "--no-recalibrate-bn"]) == 0
    on = json.loads((tmp_path / "on" / "hf_px.json").read_text())
    off = json.loads((tmp_path / "off" / "hf_px.json").read_text())
    assert on["batchnorm"]["recalibrated"] and on["batchnorm"]["layers"] == 6 and on["batchnorm"]["images"] == 40
    indices = on["batchnorm"]["calibration_indices"]
    assert indices[:20] == on["score_indices"] and len(set(indices)) == 40   # the scoring sample, then 20 more
    assert on["probe"]["sparse_stale_batchnorm"] is not None
    assert not off["batchnorm"]["recalibrated"] and off["probe"]["sparse_stale_batchnorm"] is None
    assert "BatchNorm | running statistics of all 6 layers re-estimated on 40" in (tmp_path / "on" / "README.md").read_text()
    # the saved statistics are those of the pruned model on the calibration images
    from hf_px import checkpoint, data

    loaded, _, _ = checkpoint.open_sparse(str(tmp_path / "on"))
    task = data.resolve_task(None, str(dataset))
    train = data.open_split(task, "train")
    images = [data._to_pil(row, "") for row in train.select(indices)["image"]]
    labels = [0] * len(images)
    oracle = copy.deepcopy(loaded.model)
    recalibrate_batchnorm_(oracle, data.make_batches(images, labels, loaded.preprocess, 32))
    for name, layer in batchnorm_layers(loaded.model).items():
        torch.testing.assert_close(layer.running_var, batchnorm_layers(oracle)[name].running_var)


@pytest.mark.needs_fashion_mnist
def test_calibration_examples_beyond_the_train_split_fail_before_saving(resnet_folder, dataset, tmp_path, capsys):
    from hf_px.cli import main

    code = main(["prune", str(resnet_folder), "--dataset", str(dataset), "--method", "magnitude",
                 "--examples-per-class", "2", "--eval-examples", "10", "--calibration-examples", "500",
                 "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "calibration" in err[0] and not (tmp_path / "out").exists()
