"""PX against independent answers (docs/px.md section 13)."""

import itertools
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from torch.func import functional_call, jacrev, vmap

import hf_px
from hf_px.batches import logits_of
from hf_px.testing import tiny_zoo
from hf_px.surrogate import GatedPass, run_pass


# --- 1. path enumeration oracle -------------------------------------------------------------------------

class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 4, bias=False), nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2 * 4 * 4, 3, bias=False)

    def forward(self, x):
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1))


def _dense_layers(model, input_shape):
    """Each layer as (dense matrix, index of the weight entry behind each matrix entry or -1)."""
    layers, shape = [], input_shape
    for module in [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]:
        weight = module.weight.detach().double()
        n_in = int(np.prod(shape))
        index = None
        for j in range(weight.numel()):   # the matrix of the one-hot weight e_j marks the entries using j
            one_hot = torch.zeros(weight.numel(), dtype=torch.float64)
            one_hot[j] = 1.0
            one_hot = one_hot.view_as(weight)
            basis = torch.eye(n_in, dtype=torch.float64).view(n_in, *shape)
            if isinstance(module, nn.Conv2d):
                out = F.conv2d(basis, one_hot, stride=module.stride, padding=module.padding)
                out_shape = out.shape[1:]
            else:
                out = basis.flatten(1) @ one_hot.T
                out_shape = out.shape[1:]
            marks = out.reshape(n_in, -1).T.numpy()   # (n_out, n_in)
            if index is None:
                index = -np.ones(marks.shape, dtype=np.int64)
            assert np.all(index[marks != 0] == -1), "two weights on one matrix entry"
            index[marks != 0] = j
        flat = weight.flatten().numpy()
        matrix = np.where(index >= 0, flat[np.clip(index, 0, None)], 0.0)
        layers.append((matrix, index))
        shape = tuple(out_shape) if isinstance(module, nn.Conv2d) else (out.shape[1],)
    return layers


def _enumerate_px(model, inputs, head_real):
    """E1/E2 by listing every input-to-output path of a bias-free ReLU network."""
    layers = _dense_layers(model, inputs.shape[1:])
    xs = inputs.flatten(1).double().numpy()
    gates = []   # gates[n][l]: on/off of the units after layer l (hidden layers only)
    for x in xs:
        per_layer, h = [], x
        for matrix, _ in layers[:-1]:
            pre = matrix @ h
            per_layer.append(pre > 0)
            h = np.maximum(pre, 0)
        gates.append(per_layer)
    sizes = [layers[0][0].shape[1]] + [m.shape[0] for m, _ in layers]
    n_out = sizes[-1]
    last = len(layers) - 1
    paths = []
    for units in itertools.product(*[range(s) for s in sizes]):
        entries = [layers[l][1][units[l + 1], units[l]] for l in range(len(layers))]
        if min(entries) >= 0:
            paths.append((units, entries))

    def factor(l, units):   # kernel: theta^2, except a real head keeps theta
        value = layers[l][0][units[l + 1], units[l]]
        return value if (head_real and l == last) else value ** 2

    data = np.zeros(n_out)
    for units, _ in paths:
        for n, x in enumerate(xs):
            active = all(gates[n][l][units[l + 1]] for l in range(last))
            head = layers[last][0][units[-1], units[-2]] if head_real else 1.0
            data[units[-1]] += active * head * x[units[0]] ** 2
    scores = [np.zeros(layers[l][0].shape) * 0 for l in range(len(layers))]
    scores = [np.zeros(int((idx.max() + 1))) for _, idx in layers]
    for units, entries in paths:
        path_value = data[units[-1]] * np.prod([factor(l, units) for l in range(len(layers))])
        for l, j in enumerate(entries):
            theta = layers[l][0][units[l + 1], units[l]]
            if head_real and l == last:   # |dR/dtheta| theta^2: dR/dtheta = path_value / theta
                scores[l][j] += path_value / theta
            else:                          # theta^2 dR/d(theta^2) = path_value
                scores[l][j] += path_value
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    out = []
    for l, (score, weight) in enumerate(zip(scores, weights)):
        if head_real and l == last:
            score = np.abs(score) * weight.detach().double().flatten().numpy() ** 2
        out.append(np.abs(score).reshape(weight.shape))
    return out


@pytest.mark.parametrize("make_model,shape", [(TinyMLP, (3,)), (TinyCNN, (1, 4, 4))], ids=["mlp", "cnn"])
@pytest.mark.parametrize("head", ["path", "real"])
def test_px_matches_path_enumeration(make_model, shape, head):
    torch.manual_seed(0)
    model = make_model().double()
    inputs = torch.randn(5, *shape, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    scores = hf_px.score(model, [(inputs, None)], method="px", targets=names, head=head)
    expected = _enumerate_px(model, inputs, head_real=head == "real")
    for name, want in zip(names, expected):
        got = scores[name].numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12 * np.abs(want).max())


