"""Scoring data: named tasks read with 🤗 `datasets`, class-balanced samples, and offline Fashion-MNIST.

The flow: `resolve_task` (a `--task` name or a `--dataset` Hub id / folder) -> `sample_task` (a fixed-seed,
class-balanced scoring sample from the train split plus an optional eval sample, as PIL images and their
indices) -> `make_batches` (the model's preprocessing, stacked). Only the label column is read to choose the
sample, so no image outside it is decoded; large splits are streamed and reading stops once every class has
its quota.

`load_fashion_mnist` reads the original gzip IDX files (60,000 train + 10,000 test 28x28 grey images, 10
balanced classes) that Debian's `dataset-fashion-mnist` package installs under /usr/share/datasets/fashion-mnist;
nothing is downloaded at run time.
"""

import dataclasses
import difflib
import functools
import gzip
import io
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets
    from PIL import Image

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_INSTALL = "install it with `apt-get update && apt-get install -y dataset-fashion-mnist` (or `bash scripts/setup.sh`)"


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST `split` ("train" or "test") as (uint8 images [N, 28, 28], int64 labels [N]).

    root: folder holding the four `*-ubyte.gz` IDX files; None means /usr/share/datasets/fashion-mnist.
    Raises `DataError` for an unknown split, missing files or files that are not Fashion-MNIST IDX files.
    """
    if split not in _FILES:
        raise DataError(f"split={split!r} is not one of {sorted(_FILES)}")
    folder = FASHION_MNIST_ROOT if root is None else Path(root)
    image_path, label_path = (folder / name for name in _FILES[split])
    missing = [str(p) for p in (image_path, label_path) if not p.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found ({', '.join(missing)} missing); {_INSTALL}")
    images = _read_idx(image_path, header=16, magic=2051)
    labels = _read_idx(label_path, header=8, magic=2049)
    count = images.size // (28 * 28)
    if images.size != count * 28 * 28 or labels.size != count:
        raise DataError(f"{image_path} holds {images.size} pixels and {label_path} {labels.size} labels; "
                        "expected 784 pixels per label: the files are truncated or mismatched")
    return (torch.from_numpy(images.reshape(count, 28, 28).copy()),
            torch.from_numpy(labels.astype(np.int64)))


def _read_idx(path: Path, header: int, magic: int) -> np.ndarray:
    """The uint8 payload of a gzip IDX file after its `header` bytes (first 4 bytes: big-endian `magic`)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path} as gzip ({error}); reinstall: {_INSTALL}") from error
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file with magic number {magic}; reinstall: {_INSTALL}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def balanced_indices(labels: Tensor, per_class: int, seed: int = 0) -> list[int]:
    """`per_class` random indices of every class present in `labels`, sorted by class then index.

    The draw depends only on `labels`, `per_class` and `seed`. Raises `DataError` naming the class and the
    counts if some class has fewer than `per_class` examples.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise DataError(f"per_class={per_class!r} must be a positive integer")
    labels = torch.as_tensor(labels).flatten().cpu()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        if members.numel() < per_class:
            raise DataError(f"class {cls} has {members.numel()} examples but per_class={per_class} were asked; "
                            "lower per_class or use a larger split")
        pick = members[torch.randperm(members.numel(), generator=generator)[:per_class]]
        chosen.extend(sorted(pick.tolist()))
    return chosen


# ------------------------------------------------------------------------------------------------- tasks

EXAMPLES_PER_CLASS = 10     # the scoring sample's default size per class (the paper's 10 images per class)
HELD_OUT = "train (held out)"          # `TaskSample.eval_split` when the eval sample was carved out of train
_EVAL_SPLITS = ("validation", "test", "valid", "val")    # tried in order when a task names no eval split
_STREAM_WINDOW = 2       # a streamed quota of q is drawn uniformly from the first 2q examples of its class
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}={value!r} must be a non-empty string")


def _check_count(name: str, value: Any, minimum: int, error: type = DataError) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error(f"{name}={value!r} must be an integer >= {minimum}")


@dataclass(frozen=True)
class Task:
    """Where a task's images and labels live: a Hub dataset id or a local folder, its columns and splits.

    eval_split: None means the dataset's "validation" or "test" split if it has one, else a held-out part of
    train. label_names: display names replacing the dataset's own class names (same count); None keeps them.
    streaming: sample by streaming unless told otherwise (the train split is too large to download for a
    sample). gated: the Hub dataset needs its terms accepted on the Hub and a token (`hf auth login`).
    """

    name: str
    dataset_id: str
    image_column: str
    label_column: str
    train_split: str
    eval_split: str | None
    config_name: str | None = None
    label_names: tuple[str, ...] | None = None
    streaming: bool = False
    gated: bool = False
    # bare ids the Hub no longer resolves (`--dataset cifar10`), read as this task
    aliases: tuple[str, ...] = ()
    # quirks of the Hub's class names, fixed for display: (name on the Hub, name shown)
    rename_labels: tuple[tuple[str, str], ...] = ()
    # a folder of the original IDX files (Fashion-MNIST layout) used instead of the Hub when present
    idx_folder: str | None = None

    def __post_init__(self):
        for name in ("name", "dataset_id", "image_column", "label_column", "train_split"):
            _check_text(name, getattr(self, name))
        for name in ("eval_split", "config_name"):
            if getattr(self, name) is not None:
                _check_text(name, getattr(self, name))
        if self.label_names is not None:
            if isinstance(self.label_names, str) or not all(isinstance(n, str) for n in self.label_names):
                raise ConfigError(f"label_names={self.label_names!r} must be a list of class-name strings")
            object.__setattr__(self, "label_names", tuple(self.label_names))


# Each entry was checked against the dataset's card on the Hub (features and splits), cited beside it.
TASKS: dict[str, Task] = {task.name: task for task in (
    # huggingface.co/datasets/uoft-cs/cifar10: img (Image 32x32), label (ClassLabel, 10); train 50,000 / test 10,000
    Task("cifar10", "uoft-cs/cifar10", "img", "label", "train", "test", aliases=("cifar10",)),
    # huggingface.co/datasets/uoft-cs/cifar100: img, fine_label (100), coarse_label (20); train 50,000 / test 10,000.
    # Its fine_label names truncate class 26, 'crab', to 'cra'.
    Task("cifar100", "uoft-cs/cifar100", "img", "fine_label", "train", "test", aliases=("cifar100",),
         rename_labels=(("cra", "crab"),)),
    # huggingface.co/datasets/zalando-datasets/fashion_mnist: image (28x28 grey), label (10); train 60,000 / test 10,000.
    # Its class 0 is 'T - shirt / top'. Debian's dataset-fashion-mnist (scripts/setup.sh) installs the original
    # IDX files, read instead when present: same images, labels and order as the dataset's source files.
    Task("fashion-mnist", "zalando-datasets/fashion_mnist", "image", "label", "train", "test",
         aliases=("fashion_mnist",), rename_labels=(("T - shirt / top", "T-shirt/top"),),
         idx_folder=str(FASHION_MNIST_ROOT)),
    # huggingface.co/datasets/ylecun/mnist: image (28x28 grey), label (10); train 60,000 / test 10,000
    Task("mnist", "ylecun/mnist", "image", "label", "train", "test", aliases=("mnist",)),
    # huggingface.co/datasets/ethz/food101: image, label (101); train 75,750 / validation 25,250
    Task("food101", "ethz/food101", "image", "label", "train", "validation", aliases=("food101",)),
    # huggingface.co/datasets/nelorth/oxford-flowers: image, label (102); train 7,169 / test 1,020. Its class
    # names are the original category numbers as text ('1', '10', '100', ...). dpdl-benchmark/oxford_flowers102
    # has the flower names but only 10 train images per class (the official split), too few to carve from.
    Task("flowers102", "nelorth/oxford-flowers", "image", "label", "train", "test"),
    # huggingface.co/datasets/timm/oxford-iiit-pet: image, label (37 breeds), image_id, label_cat_dog;
    # train 3,680 / test 3,669
    Task("oxford-pets", "timm/oxford-iiit-pet", "image", "label", "train", "test"),
    # huggingface.co/datasets/timm/eurosat-rgb: image (64x64 RGB), label (10), image_id; train / validation / test
    Task("eurosat", "timm/eurosat-rgb", "image", "label", "train", "validation"),
    # huggingface.co/datasets/ILSVRC/imagenet-1k: image, label (1000); train 1,281,167 / validation 50,000 /
    # test 100,000 (unlabelled: label -1). Gated: accept its terms on the Hub, then `hf auth login`.
    # It is a loading-script dataset, which datasets >= 4 refuses to run (see `_script_refused`).
    Task("imagenet-1k", "ILSVRC/imagenet-1k", "image", "label", "train", "validation", streaming=True, gated=True,
         aliases=("imagenet-1k", "imagenet")),
)}
_ALIASES = {alias: task for task in TASKS.values() for alias in task.aliases}


def resolve_task(task: str | None = None, dataset: str | None = None, image_column: str | None = None,
                 label_column: str | None = None, split: str | None = None,
                 eval_split: str | None = None) -> Task:
    """The `Task` for a `--task` name or a `--dataset` (Hub id, `save_to_disk` folder or image folder).

    Exactly one of `task` and `dataset`. The other arguments, where given, override the registry entry (or the
    defaults for a dataset: columns "image"/"label", split "train", eval split found in the data). Touches
    no network: a Hub id is only checked for its form here.
    """
    if (task is None) == (dataset is None):
        raise ConfigError("give exactly one of --task NAME or --dataset ID_OR_FOLDER "
                          f"(got task={task!r}, dataset={dataset!r})")
    if task is not None:
        task = _ALIASES[task].name if task not in TASKS and task in _ALIASES else task
        if task not in TASKS:
            close = difflib.get_close_matches(str(task), list(TASKS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown task {task!r}; {hint}known tasks: {', '.join(TASKS)}. For any other data "
                              "pass --dataset with a Hub dataset id, a save_to_disk folder or an image folder")
        base = TASKS[task]
    else:
        base = _task_for_dataset(dataset)
    flags = {"image_column": ("--image-column", image_column), "label_column": ("--label-column", label_column),
             "train_split": ("--split", split), "eval_split": ("--eval-split", eval_split)}
    overrides = {}
    for name, (flag, value) in flags.items():
        if value is not None:
            _check_text(flag, value)
            overrides[name] = value
    return dataclasses.replace(base, **overrides)


def _task_for_dataset(dataset: Any) -> Task:
    if not isinstance(dataset, (str, Path)) or not str(dataset).strip():
        raise ConfigError(f"--dataset {dataset!r} must be a Hub dataset id (org/name) or a folder")
    text = str(dataset)
    path = Path(text).expanduser()
    if path.is_dir():
        return Task(path.resolve().name, str(path.resolve()), "image", "label", "train", None)
    if path.exists():
        raise ConfigError(f"--dataset {text!r} is a file; pass a folder written by `save_to_disk`, an image folder "
                          "(one sub-folder per class) or a Hub dataset id")
    if not _HUB_ID.fullmatch(text):
        raise ConfigError(f"--dataset {text!r} is neither an existing folder nor a Hub dataset id (org/name)")
    if text in _ALIASES:              # a legacy bare id (`cifar10`): the task that reads it today
        return _ALIASES[text]
    registered = next((t for t in TASKS.values() if t.dataset_id == text), None)
    if registered is not None:        # a registered dataset keeps its known columns and splits
        return dataclasses.replace(registered, name=text)
    return Task(text, text, "image", "label", "train", None)


def _local_kind(dataset_id: str, task: Task | None = None) -> str | None:
    """"disk" for a `save_to_disk` folder, "imagefolder" for any other folder, "idx" for a Hub id whose task
    has its IDX files installed locally, None for a Hub id."""
    path = Path(dataset_id)
    if task is not None and task.idx_folder and task.dataset_id == dataset_id and all(
            (Path(task.idx_folder) / name).is_file() for files in _FILES.values() for name in files):
        return "idx"
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                  and (path / "dataset_info.json").is_file()):
        return "disk"
    return "imagefolder"


def list_splits(task: Task, revision: str | None = None) -> list[str]:
    """The split names of the task's data; a dataset saved without splits has just "train"."""
    import datasets

    kind = _local_kind(task.dataset_id, task)
    if kind == "idx":
        return list(_FILES)
    if kind == "disk":
        stored = _load_from_disk(task)
        return ["train"] if isinstance(stored, datasets.Dataset) else list(stored)
    if kind == "imagefolder":
        try:
            builder = datasets.load_dataset_builder("imagefolder", data_dir=task.dataset_id)
        except (datasets.exceptions.DatasetsError, OSError, ValueError) as error:
            raise DataError(f"cannot read {task.dataset_id} as an image folder ({error}); it should hold one "
                            "sub-folder of images per class, optionally under train/ and test/") from error
        return [str(split) for split in builder.config.data_files]
    from .hub import require_hub

    require_hub(f"load dataset {task.dataset_id!r}")
    try:
        return list(datasets.get_dataset_split_names(task.dataset_id, task.config_name, revision=revision,
                                                     **_no_scripts()))
    except (datasets.exceptions.DatasetsError, OSError) as error:
        raise DataError(_hub_failure(task, error)) from error
    except (RuntimeError, ValueError) as error:
        if not _script_refused(error):
            raise
        raise DataError(_script_message(task)) from None


