"""The typed record of `hf_px.json`: a file of the format written before the typed record loads unchanged, every
field's type is checked in one line naming it, unknown keys survive, and save -> load gives the record back."""

import json
from pathlib import Path

import pytest
import torch

import hf_px
from hf_px import checkpoint
from hf_px.errors import ConfigError, ModelError
from hf_px.record import (
    FORMAT_VERSION,
    CheckpointRecord,
    Counts,
    FinetuneRecord,
    ProbeRecord,
    layer_table,
)
from hf_px.testing import random_batches

# hf_px.json of a 50% magnitude prune of a 5-class timm resnet18 on Fashion-MNIST images, then one epoch of
# `hf-px finetune tiny`, as the writer before the typed record wrote it (hand-built dicts; only the /tmp paths
# renamed to /data/demo)
SAVED = json.loads((Path(__file__).parent / "data" / "hf_px_format1.json").read_text())

pytestmark = pytest.mark.usefixtures("no_network")   # see conftest.py


def test_a_file_of_the_earlier_writer_round_trips_exactly():
    record = CheckpointRecord.from_dict(SAVED)
    assert record.format_version == FORMAT_VERSION == SAVED["format_version"] == 1
    assert record.extra == {}                          # every key it wrote is a typed field now
    assert isinstance(record.probe, ProbeRecord) and isinstance(record.finetune, FinetuneRecord)
    assert isinstance(record.counts, Counts) and record.counts.kept == SAVED["counts"]["kept"] == 5_583_456
    assert record.method == "magnitude" and record.rounds == 2 and record.probe.eval_examples == 10
    assert record.batchnorm.images == 20 and record.finetune.steps == 3 and record.finetune.recipe["optimizer"] == "sgd"
    again = record.to_dict()
    assert CheckpointRecord.from_dict(again) == record
    # what the typed record adds: the fields the earlier writer did not write, at their defaults ...
    assert again["finetune"].pop("below_probe") is False     # (written only when true before)
    assert {key: value for key, value in again.items() if key not in SAVED} == {
        "min_channel_density": None, "allow_empty_layers": None, "include": None, "exclude": None}
    assert {key: again[key] for key in SAVED} == SAVED       # ... and nothing lost or changed


@pytest.mark.parametrize("change, message", [
    ({"sparsity": "high"}, "sparsity is 'high' (str), not a number"),
    ({"rounds": True}, "rounds is True (bool), not an integer"),
    ({"rounds": 2.0}, "rounds is 2.0 (float), not an integer"),
    ({"method_options": None}, "method_options is None (NoneType), not a mapping"),
    ({"probe": "x"}, "probe is 'x' (str), not a mapping"),
    ({"probe": {"dense": "high"}}, "probe.dense is 'high' (str), not a number"),
    ({"counts": {"kept": 1.5}}, "counts.kept is 1.5 (float), not an integer"),
    ({"layer_densities": {"a.weight": "0.5"}}, "layer_densities['a.weight'] is '0.5' (str), not a number"),
    ({"score_indices": [1, "2"]}, "score_indices[1] is '2' (str), not an integer"),
    ({"finetune": {"history": {}}}, "finetune.history is {} (dict), not a list"),
    ({"batchnorm": {"calibration_indices": [0, None]}}, "batchnorm.calibration_indices[1] is None"),
    ({"versions": {"torch": 2}}, "versions['torch'] is 2 (int), not a string"),
])
def test_wrong_types_are_refused_in_one_line_naming_the_field(change, message):
    with pytest.raises(ConfigError) as info:
        CheckpointRecord.from_dict({**SAVED, **change})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_none_is_unknown_and_unknown_keys_are_kept():
    record = CheckpointRecord.from_dict({"format_version": 1, "sparsity": None, "my_note": {"by": "me"},
                                         "probe": {"dense": 0.5, "future_field": [1]}})
    assert record.sparsity is None and record.extra == {"my_note": {"by": "me"}}
    assert record.probe.dense == 0.5 and record.probe.extra == {"future_field": [1]}
    values = record.to_dict()
    assert values["my_note"] == {"by": "me"} and values["probe"]["future_field"] == [1]
    assert CheckpointRecord.from_dict(values) == record


