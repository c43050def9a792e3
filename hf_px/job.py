"""The pruning job behind `hf-px prune`: load → sample task data → fit the head → prune → probe → save/push.

Each step is one call into its own module; this file only wires them together and reports. Under
`accelerate launch` / `torchrun` every process runs the job; a data-parallel method (PX) scores each process's
shard of the scoring images, the others score all of them; only the main process logs and writes.
"""

import dataclasses
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import card, checkpoint, data, distributed, head, hub, models
from .batchnorm import batchnorm_layers, recalibrate_batchnorm_
from .config import PruneConfig
from .errors import ConfigError, HfPxError, HubError, ModelError
from .estimate import estimate_prune, measure_forward, refine
from .masks import layer_densities
from .pruning import auto_criterion, layer_density_floor, prune
from .record import BatchNormRecord, CheckpointRecord, ProbeRecord, layer_table
from .targets import find_head, resolve_targets


@dataclass
class PruneResult:
    """What a job produced: masks keyed by parameter name, the record written beside them, where."""

    loaded: "models.LoadedModel"                     # the pruned model (weights zeroed) and its preprocessing
    masks: dict
    provenance: CheckpointRecord                     # as `hf_px.json` holds it, but for counts/densities/versions
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
    criterion = config.criterion()
    preflight(config)
    # the data before the model: a bad --task/--dataset fails before any download
    task = data.resolve_task(config.task, config.dataset, config.image_column, config.label_column,
                             config.split, config.eval_split)
    with notes(log):
        # a default (not a request) gives way to a small dataset: as many per class as the smallest class has
        per_class = data.EXAMPLES_PER_CLASS if config.examples_per_class is None else config.examples_per_class
        sample = data.sample_task(task, per_class=per_class,
                                  eval_examples=config.eval_examples, seed=config.seed,
                                  use_fewer=config.examples_per_class is None)

    log(f"loading {config.model}" + (f" @ {config.revision}" if config.revision else ""))
    loaded = models.load_model(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code)
    loaded.model.to(device).eval()
    score_batches = _to(data.make_batches(sample.score_images, sample.score_labels, loaded.preprocess,
                                          config.batch_size), device)
    eval_batches = _to(data.make_batches(sample.eval_images, sample.eval_labels, loaded.preprocess,
                                         config.batch_size), device) if sample.eval_labels else []
    example = score_batches[0][0][:2]
    chosen = {"method_options": config.method_options}
    if criterion is None:
        criterion, chosen = auto_criterion(loaded.model, example)
    method, options = criterion.name, chosen["method_options"]
    rounds = config.rounds or chosen.get("rounds") or criterion.default_rounds
    floor = layer_density_floor(config.method, config.sparsity, config.min_layer_density)
    shard = criterion.data_parallel and processes > 1
    if shard and len(sample.score_labels) < processes:
        raise ConfigError(f"{len(sample.score_labels)} scoring images for {processes} processes; launch fewer "
                          "processes, or give data with more images per class (and --examples-per-class)")
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
    targets = resolve_targets(loaded.model, None, head_names, config.include, config.exclude)
    total = sum(p.numel() for n, p in loaded.model.named_parameters() if n in targets)
    plan = [
        f"model     {config.model} ({loaded.library}, {sum(p.numel() for p in loaded.model.parameters()):,} parameters)",
        f"task      {task.name} ({len(sample.label_names)} classes): {len(sample.score_labels)} scoring images "
        f"in batches of {config.batch_size} (--batch-size), " +
        (f"{len(sample.eval_labels)} eval images ({sample.eval_split})" if sample.eval_labels else
         "no eval images (no probe accuracy)"),
        f"head      {'replaced and fitted as a ridge probe' if differ else 'ridge probe refit' if fit_head else 'kept'}"
        f" ({', '.join(head_names) or 'none found'})",
        f"targets   {len(targets)} tensors, {total:,} weights; keep {round((1 - config.sparsity) * total):,} "
        f"({1 - config.sparsity:.2%})",
        f"method    {method}{' ' + str(options) if options else ''}"
        f"{' (auto)' if config.method == 'auto' else ''}, "
        f"rounds {rounds}, seed {config.seed}" + (f", min layer density {floor:.4g}" if floor else "")
        + (f", min channel density {config.min_channel_density:.4g}" if config.min_channel_density else ""),
        f"device    {device}",
    ]
    bn_count = len(batchnorm_layers(loaded.model))
    if bn_count:
        plan.insert(-1, f"batchnorm {bn_count} layers, " + (
            f"recalibrated after pruning{' and every round' if config.recalibrate_every_round else ''} on "
            f"{max(config.calibration_examples or 0, len(sample.score_labels))} images" if config.recalibrate_bn
            else "dense statistics kept (--no-recalibrate-bn)"))
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
    dense_fit = head.fit_ridge_head_(loaded.model, score_batches) if fit_head else None
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

    recalibrate = config.recalibrate_bn and bn_count > 0
    calibration_batches = None
    if recalibrate:
        images, labels, calibration_indices = data.sample_calibration(
            sample, config.calibration_examples or len(sample.score_labels))
        calibration_batches = _to(data.make_batches(images, labels, loaded.preprocess, config.batch_size), device)
    # the spec as it runs (recorded): the method chosen for "auto", its default rounds, the floor
    ran = dataclasses.replace(config.spec(), method=method, method_options=options, rounds=rounds,
                              min_layer_density=floor)
    with notes(log):   # a tensor at zero density is reported by the summary and refused below; the targets
        # are resolved above (include/exclude applied)
        masks = prune(loaded.model, prune_batches, dataclasses.replace(ran, allow_empty_layers=True, include=None,
                                                                       exclude=None), targets=targets, progress=progress,
                      calibration=calibration_batches if config.recalibrate_every_round else None,
                      on_round=after_round)
    distributed.check_same_masks(masks)   # every rank must be about to report and save the same ticket
    batchnorm = BatchNormRecord(layers=bn_count, recalibrated=recalibrate,
                                every_round=recalibrate and config.recalibrate_every_round)
    stale_accuracy = None
    if recalibrate:
        # the dense network's statistics no longer describe the pruned one (docs/results.md, "BatchNorm
        # recalibration"): re-estimate them before the head is fitted on the pruned features
        if eval_batches and not config.recalibrate_every_round:
            stale_accuracy = head.probe_accuracy(loaded.model, eval_batches)
        recalibrate_batchnorm_(loaded.model, calibration_batches)
        batchnorm.images, batchnorm.calibration_indices = len(calibration_indices), calibration_indices
    same_head_accuracy = head.probe_accuracy(loaded.model, eval_batches) if eval_batches else None
    # the probe refit on the pruned (and recalibrated) features: the no-training accuracy of the ticket, and
    # the head fine-tuning starts from
    sparse_fit = head.fit_ridge_head_(loaded.model, score_batches) if fit_head else None
    sparse_accuracy = head.probe_accuracy(loaded.model, eval_batches) if eval_batches else None

    probe = ProbeRecord(dense=dense_accuracy, sparse=sparse_accuracy, sparse_same_head=same_head_accuracy,
                        sparse_stale_batchnorm=stale_accuracy, eval_examples=len(sample.eval_labels),
                        eval_split=sample.eval_split, head_refit=fit_head, head_fit_dense=dense_fit, head_fit=sparse_fit)
    record = CheckpointRecord(
        base_model=loaded.hub_id, base_revision=config.revision, source=config.model, library=loaded.library,
        license=loaded.license, **ran.to_dict(), targets=targets, **sample.provenance(),
        examples_per_class=len(sample.score_labels) // len(sample.label_names), probe=probe, batchnorm=batchnorm,
        command=command,
        config=config.to_dict(), processes=processes, time_s=round(time.perf_counter() - started, 1))
    result = PruneResult(loaded, masks, record)
    result.lines = summary_lines(masks, record)
    for line in result.lines:
        log(line)
    empty = [name for name, density in layer_densities(masks).items() if density == 0.0]
    if empty and not config.allow_empty_layers:
        raise ModelError(f"{len(empty)} target tensor(s) were pruned to zero density ({', '.join(empty[:3])}"
                         f"{', ...' if len(empty) > 3 else ''}), which cuts their layers; nothing was saved. Lower "
                         "--sparsity, keep a floor with --min-layer-density (--method auto keeps a tenth of the "
                         "density), or pass --allow-empty-layers to keep this result")
    for name in ("base_model", "license", "dataset"):   # the card will say so too
        value = getattr(record, name)
        if not (value and (name != "dataset" or card.is_hub_dataset(value))):
            log(f"note: the {name.replace('_', ' ')} is unknown (a local source); the card will say so, and "
                "can be edited before pushing")

    if (config.output or config.push_to_hub) and rank == 0:
        # without --output a push's checkpoint is written to a temporary folder, deleted once pushed and kept
        # (and named) if the push fails: a finished result is never lost
        kept = None if config.output else Path(tempfile.mkdtemp(prefix="hf-px-"))
        destination = Path(config.output).expanduser() if config.output else kept / config.push_to_hub.rpartition("/")[2]
        try:
            result.output = checkpoint.save_with_card(loaded, masks, record, destination, config.overwrite)
        except BaseException:
            if kept is not None:
                shutil.rmtree(kept, ignore_errors=True)
            raise
        log(f"saved {result.output}")
        if config.push_to_hub:
            try:
                result.pushed_to = hub.push_folder(result.output, config.push_to_hub, private=config.private)
            except (HfPxError, OSError) as error:
                raise HubError(f"{error}; the checkpoint is saved in {result.output}: push it later with "
                               f"`hf-px push {result.output} {config.push_to_hub}`") from None
            except KeyboardInterrupt:
                log(f"interrupted during the push; the checkpoint is saved in {result.output}")
                raise
            log(f"pushed to {result.pushed_to}")
        if kept is not None:
            shutil.rmtree(kept, ignore_errors=True)
            result.output = None
    if processes > 1:   # the others wait for the main process's save and push, then all exit together
        torch.distributed.barrier()
    return result


