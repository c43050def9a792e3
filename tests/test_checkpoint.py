"""Sparse checkpoints: exact mask packing, atomic saving, loading back with plain transformers/timm in a fresh
process without hf_px, and a clear ModelError for every kind of damage. Never touches the network."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_px
from hf_px import checkpoint
from hf_px.checkpoint import load_sparse, pack_masks, save_sparse, summarize, unpack_masks
from hf_px.errors import ConfigError, MaskError, ModelError
from hf_px.models import LoadedModel
from hf_px.testing import random_batches

LABELS = ["cat", "dog", "bird"]
PROVENANCE = {"base_model": None, "source": "tiny", "method": "magnitude", "method_options": {}, "sparsity": 0.5,
              "rounds": 1, "seed": 0, "task": "random", "command": "hf-px prune tiny --sparsity 0.5",
              "hf_token": "hf_SHOULD_NEVER_BE_WRITTEN"}


pytestmark = pytest.mark.usefixtures("no_network")   # see conftest.py


# ------------------------------------------------------------------------------------------------ packing


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (2, 3, 3, 3), (1, 1, 1), (0, 4), ()])
def test_pack_unpack_round_trip_is_exact(shape):
    generator = torch.Generator().manual_seed(len(shape))
    masks = {"a.weight": torch.rand(shape, generator=generator) > 0.5,
             "b.weight": torch.ones(shape, dtype=torch.bool), "c.weight": torch.zeros(shape, dtype=torch.bool)}
    packed = pack_masks(masks)
    assert packed["a.weight"].dtype == torch.uint8
    assert packed["a.weight"].numel() == (torch.Size(shape).numel() + 7) // 8     # 8 entries per byte
    unpacked = unpack_masks(packed)
    assert list(unpacked) == list(masks)
    for name in masks:
        assert unpacked[name].dtype == torch.bool and unpacked[name].shape == masks[name].shape
        assert torch.equal(unpacked[name], masks[name])


def test_pack_survives_a_safetensors_file(tmp_path):
    masks = {"x": torch.rand(13, 11) > 0.3, "y": torch.rand(5) > 0.5}
    save_file(pack_masks(masks), str(tmp_path / "m.safetensors"))
    unpacked = unpack_masks(load_file(str(tmp_path / "m.safetensors")))
    assert all(torch.equal(unpacked[n], masks[n]) for n in masks)


def test_pack_rejects_non_boolean_masks():
    with pytest.raises(ConfigError, match="torch.bool"):
        pack_masks({"w": torch.ones(3)})


def test_unpack_rejects_a_size_that_does_not_add_up():
    packed = pack_masks({"w": torch.ones(17, dtype=torch.bool)})
    packed["w.__shape__"] = torch.tensor([40])
    with pytest.raises(ModelError, match="damaged"):
        unpack_masks(packed)


# ------------------------------------------------------------------------------------------- tiny models


def _tiny_vit() -> LoadedModel:
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=3)
    model = tf.ViTForImageClassification(config).eval()
    processor = tf.ViTImageProcessor(size={"height": 32, "width": 32})
    return LoadedModel(model=model, library="transformers", source="tiny-vit", hub_id=None, revision=None,
                       preprocess=lambda image: image, label_names=list(LABELS), image_processor=processor)


def _tiny_resnet() -> LoadedModel:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "license": "apache-2.0"}
    return LoadedModel(model=model, library="timm", source="resnet18", hub_id=None, revision=None,
                       preprocess=lambda image: image, label_names=list(LABELS), pretrained_cfg=cfg)


def _logits(model, x):
    with torch.no_grad():
        out = model(pixel_values=x) if hasattr(model, "config") else model(x)
    return out.logits if hasattr(out, "logits") else out


_FRESH = textwrap.dedent("""
    import sys
    sys.modules["hf_px"] = None          # the checkpoint must load without hf_px
    import torch
    from safetensors.torch import load_file, save_file
    library, folder, io = sys.argv[1:]
    x = load_file(io)["x"]
    if library == "transformers":
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        with torch.no_grad():
            logits = model(pixel_values=x).logits
    else:
        import timm
        model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
        labels = list(model.pretrained_cfg.get("label_names") or [])
        with torch.no_grad():
            logits = model(x)
    save_file({"x": x, "logits": logits.contiguous()}, io, metadata={"labels": ",".join(labels)})
