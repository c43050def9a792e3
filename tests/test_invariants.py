"""Invariants for every method x a tiny zoo of timm and transformers CNNs and ViTs (docs/px.md section 13)."""

import pytest
import torch

import hf_px
from hf_px.criteria import make_criterion
from hf_px.testing import random_batches, tiny_zoo

ZOO = tiny_zoo()
METHODS = hf_px.list_methods()


def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
    }


def _assert_untouched(model, before):
    after = _snapshot(model)
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


@pytest.fixture(scope="module")
def batches():
    return random_batches(n_batches=2, batch_size=3)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", list(ZOO))
def test_scores_are_finite_shaped_and_informative(model_name, method, batches):
    torch.manual_seed(0)
    model = ZOO[model_name]().train()   # train mode on purpose: scoring must not leave it changed
    before = _snapshot(model)
    scores = hf_px.score(model, batches, method=method)
    _assert_untouched(model, before)

    params = dict(model.named_parameters())
    head = hf_px.find_head(model.eval(), batches[0][0][:1])
    model.train()
    assert set(scores) == set(hf_px.prunable_weights(model)) - set(head)
    values = torch.cat([s.flatten().double() for s in scores.values()])
    for name, value in scores.items():
        assert value.shape == params[name].shape
    assert torch.isfinite(values).all()
    if make_criterion(method).nonnegative:
        assert (values >= 0).all()
    assert values.unique().numel() > 1, "all scores equal"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", ["plain_cnn", "hf_resnet", "timm_vit_tiny", "hf_swin"])
def test_prune_is_exact_deterministic_and_zeroes_weights(model_name, method, batches):
    torch.manual_seed(0)
    model = ZOO[model_name]()
    twin = ZOO[model_name]()
    twin.load_state_dict(model.state_dict())
    masks = hf_px.prune(model, batches, method=method, sparsity=0.8, rounds=2, seed=3)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - int(0.8 * total)   # kept_count
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert mask.dtype == torch.bool
        assert (params[name][~mask] == 0).all()
    again = hf_px.prune(twin, batches, method=method, sparsity=0.8, rounds=2, seed=3)
    assert all(torch.equal(masks[n], again[n]) for n in masks)


@pytest.mark.parametrize("model_name, method", [("plain_cnn", m) for m in METHODS] + [("hf_vit_sdpa", "px")])
def test_masks_only_shrink_over_rounds(model_name, method, batches):
    torch.manual_seed(0)
    model = ZOO[model_name]()
    masks = None
    for density in hf_px.density_schedule(0.1, 4):
        scores = hf_px.score(model, batches, method=method, masks=masks)
        if masks is not None:   # pruned weights score exactly zero
            assert all((scores[n][~masks[n]] == 0).all() for n in masks)
        new = hf_px.masks_from_scores(scores, density, masks)
        if masks is not None:
            assert all(not (new[n] & ~masks[n]).any() for n in masks)
        masks = new


def test_model_left_as_found_when_scoring_raises():
    torch.manual_seed(0)
    model = ZOO["hf_vit_sdpa"]().train()
    before = _snapshot(model)

    class FailsLater:   # first pass (tracing) is fine, a later pass hits bad data
        def __init__(self):
            self.passes = 0

        def __iter__(self):
            self.passes += 1
            yield torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
            if self.passes >= 3:   # the data term's pass: fails after one batch went through the surrogates
                images = torch.randn(2, 3, 32, 32)
                images[0, 0, 0, 0] = float("nan")
                yield images, torch.tensor([0, 1])

    with pytest.raises(hf_px.DataError):
        hf_px.score(model, FailsLater(), method="px")
    _assert_untouched(model, before)


@pytest.mark.parametrize("model_name", ["timm_vit_tiny", "hf_vit_eager", "hf_vit_sdpa", "hf_swin"])
def test_px_exact_scores_query_and_key_weights(model_name, batches):
    model = ZOO[model_name]()
    scores = hf_px.score(model, batches, method="px-exact", probes=2)
    checked = 0
    for name, value in scores.items():
        if name.endswith("qkv.weight"):   # timm fuses q, k, v: rows [0, 2d) are W_Q and W_K
            d = value.shape[1]
            assert (value[: 2 * d].abs().sum(1) > 0).all(), name
            checked += 1
        elif name.endswith(("query.weight", "key.weight", "q_proj.weight", "k_proj.weight")):   # separate W_Q, W_K
            assert (value != 0).any(), name
            checked += 1
    assert checked >= 2, f"no query/key weights found among {list(scores)[:6]}"


