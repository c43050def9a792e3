"""One loader for transformers image classifiers, timm models and local folders saved by either library.

It returns the model together with what is needed to feed it and to save it back in its own format.

What `load_model` accepts (the first rule that matches wins):

- `local-dir:PATH`, or a path that exists: a folder saved by either library. A transformers folder has
  `config.json` with `architectures` / `model_type` (plus `preprocessor_config.json` for the image
  processor); a timm folder has `config.json` with `architecture` and `pretrained_cfg` next to
  `model.safetensors` (what `timm.models.push_to_hf_hub` / `save_for_hf` write).
- a string that looks like a path (`./x`, `/x`, `~/x`, `a/b/c`) but does not exist: an error.
- `hf-hub:ORG/NAME[@REV]`: a timm model on the Hub.
- `ORG/NAME`: a Hub repo; its `config.json` says which library wrote it (`timm/...` repos are timm's).
- anything else: a timm registry name (`resnet18`, `resnet50.a1_in1k`), with pretrained weights when timm
  knows of any.
"""

import difflib
import json
import re
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .errors import ModelError


@dataclass
class LoadedModel:
    """A model plus everything the later steps (data, probe, checkpoint, card) need to know about it."""

    model: nn.Module
    library: str                          # "transformers", "timm", or "torch" (a plain module: `describe_model`)
    source: str                           # what the user gave: Hub id, "timm/...", "hf-hub:...", timm name, folder
    hub_id: str | None                    # the Hub repo it came from (None: timm name without weights, or a folder)
    revision: str | None                  # the revision asked for (None: default branch)
    preprocess: Callable[[Any], Tensor]   # eval-time transform: one PIL image -> float tensor [C, H, W]
    label_names: list[str] | None         # the checkpoint's class names; None if unnamed (LABEL_i placeholders)
    license: str | None = None            # the base model's licence, when known (card metadata)
    image_processor: Any = None           # transformers: the AutoImageProcessor, saved with the checkpoint
    pretrained_cfg: dict | None = None    # timm: the model's pretrained_cfg (data config), saved with the checkpoint
    extra: dict = field(default_factory=dict)   # anything else worth recording in the provenance


_PLACEHOLDER = re.compile(r"LABEL_\d+")
# keys of a timm pretrained_cfg that say where the source weights came from, not what the weights are
_TIMM_SOURCE_KEYS = {"url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict", "architecture"}


