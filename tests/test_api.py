"""The API equals the CLI: what `hf_px.prune` returns saves with `hf_px.save_sparse` and loads back (with
hf_px and with plain timm/transformers); targets by pattern; a configured criterion as the method; the
registry refuses a taken name; one error class per kind of mistake. Never touches the network."""

import pytest
import torch

import hf_px
from hf_px.criteria import PX, Magnitude
from hf_px.testing import PlainCNN, random_batches, tiny_zoo

pytestmark = pytest.mark.usefixtures("no_network")   # see conftest.py


def _same_model(model, other, x, expected):
    """Bit-identical weights, and the same logits (a transformers model may come back with another attention
    implementation than it was built with: equal up to float rounding)."""
    theirs = other.state_dict()
    assert all(torch.equal(value, theirs[name]) for name, value in model.state_dict().items())
    torch.testing.assert_close(_logits(other, x), expected, rtol=1e-6, atol=1e-6)


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


# ------------------------------------------------------------------------------ prune -> save -> load


@pytest.mark.parametrize("name", ["timm_vit_tiny", "hf_vit_eager"])
def test_what_prune_returns_saves_and_loads_back_with_hf_px_and_with_its_library(name, tmp_path):
    torch.manual_seed(0)
    model = tiny_zoo()[name]().eval()
    masks = hf_px.prune(model, random_batches(n_batches=1), method="magnitude", sparsity=0.7)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = _logits(model, x)

    output = hf_px.save_sparse(model, masks, tmp_path / "ticket", provenance={"method": "magnitude"})

    loaded, loaded_masks = hf_px.load_sparse(output)
    assert type(loaded) is type(model) and not loaded.training
    assert list(loaded_masks) == list(masks) and all(torch.equal(loaded_masks[n], masks[n]) for n in masks)
    _same_model(model, loaded, x, expected)

    if name.startswith("timm"):   # the library alone, without hf_px's loader
        import timm

        plain = timm.create_model(f"local-dir:{output}", pretrained=True).eval()
    else:
        from transformers import AutoModelForImageClassification

        plain = AutoModelForImageClassification.from_pretrained(output).eval()
    _same_model(model, plain, x, expected)
    with pytest.raises(hf_px.ConfigError, match="model= is for checkpoints of plain modules"):
        hf_px.load_sparse(output, model=PlainCNN())


def test_a_plain_module_saves_its_state_dict_and_loads_into_a_new_instance(tmp_path):
    torch.manual_seed(0)
    model = PlainCNN(in_channels=3).eval()
    masks = hf_px.prune(model, random_batches(n_batches=1), method="magnitude", sparsity=0.6)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="neither a transformers nor a timm model.*model=<a new PlainCNN>"):
        output = hf_px.save_sparse(model, masks, tmp_path / "plain")
    with pytest.raises(hf_px.ModelError, match=r"plain module \(hf_px.testing.PlainCNN\).*model="):
        hf_px.load_sparse(output)
    torch.manual_seed(5)   # a fresh instance with other weights: all of them must be replaced
    loaded, loaded_masks = hf_px.load_sparse(output, model=PlainCNN(in_channels=3))
    assert all(torch.equal(loaded_masks[n], masks[n]) for n in masks)
    _same_model(model, loaded, x, _logits(model, x))