@pytest.mark.parametrize("policy", ["magnitude", "dense"])
def test_px_gate_only_policy_gives_query_and_key_their_share(policy, batches):
    torch.manual_seed(0)
    model = ZOO["timm_vit_tiny"]()
    masks = hf_px.prune(model, batches, method="px", sparsity=0.7, rounds=3, gate_only=policy)
    qkv = masks["blocks.0.attn.qkv.weight"]
    d = qkv.shape[1]
    qk_density, v_density = float(qkv[: 2 * d].float().mean()), float(qkv[2 * d:].float().mean())
    if policy == "dense":
        assert qk_density == 1.0
    else:   # ranked onto the path weights' score distribution: about the global density, never wiped out
        assert 0.1 < qk_density < 0.6 and v_density > 0.0


def test_score_accepts_dict_batches_and_dataloaders():
    torch.manual_seed(0)
    model = ZOO["hf_vit_sdpa"]()
    data = random_batches(n_batches=2, batch_size=2)
    as_tuples = hf_px.score(model, data, method="snip")
    as_dicts = hf_px.score(model, [{"pixel_values": x, "labels": y} for x, y in data], method="snip")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])), batch_size=2)
    as_loader = hf_px.score(model, loader, method="snip")
    as_generator = hf_px.score(model, (b for b in data), method="snip")
    for name in as_tuples:
        torch.testing.assert_close(as_dicts[name], as_tuples[name])
        torch.testing.assert_close(as_loader[name], as_tuples[name])
        torch.testing.assert_close(as_generator[name], as_tuples[name])


def test_px_scores_do_not_depend_on_batching():
    torch.manual_seed(0)
    model = ZOO["timm_resnet18"]()
    data = random_batches(n_batches=1, batch_size=6)
    whole = hf_px.score(model, data, method="px")
    split = hf_px.score(model, [(data[0][0][:2], None), (data[0][0][2:], None)], method="px")
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-30)


def test_half_precision_model_is_scored_in_float32_and_left_in_half():
    torch.manual_seed(0)
    model = ZOO["plain_cnn"]().to(torch.bfloat16)
    scores = hf_px.score(model, random_batches(dtype=torch.bfloat16), method="px")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(torch.isfinite(s).all() and s.dtype == torch.float32 for s in scores.values())


def test_register_method_adds_a_usable_criterion(batches):
    from dataclasses import dataclass

    @hf_px.register_method("test-negative-magnitude")
    @dataclass
    class NegativeMagnitude(hf_px.Criterion):
        nonnegative = False

        def score(self, model, batches, targets, masks, head, seed):
            params = dict(model.named_parameters())
            return {n: -params[n].detach().abs() for n in targets}

    assert "test-negative-magnitude" in hf_px.list_methods()
    model = ZOO["plain_cnn"]()
    weights = {n: p.detach().abs().clone() for n, p in model.named_parameters()}
    masks = hf_px.prune(model, batches, method="test-negative-magnitude", sparsity=0.5)
    for name, mask in masks.items():   # the smallest weights were kept
        assert weights[name][mask].max() <= weights[name][~mask].min() + 1e-12 or mask.all() or (~mask).all()


@pytest.mark.parametrize("method", ["px", "synflow"])
def test_structure_follows_a_changed_code_path(method, batches):
    """The model's structure is found anew by every call (nothing is cached between calls): switching
    attention from sdpa to eager (same parameters and modules, different ops) between two calls gives the
    scores of a fresh eager model."""
    import copy

    from hf_px import surrogate

    model = ZOO["hf_vit_sdpa"]()
    hf_px.score(model, batches, method=method)
    assert torch.nn.functional.scaled_dot_product_attention in surrogate.trace_of(model, batches[0][0]).ops
    fresh = copy.deepcopy(model)
    for m in (model, fresh):
        m.set_attn_implementation("eager")
    switched = hf_px.score(model, batches, method=method)
    assert torch.nn.functional.scaled_dot_product_attention not in surrogate.trace_of(model, batches[0][0]).ops
    expected = hf_px.score(fresh, batches, method=method)
    for name, value in expected.items():
        torch.testing.assert_close(switched[name], value, rtol=1e-5, atol=0)