""")


@pytest.fixture(scope="module", params=["transformers", "timm"])
def saved(request, tmp_path_factory):
    """A tiny model of each library pruned to 50% by magnitude and saved; its logits on a fixed input."""
    loaded = _tiny_vit() if request.param == "transformers" else _tiny_resnet()
    masks = hf_px.prune(loaded.model, random_batches(n_batches=1, num_classes=3), method="magnitude",
                        sparsity=0.5, rounds=1)
    name = next(iter(masks))
    with torch.no_grad():   # a kept weight that is exactly 0.0: the mask, not the zeros, is the truth
        flat_mask, flat_weight = masks[name].view(-1), dict(loaded.model.named_parameters())[name].view(-1)
        kept_zero = int(flat_mask.nonzero()[0])
        flat_weight[kept_zero] = 0.0
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    root = tmp_path_factory.mktemp(request.param)
    output = save_sparse(loaded, masks, root / "out", provenance=PROVENANCE, card="# card\n",
                         extra_files={"density.png": b"\x89PNG fake"})
    return {"library": request.param, "loaded": loaded, "masks": masks, "x": x, "logits": _logits(loaded.model, x),
            "output": output, "root": root, "kept_zero": (name, kept_zero)}


def test_checkpoint_loads_without_hf_px_in_a_fresh_process(saved, tmp_path):
    io = tmp_path / "io.safetensors"
    save_file({"x": saved["x"]}, str(io))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", _FRESH, saved["library"], str(saved["output"]), str(io)],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    from safetensors import safe_open

    with safe_open(str(io), framework="pt") as f:
        fresh, labels = f.get_tensor("logits"), f.metadata()["labels"].split(",")
    torch.testing.assert_close(fresh, saved["logits"], rtol=1e-6, atol=1e-6)
    assert labels == LABELS


def test_folder_layout_and_provenance(saved):
    output = saved["output"]
    names = sorted(os.listdir(output))
    assert {"config.json", "model.safetensors", "hf_px_masks.safetensors", "hf_px.json", "README.md",
            "density.png"} <= set(names)
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    if saved["library"] == "transformers":
        assert "preprocessor_config.json" in names
    assert not any(n.startswith(".") for n in os.listdir(saved["root"])), "a temporary folder was left behind"
    text = (output / "hf_px.json").read_text()
    assert "hf_SHOULD_NEVER_BE_WRITTEN" not in text and "hf_token" not in text
    record = json.loads(text)
    assert text == json.dumps(record, indent=2, sort_keys=True) + "\n"
    assert record["format_version"] == checkpoint.FORMAT_VERSION and record["method"] == "magnitude"
    assert record["library"] == saved["library"] and record["command"].startswith("hf-px prune")
    masks = saved["masks"]
    assert record["layer_densities"] == pytest.approx(hf_px.layer_densities(masks))
    assert record["global_density"] == pytest.approx(0.5, abs=1e-3)
    counts = record["counts"]
    assert counts["targets"] == sum(m.numel() for m in masks.values())
    assert counts["kept"] == sum(int(m.sum()) for m in masks.values())
    assert counts["parameters"] == sum(p.numel() for p in saved["loaded"].model.parameters())
    assert counts["nonzero"] == sum(int(p.count_nonzero()) for p in saved["loaded"].model.parameters())
    assert set(record["versions"]) == {"torch", "timm", "transformers", "hf_px", "huggingface_hub", "safetensors"}
    assert record["versions"]["torch"]
    assert (output / "README.md").read_text() == "# card\n"


def test_load_sparse_returns_the_exact_masks(saved):
    model, masks = load_sparse(str(saved["output"]))
    assert not model.training
    assert list(masks) == list(saved["masks"])
    assert all(torch.equal(masks[n], saved["masks"][n].cpu()) for n in masks)
    name, index = saved["kept_zero"]
    assert masks[name].view(-1)[index] and dict(model.named_parameters())[name].view(-1)[index] == 0.0
    torch.testing.assert_close(_logits(model.eval(), saved["x"]), saved["logits"], rtol=1e-6, atol=1e-6)


def test_summarize_names_method_sparsity_and_layers(saved):
    text = summarize(saved["output"])
    assert "magnitude" in text and "50.00%" in text and "layers at zero density" in text
    rows = [line.split()[0] for line in text.splitlines() if line.split() and line.split()[0] in saved["masks"]]
    assert rows == list(saved["masks"])          # the model's order, not safetensors' sorted order


def test_existing_output_needs_overwrite_and_is_left_untouched(saved, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(saved["output"], output)
    before = {n: (output / n).read_bytes() for n in os.listdir(output)}
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        save_sparse(saved["loaded"], saved["masks"], output, provenance=PROVENANCE)
    assert {n: (output / n).read_bytes() for n in os.listdir(output)} == before
    assert sorted(os.listdir(tmp_path)) == ["out"]

    save_sparse(saved["loaded"], saved["masks"], output, provenance={**PROVENANCE, "seed": 7}, overwrite=True)
    assert json.loads((output / "hf_px.json").read_text())["seed"] == 7
    assert "README.md" not in os.listdir(output)          # replaced as a whole, not merged
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_overwrite_refuses_a_folder_that_is_not_a_checkpoint(saved, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not an hf_px checkpoint"):
        save_sparse(saved["loaded"], saved["masks"], tmp_path / "mine", provenance=PROVENANCE, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_failure_while_writing_leaves_nothing_behind(saved, tmp_path, monkeypatch, overwrite):
    output = tmp_path / "out"
    if overwrite:
        shutil.copytree(saved["output"], output)
    before = sorted(os.listdir(output)) if overwrite else None

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_masks", broken)
    with pytest.raises(OSError, match="disk full"):
        save_sparse(saved["loaded"], saved["masks"], output, provenance=PROVENANCE, overwrite=overwrite)
    assert sorted(os.listdir(tmp_path)) == (["out"] if overwrite else [])
    if overwrite:
        assert sorted(os.listdir(output)) == before


def test_save_refuses_masks_that_were_not_applied(saved, tmp_path):
    loaded = saved["loaded"]
    name = next(iter(saved["masks"]))
    masks = saved["masks"]
    param = dict(loaded.model.named_parameters())[name]
    pruned = int((~masks[name]).view(-1).nonzero()[0])
    with torch.no_grad():
        old = param.view(-1)[pruned].item()
        param.view(-1)[pruned] = 1.0
    try:
        with pytest.raises(MaskError, match="are not zero; zero them with hf_px.apply_masks_"):
            save_sparse(loaded, masks, tmp_path / "out", provenance=PROVENANCE)
    finally:
        with torch.no_grad():
            param.view(-1)[pruned] = old
    assert os.listdir(tmp_path) == []


def test_save_refuses_an_extra_file_that_escapes_the_folder(saved, tmp_path):
    with pytest.raises(ConfigError, match="relative path"):
        save_sparse(saved["loaded"], saved["masks"], tmp_path / "out", provenance=PROVENANCE,
                    extra_files={"../x": b""})
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ damage


def _copy(saved, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(saved["output"], folder)
    return folder


def test_truncated_masks_file_is_a_model_error(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    path = folder / "hf_px_masks.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated or damaged"):
        load_sparse(str(folder))


@pytest.mark.parametrize("missing", ["hf_px.json", "hf_px_masks.safetensors", "model.safetensors"])
def test_missing_file_is_a_model_error(saved, tmp_path, missing):
    folder = _copy(saved, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(ModelError, match="hf_px.json|hf_px_masks|model.safetensors"):
        load_sparse(str(folder))


def test_unknown_format_version_is_a_model_error(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    record = json.loads((folder / "hf_px.json").read_text())
    (folder / "hf_px.json").write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ModelError, match="upgrade hf_px"):
        load_sparse(str(folder))


def test_mask_shape_mismatch_is_a_mask_error(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    masks = dict(saved["masks"])
    name = next(iter(masks))
    masks[name] = torch.ones(masks[name].numel() + 1, dtype=torch.bool)
    checkpoint._write_masks(masks, folder / "hf_px_masks.safetensors")
    with pytest.raises(MaskError, match="shape"):
        load_sparse(str(folder))


def test_mask_for_an_unknown_parameter_is_a_mask_error(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    checkpoint._write_masks({**saved["masks"], "no.such.weight": torch.ones(3, dtype=torch.bool)},
                            folder / "hf_px_masks.safetensors")
    with pytest.raises(MaskError, match="no.such.weight"):
        load_sparse(str(folder))


def test_nonzero_masked_weight_is_a_mask_error(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    name = next(iter(saved["masks"]))
    pruned = int((~saved["masks"][name]).view(-1).nonzero()[0])
    weights[name].view(-1)[pruned] = 0.5
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MaskError, match="not zero"):
        load_sparse(str(folder))


def test_missing_folder_is_a_model_error_and_an_offline_hub_id_a_hub_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_sparse(str(tmp_path / "nowhere"))
    with pytest.raises(hf_px.HubError, match="offline|cache"):
        load_sparse("someone/not-cached-anywhere")