def test_save_sparse_refuses_masks_of_another_model_and_writes_nothing(tmp_path):
    model = PlainCNN(in_channels=3)
    with pytest.raises(hf_px.MaskError, match="'fc.bogus' names no parameter of PlainCNN"):
        hf_px.save_sparse(model, {"fc.bogus": torch.ones(3, dtype=torch.bool)}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- targets


def test_include_and_exclude_narrow_the_targets_in_the_api():
    model = tiny_zoo()["timm_vit_tiny"]()   # blocks.N.attn.qkv, blocks.N.attn.proj, blocks.N.mlp.fc1, ...
    batches = random_batches(n_batches=1)
    every = hf_px.score(model, batches, method="magnitude")
    scores = hf_px.score(model, batches, method="magnitude", include=["*attn*"], exclude=["proj.weight"])
    assert list(scores) == [n for n in every if ".attn." in n and not n.endswith(".proj.weight")]
    assert list(scores) == ["blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"]
    masks = hf_px.prune(model, batches, method="magnitude", sparsity=0.5, include=["fc1.weight"])
    assert list(masks) == ["blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc1.weight"]
    with pytest.raises(hf_px.ConfigError, match="include pattern 'no_such' .*matches no candidate"):
        hf_px.prune(model, batches, method="magnitude", include=["no_such"])
    with pytest.raises(hf_px.ConfigError, match="leave no weight"):
        hf_px.score(model, batches, method="magnitude", exclude=["*"])


# ------------------------------------------------------------------------------------------ the methods


def test_a_configured_criterion_is_a_method():
    batches = random_batches(n_batches=1)
    torch.manual_seed(0)
    reference = PlainCNN(in_channels=3)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    by_name = hf_px.prune(reference, batches, method="px", sparsity=0.8, rounds=2, head="path")
    model = PlainCNN(in_channels=3)
    model.load_state_dict(state)
    by_instance = hf_px.prune(model, batches, method=PX(head="path"), sparsity=0.8, rounds=2)
    assert all(torch.equal(by_instance[n], by_name[n]) for n in by_name)
    scores = hf_px.score(model, batches, method=Magnitude())
    params = dict(model.named_parameters())
    assert all(torch.equal(scores[n], params[n].detach().abs()) for n in scores)
    with pytest.raises(hf_px.ConfigError, match="beside a configured PX"):
        hf_px.prune(model, batches, method=PX(), head="path")
    with pytest.raises(hf_px.ConfigError, match="is a class"):
        hf_px.score(model, batches, method=PX)


def test_register_method_refuses_a_taken_name_unless_replace():
    class Other(hf_px.Criterion):
        def score(self, model, batches, targets, masks, head, seed):
            return {n: torch.ones_like(p) for n, p in model.named_parameters() if n in targets}

    with pytest.raises(hf_px.ConfigError, match="'magnitude' is taken by hf_px.criteria.magnitude.Magnitude"):
        hf_px.register_method("magnitude", Other)
    assert hf_px.criteria.make_criterion("magnitude").__class__ is Magnitude
    hf_px.register_method("magnitude", Magnitude)   # the same class again: a no-op, not a clash
    hf_px.register_method("magnitude", Other, replace=True)    # the registry fixture undoes this
    assert hf_px.criteria.make_criterion("magnitude").__class__ is Other
    with pytest.raises(hf_px.ConfigError, match="other than 'auto'"):
        hf_px.register_method("auto", Other)


def test_registry_changes_do_not_outlive_a_test():
    # runs after the test above (file order): the fixture in conftest.py restored the registry
    assert hf_px.criteria.make_criterion("magnitude").__class__ is Magnitude


# ---------------------------------------------------------------------------------------------- errors


def test_every_error_class_lives_in_errors_and_is_exported():
    from hf_px import errors

    classes = {name for name, value in vars(errors).items() if isinstance(value, type)
               and issubclass(value, errors.HfPxError)}
    assert classes == {"HfPxError", "ConfigError", "UnknownMethodError", "DataError", "ModelError", "MaskError",
                       "MaskViolation", "StaleStructure", "PushError", "HubError", "TrainingDiverged"}
    assert errors.PushError is errors.HubError   # a failed push is a Hub error
    for name in classes:
        assert getattr(hf_px, name) is getattr(errors, name) and name in hf_px.__all__
    from hf_px import finetune, hub, surrogate

    assert finetune.MaskViolation is errors.MaskViolation and hub.PushError is errors.PushError
    assert surrogate.StaleStructure is errors.StaleStructure


def test_a_mask_that_names_no_parameter_is_one_error_everywhere(tmp_path):
    model = PlainCNN(in_channels=3)
    bad = {"nope.weight": torch.ones(2, dtype=torch.bool)}
    wrong_shape = {"fc.weight": torch.ones(2, dtype=torch.bool)}
    for masks in (bad, wrong_shape):
        with pytest.raises(hf_px.MaskError):
            hf_px.apply_masks_(model, masks)
        with pytest.raises(hf_px.MaskError):
            hf_px.check_masks(model, masks)
        with pytest.raises(hf_px.MaskError):
            hf_px.save_sparse(model, masks, tmp_path / "out")
    targets = ["fc.weight"]
    with pytest.raises(hf_px.MaskError, match="has shape"):
        hf_px.score(model, random_batches(n_batches=1), method="magnitude", targets=targets, masks=wrong_shape)
    with pytest.raises(hf_px.MaskError, match="torch.bool"):
        hf_px.apply_masks_(model, {"fc.weight": torch.ones_like(model.fc.weight)})
