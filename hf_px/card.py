"""The model card of a sparse checkpoint: a `ModelCardData` YAML header plus a body rendered from the shipped
template `templates/model_card.md` (the huggingface_hub way), and an optional per-layer density plot."""

import json
import re
from pathlib import Path

from .errors import ConfigError
from .record import BatchNormRecord, CheckpointRecord

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def render_card(record: CheckpointRecord, plot_file: str | None) -> str:
    """The README.md of a checkpoint, from its record as `save_sparse` completes it (counts and per-layer
    densities filled in; `hf_px.record`). plot_file: the density plot's file name inside the checkpoint, or
    None."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if record.library not in ("transformers", "timm"):
        raise ConfigError(f"the record's library is {record.library!r}; the card describes 'transformers' or "
                          "'timm' models")
    method = record.method or "unknown"
    base_model, dataset, probe, finetune = record.base_model or None, record.dataset, record.probe, record.finetune
    title = f"{_short(base_model or record.source or 'model')} pruned with {method}" + (
        " and fine-tuned" if finetune else "")
    eval_results = None
    if finetune and finetune.eval_accuracy is not None:   # the card's model-index
        eval_results = [EvalResult(task_type="image-classification",
                                   dataset_type=finetune.dataset if is_hub_dataset(finetune.dataset) else str(finetune.task),
                                   dataset_name=str(finetune.task), dataset_split=finetune.eval_split,
                                   metric_type="accuracy", metric_value=round(finetune.eval_accuracy, 4),
                                   metric_name="top-1 accuracy")]
    elif probe and probe.sparse is not None:   # pruned only: the linear-probe accuracy, named as such
        eval_results = [EvalResult(task_type="image-classification",
                                   dataset_type=dataset if is_hub_dataset(dataset) else str(record.task),
                                   dataset_name=str(record.task), dataset_split=probe.eval_split or None,
                                   metric_type="accuracy", metric_value=round(probe.sparse, 4),
                                   metric_name="linear-probe accuracy (no fine-tuning)")]
    card_data = ModelCardData(
        base_model=base_model,
        license=record.license or None,
        library_name=record.library,
        tags=list(dict.fromkeys(["pruned", "sparse", "hf-px", method])),
        datasets=[dataset] if is_hub_dataset(dataset) else None,
        pipeline_tag="image-classification",
        model_name=title if eval_results else None,
        eval_results=eval_results,
    )
    location = _repo_id(record)
    head_refit = bool(probe and probe.head_refit)
    if finetune:
        head_note = ("refit as a ridge-regression probe when pruning, then trained with the rest of the model"
                     if head_refit else "trained with the rest of the model")
    else:
        head_note = ("refit as a ridge-regression probe on the scoring images (regularisation chosen by "
                     "leave-one-out error, logits scaled to minimise the leave-one-out cross-entropy), before "
                     "pruning and again on the pruned model's features (the only trained part)"
                     if head_refit else "the base model's, unchanged")
    unknown = [(what, key) for what, key, known in (("base model", "base_model", base_model),
                                                     ("licence", "license", record.license),
                                                     ("dataset", "datasets", is_hub_dataset(dataset))) if not known]
    recipe = (finetune.recipe or {}) if finetune else {}
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=title,
        finetune=finetune,
        base_model=base_model,
        base_revision=record.base_revision,
        source=_public(record.source) or "a local model",
        library=record.library,
        method=method,
        method_options=json.dumps(record.method_options, sort_keys=True) if record.method_options else None,
        chosen_by_auto=(record.config or {}).get("method") == "auto",
        floor=record.min_layer_density,
        channel_floor=record.min_channel_density,
        sparsity=record.sparsity,
        global_density=record.global_density,
        rounds=record.rounds,
        seed=record.seed,
        task=record.task or "an unnamed dataset",
        dataset=_public(dataset) if dataset and dataset != record.task else None,
        split=record.split,
        examples_per_class=record.examples_per_class,
        head_note=head_note,
        unknown=unknown,
        batchnorm_note=_batchnorm_note(record.batchnorm),
        probe=probe,
        counts=record.counts,
        densities=record.layer_densities,
        zero_layers=[name for name, density in record.layer_densities.items() if density == 0.0],
        plot_file=plot_file,
        location=location or "path/to/this/checkpoint",
        timm_location=f"hf-hub:{location}" if location else "local-dir:path/to/this/checkpoint",
        command=_public_command(record.command),
        finetune_command=_public_command(finetune.command if finetune else None),
        precision={"no": "fp32"}.get(str(recipe.get("precision")), recipe.get("precision")),
    )
    return str(card)


def _batchnorm_note(batchnorm: BatchNormRecord | None) -> str | None:
    """The card's BatchNorm row: recalibrated on how many images, or kept from the dense model."""
    if batchnorm is None or not batchnorm.layers:
        return None
    if batchnorm.recalibrated:
        return (f"running statistics of all {batchnorm.layers} layers re-estimated on {batchnorm.images} training "
                "images of the pruned model" + (", after every round" if batchnorm.every_round else ""))
    return f"{batchnorm.layers} layers keep the dense model's running statistics (recalibration was turned off)"


