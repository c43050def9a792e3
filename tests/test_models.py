"""load_model / save_model on tiny local folders of both libraries; never touches the network."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import hf_px
from hf_px.errors import ModelError
from hf_px.head import replace_head_
from hf_px.models import load_model, save_model, set_label_names_

LABELS = ["cat", "dog", "bird"]


pytestmark = pytest.mark.usefixtures("no_network")   # see conftest.py


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    import transformers as tf

    config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=3, id2label=dict(enumerate(LABELS)))
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(config).eval()
    folder = tmp_path_factory.mktemp("vit")
    model.save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [vision]\n---\n# tiny vit\n")
    return folder, model


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3).eval()
    folder = tmp_path_factory.mktemp("resnet18")
    save_for_hf(model, folder, model_config={"label_names": LABELS}, safe_serialization=True,
                data_config={"input_size": (3, 32, 32), "crop_pct": 1.0})
    return folder, model


def _image(mode: str = "RGB", size=(40, 50)) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 255, (*size, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module, images: torch.Tensor):
    from hf_px.batches import logits_of

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(a.eval()(images)), logits_of(b.eval()(images)), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- loading


def test_load_transformers_folder(vit_folder):
    folder, original = vit_folder
    with pytest.raises(ModelError, match="only applies to Hub models.*drop --revision"):
        load_model(str(folder), revision="main")   # a folder has no branches: never recorded as provenance
    loaded = load_model(str(folder), trust_remote_code=False)
    assert loaded.library == "transformers" and not loaded.model.training
    assert loaded.source == str(folder) and loaded.hub_id is None and loaded.revision is None
    assert loaded.label_names == LABELS and loaded.license == "mit"
    assert loaded.image_processor is not None and loaded.pretrained_cfg is None
    for mode in ("RGB", "L", "RGBA", "P"):   # grey/RGBA/palette images become RGB first
        pixels = loaded.preprocess(_image(mode))
        assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    _assert_same_model(loaded.model, original, torch.randn(2, 3, 32, 32))


def test_load_timm_folder(timm_folder):
    folder, original = timm_folder
    for source in (str(folder), f"local-dir:{folder}"):
        with pytest.raises(ModelError, match="local folder"):
            load_model(source, revision="main")
        loaded = load_model(source, trust_remote_code=False)
        assert loaded.library == "timm" and not loaded.model.training and loaded.source == source
        assert loaded.hub_id is None and loaded.label_names == LABELS
        assert loaded.license == "apache-2.0"   # resnet18's default pretrained_cfg, kept by save_for_hf
        assert loaded.pretrained_cfg["num_classes"] == 3 and tuple(loaded.pretrained_cfg["input_size"]) == (3, 32, 32)
        assert loaded.preprocess(_image("L")).shape == (3, 32, 32)
        _assert_same_model(loaded.model, original, torch.randn(2, 3, 32, 32))


def test_unnamed_transformers_labels_are_none(tmp_path):
    import transformers as tf

    config = tf.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=16, num_labels=2)
    tf.ViTForImageClassification(config).save_pretrained(tmp_path)   # no image processor either
    loaded = load_model(str(tmp_path))
    assert loaded.label_names is None and loaded.image_processor is None and loaded.license is None
    with pytest.raises(ModelError, match="preprocessor_config.json"):
        loaded.preprocess(_image())


def test_plain_timm_name_asks_for_pretrained_weights(monkeypatch):
    import timm

    calls, create_model = [], timm.create_model

    def fake_create_model(name, **kwargs):   # records the call, builds without downloading
        calls.append((name, kwargs))
        return create_model("resnet18", pretrained=False, num_classes=3)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    loaded = load_model("resnet18")
    assert calls == [("resnet18", {"pretrained": True})]
    assert loaded.library == "timm" and loaded.hub_id == "timm/resnet18.a1_in1k"
    load_model("resnet18.tv_in1k", revision="v1")   # a revision means the Hub weights at that revision
    assert calls[-1] == ("hf-hub:timm/resnet18.tv_in1k@v1", {"pretrained": True})


def test_hub_ids_pass_the_revision(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    asked = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        asked.append((repo_id, filename, revision))
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    for source, revision in (("some-org/some-model", "v2"), ("some-org/some-model@v3", None)):
        with pytest.raises(hf_px.HubError, match="offline"):
            load_model(source, revision=revision)
    assert asked == [("some-org/some-model", "config.json", "v2"), ("some-org/some-model", "config.json", "v3")]
    with pytest.raises(ModelError, match="give only one"):
        load_model("some-org/some-model@v3", revision="v4")


# ----------------------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelError, match="does not exist") as error:
        load_model(str(missing))
    assert str(missing) in str(error.value)
    with pytest.raises(ModelError, match="does not exist"):
        load_model("./no-such-folder")


def test_folder_of_neither_library(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="neither transformers nor timm") as error:
        load_model(str(tmp_path))
    assert "weights.bin" in str(error.value) and "notes.txt" in str(error.value)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ModelError, match="config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="is a file"):
        load_model(str(tmp_path / "notes.txt"))


def test_unknown_timm_name_offers_close_matches():
    with pytest.raises(ModelError, match="resnet18") as error:
        load_model("resnet1")
    assert "'resnet1'" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ModelError, match="valid tags"):
        load_model("resnet18.no_such_tag")


def test_unknown_hub_id_offline(monkeypatch):
    import huggingface_hub

    def no_search(*args, **kwargs):
        raise AssertionError("searched the Hub while offline")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_models", no_search)
    for source in ("nonexistent-org-hfpx/nonexistent-model", "hf-hub:nonexistent-org-hfpx/nonexistent-model"):
        with pytest.raises(hf_px.HubError, match="offline") as error:
            load_model(source)
        assert source in str(error.value)


def test_hub_errors_say_how_to_fix(monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from hf_px import hub

    def raising(error):
        with hub.download_errors("org/name", "org/name", None):
            raise error

    def response(status):   # what the errors read of an HTTP response, without tying the test to its library
        return SimpleNamespace(status_code=status, headers={}, request=None)

    with pytest.raises(ModelError, match="hf auth login.*HF_TOKEN"):
        raising(GatedRepoError("gated", response=response(403)))
    with pytest.raises(ModelError, match="HTTP 403.*hf auth login"):
        raising(HfHubHTTPError("forbidden", response=response(403)))
    monkeypatch.setattr(hub, "_similar_hub_ids", lambda repo_id: ["org/name-v2"])
    with pytest.raises(ModelError, match="does not exist.*org/name-v2"):
        raising(RepositoryNotFoundError("missing", response=response(404)))


# ------------------------------------------------------------------------------------------- round trips


def test_transformers_round_trip(vit_folder, tmp_path):
    import transformers as tf

    loaded = load_model(str(vit_folder[0]))
    save_model(loaded, tmp_path / "out")
    model = tf.AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    processor = tf.AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert model.config.id2label == dict(enumerate(LABELS)) and processor.size == {"height": 32, "width": 32}
    _assert_same_model(model, loaded.model, torch.randn(2, 3, 32, 32))


def test_timm_round_trip(timm_folder, tmp_path):
    import timm

    loaded = load_model(str(timm_folder[0]))
    save_model(loaded, tmp_path / "out")
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    cfg = model.pretrained_cfg
    assert model.num_classes == 3 and cfg["label_names"] == LABELS
    for key in ("mean", "std", "input_size", "crop_pct", "interpolation", "license"):
        assert tuple(np.atleast_1d(cfg[key])) == tuple(np.atleast_1d(loaded.pretrained_cfg[key])), key
    _assert_same_model(model, loaded.model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("fixture", ["vit_folder", "timm_folder"])
def test_round_trip_after_replacing_the_head(fixture, request, tmp_path):
    loaded = load_model(str(request.getfixturevalue(fixture)[0]))
    names = ["ant", "bee", "cow", "dog"]
    replace_head_(loaded, names, torch.randn(2, 3, 32, 32))
    save_model(loaded, tmp_path / "out")
    again = load_model(str(tmp_path / "out"))
    assert again.label_names == names
    _assert_same_model(again.model, loaded.model, torch.randn(2, 3, 32, 32))


def test_set_label_names_keeps_the_head(timm_folder, tmp_path):
    loaded = load_model(str(timm_folder[0]))
    set_label_names_(loaded, ["x", "y", "z"])
    assert loaded.label_names == ["x", "y", "z"] and loaded.pretrained_cfg["label_names"] == ["x", "y", "z"]
    save_model(loaded, tmp_path / "out")
    assert load_model(str(tmp_path / "out")).label_names == ["x", "y", "z"]
    with pytest.raises(ModelError, match="unique"):
        set_label_names_(loaded, ["x", "x", "z"])
    with pytest.raises(ModelError, match="2 label names were given for a head with 3 outputs"):
        set_label_names_(loaded, ["x", "y"])