def open_split(task: Task, split: str, streaming: bool = False,
               revision: str | None = None) -> "datasets.Dataset | datasets.IterableDataset":
    """One split of the task's data, checked to have its image and label columns.

    A dataset saved without splits (a plain `Dataset`) is the "train" split. Raises `DataError` for a split or
    column that does not exist (naming those that do and the flag to pass) and for Hub failures.
    """
    import datasets

    _check_text("split", split)
    kind = _local_kind(task.dataset_id, task)
    if kind not in (None, "idx") and revision is not None:
        raise ConfigError(f"revision={revision!r} applies to Hub datasets only; {task.dataset_id} is a local folder")
    if kind == "idx":
        if split not in _FILES:
            raise _no_split(task, split, list(_FILES))
        dataset = _idx_dataset(task.idx_folder, split, task.image_column, task.label_column)
        dataset = dataset.to_iterable_dataset() if streaming else dataset
    elif kind == "disk":
        stored = _load_from_disk(task)
        splits = {"train": stored} if isinstance(stored, datasets.Dataset) else dict(stored)
        if split not in splits:
            raise _no_split(task, split, list(splits))
        dataset = splits[split].to_iterable_dataset() if streaming else splits[split]
    elif kind == "imagefolder":
        available = list_splits(task)
        if split not in available:
            raise _no_split(task, split, available)
        dataset = datasets.load_dataset("imagefolder", data_dir=task.dataset_id, split=split, streaming=streaming)
        if task.label_column not in (dataset.column_names or []) and task.label_column == "label":
            # the imagefolder loader adds labels only when there are several class folders
            raise DataError(f"the image folder {task.dataset_id} has no classes to tell apart: it needs one "
                            "sub-folder of images per class, and at least 2 classes")
    else:
        from .hub import require_hub

        require_hub(f"load dataset {task.dataset_id!r}")
        try:
            dataset = datasets.load_dataset(task.dataset_id, task.config_name, split=split, streaming=streaming,
                                            revision=revision, **_no_scripts())
        except (RuntimeError, ValueError) as error:
            if _script_refused(error):
                raise DataError(_script_message(task)) from None
            if not isinstance(error, ValueError) or "split" not in str(error).lower():
                raise
            raise DataError(f"dataset {task.dataset_id!r} has no split {split!r} ({error}); pass --split or "
                            "--eval-split with one of its splits") from error
        except (datasets.exceptions.DatasetsError, OSError) as error:
            raise DataError(_hub_failure(task, error)) from error
    _check_columns(dataset.column_names, task, split)
    return dataset