def test_float32_with_rescaling_matches_float64():
    """ResNet-20's data term grows ~2^14 per block, so float32 passes rescale (in place where safe) at cuts;
    the scores must still equal a float64 computation of the same model."""
    import copy

    from hf_px import surrogate
    from hf_px.testing import resnet20

    torch.manual_seed(0)
    model = resnet20().eval()
    batches = random_batches(n_batches=2, batch_size=4)
    scores = hf_px.score(model, batches, method="px")
    wide = copy.deepcopy(model).double()
    reference = hf_px.score(wide, [(x.double(), y) for x, y in batches], method="px")
    # float32 cannot hold the true values (~1e46): its scores come normalised, so compare up to a global factor
    peak = max(float(s.max()) for s in scores.values())
    reference_peak = max(float(s.max()) for s in reference.values())
    for name, value in reference.items():
        torch.testing.assert_close(scores[name].double() / peak, value / reference_peak, rtol=2e-3, atol=1e-9)

    options = surrogate.SurrogateOptions()
    targets = [n for n in hf_px.prunable_weights(model) if n != "fc.weight"]
    trace = surrogate.trace_of(model, batches[0][0])
    roles = surrogate.parameter_roles(model, targets, ["fc.weight", "fc.bias"], options, trace)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in targets}
    real, _ = surrogate.pass_parameters(model, "real", roles, masks, torch.float32)
    activation, _ = surrogate.pass_parameters(model, "activation", roles, masks, torch.float32)
    _, exponent = surrogate.data_term(model, batches, real, activation, options, trace, torch.float32)
    assert exponent < -32, "the data term was not rescaled: this test no longer exercises rescaling"


@pytest.mark.parametrize("drift", [0, 8])
def test_rescaling_at_cuts_never_changes_scores_with_a_head_bias(monkeypatch, drift):
    """Rescaling scales the paths by 2^e; the head's real bias (head="real") must be scaled alike, or the
    data term becomes W f + b 2^-e and depends on the exponent (found by the 2-process parity test)."""
    import copy

    from hf_px import surrogate
    from hf_px.testing import resnet20

    torch.manual_seed(0)
    model = resnet20().double().eval()
    with torch.no_grad():
        model.fc.bias.uniform_(-1.0, 1.0)            # a bias that matters
    batches = [(x.double(), y) for x, y in random_batches(n_batches=2, batch_size=4)]
    monkeypatch.setattr(surrogate, "_DRIFT", 10_000)    # never rescale: the reference
    reference = hf_px.score(copy.deepcopy(model), batches, method="px")
    monkeypatch.setattr(surrogate, "_DRIFT", drift)     # rescale at (almost) every cut
    rescaled = hf_px.score(copy.deepcopy(model), batches, method="px")
    for name, value in reference.items():
        torch.testing.assert_close(rescaled[name], value, rtol=1e-9, atol=0)


@pytest.mark.parametrize("case", [
    dict(func="conv2d", x=(3, 6, 9, 8), w=(4, 6, 3, 3), stride=2, padding=1),
    dict(func="conv2d", x=(2, 6, 7, 7), w=(4, 3, 3, 2), groups=2, dilation=2, bias=True),
    dict(func="conv2d", x=(2, 4, 8, 8), w=(4, 4, 3, 3), padding="same", value=0.0),
    dict(func="conv1d", x=(2, 4, 11), w=(6, 2, 5), groups=2, stride=3),
    dict(func="conv3d", x=(1, 2, 5, 6, 4), w=(3, 2, 2, 3, 1), bias=True),
    dict(func="conv2d", x=(2, 4, 6, 6), w=(4, 1, 3, 3), groups=4),       # depthwise: the dense op
    dict(func="linear", x=(2, 5, 7), w=(3, 7), bias=True),
    dict(func="linear", x=(4, 7), w=(9, 7), value=0.0),
])
def test_constant_weight_layer_equals_the_dense_op(case, monkeypatch):
    """Surrogate A runs unpruned Conv/Linear layers with an all-ones weight as one sum per group; the result
    must equal the dense op on a materialised weight (the oracle), bias, groups, stride and padding included."""
    import torch.nn.functional as F

    from hf_px import surrogate

    case = dict(case)
    func = getattr(F, case.pop("func"))
    value = case.pop("value", 1.0)
    torch.manual_seed(0)
    x = torch.randn(case.pop("x"), dtype=torch.float64)
    shape = case.pop("w")
    weight = torch.full((), value, dtype=torch.float64).expand(shape)   # what pass_parameters gives
    bias = torch.randn(shape[0], dtype=torch.float64) if case.pop("bias", False) else None
    calls = []
    shortcut = surrogate._constant_weight_layer
    monkeypatch.setattr(surrogate, "_constant_weight_layer", lambda *a: calls.append(1) or shortcut(*a))
    with surrogate.GatedPass("activation", surrogate.deque()):
        out = func(x, weight, bias, **case)
    expected = func(x, weight.contiguous(), bias, **case)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous() and out.data_ptr() != x.data_ptr()
    assert calls, "the constant weight was not recognised: the shortcut is not exercised"