def density_plot(densities: dict[str, float], path: str | Path) -> bool:
    """A horizontal bar chart of per-layer density saved as PNG at `path`; False (no file) without matplotlib
    or without layers."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    if not densities:
        return False
    names = [_short_layer(name) for name in densities]
    values = [100 * density for density in densities.values()]
    # a Figure with its own Agg canvas: no pyplot, no global backend switch, nothing left open
    figure = Figure(figsize=(8, max(2.5, 0.18 * len(names) + 1.2)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    # a tensor at zero density has no bar to see: mark it in red, with a label
    axes.barh(range(len(names)), values, color=["#c44e52" if v == 0 else "#4c72b0" for v in values])
    for row, value in enumerate(values):
        if value == 0:
            axes.text(1, row, "0% (empty)", va="center", fontsize=7, color="#c44e52")
    axes.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 30 else 9)
    axes.invert_yaxis()   # first layer on top
    axes.set_xlim(0, 100)
    axes.set_xlabel("density (% of weights kept)")
    axes.set_title("Per-layer density")
    axes.grid(axis="x", alpha=0.3)
    figure.savefig(Path(path), format="png", dpi=100)
    return True


def _public(text) -> str | None:
    """A local path as its last part (a card may be pushed: absolute local paths say nothing to its readers
    and may say too much about the machine); anything else as is."""
    if not isinstance(text, str) or not text:
        return text
    path = Path(text).expanduser()
    if path.is_absolute() or text.startswith(("~", "./", "../")) or path.exists():
        return path.name or text
    return text


def _public_command(command) -> str | None:
    """The command with its local paths shortened by `_public` (so that it reads the same on the Hub)."""
    if not isinstance(command, str) or not command:
        return command
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:
        return command
    return shlex.join(_public(word) if not word.startswith("-") else word for word in words)


def is_hub_dataset(dataset) -> bool:
    """A Hub dataset id (`name` or `org/name`), not a local folder or file."""
    if not isinstance(dataset, str) or not _HUB_ID.fullmatch(dataset) or ".." in dataset:
        return False
    return not Path(dataset).expanduser().exists()


def _repo_id(record: CheckpointRecord) -> str | None:
    """Where the checkpoint will live on the Hub, when the run said (for the loading snippets): the fine-tuning
    run's --push-to-hub for a fine-tuned checkpoint, else the pruning run's."""
    config = (record.finetune.recipe if record.finetune else record.config) or {}
    return config.get("push_to_hub") or None


def _short(name: str) -> str:
    return str(name).rstrip("/").rpartition("/")[2] or str(name)


def _short_layer(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name