@functools.lru_cache(maxsize=2)
def _idx_dataset(folder: str, split: str, image_column: str, label_column: str) -> "datasets.Dataset":
    """A Fashion-MNIST split read from its IDX files, as a `datasets.Dataset` (28x28 uint8 arrays, ClassLabel)."""
    import datasets

    images, labels = load_fashion_mnist(split, root=folder)
    features = datasets.Features({image_column: datasets.Array2D((28, 28), "uint8"),
                                  label_column: datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))})
    return datasets.Dataset.from_dict({image_column: images.numpy(), label_column: labels.numpy()},
                                      features=features)


def _datasets_major() -> int:
    import datasets

    return int(datasets.__version__.split(".")[0])


def _no_scripts() -> dict:
    """datasets 3.x asks interactively before running a loading script: refuse instead (4.x no longer runs them)."""
    return {"trust_remote_code": False} if _datasets_major() < 4 else {}


def _script_refused(error: Exception) -> bool:
    text = str(error)
    return "scripts are no longer supported" in text or "trust_remote_code" in text


def _script_message(task: Task) -> str:
    import datasets

    return (f"{task.dataset_id} is a loading-script dataset, which datasets {datasets.__version__} does not run "
            "(\"Dataset scripts are no longer supported\"); give a copy stored as data files instead: --dataset "
            "DIR with a save_to_disk folder or an image folder (one sub-folder per class) made where you have the "
            "data, or --dataset ORG/NAME with a parquet copy on the Hub (plus --image-column/--label-column)")


