"""`hf-px` as a new user meets it (issue 13): bad input fails before the work in one line naming the problem and
the fix (exit 2, no traceback), a finished result is never lost, nothing is left half-written. Offline: tiny
models in local folders and small dataset folders of real Fashion-MNIST images."""

import json
import os
import stat

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import hf_px
from hf_px import hub, models
from hf_px.cli import main
from hf_px.data import FASHION_MNIST_CLASSES
from hf_px.pruning import AUTO_FOR_TRANSFORMERS

pytestmark = [pytest.mark.needs_fashion_mnist, pytest.mark.usefixtures("no_network")]   # see conftest.py
SMALL = ["--examples-per-class", "2", "--eval-examples", "10", "--rounds", "2", "--no-progress"]


def _fails(capsys, argv, *fragments):
    """Run `hf-px ARGV`: exit 2, one line on stderr holding every fragment, no traceback; returns the line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture
def no_model_load(monkeypatch):
    """Checks that run before the work: loading the model fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")
    monkeypatch.setattr(models, "load_model", refuse)


def _dataset_of(path, images, labels, names):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(path))
    return path


# --------------------------------------------------------------------------- 1-3: results lost or found too late


def test_push_without_output_that_fails_keeps_the_checkpoint_and_says_where(vit_folder, dataset, tmp_path, capsys,
                                                                           monkeypatch):
    checked = []
    monkeypatch.setattr(hub, "check_push_access", lambda repo: checked.append(repo))   # pre-flight passes

    def push_fails(folder, repo, private=False):
        raise hub.HubError(f"the Hub refused the push to {repo!r} (HTTP 403)")
    monkeypatch.setattr(hub, "push_folder", push_fails)
    err = _fails(capsys, ["prune", str(vit_folder), "--dataset", str(dataset), "--push-to-hub", "me/x", *SMALL],
                 "HTTP 403", "the checkpoint is saved in", "hf-px push")
    kept = err.split("the checkpoint is saved in ")[1].split(":")[0]
    assert checked == ["me/x"] and os.path.isdir(kept)
    _, masks = hf_px.load_sparse(kept)      # the finished result, complete
    assert masks and f"hf-px push {kept} me/x" in err


def test_push_is_checked_before_the_work(vit_folder, dataset, capsys, no_model_load):
    # offline (HF_HUB_OFFLINE, as in this test run): refused at once, before loading the model
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(dataset), "--push-to-hub", "me/x", *SMALL],
           "cannot push to 'me/x'", "HF_HUB_OFFLINE", "--output")
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(dataset), "--push-to-hub", "not a repo", *SMALL],
           "not a valid Hub repo id")


@pytest.mark.parametrize("where", ["/proc/hf-px-test/out", "file/out"])
def test_unwritable_output_fails_before_the_work(where, vit_folder, dataset, tmp_path, capsys, no_model_load):
    (tmp_path / "file").write_text("a file, not a folder")
    output = where if where.startswith("/") else str(tmp_path / where)
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(dataset), "--output", output, *SMALL],
           "cannot write the output", "choose a folder you can write to")
    assert not any(p.name.startswith(".hf-px-probe") for p in tmp_path.iterdir())


# --------------------------------------------------------------------------- 4-6: degenerate input accepted as success


def test_one_class_is_refused(vit_folder, tmp_path, capsys):
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (28, 28), dtype=np.uint8)) for i in range(6)]
    one = _dataset_of(tmp_path / "one", images, [0] * 6, ["shoe"])
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(one), "--output", str(tmp_path / "out"), *SMALL],
           "has 1 class ('shoe')", "at least 2")
    folder = tmp_path / "folder" / "train" / "shoe"
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i}.png")
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(tmp_path / "folder"), "--output",
                    str(tmp_path / "out"), *SMALL], "at least 2 classes")
    assert not (tmp_path / "out").exists()


def test_constant_images_are_refused(vit_folder, tmp_path, capsys):
    black = [Image.new("L", (28, 28)) for _ in range(8)]
    data = _dataset_of(tmp_path / "black", black, [0, 1] * 4, ["a", "b"])
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(data), "--output", str(tmp_path / "out"), *SMALL],
           "every scoring image is constant", "real images")
    assert not (tmp_path / "out").exists()


def test_an_emptied_tensor_is_an_error_unless_allowed(vit_folder, dataset, tmp_path, capsys):
    """px-exact without a floor empties the tiny ViT's W_Q/W_K at 90% sparsity (near-uniform attention at
    random initialisation scores them far below the rest): an error naming the fixes, nothing saved."""
    argv = ["prune", str(vit_folder), "--dataset", str(dataset), "--method", "px-exact", "--sparsity", "0.9",
            "--output", str(tmp_path / "out"), *SMALL]
    err = _fails(capsys, argv, "pruned to zero density", "q_proj", "nothing was saved", "--allow-empty-layers",
                 "--min-layer-density")
    assert "UserWarning" not in err and not (tmp_path / "out").exists()
    assert main(argv + ["--allow-empty-layers"]) == 0
    captured = capsys.readouterr()
    assert "layers at zero density: vit.layers.0.attention.q_proj.weight" in captured.out
    assert "UserWarning" not in captured.err       # said once, in the summary's words
    record = json.loads((tmp_path / "out" / "hf_px.json").read_text())
    assert min(record["layer_densities"].values()) == 0.0


