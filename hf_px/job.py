"""The pruning job behind `hf-px prune`: load → sample task data → fit the head → prune → probe → save/push.

Each step is one call into its own module; this file only wires them together and reports. Under
`accelerate launch` / `torchrun` every process runs the job; a data-parallel method (PX) scores each process's
shard of the scoring images, the others score all of them; only the main process logs and writes.
"""

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint, data, distributed, head, hub, models
from .config import PruneConfig, select_targets
from .criteria import make_criterion
from .errors import ConfigError
from .estimate import estimate_prune, measure_forward, refine
from .masks import global_density, layer_densities
from .pruning import check_method, prune, recommended_method
from .targets import find_head, prunable_weights


@dataclass
class PruneResult:
    """What a job produced: masks keyed by parameter name, the provenance written beside them, where."""

    loaded: "models.LoadedModel"                     # the pruned model (weights zeroed) and its preprocessing
    masks: dict
    provenance: dict
    output: Path | None = None
    pushed_to: str | None = None
    lines: list[str] = field(default_factory=list)   # the printed summary


def run_prune(config: PruneConfig, command: str | None = None, progress: bool = True, log=print) -> PruneResult | None:
    """Run `config`; returns None for a dry run (after printing the plan)."""
    started = time.perf_counter()
    device = distributed.start_from_launcher(config.device)
    rank, processes = distributed.world()
    if rank != 0:    # the main process speaks for all
        log, progress = (lambda *args, **kwargs: None), False
    if not progress:
        quiet_library_progress_bars()
    # bad method options fail before any loading ("auto" is resolved once the model has run)
    criterion = check_method(config.method, config.method_options)
    if config.output and not config.dry_run:    # an existing output fails now, not after hours of pruning
        checkpoint.check_output(Path(config.output).expanduser(), config.overwrite)

    log(f"loading {config.model}" + (f" @ {config.revision}" if config.revision else ""))
    loaded = models.load_model(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code)
    loaded.model.to(device).eval()

    task = data.resolve_task(config.task, config.dataset, config.image_column, config.label_column,
                             config.split, config.eval_split)
    sample = data.sample_task(task, per_class=config.examples_per_class, eval_examples=config.eval_examples,
                              seed=config.seed)
    score_batches = _to(data.make_batches(sample.score_images, sample.score_labels, loaded.preprocess,
                                          config.batch_size), device)
    eval_batches = _to(data.make_batches(sample.eval_images, sample.eval_labels, loaded.preprocess,
                                         config.batch_size), device) if sample.eval_labels else []
    example = score_batches[0][0][:2]
    if criterion is None:
        criterion = make_criterion(recommended_method(loaded.model, example))
    method, rounds = criterion.name, config.rounds or criterion.default_rounds
    shard = criterion.data_parallel and processes > 1
    if shard and len(sample.score_labels) < processes:
        raise ConfigError(f"{len(sample.score_labels)} scoring images for {processes} processes; raise "
                          "--examples-per-class or launch fewer processes")
    # rank r scores examples r, r + P, ...; the head fit and the probe keep the whole sample on every rank
    prune_batches = _to(data.make_batches(sample.score_images[rank::processes], sample.score_labels[rank::processes],
                                          loaded.preprocess, config.batch_size), device) if shard else score_batches

    head_names = find_head(loaded.model, example)
    head_classes = _out_features(loaded.model, head_names)
    differ = head.labels_differ(loaded.label_names, head_classes, sample.label_names)
    fit_head = config.head == "ridge" or (config.head == "auto" and differ)
    if differ and config.head == "keep":
        raise ConfigError(f"--head keep: the checkpoint has {head_classes} classes "
                             f"{(loaded.label_names or [])[:3]}..., the task {len(sample.label_names)} "
                             f"{sample.label_names[:3]}...; use --head auto or ridge to replace the head")
    targets = select_targets([n for n in prunable_weights(loaded.model) if n not in head_names],
                             config.include, config.exclude)
    total = sum(p.numel() for n, p in loaded.model.named_parameters() if n in targets)
    plan = [
        f"model     {config.model} ({loaded.library}, {sum(p.numel() for p in loaded.model.parameters()):,} parameters)",
        f"task      {task.name} ({len(sample.label_names)} classes): {len(sample.score_labels)} scoring images "
        f"in batches of {config.batch_size} (--batch-size), "
        f"{len(sample.eval_labels)} eval images ({sample.eval_split})",
        f"head      {'replaced and fitted as a ridge probe' if differ else 'ridge probe refit' if fit_head else 'kept'}"
        f" ({', '.join(head_names) or 'none found'})",
        f"targets   {len(targets)} tensors, {total:,} weights; keep {round((1 - config.sparsity) * total):,} "
        f"({1 - config.sparsity:.2%})",
        f"method    {method}{' ' + str(config.method_options) if config.method_options else ''}"
        f"{' (auto)' if config.method == 'auto' else ''}, "
        f"rounds {rounds}, seed {config.seed}",
        f"device    {device}",
    ]
    if processes > 1:
        plan.append(f"processes {processes}, " + ("each scoring its shard of the images" if shard else
                                                  f"each scoring all images ({method} is not data-parallel)"))
    images = len(sample.score_labels[rank::processes]) if shard else len(sample.score_labels)
    estimate = estimate_prune(criterion, rounds, measure_forward(loaded.model, prune_batches[0][0]), images,
                              loaded.model, device)
    for line in plan + estimate.lines():
        log(line)
    if config.dry_run:
        for name in targets:
            log(f"  target  {name}")
        return None

    if differ:
        head_names = head.replace_head_(loaded, sample.label_names, example)
    else:   # same classes: record the task's names (the checkpoint may have had placeholders)
        models.set_label_names_(loaded, list(sample.label_names))
    if fit_head:
        head.fit_ridge_head_(loaded.model, score_batches)
    dense_accuracy = head.probe_accuracy(loaded.model, eval_batches) if eval_batches else None

    seen = [0.0]

    def after_round(done, elapsed):   # round 2 is the first on a masked network: say what the run now looks like
        if done == 2 and rounds > 2:
            line = refine(estimate, done, elapsed, elapsed - seen[0]).lines()[0]
            if progress:
                tqdm.write(line)   # above the progress bar, not inside it
            else:
                log(line)
        seen[0] = elapsed

    masks = prune(loaded.model, prune_batches, method, sparsity=config.sparsity, rounds=config.rounds,
                  targets=targets, seed=config.seed, progress=progress, on_round=after_round,
                  **config.method_options)
    distributed.check_same_masks(masks)   # every rank must be about to report and save the same ticket
    same_head_accuracy = head.probe_accuracy(loaded.model, eval_batches) if eval_batches else None
    if fit_head:   # the probe refit on the pruned features: the no-training accuracy of the ticket
        head.fit_ridge_head_(loaded.model, score_batches)
    sparse_accuracy = head.probe_accuracy(loaded.model, eval_batches) if eval_batches else None

    densities = layer_densities(masks)
    probe = {"dense": dense_accuracy, "sparse": sparse_accuracy, "sparse_same_head": same_head_accuracy,
             "eval_examples": len(sample.eval_labels), "eval_split": sample.eval_split, "head_refit": fit_head}
    provenance = {
        "base_model": loaded.hub_id, "base_revision": config.revision, "source": config.model,
        "library": loaded.library, "license": loaded.license,
        "method": method, "method_options": config.method_options, "sparsity": config.sparsity,
        "rounds": rounds, "seed": config.seed, "targets": targets,
        "task": task.name, "dataset": task.dataset_id, "dataset_config": task.config_name,
        "image_column": task.image_column, "label_column": task.label_column, "split": task.train_split,
        "examples_per_class": config.examples_per_class, "score_indices": sample.score_indices,
        "eval_indices": sample.eval_indices, "label_names": sample.label_names, "probe": probe,
        "command": command, "config": config.to_dict(), "processes": processes, "time_s": None,
    }
    provenance["time_s"] = round(time.perf_counter() - started, 1)
    result = PruneResult(loaded, masks, provenance)
    result.lines = summary_lines(masks, densities, probe, provenance["time_s"])
    for line in result.lines:
        log(line)

    if (config.output or config.push_to_hub) and rank == 0:
        with tempfile.TemporaryDirectory(prefix="hf-px-") as scratch:
            destination = Path(config.output) if config.output else Path(scratch) / "checkpoint"
            result.output = checkpoint.save_with_card(loaded, masks, provenance, destination, config.overwrite)
            log(f"saved {result.output}")
            if config.push_to_hub:
                result.pushed_to = hub.push_folder(result.output, config.push_to_hub, private=config.private)
                log(f"pushed to {result.pushed_to}")
            if not config.output:
                result.output = None
    if processes > 1:   # the others wait for the main process's save and push, then all exit together
        torch.distributed.barrier()
    return result