def _load_from_disk(task: Task):
    import datasets

    try:
        return datasets.load_from_disk(task.dataset_id)
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as error:
        raise DataError(f"cannot load the save_to_disk folder {task.dataset_id} ({error}); write it again with "
                        "`Dataset.save_to_disk` or `DatasetDict.save_to_disk`") from error


def _no_split(task: Task, split: str, available: list[str]) -> DataError:
    return DataError(f"{task.dataset_id} has no split {split!r}; its splits: {', '.join(available)}. Pass --split "
                     "(scoring) or --eval-split with one of them" + (" (a dataset saved without splits is 'train')"
                                                                      if available == ["train"] else ""))


def _hub_failure(task: Task, error: Exception) -> str:
    import datasets

    message = f"cannot load dataset {task.dataset_id!r} from the Hugging Face Hub ({type(error).__name__}: {error})"
    if task.gated or "gated" in str(error).lower():
        message += "; it is gated: accept its terms on its Hub page, then `hf auth login` or set HF_TOKEN"
    if datasets.config.HF_HUB_OFFLINE:
        message += ("; HF_HUB_OFFLINE is set: on a machine with network run `load_dataset(ID).save_to_disk(DIR)`, "
                    "then pass --dataset DIR")
    return message + f" (no local folder {task.dataset_id!r} exists either)"


def _check_columns(columns: list[str] | None, task: Task, split: str) -> None:
    if columns is None:           # a stream whose features are unknown: checked on its first example
        return
    problems = [f"no {kind} column {name!r}; pass {flag} with the column that holds the {kind}s"
                for kind, name, flag in (("image", task.image_column, "--image-column"),
                                         ("label", task.label_column, "--label-column")) if name not in columns]
    if problems:
        raise DataError(f"split {split!r} of {task.dataset_id} has {' and '.join(problems)}; its columns: "
                        f"{', '.join(columns)}")


def label_names_of(dataset, label_column: str) -> list[str]:
    """Class names: those of the `ClassLabel` feature, else the sorted distinct values as strings.

    A stream can only be named by its `ClassLabel` feature (the values would need a full pass).
    """
    import datasets

    feature = (dataset.features or {}).get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(dataset, datasets.IterableDataset):
        raise DataError(f"the streamed label column {label_column!r} is not a ClassLabel ({feature}), so its classes "
                        "are unknown until the whole split is read; sample without streaming, or cast the column "
                        "to datasets.ClassLabel")
    return [str(value) for value in _distinct(_column_values(dataset, label_column), label_column)]


def _column_values(dataset, column: str) -> list:
    """One column as Python values, read from Arrow without touching the other columns (no image decoding)."""
    return dataset.select_columns([column]).with_format("arrow")[column].to_pylist()


def _distinct(values: list, column: str) -> list:
    try:
        distinct = set(values) - {None}
    except TypeError as error:
        raise DataError(f"label column {column!r} holds {type(values[0]).__name__} values; one class label per "
                        "image (an int or a string) is needed: pass --label-column") from error
    # numbers in numeric order, then strings: 2 before 10
    return sorted(distinct, key=lambda value: (isinstance(value, str), value))