def load_model(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """Load an image classifier, in eval mode, with its preprocessing, label names and licence.

    `revision` (branch, tag or commit) applies to Hub models; `trust_remote_code` is passed to transformers.
    Raises `ModelError` for a missing folder, a folder neither library wrote, or an id that cannot be resolved.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelError(
            f"load_model needs a Hub id, a timm model name or a folder; got {name_or_path!r}"
        )
    source = name_or_path.strip()
    local = source.startswith("local-dir:") or Path(source).expanduser().exists()
    if local and revision is not None:   # a folder has no branches: recording one would be false provenance
        raise ModelError(f"revision={revision!r} only applies to Hub models, and {source!r} is a local folder; "
                         "drop --revision")
    if source.startswith("local-dir:"):
        return _load_folder(source, Path(source.partition(":")[2]).expanduser(), trust_remote_code)
    if source.startswith(("hf-hub:", "hf_hub:")):
        repo_id, revision = _split_revision(source, source.partition(":")[2], revision)
        return _load_timm_hub(source, repo_id, revision)
    path = Path(source).expanduser()
    if path.exists():
        return _load_folder(source, path, trust_remote_code)
    if _looks_local(source):
        raise ModelError(
            f"folder {source!r} does not exist; check the path, or give a Hub id as ORG/NAME "
            "or a timm model name such as 'resnet18'"
        )
    if "/" in source:
        repo_id, revision = _split_revision(source, source, revision)
        return _load_hub(source, repo_id, revision, trust_remote_code)
    return _load_timm_name(source, revision)


def describe_model(model: nn.Module) -> LoadedModel:
    """The `LoadedModel` of a model object built in Python (e.g. one `hf_px.prune` just pruned), its library
    found from the object: a transformers `PreTrainedModel`, a timm model (it carries timm's
    `pretrained_cfg` with an `architecture`), or else "torch", a plain module saved as a state dict only."""
    from transformers import PreTrainedModel

    source = f"{type(model).__module__}.{type(model).__qualname__}"
    if isinstance(model, PreTrainedModel):
        return _transformers_loaded(model, source, None, None, None, None, ())
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture") and type(model).__module__.startswith("timm."):
        return _timm_loaded(model, source, None, None, None)
    return LoadedModel(model=model, library="torch", source=source, hub_id=None, revision=None,
                       preprocess=_MissingProcessor(source), label_names=None)


def save_model(loaded: LoadedModel, folder: str | Path) -> None:
    """Write the model in its own library's format, loadable without hf_px installed.

    transformers: `save_pretrained` (safetensors) plus the image processor, so that
    `AutoModelForImageClassification.from_pretrained(folder)` rebuilds it.
    timm: `model.safetensors` plus a `config.json` holding `architecture`, `model_args` (num_classes, ...),
    `label_names` and `pretrained_cfg` (mean/std/input_size, licence), so that
    `timm.create_model("local-dir:" + folder, pretrained=True)` rebuilds it. `loaded.label_names` and
    `loaded.pretrained_cfg` are what gets written (the model's own source metadata is not).
    torch (any other module): its state dict as `model.safetensors` and no `config.json`; loading it needs
    the module's class (`safetensors.torch.load_model(model, path)`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if loaded.library == "transformers":
        if loaded.label_names is not None:
            _set_transformers_labels(loaded.model, loaded.label_names)
        loaded.model.save_pretrained(folder, safe_serialization=True)
        if loaded.image_processor is not None:
            processor = loaded.image_processor
            if getattr(loaded.model.config, "num_channels", 3) == 3 and hasattr(processor, "do_convert_rgb"):
                # grey, RGBA and palette images then work in plain transformers too (as they do in hf-px)
                processor = deepcopy(processor)
                processor.do_convert_rgb = True
            processor.save_pretrained(folder)
    elif loaded.library == "timm":
        from timm.models import save_for_hf

        model_config: dict[str, Any] = {"pretrained_cfg": _timm_cfg_to_save(loaded)}
        if loaded.label_names is not None:
            model_config["label_names"] = list(loaded.label_names)
        save_for_hf(loaded.model, str(folder), model_config=model_config, safe_serialization=True)
    elif loaded.library == "torch":
        from safetensors.torch import save_model as save_state   # handles tied (shared) tensors

        save_state(loaded.model, str(folder / "model.safetensors"))
    else:
        raise ModelError(
            f"cannot save a model of library {loaded.library!r}; save_model handles 'transformers', 'timm' and 'torch'"
        )


def set_label_names_(loaded: LoadedModel, label_names: list[str] | None) -> None:
    """Record class names on `loaded` and in the model's own config (transformers `id2label`/`label2id`,
    timm `pretrained_cfg["label_names"]`); the weights are left alone."""
    if label_names is not None:
        label_names = [str(name) for name in label_names]
        if len(set(label_names)) != len(label_names):
            duplicates = sorted({name for name in label_names if label_names.count(name) > 1})
            raise ModelError(f"label names must be unique; {duplicates} appear more than once")
        outputs = _output_count(loaded)
        if outputs is not None and len(label_names) != outputs:
            raise ModelError(
                f"{len(label_names)} label names were given for a head with {outputs} outputs; "
                "give one name per output, or resize the head with hf_px.head.replace_head_"
            )
    loaded.label_names = label_names
    if loaded.library == "transformers" and label_names is not None:
        _set_transformers_labels(loaded.model, label_names)
    elif loaded.library == "timm":
        loaded.pretrained_cfg = dict(loaded.pretrained_cfg or {})
        if label_names is None:
            loaded.pretrained_cfg.pop("label_names", None)
        else:
            loaded.pretrained_cfg["label_names"] = list(label_names)


# ----------------------------------------------------------------------------------------------- sources


def _looks_local(source: str) -> bool:
    """True for strings only a filesystem path would look like (a Hub id is ORG/NAME, one slash)."""
    return (source.startswith((".", "/", "~", "\\")) or "\\" in source or source.endswith("/")
            or source.count("/") > 1 or re.match(r"[A-Za-z]:", source) is not None)


def _split_revision(source: str, repo_id: str, revision: str | None) -> tuple[str, str | None]:
    """`ORG/NAME@REV` (timm's convention) -> (`ORG/NAME`, `REV`); `revision` must agree if both are given."""
    repo_id, at, inline = repo_id.partition("@")
    if at and revision is not None and inline != revision:
        raise ModelError(
            f"{source!r} names revision {inline!r} but revision={revision!r} was also given; give only one"
        )
    return repo_id, (inline if at else revision)


def _load_folder(source: str, path: Path, trust_remote_code: bool) -> LoadedModel:
    if not path.exists():
        raise ModelError(f"folder {str(path)!r} does not exist; check the path given as {source!r}")
    if not path.is_dir():
        raise ModelError(
            f"{str(path)!r} is a file; give the folder that holds config.json and the weights"
        )
    config = _read_json(path / "config.json")
    library = _library_of(config) if config is not None else None
    if library is None:
        found = sorted(p.name for p in path.iterdir())
        listed = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        raise ModelError(
            f"folder {str(path)!r} was saved by neither transformers nor timm (files found: {listed or 'none'}); "
            "it needs a config.json with 'architectures' (transformers save_pretrained) or 'architecture' and "
            "'pretrained_cfg' (timm save_for_hf / push_to_hf_hub)"
        )
    readme = path / "README.md"
    license_ = _license_of(readme) if readme.is_file() else None
    if library == "transformers":
        return _load_transformers(source, str(path), None, None, trust_remote_code, license_)
    return _load_timm(source, f"local-dir:{path}", hub_id=None, revision=None, license_=license_)


def _load_hub(source: str, repo_id: str, revision: str | None, trust_remote_code: bool) -> LoadedModel:
    """A Hub repo of either library: its config.json says which."""
    from huggingface_hub import hf_hub_download

    from .hub import download_errors, require_hub

    require_hub(f"fetch {source!r}")
    with download_errors(source, repo_id, revision):
        config = _read_json(hf_hub_download(repo_id, "config.json", revision=revision))
    library = _library_of(config) if config is not None else None
    if library is None:
        raise ModelError(
            f"Hub repo {repo_id!r} has a config.json written by neither transformers nor timm; "
            "load_model handles transformers image classifiers and timm models"
        )
    license_ = _hub_license(repo_id, revision)
    if library == "transformers":
        return _load_transformers(source, repo_id, repo_id, revision, trust_remote_code, license_)
    return _load_timm_hub(source, repo_id, revision, license_)


def _load_timm_hub(source: str, repo_id: str, revision: str | None, license_: str | None = None) -> LoadedModel:
    model_id = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    return _load_timm(source, model_id, hub_id=repo_id, revision=revision, license_=license_)


def _load_timm_name(source: str, revision: str | None) -> LoadedModel:
    import timm

    architecture, tag = timm.models.split_model_name_tag(source)
    if not timm.is_model(architecture):
        close = _similar_timm_names(architecture)
        hint = f"close timm names: {', '.join(close)}" if close else "see timm.list_models()"
        raise ModelError(
            f"{source!r} is not a timm model name, a Hub id (ORG/NAME) or an existing folder; {hint}"
        )
    tags = [name.partition(".")[2] for name in timm.list_pretrained(f"{architecture}.*")]
    if tag and tag not in tags:
        raise ModelError(
            f"timm model {architecture!r} has no pretrained tag {tag!r}; "
            f"valid tags: {', '.join(tags) if tags else 'none (it has no pretrained weights)'}"
        )
    pretrained = bool(tags)
    hub_id = None
    if pretrained:
        hub_id = timm.models.get_pretrained_cfg(source).hf_hub_id or None
    if revision is not None:   # a revision only means something for Hub weights: fetch those
        if hub_id is None:
            raise ModelError(
                f"revision={revision!r} was given but timm model {source!r} has no weights on the Hub; "
                "drop revision, or give a Hub id as ORG/NAME"
            )
        return _load_timm_hub(source, hub_id, revision)
    return _load_timm(source, source, hub_id=hub_id, revision=None, license_=None, pretrained=pretrained)


def _load_timm(source: str, model_id: str, hub_id: str | None, revision: str | None, license_: str | None,
               pretrained: bool = True) -> LoadedModel:
    import timm

    from .hub import download_errors, first_line, require_hub

    if pretrained and not model_id.startswith("local-dir:"):   # weights come from the Hub (or its cache)
        require_hub(f"fetch {source!r}")
    with download_errors(source, hub_id or model_id, revision):
        try:
            model = timm.create_model(model_id, pretrained=pretrained)
        except RuntimeError as error:   # timm raises RuntimeError for an unknown architecture in a config
            raise ModelError(f"timm cannot build {source!r}: {first_line(error)}; upgrade timm or check the "
                             "'architecture' in its config.json") from None
    return _timm_loaded(model.eval(), source, hub_id, revision, license_)


def _timm_loaded(model: nn.Module, source: str, hub_id: str | None, revision: str | None,
                 license_: str | None) -> LoadedModel:
    import timm

    pretrained_cfg = deepcopy(dict(model.pretrained_cfg))
    data_config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**data_config)
    return LoadedModel(
        model=model, library="timm", source=source, hub_id=hub_id, revision=revision,
        preprocess=ImagePreprocess(transform, channels=data_config["input_size"][0]),
        label_names=_named(pretrained_cfg.get("label_names"), model.num_classes),
        license=license_ or pretrained_cfg.get("license"),
        pretrained_cfg=pretrained_cfg,
        extra={"architecture": pretrained_cfg.get("architecture")},
    )


def _load_transformers(source: str, location: str, hub_id: str | None, revision: str | None,
                       trust_remote_code: bool, license_: str | None) -> LoadedModel:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from .hub import download_errors, first_line

    with download_errors(source, hub_id or location, revision):
        try:
            model, info = AutoModelForImageClassification.from_pretrained(
                location, revision=revision, trust_remote_code=trust_remote_code, output_loading_info=True
            )
        except ValueError as error:   # e.g. a text model: no image-classification class for its config
            raise ModelError(
                f"{source!r} is not a transformers image classifier ({first_line(error)}); "
                "give a model that AutoModelForImageClassification can load"
            ) from None
        try:
            processor = AutoImageProcessor.from_pretrained(
                location, revision=revision, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError):   # no preprocessor_config.json: loading still works, preprocessing won't
            processor = None
    return _transformers_loaded(model.eval(), source, hub_id, revision, license_, processor,
                                info.get("missing_keys", ()))


def _transformers_loaded(model: nn.Module, source: str, hub_id: str | None, revision: str | None,
                         license_: str | None, processor: Any, missing_keys) -> LoadedModel:
    config = model.config
    channels = getattr(config, "num_channels", 3)
    preprocess = (ImagePreprocess(_ProcessorTransform(processor), channels) if processor is not None
                  else _MissingProcessor(source))
    return LoadedModel(
        model=model, library="transformers", source=source, hub_id=hub_id, revision=revision,
        preprocess=preprocess,
        label_names=_named([config.id2label[i] for i in sorted(config.id2label)], config.num_labels),
        license=license_, image_processor=processor,
        extra={"architecture": (config.architectures or [type(model).__name__])[0],
               "newly_initialized": sorted(missing_keys)},
    )


# -------------------------------------------------------------------------------------------- preprocess


class ImagePreprocess:
    """One PIL image -> float tensor [C, H, W]: converts grey/RGBA/palette images to the model's channel
    count, then applies the library's eval transform."""

    def __init__(self, transform: Callable[[Any], Tensor], channels: int = 3):
        self.transform = transform
        self.channels = channels

    def __call__(self, image: Any) -> Tensor:
        mode = {3: "RGB", 1: "L"}.get(self.channels)
        if mode is not None and hasattr(image, "convert") and getattr(image, "mode", mode) != mode:
            image = image.convert(mode)
        return self.transform(image)

    def __repr__(self) -> str:
        return f"ImagePreprocess(channels={self.channels}, transform={self.transform!r})"


class _ProcessorTransform:
    """A transformers image processor as a one-image transform: its `pixel_values[0]`."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any) -> Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return repr(self.processor)


class _MissingProcessor:
    """Stands in for preprocessing when a transformers checkpoint ships no image processor."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, image: Any) -> Tensor:
        raise ModelError(
            f"{self.source!r} has no image preprocessing (no preprocessor_config.json); add one "
            "(e.g. AutoImageProcessor.from_pretrained(<base model>).save_pretrained(folder)) or pass tensors"
        )


# ---------------------------------------------------------------------------------------------- metadata


def _read_json(path: str | Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _library_of(config: dict) -> str | None:
    """Which library wrote a config.json: timm's has `architecture` (+ `pretrained_cfg`), transformers'
    has `architectures` / `model_type`."""
    if isinstance(config.get("architecture"), str) and ("pretrained_cfg" in config or "architectures" not in config):
        return "timm"
    if config.get("architectures") or config.get("model_type"):
        return "transformers"
    return None


def _license_of(readme: str | Path) -> str | None:
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(readme) or {}
    except Exception:   # a malformed card must not stop the load; the licence is then unknown
        return None
    value = metadata.get("license")
    return str(value) if value else None


def _hub_license(repo_id: str, revision: str | None) -> str | None:
    from huggingface_hub import hf_hub_download

    try:
        return _license_of(hf_hub_download(repo_id, "README.md", revision=revision))
    except Exception:   # no card, or offline without it cached: the licence is unknown, not an error
        return None


def _named(names: Any, count: int) -> list[str] | None:
    """Class names in index order, or None when absent, of the wrong length or all LABEL_i placeholders."""
    if isinstance(names, dict):
        try:
            names = [names[key] for key in sorted(names, key=int)]
        except (TypeError, ValueError):
            return None
    if not names or len(names) != count:
        return None
    names = [str(name) for name in names]
    if all(_PLACEHOLDER.fullmatch(name) for name in names):
        return None
    return names


def _output_count(loaded: LoadedModel) -> int | None:
    if loaded.library == "timm":
        return getattr(loaded.model, "num_classes", None)
    config = getattr(loaded.model, "config", None)
    return getattr(config, "num_labels", None)


def _set_transformers_labels(model: nn.Module, label_names: list[str]) -> None:
    config = model.config
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}


def _timm_cfg_to_save(loaded: LoadedModel) -> dict:
    """`loaded.pretrained_cfg` minus where the source weights came from, sized to the current head."""
    cfg = {k: v for k, v in (loaded.pretrained_cfg or {}).items() if k not in _TIMM_SOURCE_KEYS and v is not None}
    cfg["num_classes"] = loaded.model.num_classes
    cfg.pop("label_names", None)   # written at the top level from loaded.label_names
    if loaded.label_names is None or len(loaded.label_names) != loaded.model.num_classes:
        cfg.pop("label_descriptions", None)
    return cfg


# ------------------------------------------------------------------------------------------------ errors


def _similar_timm_names(name: str, count: int = 5) -> list[str]:
    """timm names close to `name`: difflib's close matches first, then names containing it, most similar first."""
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=count, cutoff=0.6)
    containing = sorted(timm.list_models(f"*{name}*"),
                        key=lambda other: -difflib.SequenceMatcher(None, name, other).ratio())
    return list(dict.fromkeys(close + containing))[:count]
