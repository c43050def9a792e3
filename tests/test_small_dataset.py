"""Every `hf-px` verb with its default flags on a dataset of 50 images (5 per class, no eval split): the user's
small-data regime. The default scoring sample (10 per class) and a recipe's image counts give way to the data,
each with a note, on the real pre-trained EfficientNet-Lite0 and on a tiny random-init ViT; the checkpoints
load back with exact zeros where the masks are off."""

import json

import pytest
import torch

import hf_px
from hf_px.cli import main
from hf_px.testing import efficientnet_lite0_weights, write_efficientnet_lite0_folder, write_fashion_mnist_dataset

pytestmark = [pytest.mark.needs_fashion_mnist, pytest.mark.usefixtures("no_network")]   # see conftest.py
RECIPES = {"efficientnet-lite0": "recipes/efficientnet-lite0-fashion-mnist-quick.yaml", "tiny-vit": "recipes/tiny.yaml"}
# (eval, train) images fine-tuning uses of the 50: the quick recipe asks 500 eval and 2,048 train, which would hold
# out every image, so 10% are held out; the tiny one asks 20 and 40, so 20 are held out and the other 30 trained on
SPLITS = {"efficientnet-lite0": (5, 45), "tiny-vit": (20, 30)}


@pytest.fixture(scope="module")
def fifty_images(tmp_path_factory):
    return write_fashion_mnist_dataset(tmp_path_factory.mktemp("fifty") / "data", per_class_train=5,
                                       per_class_test=0, layout="no_splits")


@pytest.fixture(params=["efficientnet-lite0", "tiny-vit"])
def model(request, tmp_path_factory):
    if request.param == "tiny-vit":
        return request.param, request.getfixturevalue("vit_folder")
    if efficientnet_lite0_weights() is None:
        pytest.skip("EfficientNet-Lite0 weights not installed (bash scripts/setup.sh)")
    return request.param, write_efficientnet_lite0_folder(tmp_path_factory.mktemp("lite0") / "model", image_size=32)


def test_every_verb_with_its_defaults_on_50_images(model, fifty_images, tmp_path, capsys):
    from pathlib import Path

    name, folder = model
    pruned, tuned = tmp_path / "pruned", tmp_path / "tuned"
    assert main(["prune", str(folder), "--dataset", str(fifty_images), "--output", str(pruned), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "the scoring sample takes 5 of every class" in printed      # the default 10 gave way, with a note
    assert "fewer than the 200 asked by --eval-examples: the sample is empty" in printed   # nothing left to probe
    record = json.loads((pruned / "hf_px.json").read_text())
    assert record["examples_per_class"] == 5 and len(record["score_indices"]) == 50
    probe = record["probe"]
    assert probe["eval_examples"] == 0 and probe["sparse"] is None and probe["eval_split"] == ""
    assert record["sparsity"] == pytest.approx(0.9)                    # the default sparsity, kept exactly

    recipe = Path(__file__).resolve().parent.parent / RECIPES[name]
    assert main(["finetune", str(recipe), "--model", str(pruned), "--dataset", str(fifty_images), "--output",
                 str(tuned), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"has {SPLITS[name][1]} labelled examples, fewer than the" in printed      # the train count gave way
    assert ("(a tenth, the default) are held out instead" in printed) == (name == "efficientnet-lite0")
    model_back, masks = hf_px.load_sparse(tuned)
    params = dict(model_back.named_parameters())
    assert masks and all(torch.count_nonzero(params[n].detach()[~m]) == 0 for n, m in masks.items())
    finetuned = json.loads((tuned / "hf_px.json").read_text())["finetune"]
    assert (finetuned["eval_examples"], finetuned["train_examples"]) == SPLITS[name]

    assert main(["inspect", str(tuned)]) == 0
    shown = capsys.readouterr().out
    assert f"method      {record['method']}" in shown and "90.00% achieved" in shown
    assert record["min_layer_density"] == pytest.approx(0.01) and ", min layer density 0.01" in shown   # auto's floor
    # offline, push checks the folder (a complete checkpoint) and then refuses in one line
    assert main(["push", str(tuned), "me/fifty"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "offline mode is on" in err