def _label_coder(feature, names: list[str], where: str) -> Callable[[Any], int]:
    """A function from a label value to its class index in `names` (-1: unlabelled, skipped)."""
    import datasets

    if isinstance(feature, datasets.ClassLabel) and list(feature.names) == names:
        def code(value):
            if value is None or value < 0:
                return -1
            if value >= len(names):
                raise DataError(f"{where}: label {value} is out of range for its {len(names)} classes")
            return value
        return code
    index = {name: i for i, name in enumerate(names)}
    own = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    def code(value):
        if value is None or (own is not None and value < 0):
            return -1
        key = own[value] if own is not None else str(value)
        if key not in index:
            raise DataError(f"{where}: label {key!r} is not one of the train split's {len(names)} classes "
                            f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        return index[key]
    return code


def _codes(dataset, task: Task, names: list[str], split: str) -> np.ndarray:
    """The class index of every row (-1: unlabelled), from the label column alone."""
    import datasets

    feature = dataset.features.get(task.label_column)
    where = f"split {split!r} of {task.dataset_id}"
    if isinstance(feature, datasets.ClassLabel) and list(feature.names) == names:   # the common case, vectorised
        column = dataset.select_columns([task.label_column]).with_format("arrow")[task.label_column]
        codes = np.array(column.fill_null(-1).to_numpy(), dtype=np.int64)      # writable
        codes[codes < 0] = -1
        if codes.size and codes.max() >= len(names):
            raise DataError(f"{where}: label {int(codes.max())} is out of range for its {len(names)} classes")
        return codes
    coder = _label_coder(feature, names, where)
    return np.asarray([coder(value) for value in _column_values(dataset, task.label_column)], dtype=np.int64)


# ------------------------------------------------------------------------------------------------ sample


@dataclass
class TaskSample:
    """The images a pruning job scores on (and probes with), with the indices that make it reproducible.

    Indices are positions in their split (for a streamed split: positions in the stream, the same thing for
    an unshuffled split); labels index `label_names`. Both samples are sorted by class, then by index.
    `eval_split` names where the eval sample came from: a split, `HELD_OUT` ("train (held out)": carved out
    of train, disjoint from the scoring sample), or "" when no eval sample was asked for.
    """

    task: Task
    label_names: list[str]
    score_images: list = field(repr=False)
    score_labels: list[int]
    score_indices: list[int]
    eval_images: list = field(repr=False)
    eval_labels: list[int]
    eval_indices: list[int]
    eval_split: str
    seed: int = 0
    streamed: bool = False

    def provenance(self) -> dict:
        """What a checkpoint records to say which data it was scored on: `hf_px.record.CheckpointRecord`'s data
        fields (the seed is the pruning's, the eval split the probe's)."""
        task = self.task
        return {"task": task.name, "dataset": task.dataset_id, "dataset_config": task.config_name,
                "image_column": task.image_column, "label_column": task.label_column, "split": task.train_split,
                "label_names": list(self.label_names), "score_indices": list(self.score_indices),
                "eval_indices": list(self.eval_indices)}


def sample_task(task: Task, per_class: int = EXAMPLES_PER_CLASS, eval_examples: int = 0, seed: int = 0,
                streaming: bool | None = None, revision: str | None = None, use_fewer: bool = False) -> TaskSample:
    """A class-balanced scoring sample (`per_class` train images of every class) and an eval sample.

    The scoring draw depends only on the train labels, `per_class` and `seed` (see `balanced_indices`); no
    augmentation. The eval sample has `eval_examples` images spread over the classes as evenly as they
    allow, from the task's eval split, or carved out of train (disjoint from the scoring sample) where there
    is none. streaming (default: `task.streaming`) reads the splits as streams, each class's quota drawn
    from the first 2x its size of that class, and stops once every class has them. revision pins a Hub
    dataset. Raises `DataError` naming any class with fewer than `per_class` examples, unless `use_fewer`
    (a default, not the user's request) and the data is not streamed (streamed datasets are the large ones):
    then every class gives as many as the smallest has, with a warning.
    The eval sample takes what is left, warning when that is fewer than asked or none.
    """
    _check_count("per_class", per_class, 1)
    _check_count("eval_examples", eval_examples, 0)
    _check_count("seed", seed, 0)
    streaming = task.streaming if streaming is None else bool(streaming)
    eval_split = _eval_split_of(task, revision) if eval_examples else None
    if streaming:
        return _sample_streamed(task, per_class, eval_examples, seed, eval_split, revision)

    train = open_split(task, task.train_split, revision=revision)
    names = label_names_of(train, task.label_column)
    _check_classes(names, task)
    codes = _codes(train, task, names, task.train_split)
    score = _score_indices(codes, names, per_class, seed, task, use_fewer)
    eval_source, eval_codes, eval_indices = train, codes, []
    if eval_examples:
        if eval_split is None:
            eval_indices = _spread_indices(codes, eval_examples, len(names), seed, set(score),
                                           f"train split {task.train_split!r} of {task.dataset_id} less the scoring "
                                           "sample", use_fewer=True)
        else:
            eval_source = open_split(task, eval_split, revision=revision)
            eval_codes = _codes(eval_source, task, names, eval_split)
            eval_indices = _spread_indices(eval_codes, eval_examples, len(names), seed, set(),
                                           f"split {eval_split!r} of {task.dataset_id}", use_fewer=True)
    return TaskSample(
        task=task, label_names=_display_names(task, names),
        score_images=_images_at(train, task, score), score_labels=[int(codes[i]) for i in score],
        score_indices=score,
        eval_images=_images_at(eval_source, task, eval_indices),
        eval_labels=[int(eval_codes[i]) for i in eval_indices], eval_indices=eval_indices,
        eval_split=("" if not eval_indices else HELD_OUT if eval_split is None else eval_split),
        seed=seed, streamed=False)


def sample_calibration(sample: TaskSample, count: int, revision: str | None = None) -> tuple[list, list[int], list[int]]:
    """Images, labels and train indices for BatchNorm recalibration: the scoring sample, plus train images
    spread over the classes up to `count` in all, disjoint from the eval sample (and drawn with the sample's
    seed). `count` at or below the scoring sample's size gives the scoring sample itself."""
    _check_count("calibration_examples", count, 1, error=ConfigError)
    extra = count - len(sample.score_indices)
    if extra <= 0:
        return sample.score_images, sample.score_labels, sample.score_indices
    if sample.streamed:
        raise ConfigError(f"--calibration-examples {count} needs more images than the scoring sample, which a "
                          "streamed dataset cannot give; leave it out (the scoring sample is used)")
    task = sample.task
    train = open_split(task, task.train_split, revision=revision)
    codes = _codes(train, task, label_names_of(train, task.label_column), task.train_split)
    taken = set(sample.score_indices) | (set(sample.eval_indices) if sample.eval_split == HELD_OUT else set())
    more = _spread_indices(codes, extra, len(sample.label_names), sample.seed + 1, taken,
                           f"train split {task.train_split!r} of {task.dataset_id} less the scoring and eval samples",
                           flag="calibration_examples")
    return (sample.score_images + _images_at(train, task, more), sample.score_labels + [int(codes[i]) for i in more],
            sample.score_indices + more)


def _check_classes(names: list[str], task: Task) -> None:
    """Fewer than 2 classes leave nothing to classify: every probe scores 100% and label-based scores vanish."""
    if len(names) < 2:
        raise DataError(f"{task.dataset_id} has {len(names)} class{'' if len(names) == 1 else 'es'} "
                        f"({', '.join(map(repr, names)) or 'none'}) in column {task.label_column!r}; pruning and the "
                        "probe need at least 2: give data with several classes, or pass --label-column with the "
                        "column that holds them")


def _eval_split_of(task: Task, revision: str | None) -> str | None:
    """The split to draw the eval sample from; None: carve it out of train."""
    available = list_splits(task, revision)
    if task.eval_split is not None:
        if task.eval_split in available and task.eval_split != task.train_split:
            return task.eval_split
        if task.eval_split != task.train_split:
            import warnings
            warnings.warn(f"{task.dataset_id} has no split {task.eval_split!r} (its splits: {', '.join(available)}); "
                          "the eval sample is carved out of train instead", stacklevel=3)
        return None
    return next((name for name in _EVAL_SPLITS if name in available and name != task.train_split), None)


def _display_names(task: Task, names: list[str]) -> list[str]:
    if task.label_names is None:
        renamed = dict(task.rename_labels)
        return [renamed.get(name, name) for name in names]
    if len(task.label_names) != len(names):
        raise DataError(f"task {task.name!r} gives {len(task.label_names)} label names but {task.dataset_id} has "
                        f"{len(names)} classes ({', '.join(names[:5])}, ...)")
    return list(task.label_names)


def _score_indices(codes: np.ndarray, names: list[str], per_class: int, seed: int, task: Task,
                   use_fewer: bool = False) -> list[int]:
    labelled = np.flatnonzero(codes >= 0)
    counts = np.bincount(codes[labelled], minlength=len(names))
    short = [(int(counts[c]), c) for c in range(len(names)) if counts[c] < per_class]
    where = f"split {task.train_split!r} of {task.dataset_id}"
    if short and use_fewer and min(short)[0] > 0:
        import warnings
        count, cls = min(short)
        warnings.warn(f"class {names[cls]!r} has {count} examples in {where}, fewer than the default "
                      f"{per_class} per class: the scoring sample takes {count} of every class "
                      "(--examples-per-class sets it)", stacklevel=3)
        per_class, short = count, []
    if short:
        raise _short_classes(short, names, per_class, where)
    picked = balanced_indices(torch.from_numpy(codes[labelled]), per_class, seed)
    return [int(labelled[i]) for i in picked]


def _short_classes(short: list[tuple[int, int]], names: list[str], per_class: int, where: str) -> DataError:
    count, cls = min(short)
    others = f" ({len(short) - 1} more classes are short too)" if len(short) > 1 else ""
    fix = (f"lower per_class (--examples-per-class) to {count} or fewer" if count > 0
           else "drop the class from the data")
    return DataError(f"class {names[cls]!r} (index {cls}) has {count} examples in {where} but per_class={per_class} "
                     f"were asked{others}; {fix}, or use a split with more examples per class")


def _spread_indices(codes: np.ndarray, count: int, num_classes: int, seed: int, exclude: set[int],
                    where: str, flag: str = "eval_examples", use_fewer: bool = False) -> list[int]:
    """`count` random indices spread over the classes as evenly as their sizes allow, sorted by class then index.

    Fewer available than `count`: all of them with a warning if `use_fewer`, else a `DataError`."""
    generator = torch.Generator().manual_seed(seed)
    excluded = np.fromiter(exclude, dtype=np.int64, count=len(exclude))
    pools = []
    for cls in range(num_classes):
        members = np.flatnonzero(codes == cls)
        members = members[~np.isin(members, excluded)]
        pools.append(members[torch.randperm(len(members), generator=generator).numpy()])
    available = sum(len(pool) for pool in pools)
    if available < count and use_fewer:
        import warnings
        warnings.warn(f"{where} has {available} labelled examples, fewer than the {count} asked by "
                      f"--{flag.replace('_', '-')}: " + (f"all {available} are used" if available else "the sample is empty"),
                      stacklevel=3)
        count = available
    if available < count:
        raise DataError(f"{flag}={count} but {where} has only {available} labelled examples; "
                        f"lower --{flag.replace('_', '-')} or name a larger split")
    quotas = _fill_quotas([len(pool) for pool in pools], count)
    return [int(i) for pool, quota in zip(pools, quotas) for i in sorted(pool[:quota].tolist())]


def _fill_quotas(sizes: list[int], count: int) -> list[int]:
    """Split `count` over classes as evenly as `sizes` allow (water filling; lower classes take the remainder)."""
    quotas = [0] * len(sizes)
    active = [c for c, size in enumerate(sizes) if size > 0]
    remaining = count
    while remaining > 0 and active:
        share = max(remaining // len(active), 1)
        for cls in list(active):
            take = min(share, sizes[cls] - quotas[cls], remaining)
            quotas[cls] += take
            remaining -= take
            if quotas[cls] == sizes[cls]:
                active.remove(cls)
            if remaining == 0:
                break
    return quotas


def _images_at(dataset, task: Task, indices: list[int]) -> list:
    if not indices:
        return []
    where = f"column {task.image_column!r} of {task.dataset_id}"
    return [_to_pil(value, where) for value in dataset.select(indices).select_columns([task.image_column])
            [task.image_column]]


def _sample_streamed(task: Task, per_class: int, eval_examples: int, seed: int, eval_split: str | None,
                     revision: str | None) -> TaskSample:
    stream = open_split(task, task.train_split, streaming=True, revision=revision)
    names = label_names_of(stream, task.label_column)
    _check_classes(names, task)
    carve = eval_examples > 0 and eval_split is None
    eval_quotas = _fill_quotas([eval_examples] * len(names), eval_examples)
    quotas = [[per_class] * len(names)] + ([eval_quotas] if carve else [])
    drawn = _draw_from_stream(stream, task, task.train_split, names, quotas, seed)
    short = [(len(found), cls) for cls, found in enumerate(drawn[0]) if len(found) < per_class]
    if short:
        raise _short_classes(short, names, per_class, f"the stream of split {task.train_split!r} of {task.dataset_id}")
    score = _flatten(drawn[0])
    held = []
    if carve:
        held = _flatten(drawn[1])
    elif eval_examples:
        eval_stream = open_split(task, eval_split, streaming=True, revision=revision)
        held = _flatten(_draw_from_stream(eval_stream, task, eval_split, names, [eval_quotas], seed)[0])
    if eval_examples and len(held) < eval_examples:
        import warnings
        warnings.warn(f"the streamed eval sample has {len(held)} of the {eval_examples} examples asked: some "
                      "classes ran out", stacklevel=2)
    image_feature = (stream.features or {}).get(task.image_column)
    where = f"column {task.image_column!r} of {task.dataset_id}"
    return TaskSample(
        task=task, label_names=_display_names(task, names),
        score_images=[_to_pil(raw, where, image_feature) for _, raw, _ in score],
        score_labels=[c for _, _, c in score], score_indices=[p for p, _, _ in score],
        eval_images=[_to_pil(raw, where, image_feature) for _, raw, _ in held], eval_labels=[c for _, _, c in held],
        eval_indices=[p for p, _, _ in held],
        eval_split=("" if not held else HELD_OUT if carve else eval_split), seed=seed, streamed=True)


def _draw_from_stream(stream, task: Task, split: str, names: list[str], quotas: list[list[int]],
                      seed: int) -> list[list[list[tuple[int, Any, int]]]]:
    """Per slot and class, `quota` (position, raw image, class) drawn uniformly from a window of 2x quota.

    Each example of a class goes to the first slot whose window for that class is not yet full, so slots
    never share an example; a reservoir (Algorithm R) keeps the draw uniform over the window while holding
    only `quota` images. Reading stops as soon as every window is full: the rest of the stream is never read.
    """
    import datasets

    features = stream.features or {}
    if isinstance(features.get(task.image_column), datasets.Image):   # raw bytes/paths: only kept images get decoded
        stream = stream.cast_column(task.image_column, datasets.Image(decode=False))
    coder = _label_coder(features.get(task.label_column), names, f"split {split!r} of {task.dataset_id}")
    rng = random.Random(seed)
    windows = [[_STREAM_WINDOW * q for q in slot] for slot in quotas]
    seen = [[0] * len(names) for _ in quotas]
    kept = [[[] for _ in names] for _ in quotas]
    open_windows = sum(1 for slot in windows for w in slot if w > 0)
    for position, example in enumerate(stream):
        if task.image_column not in example or task.label_column not in example:
            _check_columns(list(example), task, split)
        cls = coder(example[task.label_column])
        if cls < 0:
            continue
        slot = next((s for s in range(len(quotas)) if seen[s][cls] < windows[s][cls]), None)
        if slot is None:
            continue
        seen[slot][cls] += 1
        reservoir, quota = kept[slot][cls], quotas[slot][cls]
        item = (position, example[task.image_column], cls)
        if len(reservoir) < quota:
            reservoir.append(item)
        else:
            j = rng.randrange(seen[slot][cls])
            if j < quota:
                reservoir[j] = item
        if seen[slot][cls] == windows[slot][cls]:
            open_windows -= 1
            if open_windows == 0:
                break
    return kept


def _flatten(per_class: list[list[tuple[int, Any, int]]]) -> list[tuple[int, Any, int]]:
    return [item for items in per_class for item in sorted(items, key=lambda item: item[0])]


def _to_pil(value: Any, where: str, feature=None) -> "Image.Image":
    """A PIL image from what a dataset column holds: PIL, {"bytes", "path"}, encoded bytes, or an array.

    feature: the column's `datasets.Image` feature, whose settings (e.g. `mode`) decode the raw dicts.
    """
    from PIL import Image

    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        import datasets
        decoder = dataclasses.replace(feature, decode=True) if isinstance(feature, datasets.Image) else datasets.Image()
        value = decoder.decode_example(value)
    elif isinstance(value, (bytes, bytearray)):
        value = Image.open(io.BytesIO(value))
    elif isinstance(value, (torch.Tensor, np.ndarray, list)):
        value = Image.fromarray(_as_image_array(np.asarray(value), where))
    if not isinstance(value, Image.Image):
        raise DataError(f"{where} holds {type(value).__name__} values, not images; pass --image-column with the "
                        "column that holds the images")
    value.load()          # decode now: no lazily open file handles, and a corrupt image fails here
    return value


def _as_image_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)          # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise DataError(f"{where} holds an array of shape {array.shape}; an image is HxW, HxWx3 or HxWx4")
    if array.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0 else 1.0
        array = np.clip(array.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
    return array


# ----------------------------------------------------------------------------------------------- batches


def make_batches(images: list, labels: list[int], preprocess: Callable[[Any], Tensor],
                 batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """`(images [B, C, H, W] float, labels [B] int64)` batches: `preprocess` (one PIL image -> [C, H, W]) applied
    to every image, in order; the last batch may be smaller."""
    _check_count("batch_size", batch_size, 1, error=ConfigError)
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels; give one label per image")
    if not images:
        raise DataError("no images to batch; sample at least one example per class")
    tensors = []
    for i, image in enumerate(images):
        x = preprocess(image)
        if not isinstance(x, Tensor) or x.ndim != 3 or not x.is_floating_point():
            kind = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise DataError(f"preprocess returned {kind} for image {i}; it must return one float tensor [C, H, W]")
        if tensors and x.shape != tensors[0].shape:
            raise DataError(f"preprocess returned shape {tuple(x.shape)} for image {i} but {tuple(tensors[0].shape)} "
                            "for image 0; it must resize (and convert the mode) to one fixed size")
        tensors.append(x)
    targets = torch.as_tensor([int(label) for label in labels], dtype=torch.int64)
    return [(torch.stack(tensors[start:start + batch_size]), targets[start:start + batch_size])
            for start in range(0, len(tensors), batch_size)]



# ------------------------------------------------------------------------------------------- training data


@dataclass
class TrainingSplits:
    """What fine-tuning reads: the train and eval rows (positions in their splits) and their class codes.

    eval_split is a split name, or `HELD_OUT` when the eval rows were carved out of train (then disjoint
    from the train rows). Images are decoded only when a row is read (`ImageDataset`).
    """

    task: Task
    label_names: list[str]
    train: "datasets.Dataset"
    train_indices: list[int]
    train_codes: np.ndarray
    eval: "datasets.Dataset"
    eval_indices: list[int]
    eval_codes: np.ndarray
    eval_split: str


def training_splits(task: Task, train_examples: int | None = None, eval_examples: int | None = None,
                    seed: int = 0, revision: str | None = None) -> TrainingSplits:
    """The task's labelled train rows and eval rows for fine-tuning.

    train_examples / eval_examples: a class-balanced random subset of that size (None: every labelled row);
    a split with fewer gives all it has, with a warning (a recipe's counts are upper bounds: the user's data
    may be small). Without an eval split, eval_examples rows (default: 10% of train) are held out of train,
    but never more than half of it: beyond that, 10% are, with a warning.
    """
    for name, value in (("train_examples", train_examples), ("eval_examples", eval_examples)):
        if value is not None:
            _check_count(name, value, 1, error=ConfigError)
    train = open_split(task, task.train_split, revision=revision)
    names = label_names_of(train, task.label_column)
    _check_classes(names, task)
    codes = _codes(train, task, names, task.train_split)
    where = f"split {task.train_split!r} of {task.dataset_id}"
    eval_split = _eval_split_of(task, revision)
    held_out: set[int] = set()
    if eval_split is None:
        labelled = int((codes >= 0).sum())
        count, tenth = eval_examples, max(1, labelled // 10)
        if count is not None and count > labelled // 2:
            import warnings
            warnings.warn(f"--eval-examples {count} would hold out more than half of the {labelled} labelled rows "
                          f"of {where}, which has no eval split: {tenth} (a tenth, the default) are held out "
                          "instead", stacklevel=2)
        if count is None or count > labelled // 2:
            count = tenth
        eval_source, eval_codes = train, codes
        eval_indices = _spread_indices(codes, count, len(names), seed, set(), where)
        held_out = set(eval_indices)
    else:
        eval_source = open_split(task, eval_split, revision=revision)
        eval_codes = _codes(eval_source, task, names, eval_split)
        eval_indices = (_spread_indices(eval_codes, eval_examples, len(names), seed, set(),
                                        f"split {eval_split!r} of {task.dataset_id}", use_fewer=True) if eval_examples
                        else np.flatnonzero(eval_codes >= 0).tolist())
        if not eval_indices:
            raise DataError(f"split {eval_split!r} of {task.dataset_id} has no labelled rows to evaluate on; pass "
                            f"--eval-split with a labelled split, or --eval-split {task.train_split} to hold rows "
                            "out of train")
    if train_examples:
        train_indices = _spread_indices(codes, train_examples, len(names), seed + 1, held_out,
                                        where + (" less the held-out eval rows" if held_out else ""), "train_examples",
                                        use_fewer=True)
    else:
        train_indices = [i for i in np.flatnonzero(codes >= 0).tolist() if i not in held_out]
    if not train_indices:
        raise DataError(f"{where} has no labelled rows left to train on")
    return TrainingSplits(task, _display_names(task, names), train, train_indices, codes, eval_source,
                          eval_indices, eval_codes, HELD_OUT if eval_split is None else eval_split)


class ImageDataset(torch.utils.data.Dataset):
    """`(transform(image), class index)` for the given rows of a split; images are decoded on access."""

    def __init__(self, dataset: "datasets.Dataset", task: Task, indices: list[int], codes: np.ndarray,
                 transform: Callable[[Any], Tensor]):
        self.images = dataset.select_columns([task.image_column])
        self.column = task.image_column
        self.feature = dataset.features.get(task.image_column)
        self.where = f"column {task.image_column!r} of {task.dataset_id}"
        self.indices = [int(i) for i in indices]
        self.labels = [int(codes[i]) for i in self.indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Tensor, int]:
        value = self.images[self.indices[position]][self.column]
        return self.transform(_to_pil(value, self.where, self.feature)), self.labels[position]