class TinyBNMLP(nn.Module):
    """Linear -> BatchNorm (eval; signed gamma, running var != 1) -> ReLU, twice, then a Linear head."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 4, bias=False), nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm1d(4), nn.BatchNorm1d(3)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.weight.uniform_(-2.0, 2.0)
                bn.bias.uniform_(-0.5, 0.5)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.2, 3.0)

    def forward(self, x):
        return self.fc3(F.relu(self.bn2(self.fc2(F.relu(self.bn1(self.fc1(x)))))))


@pytest.mark.parametrize("batchnorm_activation", ["abs", "one"])
def test_px_with_eval_batchnorm_matches_path_enumeration(batchnorm_activation):
    """Eval-mode BN is a per-unit path constant s = gamma/sqrt(var+eps) (docs/px.md section 5.6): s^2 in K, and |s| ("abs")
    or 1 ("one") in A; gates come from the real network, shift included. Checked by listing every path."""
    torch.manual_seed(0)
    model = TinyBNMLP().double().eval()
    inputs = torch.randn(5, 3, dtype=torch.float64)
    targets = ["fc1.weight", "fc2.weight", "fc3.weight"]
    scores = hf_px.score(model, [(inputs, None)], method="px", targets=targets, head="path",
                         batchnorm_activation=batchnorm_activation)

    weights = [model.fc1.weight, model.fc2.weight, model.fc3.weight]
    weights = [w.detach().numpy() for w in weights]
    scales = [(bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy() for bn in (model.bn1, model.bn2)]
    with torch.no_grad():   # the real network's ReLU gates
        h1 = model.bn1(model.fc1(inputs))
        h2 = model.bn2(model.fc2(F.relu(h1)))
    gates = [(h1 > 0).numpy(), (h2 > 0).numpy()]
    xs = inputs.numpy()
    a_scale = [np.abs(s) if batchnorm_activation == "abs" else np.ones_like(s) for s in scales]

    paths = list(itertools.product(range(3), range(4), range(3), range(2)))
    data = np.zeros(2)
    for i, u, v, o in paths:
        for n in range(len(xs)):
            data[o] += gates[0][n, u] * gates[1][n, v] * a_scale[0][u] * a_scale[1][v] * xs[n, i] ** 2
    expected = [np.zeros(w.shape) for w in weights]
    for i, u, v, o in paths:
        kernel = (weights[0][u, i] * scales[0][u] * weights[1][v, u] * scales[1][v] * weights[2][o, v]) ** 2
        for layer, entry in enumerate([(u, i), (v, u), (o, v)]):
            expected[layer][entry] += data[o] * kernel
    for name, want in zip(targets, expected):
        np.testing.assert_allclose(scores[name].numpy(), want, rtol=1e-9, atol=1e-12 * want.max())


# --- 2. gate replay ---------------------------------------------------------------------------------------

class NoAdditiveViT(nn.Module):
    """A small transformer with no additive terms (no biases, tokens, position embeddings, norm shifts):
    the setting where the PX bound is exact to test. `fused` uses scaled_dot_product_attention."""

    def __init__(self, dim=8, heads=2, depth=2, classes=3, fused=True):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.patch = nn.Conv2d(1, dim, 4, 4, bias=False)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict(dict(
                norm1=nn.LayerNorm(dim, bias=False), qkv=nn.Linear(dim, 3 * dim, bias=False),
                proj=nn.Linear(dim, dim, bias=False), norm2=nn.LayerNorm(dim, bias=False),
                fc1=nn.Linear(dim, 2 * dim, bias=False), fc2=nn.Linear(2 * dim, dim, bias=False))))
            with torch.no_grad():   # LayerNorm gamma away from 1 so that it matters
                self.blocks[-1].norm1.weight.uniform_(0.5, 1.5)
        self.norm = nn.LayerNorm(dim, bias=False)
        self.head = nn.Linear(dim, classes, bias=False)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, t, d = x.shape
        for blk in self.blocks:
            q, k, v = blk.qkv(blk.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            if self.fused:
                a = F.scaled_dot_product_attention(q, k, v)
            else:
                a = (q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5).softmax(dim=-1) @ v
            x = x + blk.proj(a.transpose(1, 2).reshape(b, t, d))
            x = x + blk.fc2(F.gelu(blk.fc1(blk.norm2(x))))
        return self.head(self.norm(x).mean(1))


def _record_and_replay(model, x):
    params = {n: p.detach() for n, p in model.named_parameters()}
    gates = deque()
    run_pass(model, x, params, GatedPass("record", gates))
    assert gates, "nothing was recorded"
    replayed = run_pass(model, x, params, GatedPass("replay", gates))
    assert not gates, "not every recorded gate was replayed"
    return replayed


@pytest.mark.parametrize("name", ["plain_cnn", "timm_vit_tiny", "timm_convnext_atto", "hf_vit_eager",
                                  "hf_vit_sdpa", "hf_swin", "timm_efficientnet_b0"])
def test_replaying_recorded_gates_reproduces_logits(name):
    torch.manual_seed(0)
    model = tiny_zoo()[name]().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = logits_of(model(x))
        replayed = _record_and_replay(model, x)
    torch.testing.assert_close(replayed, expected, rtol=1e-4, atol=1e-5)


def test_replay_with_frozen_gates_is_linear_in_the_input():
    """Once gates are constants, scaling the input scales the logits (no additive terms)."""
    torch.manual_seed(0)
    model = NoAdditiveViT().double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}
    gates = deque()
    with torch.no_grad():
        base = run_pass(model, x, params, GatedPass("record", gates))
        scaled = run_pass(model, 3.0 * x, params, GatedPass("replay", gates))
    torch.testing.assert_close(scaled, 3.0 * base)


# --- 3. the bound: gate-frozen px-exact <= PX, per weight ------------------------------------------------

def _frozen_gate_exact(model, x):
    """theta_j^2 * sum_{n,k} (d f_k(x_n) / d theta_j)^2 with every gate frozen at its recorded value."""
    names = [n for n, _ in model.named_parameters()]
    gates = deque()
    base = {n: p.detach() for n, p in model.named_parameters()}
    with torch.no_grad():
        run_pass(model, x, base, GatedPass("record", gates))
    leaves = {n: p.clone().requires_grad_(True) for n, p in base.items()}
    logits = run_pass(model, x, leaves, GatedPass("replay", gates))
    totals = {n: torch.zeros_like(p) for n, p in base.items()}
    for n_idx, k in itertools.product(range(logits.shape[0]), range(logits.shape[1])):
        grads = torch.autograd.grad(logits[n_idx, k], [leaves[n] for n in names], retain_graph=True, allow_unused=True)
        for name, grad in zip(names, grads):
            if grad is not None:
                totals[name] += grad ** 2
    return {n: base[n] ** 2 * totals[n] for n in names}


@pytest.mark.parametrize("model_name", ["relu_cnn", "vit_sdpa", "vit_softmax"])
def test_frozen_gate_exact_is_bounded_by_px(model_name):
    torch.manual_seed(1)
    if model_name == "relu_cnn":
        model, x = TinyCNN().double(), torch.randn(4, 1, 4, 4, dtype=torch.float64)
    else:
        model = NoAdditiveViT(fused=model_name == "vit_sdpa").double()
        x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    model.eval()
    targets = [n for n, _ in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    scores = hf_px.score(model, [(x, None)], method="px", targets=targets, head="path", gate_only="dense")
    exact = _frozen_gate_exact(model, x)
    for name in targets:
        bound = scores[name].double()
        slack = exact[name] - bound * (1 + 1e-9)
        assert (slack <= 1e-12 * float(exact[name].max() + 1e-300)).all(), f"{name}: exact exceeds the PX bound"
        assert (exact[name] > 0).any() or "qkv" in name


# --- 4. the probe estimator of px-exact -------------------------------------------------------------------

def test_px_exact_probes_match_exact_jacobians():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.GELU(),
                          nn.Linear(8, 5)).double().eval()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    targets = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    estimate = hf_px.score(model, [(x[:3], None), (x[3:], None)], method="px-exact", targets=targets, probes=64)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)   # per sample: (outputs, *weight shape)
    exact = torch.cat([(params[n] ** 2 * jac[n].pow(2).sum((0, 1))).flatten() for n in targets])
    approx = torch.cat([estimate[n].flatten() for n in targets])
    rho = spearmanr(exact.numpy(), approx.numpy()).statistic
    assert rho >= 0.99, f"Spearman {rho:.4f} < 0.99"


def test_layernorm_identity_ablation_equals_the_network_with_gamma_folded_into_the_next_layer():
    """layernorm="identity" keeps only LayerNorm's gamma on the path (an ablation of the rule of docs/px.md section 5.5). With
    the norm after the last gate, that equals PX of the same network without the norm and gamma folded into
    the next layer's columns (gamma^2 theta^2 in K, 1 in A); the default rule must differ from it."""
    torch.manual_seed(0)
    with_norm = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.LayerNorm(6), nn.Linear(6, 3, bias=False))
    with_norm = with_norm.double()
    with torch.no_grad():
        with_norm[2].weight.uniform_(-2.0, 2.0)
        with_norm[2].bias.uniform_(-1.0, 1.0)            # dropped from both surrogates
    folded = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
    with torch.no_grad():
        folded[0].weight.copy_(with_norm[0].weight)
        folded[2].weight.copy_(with_norm[3].weight * with_norm[2].weight)
    batches = [(torch.randn(5, 4, dtype=torch.float64), None)]
    names = {"0.weight": "0.weight", "3.weight": "2.weight"}
    scores = hf_px.score(with_norm, batches, method="px", targets=list(names), head="path", layernorm="identity")
    expected = hf_px.score(folded, batches, method="px", targets=list(names.values()), head="path")
    for name, other in names.items():
        torch.testing.assert_close(scores[name], expected[other], rtol=1e-10, atol=0)
    default = hf_px.score(with_norm, batches, method="px", targets=list(names), head="path")
    assert not torch.allclose(default["0.weight"], scores["0.weight"])