def test_layer_table_and_counts_against_a_hand_count():
    masks = {"a.weight": torch.tensor([True, False, True, False]), "bb.weight": torch.zeros(2, 3, dtype=torch.bool)}
    assert hf_px.masks.kept_and_total(masks) == (2, 10)
    assert layer_table(masks) == [
        "layer      density        kept / total",
        "a.weight    50.00%           2 / 4",
        "bb.weight    0.00%           0 / 6",
        "global      20.00%           2 / 10",
        "layers at zero density: bb.weight",
    ]
    model = torch.nn.Linear(4, 1, bias=True)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0]]))
        model.bias.zero_()
    counts = Counts.of(model, {"weight": masks["a.weight"].view(1, 4)})
    assert counts == Counts(parameters=5, nonzero=2, targets=4, kept=2)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    masks = hf_px.prune(model, random_batches(num_classes=3), method="magnitude", sparsity=0.5, rounds=1)
    return checkpoint.save_sparse(model, masks, tmp_path_factory.mktemp("record") / "ckpt",
                                  provenance={"method": "magnitude", "sparsity": 0.5, "rounds": 1, "seed": 0,
                                              "source": Path("/data/tiny"), "my_key": (1, 2)}), masks


def test_save_then_load_gives_the_record_back(tiny_checkpoint):
    folder, masks = tiny_checkpoint
    _, _, record = checkpoint.open_sparse(folder)
    assert record.method == "magnitude" and record.source == "/data/tiny" and record.extra == {"my_key": [1, 2]}
    assert record.library == "timm" and record.counts.kept == hf_px.masks.kept_and_total(masks)[0]
    assert record.layer_densities == pytest.approx(hf_px.layer_densities(masks))
    assert json.loads((folder / "hf_px.json").read_text()) == record.to_dict()


def test_the_earlier_writers_file_loads_in_a_checkpoint_and_inspect_reads_it(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(tiny_checkpoint[0], folder)
    (folder / "hf_px.json").write_text(json.dumps(SAVED))
    _, _, record = checkpoint.open_sparse(folder)
    assert record == CheckpointRecord.from_dict(SAVED)
    text = checkpoint.summarize(folder)
    assert "method      magnitude, rounds 2, seed 0" in text
    assert "fine-tuned  1 epochs, 3 steps: top-1 10.00% on 10 images (test)" in text
    assert "probe       dense 10.00%, sparse 10.00% (linear probe, 10 eval images)" in text


def test_a_wrong_type_in_the_file_is_a_model_error_naming_file_and_field(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint[0], folder)
    (folder / "hf_px.json").write_text(json.dumps({**SAVED, "counts": {**SAVED["counts"], "kept": "many"}}))
    with pytest.raises(ModelError, match=r"hf_px.json': counts.kept is 'many' \(str\), not an integer; the file "
                                         "was edited or damaged"):
        hf_px.load_sparse(folder)
    with pytest.raises(ConfigError, match="provenance: sparsity is 'x'"):   # and a caller's provenance alike
        checkpoint.save_sparse(hf_px.load_sparse(tiny_checkpoint[0])[0], tiny_checkpoint[1], tmp_path / "new",
                               provenance={"sparsity": "x"})
    assert not (tmp_path / "new").exists()


def test_a_file_saved_through_the_api_with_other_types_still_loads(tiny_checkpoint, tmp_path):
    # earlier hf_px checked fewer fields: what it accepted from save_sparse(provenance=...) still loads, the
    # unreadable fields ignored with a warning; the fields it always checked stay strict
    import shutil

    folder = tmp_path / "api"
    shutil.copytree(tiny_checkpoint[0], folder)
    values = {**SAVED, "command": ["hf-px", "prune"], "config": "run.yaml", "method_options": None,
              "probe": {**SAVED["probe"], "head_refit": None, "head_fit": "ridge"}}
    (folder / "hf_px.json").write_text(json.dumps(values))
    with pytest.warns(UserWarning) as caught:
        _, _, record = checkpoint.open_sparse(folder)
    messages = " ".join(str(w.message) for w in caught)
    assert "command is ['hf-px', 'prune']" in messages and "config is 'run.yaml'" in messages
    assert "probe.head_fit is 'ridge'" in messages
    assert record.command is None and record.config is None and record.method_options == {}
    assert record.probe.head_refit is False and record.method == SAVED["method"]
    (folder / "hf_px.json").write_text(json.dumps({**values, "sparsity": "half"}))   # always checked: refused
    with pytest.raises(ModelError, match="sparsity is 'half'"):
        checkpoint.open_sparse(folder)


def test_layer_table_of_no_masks():
    assert layer_table({}) == ["layer   density        kept / total", "global    0.00%           0 / 0",
                               "layers at zero density: none"]
