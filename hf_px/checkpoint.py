"""A sparse checkpoint is the base library's own format plus a sidecar (STYLE principle 6).

A folder written by `save_sparse` holds:

- the model exactly as its library saves it (transformers `save_pretrained` + image processor, or timm
  `save_for_hf`), pruned weights stored as zeros, so plain `AutoModelForImageClassification.from_pretrained`
  / `timm.create_model("local-dir:...", pretrained=True)` load it without hf_px installed;
- `hf_px_masks.safetensors`: the exact boolean masks keyed by parameter name, 8 entries per byte;
- `hf_px.json`: the provenance (how the masks were found, densities, counts, library versions);
- `README.md` (the model card) and any extra files (e.g. the density plot).

Only safetensors and JSON are ever read back: never pickle.
"""

import json
import os
import re
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError, HfPxError, ModelError
from .masks import check_masks, kept_and_total
from .models import LoadedModel, describe_model, load_model, save_model
from .record import FORMAT_VERSION, CheckpointRecord, layer_table

MASKS_FILE = "hf_px_masks.safetensors"
PROVENANCE_FILE = "hf_px.json"
CARD_FILE = "README.md"
STATE_DIR = "resume"    # fine-tuning's resume state inside an output folder; never pushed (hub.IGNORE_PATTERNS)
PROGRESS_FILE = "progress.json"   # inside STATE_DIR: marks it as hf_px's (epoch, step, metrics, masks digest)
_SHAPE = ".__shape__"   # suffix of the int64 tensor that keeps each packed mask's shape
_VERSIONED = ("torch", "timm", "transformers", "hf-px", "huggingface_hub", "safetensors")
# keys a caller might put in the provenance by mistake; a token must never reach a file
_SECRET_KEYS = re.compile(r"(^|_)(token|password|secret)s?$", re.IGNORECASE)
# timm pretrained_cfg keys that say where the source weights came from, not what the saved weights are
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.md"]


# ------------------------------------------------------------------------------------------------- masks