@pytest.mark.parametrize("model_name,attention", [
    ("plain_cnn", False), ("timm_resnet18", False), ("timm_convnext_atto", False), ("timm_efficientnet_b0", False),
    ("hf_resnet", False), ("timm_vit_tiny", True), ("hf_vit_eager", True), ("hf_vit_sdpa", True), ("hf_swin", True),
])
def test_auto_runs_the_transformer_choice_on_attention_models_and_the_cnn_choice_on_the_rest(model_name, attention):
    """method="auto" follows docs/results.md: AUTO_FOR_TRANSFORMERS where the forward pass computes softmax
    attention (squeeze-excitation gates alone do not count), AUTO_FOR_CNNS otherwise; prune("auto"), also as
    prune's default, equals that method with its options and rounds and a per-tensor floor of a tenth of the
    target density."""
    import copy

    from hf_px.pruning import AUTO_FOR_CNNS, AUTO_FOR_TRANSFORMERS

    expected = AUTO_FOR_TRANSFORMERS if attention else AUTO_FOR_CNNS
    torch.manual_seed(0)
    model = tiny_zoo()[model_name]()
    assert hf_px.auto_choice(model, torch.randn(2, 3, 32, 32)) == expected
    assert model.training, "auto_choice changed the model's mode"
    if model_name in ("plain_cnn", "hf_vit_sdpa"):
        batches = random_batches(n_batches=1, batch_size=4)
        auto = hf_px.prune(copy.deepcopy(model), batches, method="auto", sparsity=0.8, seed=3)
        chosen = hf_px.prune(copy.deepcopy(model), batches, method=expected["method"], sparsity=0.8,
                             rounds=expected["rounds"] or 1, seed=3, min_layer_density=0.1 * 0.2,
                             **expected["method_options"])
        assert all(torch.equal(auto[n], chosen[n]) for n in chosen)
        default = hf_px.prune(copy.deepcopy(model), batches, sparsity=0.8, seed=3)
        assert all(torch.equal(default[n], chosen[n]) for n in chosen)
        default_scores = hf_px.score(model, batches)
        chosen_scores = hf_px.score(model, batches, method=expected["method"], **expected["method_options"])
        assert all(torch.equal(default_scores[n], chosen_scores[n]) for n in chosen_scores)
        with pytest.raises(hf_px.ConfigError, match="auto"):
            hf_px.prune(model, batches, method="auto", gate_only="dense")


@pytest.mark.parametrize("method", METHODS)
def test_score_keeps_existing_grads_hooks_and_frozen_flags(method, batches):
    """The caller's own state survives scoring: .grad tensors (same objects, same values), a frozen
    parameter, per-module train/eval modes and a user's forward hook (still registered, still called)."""
    torch.manual_seed(0)
    model = ZOO["plain_cnn"]().train()
    model.features[1].eval()
    model.features[0].bias.requires_grad_(False)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = {n: p.grad for n, p in model.named_parameters()}
    calls = []
    handle = model.fc.register_forward_hook(lambda *_: calls.append(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    hf_px.score(model, batches, method=method)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [m.training for m in model.modules()] == modes
    assert not model.features[0].bias.requires_grad
    for name, p in model.named_parameters():
        assert p.grad is grads[name] and bool((p.grad == 0.5).all()), name
    calls.clear()
    model(batches[0][0])
    assert calls == [1] and len(model.fc._forward_hooks) == 1
    handle.remove()


def test_prune_warns_when_a_tensor_reaches_zero_density(batches):
    """timm's ResNets zero-initialise each block's last BatchNorm: every weight of those branches scores 0
    at random init, so a high sparsity empties whole tensors; docs/px.md section 8: always report them."""
    torch.manual_seed(0)
    model = ZOO["timm_resnet18"]()
    with pytest.warns(UserWarning, match="pruned to zero density"):
        masks = hf_px.prune(model, batches, method="snip", sparsity=0.9)
    assert any(not m.any() for m in masks.values())