@pytest.mark.parametrize("model", ["vit", "swin"])
def test_the_default_method_never_empties_a_tensor(model, vit_folder, dataset, tmp_path, capsys):
    import transformers as tf

    folder = vit_folder
    if model == "swin":
        torch.manual_seed(0)
        folder = tmp_path / "swin"
        tf.SwinForImageClassification(tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                    num_heads=[1, 2], window_size=4, num_labels=10)).save_pretrained(folder)
        tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    assert main(["prune", str(folder), "--dataset", str(dataset), "--sparsity", "0.9", "--output",
                 str(tmp_path / "out"), *SMALL]) == 0
    assert "layers at zero density: none" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "hf_px.json").read_text())
    assert (record["method"], record["method_options"]) == (AUTO_FOR_TRANSFORMERS["method"],
                                                            AUTO_FOR_TRANSFORMERS["method_options"])
    assert record["min_layer_density"] == pytest.approx(0.01)
    for name, density in record["layer_densities"].items():
        assert density >= 0.01, name        # the floor: a tenth of the 10% target density


def test_min_channel_density_keeps_every_output_channel_end_to_end(vit_folder, dataset, tmp_path, capsys):
    """`--min-channel-density` through `hf-px prune`: the saved masks (read back) have no output channel pruned
    away, which the same run without the flag has; the record and `hf-px inspect` name the floor."""
    def empty_channels(folder):
        _, masks = hf_px.load_sparse(str(folder))
        return sum(int((~mask.reshape(mask.shape[0], -1).any(1)).sum()) for mask in masks.values())

    common = [str(vit_folder), "--dataset", str(dataset), "--method", "magnitude", "--sparsity", "0.97",
              "--allow-empty-layers", *SMALL]
    assert main(["prune", *common, "--output", str(tmp_path / "plain")]) == 0
    assert main(["prune", *common, "--min-channel-density", "0.003", "--output", str(tmp_path / "floored")]) == 0
    assert empty_channels(tmp_path / "plain") > 0 and empty_channels(tmp_path / "floored") == 0
    record = json.loads((tmp_path / "floored" / "hf_px.json").read_text())
    assert record["min_channel_density"] == pytest.approx(0.003)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "floored")]) == 0
    assert ", min channel density 0.003" in capsys.readouterr().out
    # a floor that cannot fit: one line naming the value that does, before any round, and nothing written
    err = _fails(capsys, ["prune", *common, "--min-channel-density", "0.03", "--output", str(tmp_path / "tight")],
                 "min_channel_density=0.03", "lower min_channel_density to at most")
    assert not (tmp_path / "tight").exists(), err


# --------------------------------------------------------------------------- 7-8: tracebacks left


def test_cuda_without_a_gpu(vit_folder, dataset, tmp_path, capsys, monkeypatch, no_model_load):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        _fails(capsys, ["prune", str(vit_folder), "--dataset", str(dataset), "--device", device, "--output",
                        str(tmp_path / "out"), *SMALL], "torch sees no GPU", "--device cpu")
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(dataset), "--device", "gpu0", "--output",
                    str(tmp_path / "out"), *SMALL], "'gpu0'", "cuda:N")