def pack_masks(masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Boolean masks -> uint8 tensors of packed bits (`numpy.packbits`, big-endian bit order) plus, for each
    name, an int64 `<name>.__shape__` tensor; exactly invertible by `unpack_masks`."""
    packed = {}
    for name, mask in masks.items():
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ConfigError(f"mask {name!r} must be a torch.bool tensor, got "
                              f"{getattr(mask, 'dtype', type(mask).__name__)}; threshold scores with "
                              "hf_px.masks_from_scores first")
        if name.endswith(_SHAPE):
            raise ConfigError(f"mask name {name!r} ends with the reserved suffix {_SHAPE!r}")
        bits = np.packbits(mask.detach().cpu().numpy().reshape(-1))
        packed[name] = torch.from_numpy(bits)
        packed[name + _SHAPE] = torch.tensor(list(mask.shape), dtype=torch.int64)
    return packed


def unpack_masks(packed: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `pack_masks`; raises `ModelError` if a shape is missing or a size does not add up."""
    names = [name for name in packed if not name.endswith(_SHAPE)]
    orphans = sorted(set(packed) - set(names) - {name + _SHAPE for name in names})
    if orphans:
        raise ModelError(f"the masks hold shapes without bits: {orphans[:3]}; the masks file is damaged")
    masks = {}
    for name in names:
        if name + _SHAPE not in packed:
            raise ModelError(f"mask {name!r} has no {name + _SHAPE!r} entry; the masks file is damaged")
        shape = [int(size) for size in packed[name + _SHAPE].flatten().tolist()]
        bits = packed[name]
        count = int(np.prod(shape)) if min(shape, default=0) >= 0 else -1
        if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (count + 7) // 8 or count < 0:
            raise ModelError(f"mask {name!r} holds {bits.numel()} {bits.dtype} values but shape {tuple(shape)} needs "
                             f"{(count + 7) // 8} uint8 bytes; the masks file is damaged")
        flat = np.unpackbits(bits.numpy(), count=count).astype(bool)
        masks[name] = torch.from_numpy(flat).reshape(shape)
    return masks


# ------------------------------------------------------------------------------------------------- save


def save_sparse(model: "nn.Module | LoadedModel", masks: dict[str, Tensor], output: str | Path, *,
                provenance: "dict | CheckpointRecord | None" = None, overwrite: bool = False, card: str | None = None,
                extra_files: dict[str, bytes] | None = None) -> Path:
    """Write `model` (already pruned: what `hf_px.prune` returns, or a `hf_px.models.LoadedModel`) and its
    masks as a sparse checkpoint folder `output`; `load_sparse(output)` gives both back.

    The library is found from the model object: a transformers or timm model is saved in its own format
    (loadable without hf_px); any other module as its state dict, which needs its class to load
    (`load_sparse(output, model=MyNet(...))`), with a warning saying so. `provenance` (a
    `hf_px.record.CheckpointRecord`, or a dict of its fields: how the masks were found; other keys are kept
    as given) is recorded in `hf_px.json` beside the densities, counts and versions.
    Everything is written into a hidden sibling folder that is moved into place only when complete, so a
    failed or interrupted run leaves nothing behind. An existing `output` needs `overwrite=True`, and is
    then replaced only after the new folder is complete (and only if it is empty or an hf_px checkpoint).
    Raises `MaskError` if the masks do not fit the model or a masked-out weight is not zero (apply them
    first: `hf_px.apply_masks_`). A fine-tuning resume state (`STATE_DIR`) inside `output` is carried over.
    """
    loaded = model if isinstance(model, LoadedModel) else describe_model(model)
    output = Path(output).expanduser()
    check_output(output, overwrite)
    check_masks(loaded.model, masks, zeroed=True)
    record = _complete_record(loaded, masks, provenance)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        _check_extra_name(name)
    if loaded.library == "torch":
        warnings.warn(f"{loaded.source} is neither a transformers nor a timm model: {str(output)!r} gets its state "
                      "dict and masks only; loading needs its class: hf_px.load_sparse(folder, model=<a new "
                      f"{type(loaded.model).__name__}>)", stacklevel=2)
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        save_model(loaded, scratch)   # the model in its own library's format
        _write_masks(masks, scratch / MASKS_FILE)
        text = json.dumps(record.to_dict(), indent=2, sort_keys=True, default=_to_json)
        (scratch / PROVENANCE_FILE).write_text(text + "\n")
        if card is not None:
            (scratch / CARD_FILE).write_text(card, encoding="utf-8")
        for name, content in extra_files.items():
            target = scratch / name
            if target.exists():
                raise ConfigError(f"extra file {name!r} would overwrite the checkpoint's own {name}; rename it")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        _apply_umask(scratch)
        _move_into_place(scratch, output)
    except BaseException:   # also KeyboardInterrupt: never leave a half-written folder
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return output


def save_with_card(loaded, masks: dict[str, Tensor], record: CheckpointRecord, output: str | Path,
                   overwrite: bool = False) -> Path:
    """`save_sparse` plus the model card (`hf_px.card`) and the per-layer density plot: what `hf-px prune` and
    `hf-px finetune` write. The card describes the record as `hf_px.json` will hold it."""
    from . import card

    record = _complete_record(loaded, masks, record)
    with tempfile.TemporaryDirectory(prefix="hf-px-") as scratch:
        plot = Path(scratch) / "density.png"
        extra = {"density.png": plot.read_bytes()} if card.density_plot(record.layer_densities, plot) else {}
    text = card.render_card(record, "density.png" if extra else None)
    return save_sparse(loaded, masks, output, provenance=record, overwrite=overwrite, card=text, extra_files=extra)


def check_output(output: Path, overwrite: bool) -> None:
    """Raise `ConfigError` unless `output` is free, or may be replaced (`overwrite` and an hf_px checkpoint).

    A folder that holds only a fine-tuning resume state counts as free: the run that wrote it finishes there.
    """
    if not output.exists() or (output.is_dir() and has_training_state(output)
                               and {p.name for p in output.iterdir()} <= {STATE_DIR}):
        return
    if not overwrite:
        raise ConfigError(f"output {str(output)!r} exists; pass --overwrite (overwrite=True) to replace it, "
                          "or choose another folder")
    if not output.is_dir():
        raise ConfigError(f"output {str(output)!r} is a file, not a folder; remove it or choose another folder")
    if any(output.iterdir()) and not (output / PROVENANCE_FILE).is_file() and not has_training_state(output):
        raise ConfigError(f"output {str(output)!r} is a non-empty folder that is not an hf_px checkpoint (no "
                          f"{PROVENANCE_FILE}); refusing to replace it even with --overwrite; choose another folder")


def check_writable(output: Path) -> None:
    """Raise `ConfigError` unless `output` can be created: its nearest existing parent is a folder this user can
    make a folder in (tried, and removed again). Checked before the work, not after it."""
    parent = Path(os.path.abspath(output)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(20, "not a folder")
        Path(tempfile.mkdtemp(prefix=".hf-px-probe-", dir=parent)).rmdir()
    except OSError as error:
        raise ConfigError(f"cannot write the output {str(output)!r}: cannot create a folder in {str(parent)!r} "
                          f"({error.strerror or error}); choose a folder you can write to") from None


def has_training_state(output: Path) -> bool:
    """Whether `output` holds a fine-tuning resume state written by hf_px (not just any `resume/` folder)."""
    return (output / STATE_DIR / PROGRESS_FILE).is_file()


def _check_extra_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or "\\" in name or any(part in ("", ".", "..") or part.startswith(".")
                                                              for part in path.parts):
        raise ConfigError(f"extra file name {name!r} must be a relative path inside the checkpoint "
                          "(no '..', no hidden names), e.g. 'density.png'")


def _write_masks(masks: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors sorts tensors by name; the metadata keeps the caller's (model) order for tables
    metadata = {"format": "pt", "hf_px_format_version": str(FORMAT_VERSION), "hf_px_order": json.dumps(list(masks))}
    save_file(pack_masks(masks), str(path), metadata=metadata)


def _complete_record(loaded, masks: dict[str, Tensor], provenance) -> CheckpointRecord:
    """The caller's provenance (minus anything that looks like a secret), type-checked, plus what the masks
    and the model say. The library is the one that writes the weights: the loader goes by it, never by the
    caller's word."""
    if isinstance(provenance, CheckpointRecord):
        provenance = provenance.to_dict()
    if not isinstance(provenance, dict | None):
        raise ConfigError(f"provenance must be a dict or a CheckpointRecord, got {type(provenance).__name__}")
    try:   # as the file will hold it: Paths as strings, numpy scalars as numbers, tuples as lists
        values = json.loads(json.dumps(_without_secrets(provenance or {}), default=_to_json))
        record = CheckpointRecord.from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"provenance: {error}; pass values of the documented types (hf_px.record)") from None
    return record.with_masks(loaded.model, masks, loaded.library, _versions())


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if not _SECRET_KEYS.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [_without_secrets(v) for v in value]
    return value


def _to_json(value: Any) -> Any:
    """json.dumps fallback for the values a provenance plausibly holds."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Tensor, np.ndarray)):
        return value.tolist()
    raise ConfigError(f"provenance holds a {type(value).__name__} ({value!r:.60}) that cannot be written as JSON; "
                      "pass strings, numbers, lists and dicts")


def _versions() -> dict[str, str | None]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name.replace("-", "_")] = None
    if versions["hf_px"] is None:
        import hf_px

        versions["hf_px"] = hf_px.__version__
    return versions


def _apply_umask(folder: Path) -> None:
    """Give the folder and its files the modes the user's umask gives new ones: `mkdtemp` makes 0700 folders
    and some writers 0600 files, which would keep a shared checkpoint from its readers."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _move_into_place(scratch: Path, output: Path) -> None:
    """Rename the finished `scratch` to `output`; an existing `output` is moved aside first and restored if
    the rename fails, then deleted."""
    if not output.exists():
        os.replace(scratch, output)
        return
    state = output / STATE_DIR
    carried = has_training_state(output)
    aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
    aside.rmdir()
    try:
        if carried:   # the resume state moves with the folder, and back if anything below fails
            os.replace(state, scratch / STATE_DIR)
        os.replace(output, aside)
        try:
            os.replace(scratch, output)
        except BaseException:
            os.replace(aside, output)
            raise
    except BaseException:
        if carried and (scratch / STATE_DIR).exists():
            os.replace(scratch / STATE_DIR, state)
        raise
    shutil.rmtree(aside, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- load


def load_sparse(repo_or_dir: str | Path, revision: str | None = None, model: nn.Module | None = None
                ) -> tuple[nn.Module, dict[str, Tensor]]:
    """Load a sparse checkpoint (a local folder or a Hub repo id) as (model in eval mode, exact masks).

    transformers and timm checkpoints are rebuilt by their library; one of a plain module (saved as a state
    dict) needs `model`, a new instance of its class, into which the weights are loaded. The masks come
    back in the model's parameter order. Raises `ModelError` if a file is missing, damaged or of an unknown
    format, `MaskError` if the masks and weights disagree (a name, a shape, a nonzero masked weight).
    """
    loaded, masks, _ = open_sparse(repo_or_dir, revision, model)
    return loaded.model.eval(), masks


def open_sparse(repo_or_dir: str | Path, revision: str | None = None, model: nn.Module | None = None
                ) -> tuple[LoadedModel, dict[str, Tensor], CheckpointRecord]:
    """`load_sparse`, with the model as a `LoadedModel` (its preprocessing and label names) and the
    provenance record: what fine-tuning starts from."""
    folder = _resolve(repo_or_dir, revision, _HUB_PATTERNS)
    record = _read_provenance(folder)   # checks the format first: a clear error before any model is built
    masks = _read_masks(folder)
    loaded = _load_model(folder, record, model)
    check_masks(loaded.model, masks, zeroed=True, where=f" in {str(folder)!r}",
                fix="the masks and the weights do not belong together (weights changed after pruning?)")
    return loaded, _in_model_order(loaded.model, masks), record


def _in_model_order(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return dict(sorted(masks.items(), key=lambda item: order[item[0]]))


def inspect_checkpoint(repo_or_dir: str | Path, revision: str | None = None
                       ) -> tuple[CheckpointRecord, dict[str, Tensor]]:
    """(provenance record, masks) of a sparse checkpoint, verified as `load_sparse` verifies it (the record's
    field types, config.json, the model loading from its weights, every masked-out weight zero)."""
    _, masks, record = open_sparse(repo_or_dir, revision)
    return record, masks


def summarize(repo_or_dir: str | Path, revision: str | None = None) -> str:
    """A human summary of a sparse checkpoint, for `hf-px inspect`, verified by `inspect_checkpoint`."""
    record, masks = inspect_checkpoint(repo_or_dir, revision)
    kept, total = kept_and_total(masks)
    options = f" {json.dumps(record.method_options, sort_keys=True)}" if record.method_options else ""
    asked = f"{record.sparsity:.2%} asked, " if record.sparsity is not None else ""
    per_class = f", {record.examples_per_class} examples per class" if record.examples_per_class else ""
    lines = [
        f"checkpoint  {repo_or_dir}",
        f"base model  {record.base_model or record.source or 'unknown'}"
        f"{f' @ {record.base_revision}' if record.base_revision else ''} ({record.library or 'unknown library'})",
        f"method      {record.method or 'unknown'}{options}, rounds {_known(record.rounds)}, seed {_known(record.seed)}"
        + (f", min layer density {record.min_layer_density:.4g}" if record.min_layer_density else "")
        + (f", min channel density {record.min_channel_density:.4g}" if record.min_channel_density else ""),
        f"sparsity    {asked}{1 - kept / max(1, total):.2%} achieved ({kept:,} of {total:,} target weights kept)",
        f"task        {record.task or record.dataset or 'unknown'}{per_class}",
    ]
    probe = record.probe
    if probe and probe.dense is not None and probe.sparse is not None:
        lines.append(f"probe       dense {probe.dense:.2%}, sparse {probe.sparse:.2%} "
                     f"(linear probe, {_known(probe.eval_examples)} eval images)")
    finetune = record.finetune
    if finetune and finetune.eval_accuracy is not None:
        lines.append(f"fine-tuned  {len(finetune.history)} epochs, {finetune.steps} steps: top-1 "
                     f"{finetune.eval_accuracy:.2%} on {_known(finetune.eval_examples)} images "
                     f"({_known(finetune.eval_split)})")
    if record.counts:
        lines.append(f"parameters  {record.counts.parameters:,} total, {record.counts.nonzero:,} non-zero")
    return "\n".join(lines + [""] + layer_table(masks))


def _known(value) -> str:
    return "?" if value is None else str(value)


def _resolve(repo_or_dir: str | Path, revision: str | None, patterns: list[str]) -> Path:
    """A local folder as is; a Hub repo id (ORG/NAME) downloaded (only `patterns`) to the local cache."""
    if isinstance(repo_or_dir, Path):
        path = repo_or_dir.expanduser()
    elif isinstance(repo_or_dir, str) and repo_or_dir.strip():
        text = repo_or_dir.strip()
        local = text.startswith("local-dir:")
        path = Path(text.partition(":")[2] if local else text).expanduser()
        if not local and not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith("."):
            return _download(text, revision, patterns)
    else:
        raise ModelError(f"give a checkpoint folder or a Hub repo id (ORG/NAME), got {repo_or_dir!r}")
    if not path.exists():
        raise ModelError(f"checkpoint folder {str(path)!r} does not exist; give a folder written by hf-px prune "
                         "or a Hub repo id (ORG/NAME)")
    if not path.is_dir():
        raise ModelError(f"{str(path)!r} is a file; give the checkpoint folder that holds {PROVENANCE_FILE}")
    if revision is not None:
        raise ConfigError(f"revision={revision!r} only applies to Hub repos, and {str(path)!r} is a local folder")
    return path


def _download(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    from .hub import download_errors, require_hub

    require_hub(f"download {repo_id!r}")
    with download_errors(repo_id, repo_id, revision):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def _read_provenance(folder: Path) -> CheckpointRecord:
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        raise ModelError(f"{str(folder)!r} has no {PROVENANCE_FILE}: it is not a checkpoint written by hf_px "
                         "(a plain transformers/timm model loads with load_model instead)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{str(path)!r} is not valid JSON ({error}); the checkpoint is damaged") from None
    version = values.get("format_version") if isinstance(values, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelError(f"{str(path)!r} has no integer format_version; it was not written by hf_px")
    if version > FORMAT_VERSION:
        raise ModelError(f"{str(folder)!r} uses checkpoint format {version}, newer than this hf_px reads "
                         f"({FORMAT_VERSION}); upgrade hf_px")
    try:   # every field hf_px reads back has its type: a hand-edited or damaged file fails here, in one line
        return CheckpointRecord.from_dict(values, lenient=True)
    except ConfigError as error:
        raise ModelError(f"{str(path)!r}: {error}; the file was edited or damaged: restore it or write the "
                         "checkpoint again") from None


def _read_masks(folder: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open

    path = folder / MASKS_FILE
    if not path.is_file():
        raise ModelError(f"{str(folder)!r} has no {MASKS_FILE}; the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            packed = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"cannot read {str(path)!r} ({str(error).strip() or type(error).__name__}); the file is "
                         "truncated or damaged: download or write the checkpoint again") from None
    version = meta.get("hf_px_format_version", "")
    if not version.isdigit():
        raise ModelError(f"{str(path)!r} has no hf_px_format_version metadata; it was not written by hf_px")
    if int(version) > FORMAT_VERSION:
        raise ModelError(f"{str(path)!r} uses mask format {version}, newer than this hf_px reads "
                         f"({FORMAT_VERSION}); upgrade hf_px")
    masks = unpack_masks(packed)
    try:
        order = {name: i for i, name in enumerate(json.loads(meta.get("hf_px_order", "[]")))}
    except json.JSONDecodeError:
        order = {}
    return dict(sorted(masks.items(), key=lambda item: order.get(item[0], len(order))))


def _load_model(folder: Path, record: CheckpointRecord, model: nn.Module | None) -> LoadedModel:
    """The checkpoint's model, from safetensors only: by its library (`hf_px.models.load_model`), or, for a
    plain module's state dict, into `model`."""
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        raise ModelError(f"{str(folder)!r} has no model.safetensors; hf_px reads only safetensors weights")
    plain = record.library == "torch"
    if not plain and not (folder / "config.json").is_file():
        raise ModelError(f"{str(folder)!r} has no config.json, so its {record.library} model cannot be rebuilt; "
                         "the checkpoint is incomplete: write it again with hf-px prune or hf_px.save_sparse")
    if plain and model is None:
        raise ModelError(f"{str(folder)!r} holds the state dict of a plain module ({record.model_class}), "
                         "not a transformers/timm model; build one and pass it: load_sparse(folder, model=...)")
    if not plain and model is not None:
        raise ConfigError(f"model= is for checkpoints of plain modules; {str(folder)!r} is a "
                          f"{record.library} checkpoint, which load_sparse(folder) rebuilds by itself")
    try:
        if plain:
            from safetensors.torch import load_model as load_state

            load_state(model, str(folder / "model.safetensors"))
            return describe_model(model)
        loaded = load_model(f"local-dir:{folder}")
    except HfPxError:
        raise
    except Exception as error:   # the libraries raise OSError/ValueError/RuntimeError/SafetensorError alike
        text = str(error).strip().splitlines()
        raise ModelError(f"cannot load the model in {str(folder)!r}: {text[0] if text else type(error).__name__}; "
                         "the checkpoint is damaged, of another model, or needs a newer transformers/timm") from None
    missing = loaded.extra.get("newly_initialized")
    if missing:
        raise ModelError(f"{str(folder)!r} lacks weights for {missing[:3]}; the checkpoint is incomplete")
    return loaded
