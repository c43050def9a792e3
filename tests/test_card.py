"""The model card: a YAML header huggingface_hub parses, and a body with the facts of the run."""

import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_px.card import density_plot, render_card
from hf_px.errors import ConfigError
from hf_px.record import CheckpointRecord

DENSITIES = {"vit.encoder.layer.0.attention.attention.query.weight": 0.125,
             "vit.encoder.layer.0.output.dense.weight": 0.0, "vit.encoder.layer.1.output.dense.weight": 0.5}
COUNTS = {"parameters": 86_389_248, "nonzero": 9_123_456, "targets": 85_054_464, "kept": 8_505_446}
PROBE = {"dense": 0.91, "sparse": 0.875, "sparse_same_head": 0.5, "eval_examples": 200, "eval_split": "test",
         "head_refit": True}
COMMAND = "hf-px prune google/vit-base-patch16-224 --task cifar10 --sparsity 0.9 --output vit-px90"


def _record(probe=None, **changes) -> CheckpointRecord:
    """A record as `save_sparse` completes it (densities, counts and global density filled in)."""
    return CheckpointRecord.from_dict({
        "base_model": "google/vit-base-patch16-224", "base_revision": "main", "source": "google/vit-base-patch16-224",
        "library": "transformers", "license": "apache-2.0", "method": "px", "method_options": {"gate_only": "dense"},
        "sparsity": 0.9, "rounds": 100, "seed": 3, "task": "cifar10", "dataset": "uoft-cs/cifar10", "split": "train",
        "examples_per_class": 10, "command": COMMAND, "probe": probe, "layer_densities": DENSITIES,
        "counts": COUNTS, "global_density": COUNTS["kept"] / COUNTS["targets"], **changes})


def _header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_header_parses_and_holds_the_hub_metadata(tmp_path):
    text = render_card(_record(PROBE), "density.png")
    (tmp_path / "README.md").write_text(text)
    data = ModelCard.load(tmp_path / "README.md").data.to_dict()
    assert data == _header(text)
    assert data["base_model"] == "google/vit-base-patch16-224"
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers"
    assert data["tags"] == ["pruned", "sparse", "hf-px", "px"]
    assert data["datasets"] == ["uoft-cs/cifar10"]
    assert data["pipeline_tag"] == "image-classification"


def test_body_holds_table_counts_probe_citation_and_command():
    text = render_card(_record(PROBE), "density.png")
    body = text.split("---\n", 2)[2]
    for name, density in DENSITIES.items():
        assert f"| `{name}` | {density * 100:.2f}% |" in body
    assert "Layers at zero density: vit.encoder.layer.0.output.dense.weight." in body
    assert "86,389,248" in body and "9,123,456" in body and "8,505,446" in body
    assert "| dense | 91.00% |" in body and "| sparse | 87.50% |" in body
    assert "![Per-layer density](density.png)" in body
    assert "90.00%" in body and "| Rounds | 100" in body and "| Seed | 3 |" in body and "10 examples per class" in body
    assert '{"gate_only": "dense"}' in body
    assert "--method auto" not in body and "Per-tensor floor" not in body     # a named method, no floor
    assert "Per-channel floor" not in body
    channels = render_card(_record(PROBE, min_channel_density=0.002), None)
    assert ("| Per-channel floor | every output channel of a targeted tensor keeps at least 0.20% of its weights, "
            "and at least one |\n| Target sparsity") in channels
    auto = render_card(_record(PROBE, config={"method": "auto"}, min_layer_density=0.01), None)
    assert '`px` with options `{"gate_only": "dense"}` (what `--method auto` runs on this model) |' in auto
    assert "| Per-tensor floor | every targeted tensor keeps at least 1.00% of its weights |\n| Target sparsity" in auto
    assert "sparse kernels" in body and "stored densely" in body
    assert "Iurada, Leonardo and Ciccone, Marco and Tommasi, Tatiana" in body and "2406.01820" in body
    assert "CVPR" in body and "@inproceedings" in body
    assert f"```bash\n{COMMAND}\n```" in body
    assert "AutoModelForImageClassification.from_pretrained" in body and "hf_px.load_sparse" in body


def test_local_folder_has_no_base_model_and_a_local_dataset_is_not_listed(tmp_path):
    data_folder = tmp_path / "my-images"
    data_folder.mkdir()
    record = _record(base_model=None, source=str(tmp_path / "tiny-resnet"), library="timm", method="magnitude",
                     dataset=str(data_folder), license=None, command=None)
    text = render_card(record, None)
    header = _header(text)
    assert "base_model" not in header and "datasets" not in header and "license" not in header
    assert header["library_name"] == "timm" and "magnitude" in header["tags"]
    body = text.split("---\n", 2)[2]
    assert "timm.create_model(" in body and "pretrained=True" in body
    assert "No accuracy was measured" in body and "![" not in body
    assert "huggingface.co/" not in body


def test_unknown_library_is_a_config_error():
    with pytest.raises(ConfigError, match="library"):
        render_card(_record(library="keras"), None)


def test_density_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "density.png"
    assert density_plot(DENSITIES, path) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_density_plot_without_matplotlib_writes_nothing(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    path = tmp_path / "density.png"
    assert density_plot(DENSITIES, path) is False
    assert not path.exists()


def _has_red(path) -> bool:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    return bool((np.abs(pixels - [0xC4, 0x4E, 0x52]).sum(axis=1) < 30).any())


def test_density_plot_marks_zero_density_layers_in_red(tmp_path):
    pytest.importorskip("matplotlib")
    assert density_plot(DENSITIES, tmp_path / "zero.png") and _has_red(tmp_path / "zero.png")
    alive = {name: max(density, 0.2) for name, density in DENSITIES.items()}
    assert density_plot(alive, tmp_path / "alive.png") and not _has_red(tmp_path / "alive.png")


def test_pruned_card_reports_its_probe_in_the_model_index_and_names_what_is_unknown(tmp_path):
    text = render_card(_record(PROBE), None)
    (tmp_path / "README.md").write_text(text)
    results = ModelCard.load(tmp_path / "README.md").data.eval_results
    assert len(results) == 1 and results[0].metric_value == 0.875 and results[0].dataset_type == "uoft-cs/cifar10"
    assert results[0].metric_name == "linear-probe accuracy (no fine-tuning)" and results[0].dataset_split == "test"
    assert "**Unknown:**" not in text
    local = render_card(_record(PROBE, base_model=None, license=None, source="/home/me/models/tiny-vit",
                                dataset="/home/me/data/shoes",
                                command="hf-px prune /home/me/models/tiny-vit --dataset /home/me/data/shoes"), None)
    assert "/home/me" not in local and "`tiny-vit`" in local and "hf-px prune tiny-vit --dataset shoes" in local
    assert "**Unknown:** the base model, the licence, the dataset of this checkpoint" in local
    assert "check the base model's licence" in local