def preflight(config: PruneConfig) -> None:
    """What would fail after the work is checked before it (the device already was): the output folder (free,
    or replaceable, and writable) and the push (token, access). A bad one raises a one-line error now."""
    if config.dry_run:
        return
    if config.output:
        output = Path(config.output).expanduser()
        checkpoint.check_output(output, config.overwrite)
        checkpoint.check_writable(output)
    if config.push_to_hub and distributed.is_main():   # only the main process pushes
        hub.check_push_access(config.push_to_hub)


@contextmanager
def notes(log):
    """Library warnings raised inside, logged as one `note:` line each (not a `UserWarning` with a file and
    line); those about zero-density tensors are left out: the summary lists them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for warning in caught:
        text = str(warning.message)
        if issubclass(warning.category, UserWarning) and "zero density" not in text:
            log(f"note: {text}")


def summary_lines(masks, record: CheckpointRecord) -> list[str]:
    """The final table: per-layer and global density, layers at zero, probe accuracies, BatchNorm, time."""
    lines = layer_table(masks)
    probe, batchnorm = record.probe, record.batchnorm
    if probe.dense is not None:
        lines.append(f"linear-probe accuracy on {probe.eval_examples} eval images: dense {probe.dense:.2%}, "
                     f"sparse {probe.sparse:.2%}" + (f" (same head: {probe.sparse_same_head:.2%})"
                                                     if probe.head_refit else ""))
    if batchnorm.recalibrated:
        stale = probe.sparse_stale_batchnorm
        lines.append(f"BatchNorm: {batchnorm.layers} layers recalibrated on {batchnorm.images} images"
                     + (" after every round" if batchnorm.every_round else "")
                     + (f" (with the dense statistics the sparse model scored {stale:.2%})" if stale is not None else ""))
    elif batchnorm.layers:
        lines.append(f"BatchNorm: {batchnorm.layers} layers keep the dense model's statistics (--no-recalibrate-bn)")
    lines.append(f"time {record.time_s:.1f} s")
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