@pytest.fixture(scope="module")
def pruned_vit(vit_folder, dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("pruned") / "vit-px"
    assert main(["prune", str(vit_folder), "--dataset", str(dataset), "--sparsity", "0.5", "--output", str(output),
                 *SMALL]) == 0
    return output


def test_inspect_checks_field_types_and_masked_weights(pruned_vit, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad-types"
    shutil.copytree(pruned_vit, bad)
    record = json.loads((bad / "hf_px.json").read_text())
    (bad / "hf_px.json").write_text(json.dumps({**record, "probe": "x"}))
    _fails(capsys, ["inspect", str(bad)], "probe is 'x' (str), not a mapping", "write the checkpoint again")
    (bad / "hf_px.json").write_text(json.dumps({**record, "probe": {**record["probe"], "dense": "high"}}))
    _fails(capsys, ["inspect", str(bad)], "probe.dense is 'high'")
    with pytest.raises(hf_px.ModelError, match="probe.dense"):
        hf_px.load_sparse(str(bad))        # one check, for inspect and load alike

    stray = tmp_path / "stray"
    shutil.copytree(pruned_vit, stray)
    weights = load_file(str(stray / "model.safetensors"))
    name = next(n for n, w in weights.items() if w.dim() == 2 and (w == 0).any())
    weights[name][weights[name] == 0] = 0.5
    save_file(weights, str(stray / "model.safetensors"), metadata={"format": "pt"})
    _fails(capsys, ["inspect", str(stray)], "are not zero")

    no_config = tmp_path / "no-config"
    shutil.copytree(pruned_vit, no_config)
    (no_config / "config.json").unlink()
    _fails(capsys, ["inspect", str(no_config)], "has no config.json")


def test_inspect_json(pruned_vit, capsys):
    assert main(["inspect", str(pruned_vit), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["provenance"]["sparsity"] == 0.5 and printed["zero_density_layers"] == []
    assert printed["global_density"] == pytest.approx(0.5, abs=1e-3)
    assert set(printed["layer_densities"]) == set(printed["provenance"]["targets"])


# --------------------------------------------------------------------------- 12-13: data before the model


def test_named_fashion_mnist_task_reads_the_installed_files_offline(vit_folder, tmp_path, capsys):
    assert main(["prune", str(vit_folder), "--task", "fashion-mnist", "--dry-run", "--examples-per-class", "1",
                 "--eval-examples", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "task      fashion-mnist (10 classes): 10 scoring images in batches of 32" in out
    assert "10 eval images (test)" in out


def test_small_data_uses_the_eval_images_there_are_and_data_is_checked_before_the_model(vit_folder, dataset,
                                                                                       tmp_path, capsys, monkeypatch):
    # the fixture has 3 test images per class: the default --eval-examples 200 uses those 30, with a note
    assert main(["prune", str(vit_folder), "--dataset", str(dataset), "--dry-run", "--no-progress",
                 "--examples-per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert "note: split 'test'" in out and "all 30 are used" in out and "30 eval images (test)" in out
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    _fails(capsys, ["prune", str(vit_folder), "--task", "cifar11", "--dry-run"], "unknown task 'cifar11'")
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(tmp_path / "missing" / "x"), "--dry-run"], "missing")
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(dataset), "--examples-per-class", "50", "--dry-run"],
           "--examples-per-class")


# --------------------------------------------------------------------------- 14-17: the CLI as people use it


def test_version_and_help_list_methods_and_tasks(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"hf-px {hf_px.__version__}"
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in [*hf_px.list_methods(), *hf_px.data.TASKS]:
        assert name in text, name
    assert "--allow-empty-layers" in text and "--min-layer-density" in text
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert "recipe key momentum" not in text and "SGD momentum" in text and "{sgd,adamw}" in text and "{constant,step,cosine}" in text
    assert "(default 0.9)" in text and "tiny.yaml" in text


def test_finetune_takes_a_shipped_recipe_by_name():
    from hf_px.finetune import load_recipe

    assert load_recipe("tiny.yaml") == load_recipe("tiny") == load_recipe(
        hf_px.finetune.RECIPES / "tiny.yaml")
    with pytest.raises(hf_px.ConfigError, match="shipped recipes: .*tiny.yaml"):
        load_recipe("tiny-typo")


def test_revision_on_a_local_folder_is_refused(vit_folder, dataset, tmp_path, capsys):
    _fails(capsys, ["prune", str(vit_folder), "--dataset", str(dataset), "--revision", "v1", "--output",
                    str(tmp_path / "out"), *SMALL], "only applies to Hub models", "drop --revision")
    assert not (tmp_path / "out").exists()


def test_output_follows_the_umask(vit_folder, dataset, tmp_path):
    old = os.umask(0o027)
    try:
        assert main(["prune", str(vit_folder), "--dataset", str(dataset), "--output", str(tmp_path / "out"),
                     *SMALL]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "out", *(tmp_path / "out").iterdir()]}
    assert modes.pop("out") == 0o750
    assert set(modes.values()) == {0o640}, modes      # model.safetensors and hf_px_masks.safetensors included


def test_card_of_local_inputs_says_what_is_unknown_and_shows_no_local_path(vit_folder, dataset,
                                                                           tmp_path, capsys):
    assert main(["prune", str(vit_folder), "--dataset", str(dataset), "--output", str(tmp_path / "out"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "note: the base model is unknown" in out and "note: the dataset is unknown" in out
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in card and str(vit_folder) not in card and str(dataset) not in card
    assert "**Unknown:** the base model, the dataset" in card
    assert "| Setting | Value |" in card and "| | |" not in card
    header = card.split("---\n")[1]
    assert "linear-probe accuracy" in header and "model-index" in header      # pruned only: the probe's accuracy


def test_saved_processor_converts_grey_images_for_plain_transformers(pruned_vit):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(str(pruned_vit))
    model = AutoModelForImageClassification.from_pretrained(str(pruned_vit)).eval()
    grey = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 255, "L")
    inputs = processor(images=grey, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert model(**inputs).logits.shape == (1, len(FASHION_MNIST_CLASSES))