def summary_lines(masks, densities, probe, seconds) -> list[str]:
    """The final table: global and per-layer density, layers at zero, probe accuracies, time."""
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    width = max(len(n) for n in densities)
    lines = [f"{'layer':<{width}}  density      kept / total"]
    for name, density in densities.items():
        lines.append(f"{name:<{width}}  {density:7.2%}  {int(masks[name].sum()):>8,} / {masks[name].numel():,}")
    lines.append(f"{'global':<{width}}  {global_density(masks):7.2%}  {kept:>8,} / {total:,}")
    dead = [n for n, d in densities.items() if d == 0.0]
    lines.append(f"layers at zero density: {', '.join(dead) if dead else 'none'}")
    if probe["dense"] is not None:
        lines.append(f"linear-probe accuracy on {probe['eval_examples']} eval images: dense {probe['dense']:.2%}, "
                     f"sparse {probe['sparse']:.2%}" + (f" (same head: {probe['sparse_same_head']:.2%})"
                                                        if probe["head_refit"] else ""))
    lines.append(f"time {seconds:.1f} s")
    return lines


def quiet_library_progress_bars() -> None:
    """Silence the bars datasets, huggingface_hub and transformers print while loading (--no-progress)."""
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _to(batches, device):
    return [(x.to(device), y.to(device)) for x, y in batches]


def _out_features(model, head_names) -> int | None:
    if not head_names:
        return None
    return dict(model.named_parameters())[head_names[0]].shape[0]
