"""hf_px.data tasks: the registry, resolve_task, open_split, class-balanced samples (map-style and streamed),
make_batches. Offline: local folders of real Fashion-MNIST images stand in for Hub datasets, and the Hub
path is exercised by replacing `datasets.load_dataset` with one that serves such a folder."""

import dataclasses
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

import hf_px
from hf_px import data
from hf_px.data import (FASHION_MNIST_CLASSES, HELD_OUT, TASKS, Task, label_names_of,
                        list_splits, make_batches, open_split, resolve_task, sample_task)
from hf_px.testing import write_fashion_mnist_dataset

FASHION = list(FASHION_MNIST_CLASSES)
IMAGEFOLDER_NAMES = sorted(name.replace("/", "_") for name in FASHION)   # the imagefolder loader sorts folders


@pytest.fixture(scope="module", autouse=True)
def _offline_and_private_cache(tmp_path_factory):
    """No network, and the imagefolder builder's Arrow cache in a temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets-cache"))
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    return {layout: write_fashion_mnist_dataset(root / layout, per_class_train=20, per_class_test=5, layout=layout)
            for layout in ("save_to_disk", "no_splits", "imagefolder")}


def _pixels(image) -> np.ndarray:
    return np.asarray(image)


# --------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", list(TASKS))
def test_registry_entry_is_well_formed(name):
    task = TASKS[name]
    assert task.name == name and isinstance(task, Task)
    assert data._HUB_ID.fullmatch(task.dataset_id) and "/" in task.dataset_id     # org/name, as on the Hub
    assert task.image_column and task.label_column and task.train_split == "train"
    assert task.eval_split in ("test", "validation") and task.config_name is None and task.label_names is None
    assert resolve_task(name) == task
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "other"


def test_registry_records_the_chosen_columns_and_the_large_gated_dataset():
    assert {n: (t.dataset_id, t.image_column, t.label_column, t.eval_split) for n, t in TASKS.items()} == {
        "cifar10": ("uoft-cs/cifar10", "img", "label", "test"),
        "cifar100": ("uoft-cs/cifar100", "img", "fine_label", "test"),
        "fashion-mnist": ("zalando-datasets/fashion_mnist", "image", "label", "test"),
        "mnist": ("ylecun/mnist", "image", "label", "test"),
        "food101": ("ethz/food101", "image", "label", "validation"),
        "flowers102": ("nelorth/oxford-flowers", "image", "label", "test"),
        "oxford-pets": ("timm/oxford-iiit-pet", "image", "label", "test"),
        "eurosat": ("timm/eurosat-rgb", "image", "label", "validation"),
        "imagenet-1k": ("ILSVRC/imagenet-1k", "image", "label", "validation"),
    }
    assert [n for n, t in TASKS.items() if t.streaming] == ["imagenet-1k"] == [n for n, t in TASKS.items() if t.gated]


# ----------------------------------------------------------------------------------------- resolve_task


@pytest.mark.parametrize("task, dataset", [(None, None), ("cifar10", "uoft-cs/cifar10")])
def test_resolve_task_needs_exactly_one_of_task_and_dataset(task, dataset):
    with pytest.raises(hf_px.ConfigError, match="exactly one of --task NAME or --dataset") as info:
        resolve_task(task, dataset)
    assert isinstance(info.value, ValueError)


def test_unknown_task_lists_the_known_ones_and_suggests_dataset():
    with pytest.raises(hf_px.ConfigError) as info:
        resolve_task("cifar-10")
    message = str(info.value)
    assert "unknown task 'cifar-10'" in message and "did you mean 'cifar10'?" in message
    assert all(name in message for name in TASKS) and "--dataset" in message and "\n" not in message


def test_flags_override_the_registry_entry():
    task = resolve_task("cifar100", image_column="image", label_column="coarse_label", split="test",
                        eval_split="train")
    assert (task.dataset_id, task.image_column, task.label_column, task.train_split, task.eval_split) == (
        "uoft-cs/cifar100", "image", "coarse_label", "test", "train")
    assert TASKS["cifar100"].label_column == "fine_label"          # the registry is untouched
    with pytest.raises(hf_px.ConfigError, match="--image-column"):
        resolve_task("cifar10", image_column="")


def test_dataset_ids_and_folders(tmp_path):
    hub = resolve_task(dataset="someone/pets")
    assert (hub.name, hub.dataset_id, hub.image_column, hub.label_column, hub.train_split, hub.eval_split) == (
        "someone/pets", "someone/pets", "image", "label", "train", None)
    known = resolve_task(dataset="uoft-cs/cifar10")       # a registered id keeps the registry's columns
    assert (known.name, known.image_column, known.eval_split) == ("uoft-cs/cifar10", "img", "test")
    folder = resolve_task(dataset=str(tmp_path), label_column="y")
    assert folder.dataset_id == str(tmp_path.resolve()) and folder.label_column == "y"
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(hf_px.ConfigError, match="is a file"):
        resolve_task(dataset=str(tmp_path / "file.txt"))
    with pytest.raises(hf_px.ConfigError, match="neither an existing folder nor a Hub dataset id"):
        resolve_task(dataset="./no/such/folder")
    with pytest.raises(hf_px.ConfigError):
        resolve_task(dataset="")


# --------------------------------------------------------------------------------------- local datasets


@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("layout, splits, names", [
    ("save_to_disk", ["train", "test"], FASHION), ("no_splits", ["train"], FASHION),
    ("imagefolder", ["train", "test"], IMAGEFOLDER_NAMES)])
def test_local_layouts_load(folders, layout, splits, names):
    task = resolve_task(dataset=str(folders[layout]))
    assert list_splits(task) == splits
    train = open_split(task, "train")
    assert isinstance(train, datasets.Dataset) and len(train) == 200
    assert {"image", "label"} <= set(train.column_names)
    assert label_names_of(train, "label") == names
    assert Counter(train["label"]) == {c: 20 for c in range(10)}
    image = train[0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    if "test" in splits:
        assert len(open_split(task, "test")) == 50
    stream = open_split(task, "train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset) and next(iter(stream))["label"] == train[0]["label"]


@pytest.mark.needs_fashion_mnist
def test_helper_images_are_the_real_fashion_mnist_images(folders):
    images, labels = data.load_fashion_mnist("test")
    test = open_split(resolve_task(dataset=str(folders["save_to_disk"])), "test")
    index = sorted(data.balanced_indices(labels, 5, seed=0))       # what the helper drew, in source order
    assert test["label"][:] == [int(labels[i]) for i in index]
    assert np.array_equal(_pixels(test[7]["image"]), images[index[7]].numpy())


@pytest.mark.needs_fashion_mnist
def test_a_dataset_without_splits_is_the_train_split(folders):
    task = resolve_task(dataset=str(folders["no_splits"]))
    with pytest.raises(hf_px.DataError, match=r"has no split 'test'; its splits: train\. .*saved without splits"):
        open_split(task, "test")
    with pytest.raises(hf_px.DataError, match="its splits: train, test"):
        open_split(resolve_task(dataset=str(folders["imagefolder"])), "validation")


@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("flag, changes", [("--image-column", {"image_column": "pixels"}),
                                           ("--label-column", {"label_column": "fine_label"})])
def test_missing_column_names_the_existing_ones_and_the_flag(folders, flag, changes):
    task = resolve_task(dataset=str(folders["save_to_disk"]), **changes)
    for call in (lambda: open_split(task, "train"), lambda: sample_task(task, per_class=1),
                 lambda: sample_task(task, per_class=1, streaming=True)):
        with pytest.raises(hf_px.DataError) as info:
            call()
        message = str(info.value)
        assert "its columns: image, label" in message and flag in message and repr(next(iter(changes.values()))) \
            in message


# ------------------------------------------------------------------------------------------ the samples


@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("layout", ["save_to_disk", "imagefolder"])
def test_scoring_sample_is_per_class_exact_seeded_and_the_right_images(folders, layout):
    task = resolve_task(dataset=str(folders[layout]))
    sample = sample_task(task, per_class=3, seed=0)
    train = open_split(task, "train")
    assert Counter(sample.score_labels) == {c: 3 for c in range(10)}
    assert sample.score_labels == sorted(sample.score_labels)                     # by class ...
    assert len(set(sample.score_indices)) == 30
    assert [train[i]["label"] for i in sample.score_indices] == sample.score_labels
    assert all(np.array_equal(_pixels(image), _pixels(train[i]["image"]))          # ... the images at the indices
               for image, i in zip(sample.score_images, sample.score_indices))
    assert sample.label_names == (FASHION if layout == "save_to_disk" else IMAGEFOLDER_NAMES)
    assert (sample.eval_images, sample.eval_labels, sample.eval_indices, sample.eval_split) == ([], [], [], "")
    assert not sample.streamed and sample.provenance()["score_indices"] == sample.score_indices

    again = sample_task(task, per_class=3, seed=0)
    assert again.score_indices == sample.score_indices
    # the draw is balanced_indices over the label column: a known answer
    assert sample.score_indices == data.balanced_indices(torch.tensor(train["label"][:]), 3, seed=0)
    other = sample_task(task, per_class=3, seed=1)
    assert other.score_indices != sample.score_indices and Counter(other.score_labels) == Counter(sample.score_labels)


@pytest.mark.needs_fashion_mnist
def test_eval_sample_from_the_eval_split_is_balanced(folders):
    task = resolve_task(dataset=str(folders["save_to_disk"]))
    sample = sample_task(task, per_class=2, eval_examples=25, seed=0)
    assert sample.eval_split == "test" and len(sample.eval_indices) == 25 == len(set(sample.eval_indices))
    assert sorted(Counter(sample.eval_labels).values()) == [2] * 5 + [3] * 5
    test = open_split(task, "test")
    assert [test[i]["label"] for i in sample.eval_indices] == sample.eval_labels
    assert all(np.array_equal(_pixels(a), _pixels(test[i]["image"]))
               for a, i in zip(sample.eval_images, sample.eval_indices))


@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("eval_examples", [30, 25])
def test_carved_eval_sample_is_disjoint_from_the_scoring_sample_and_balanced(folders, eval_examples):
    task = resolve_task(dataset=str(folders["no_splits"]))
    sample = sample_task(task, per_class=10, eval_examples=eval_examples, seed=3)
    assert sample.eval_split == HELD_OUT == "train (held out)"
    assert not set(sample.eval_indices) & set(sample.score_indices)
    assert len(sample.eval_indices) == eval_examples == len(set(sample.eval_indices))
    counts = Counter(sample.eval_labels)
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1
    train = open_split(task, "train")
    assert [train[i]["label"] for i in sample.eval_indices] == sample.eval_labels
    # every class has 20 images and 10 are scored: asking for more than the other 100 gets those 100, with a note
    with pytest.warns(UserWarning, match="has 100 labelled examples, fewer than the 101 asked by --eval-examples"):
        fewer = sample_task(task, per_class=10, eval_examples=101)
    assert len(fewer.eval_indices) == 100 and not set(fewer.eval_indices) & set(fewer.score_indices)


@pytest.mark.needs_fashion_mnist
def test_registered_eval_split_that_is_missing_falls_back_to_carving(folders):
    task = resolve_task(dataset=str(folders["no_splits"]), eval_split="validation")
    with pytest.warns(UserWarning, match="no split 'validation'"):
        sample = sample_task(task, per_class=2, eval_examples=10)
    assert sample.eval_split == HELD_OUT and not set(sample.eval_indices) & set(sample.score_indices)


def _tiny(labels, label_feature=None, image_values=None):
    """A Dataset of 2x2 grey images whose pixel value is the row index (so rows can be told apart)."""
    images = image_values or [np.full((2, 2), i, dtype=np.uint8) for i in range(len(labels))]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": label_feature or datasets.ClassLabel(names=["a", "b", "c"])})
    if image_values is not None:
        features = None
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_eval_sample_is_balanced_as_far_as_the_class_sizes_allow(tmp_path):
    train = _tiny([0, 1, 2] * 4)
    test = _tiny([0] * 5 + [1] + [2] * 5)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path))
    sample = sample_task(resolve_task(dataset=str(tmp_path)), per_class=2, eval_examples=9, seed=0)
    assert Counter(sample.eval_labels) == {0: 4, 1: 1, 2: 4}         # class b has one image; a and c share the rest
    assert sample.eval_indices[4] == 5                                  # the only b
    assert [int(_pixels(image)[0, 0]) for image in sample.eval_images] == sample.eval_indices


def test_a_default_scoring_sample_gives_way_to_a_small_class(tmp_path):
    """The default 10 per class is not a request: a small dataset gives what its smallest class has."""
    _tiny([0, 1, 2] * 3 + [0, 2]).save_to_disk(str(tmp_path / "small"))    # classes a, b, c: 4, 3, 4 images
    task = resolve_task(dataset=str(tmp_path / "small"))
    with pytest.warns(UserWarning) as caught:
        sample = sample_task(task, per_class=10, eval_examples=5, use_fewer=True)
    messages = " | ".join(str(w.message) for w in caught)
    assert "class 'b' has 3 examples in split 'train'" in messages
    assert "fewer than the default 10 per class: the scoring sample takes 3 of every class" in messages
    assert Counter(sample.score_labels) == {0: 3, 1: 3, 2: 3}
    # the eval sample takes what is left: the fourth a and the fourth c
    assert "has 2 labelled examples, fewer than the 5 asked by --eval-examples: all 2 are used" in messages
    assert sorted(sample.eval_labels) == [0, 2] and not set(sample.eval_indices) & set(sample.score_indices)
    with pytest.raises(hf_px.DataError, match="class 'b' .* has 3 examples .* per_class=10"):
        sample_task(task, per_class=10)                                    # asked for: refused
    _tiny([0, 2] * 4).save_to_disk(str(tmp_path / "absent"))             # class b named but never present
    with pytest.raises(hf_px.DataError, match="class 'b' .* has 0 examples .* drop the class from the data"):
        sample_task(resolve_task(dataset=str(tmp_path / "absent")), use_fewer=True)
    _tiny([0, 1, 2] * 3).save_to_disk(str(tmp_path / "exact"))
    with pytest.warns(UserWarning) as caught:
        none_left = sample_task(resolve_task(dataset=str(tmp_path / "exact")), per_class=10, eval_examples=5,
                                use_fewer=True)
    assert "has 0 labelled examples, fewer than the 5 asked by --eval-examples: the sample is empty" in " | ".join(
        str(w.message) for w in caught)
    assert len(none_left.score_indices) == 9 and none_left.eval_indices == [] == none_left.eval_images
    assert none_left.eval_split == ""


def test_training_splits_cap_a_recipes_counts_to_a_small_dataset(tmp_path):
    from hf_px.data import training_splits

    _tiny([0, 1, 2] * 10).save_to_disk(str(tmp_path / "no-eval"))          # 30 rows, no eval split
    with pytest.warns(UserWarning) as caught:
        splits = training_splits(resolve_task(dataset=str(tmp_path / "no-eval")), train_examples=2048,
                                 eval_examples=500)
    messages = " | ".join(str(w.message) for w in caught)
    assert "--eval-examples 500 would hold out more than half of the 30 labelled rows" in messages
    assert "3 (a tenth, the default) are held out instead" in messages and "all 27 are used" in messages
    assert len(splits.eval_indices) == 3 and sorted(splits.eval_indices + splits.train_indices) == list(range(30))
    assert len(training_splits(resolve_task(dataset=str(tmp_path / "no-eval")), eval_examples=15).eval_indices) == 15
    datasets.DatasetDict({"train": _tiny([0, 1, 2] * 4), "test": _tiny([0, 1, 2])}).save_to_disk(str(tmp_path / "split"))
    with pytest.warns(UserWarning, match="split 'test' .* has 3 labelled examples, fewer than the 500 asked"):
        splits = training_splits(resolve_task(dataset=str(tmp_path / "split")), train_examples=12, eval_examples=500)
    assert splits.eval_split == "test" and len(splits.eval_indices) == 3 and len(splits.train_indices) == 12


@pytest.mark.needs_fashion_mnist
def test_a_short_class_is_named_with_its_count_and_the_fix(folders, tmp_path):
    train = open_split(resolve_task(dataset=str(folders["save_to_disk"])), "train")
    bag = FASHION.index("Bag")
    keep = [i for i, label in enumerate(train["label"]) if label != bag or i in
            [j for j, lab in enumerate(train["label"]) if lab == bag][:3]]
    train.select(keep).save_to_disk(str(tmp_path / "short"))
    task = resolve_task(dataset=str(tmp_path / "short"))
    for streaming in (False, True):
        with pytest.raises(hf_px.DataError) as info:
            sample_task(task, per_class=5, streaming=streaming)
        message = str(info.value)
        assert "class 'Bag' (index 8) has 3 examples" in message and "per_class=5" in message
        assert "--examples-per-class" in message and "3 or fewer" in message
    assert Counter(sample_task(task, per_class=3).score_labels) == {c: 3 for c in range(10)}


def test_labels_without_class_label_are_named_by_sorted_values(tmp_path):
    plain = _tiny(["dog", "cat", "dog", "ant", "cat", "ant"], label_feature=datasets.Value("string"))
    assert label_names_of(plain, "label") == ["ant", "cat", "dog"]
    numbers = _tiny([10, 2, 10, 0, 2, 0], label_feature=datasets.Value("int64"))
    assert label_names_of(numbers, "label") == ["0", "2", "10"]                # numeric order, as strings
    datasets.DatasetDict({"train": plain, "test": _tiny(["cat", "emu"], datasets.Value("string"))}).save_to_disk(
        str(tmp_path))
    task = resolve_task(dataset=str(tmp_path))
    sample = sample_task(task, per_class=2, seed=0)
    assert sample.label_names == ["ant", "cat", "dog"] and sample.score_labels == [0, 0, 1, 1, 2, 2]
    assert sample.score_indices == [3, 5, 1, 4, 0, 2]
    with pytest.raises(hf_px.DataError, match="label 'emu' is not one of the train split's 3 classes"):
        sample_task(task, per_class=1, eval_examples=2)
    with pytest.raises(hf_px.DataError, match="not a ClassLabel"):
        sample_task(task, per_class=1, streaming=True)


def test_images_stored_as_arrays_or_bytes_become_pil(tmp_path):
    import io

    from PIL import Image

    arrays = [np.full((3, 5, 6), i * 40, dtype=np.uint8).tolist() for i in range(4)]      # CHW lists
    encoded = []
    for i in range(4):
        buffer = io.BytesIO()
        Image.fromarray(np.full((4, 4), i * 40, dtype=np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    for values, mode in ((arrays, "RGB"), (encoded, "L")):
        folder = tmp_path / mode
        datasets.Dataset.from_dict({"image": values, "label": [0, 1, 0, 1]}).save_to_disk(str(folder))
        sample = sample_task(resolve_task(dataset=str(folder)), per_class=2)
        assert [image.mode for image in sample.score_images] == [mode] * 4
        assert [int(_pixels(image).flat[0]) for image in sample.score_images] == [0, 80, 40, 120]
    datasets.Dataset.from_dict({"image": ["a", "b"], "label": [0, 1]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(hf_px.DataError, match="holds str values, not images; pass --image-column"):
        sample_task(resolve_task(dataset=str(tmp_path / "text")), per_class=1)


@pytest.mark.parametrize("kwargs, match", [({"per_class": 0}, "per_class=0"), ({"per_class": True}, "per_class"),
                                           ({"eval_examples": -1}, "eval_examples=-1"), ({"seed": 1.5}, "seed")])
def test_sample_task_rejects_bad_counts(kwargs, match):
    with pytest.raises(hf_px.DataError, match=match):
        sample_task(TASKS["cifar10"], **kwargs)


# ---------------------------------------------------------------------------------------------- streaming


@pytest.fixture
def counted_streams(monkeypatch):
    """Count the examples read from every stream that sample_task opens."""
    reads = []
    real = data.open_split

    def counting(task, split, streaming=False, revision=None):
        dataset = real(task, split, streaming=streaming, revision=revision)
        if streaming:
            dataset = dataset.map(lambda example: reads.append(split) or {}, features=dataset.features)
        return dataset

    monkeypatch.setattr(data, "open_split", counting)
    return reads


def _first_full_window(labels: list[int], window: int, num_classes: int = 10) -> int:
    """Brute force: the number of examples read when every class has been seen `window` times."""
    seen = Counter()
    for position, label in enumerate(labels):
        seen[label] += 1
        if all(seen[c] >= window for c in range(num_classes)):
            return position + 1
    return len(labels)


@pytest.mark.needs_fashion_mnist
def test_streamed_sample_meets_the_quotas_and_stops_reading_early(folders, counted_streams):
    task = resolve_task(dataset=str(folders["save_to_disk"]))
    train = open_split(task, "train")
    labels = train["label"][:]
    sample = sample_task(task, per_class=2, seed=0, streaming=True)
    assert sample.streamed and Counter(sample.score_labels) == {c: 2 for c in range(10)}
    read = len(counted_streams)
    assert read == _first_full_window(labels, 4) < len(train) / 2        # a window of 2 x per_class, then stop
    for image, position, label in zip(sample.score_images, sample.score_indices, sample.score_labels):
        assert labels[position] == label                              # indices are stream positions
        assert np.array_equal(_pixels(image), _pixels(train[position]["image"]))
        assert [p for p, lab in enumerate(labels) if lab == label].index(position) < 4    # inside the window
    assert sample_task(task, per_class=2, seed=0, streaming=True).score_indices == sample.score_indices
    assert sample_task(task, per_class=2, seed=5, streaming=True).score_indices != sample.score_indices


@pytest.mark.needs_fashion_mnist
def test_streamed_carve_is_disjoint_and_streamed_eval_split_is_balanced(folders, counted_streams):
    task = resolve_task(dataset=str(folders["no_splits"]))
    sample = sample_task(task, per_class=2, eval_examples=20, seed=0, streaming=True)
    assert sample.eval_split == HELD_OUT and Counter(sample.eval_labels) == {c: 2 for c in range(10)}
    assert not set(sample.eval_indices) & set(sample.score_indices)
    labels = open_split(task, "train")["label"][:]
    assert len(counted_streams) == _first_full_window(labels, 8) < len(labels)    # 4 scoring + 4 eval per class
    assert [labels[p] for p in sample.eval_indices] == sample.eval_labels

    counted_streams.clear()
    task = resolve_task(dataset=str(folders["imagefolder"]))
    sample = sample_task(task, per_class=2, eval_examples=15, seed=0, streaming=True)
    assert sample.eval_split == "test" and sorted(Counter(sample.eval_labels).values()) == [1] * 5 + [2] * 5
    test = open_split(task, "test")
    assert [test[p]["label"] for p in sample.eval_indices] == sample.eval_labels
    assert Counter(counted_streams)["test"] < len(test)


# ------------------------------------------------------------------------------------------- Hub datasets


@pytest.fixture
def fake_hub(monkeypatch, folders):
    """`datasets.load_dataset` serving the local Fashion-MNIST DatasetDict as 'uoft-cs/cifar10' (column 'img')."""
    stored = datasets.load_from_disk(str(folders["save_to_disk"])).rename_column("image", "img")
    calls = []

    def load_dataset(path, name=None, split=None, streaming=False, revision=None, **kwargs):
        calls.append((path, name, split, streaming, revision))
        if path != "uoft-cs/cifar10":
            raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        if split not in stored:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(stored)}.')
        return stored[split].to_iterable_dataset() if streaming else stored[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda path, name=None, revision=None: list(stored))
    return calls


@pytest.mark.needs_fashion_mnist
def test_a_registered_hub_task_is_sampled_through_load_dataset(fake_hub):
    sample = sample_task(resolve_task("cifar10"), per_class=2, eval_examples=10, seed=0, revision="abc123")
    assert Counter(sample.score_labels) == {c: 2 for c in range(10)} and sample.eval_split == "test"
    assert fake_hub == [("uoft-cs/cifar10", None, "train", False, "abc123"),
                        ("uoft-cs/cifar10", None, "test", False, "abc123")]
    streamed = sample_task(resolve_task("cifar10"), per_class=2, streaming=True)
    assert streamed.streamed and fake_hub[-1] == ("uoft-cs/cifar10", None, "train", True, None)


@pytest.mark.needs_fashion_mnist
def test_hub_failures_become_data_errors(fake_hub):
    with pytest.raises(hf_px.DataError) as info:
        open_split(resolve_task(dataset="someone/missing"), "train")
    message = str(info.value)
    assert "cannot load dataset 'someone/missing'" in message and "HF_HUB_OFFLINE is set" in message
    with pytest.raises(hf_px.DataError, match="has no split 'validation'"):
        open_split(resolve_task("cifar10"), "validation")
    with pytest.raises(hf_px.DataError, match="gated: accept its terms"):
        open_split(resolve_task("imagenet-1k"), "train", streaming=True)
    with pytest.raises(hf_px.ConfigError, match="Hub datasets only"):
        open_split(resolve_task(dataset="."), "train", revision="main")


# ------------------------------------------------------------------------------------------- make_batches


def test_make_batches_shapes_order_and_errors():
    from PIL import Image

    images = [Image.fromarray(np.full((6, 5), i, dtype=np.uint8)) for i in range(7)]

    def preprocess(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32)).unsqueeze(0)

    batches = make_batches(images, list(range(7)), preprocess, batch_size=3)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 1, 6, 5), (3, 1, 6, 5), (1, 1, 6, 5)]
    assert [y.tolist() for _, y in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(y.dtype == torch.int64 and x.dtype == torch.float32 for x, y in batches)
    assert [float(x[i, 0, 0, 0]) for x, _ in batches for i in range(len(x))] == list(range(7))

    with pytest.raises(hf_px.ConfigError, match="batch_size=0"):
        make_batches(images, list(range(7)), preprocess, 0)
    with pytest.raises(hf_px.DataError, match="7 images but 6 labels"):
        make_batches(images, list(range(6)), preprocess, 2)
    with pytest.raises(hf_px.DataError, match="no images"):
        make_batches([], [], preprocess, 2)
    with pytest.raises(hf_px.DataError, match=r"one float tensor \[C, H, W\]"):
        make_batches(images, list(range(7)), lambda image: np.asarray(image), 2)
    sizes = iter([(6, 5), (4, 4)])
    with pytest.raises(hf_px.DataError, match="one fixed size"):
        make_batches(images[:2], [0, 1], lambda image: torch.zeros(1, *next(sizes)), 2)


# ------------------------------------------------------------------ issue 13: legacy ids, loading scripts, label quirks


def test_legacy_bare_ids_resolve_to_the_registered_tasks():
    for legacy, task in (("cifar10", "cifar10"), ("cifar100", "cifar100"), ("mnist", "mnist"),
                         ("fashion_mnist", "fashion-mnist"), ("imagenet-1k", "imagenet-1k"), ("food101", "food101")):
        resolved = resolve_task(dataset=legacy)
        assert resolved == TASKS[task] and resolved.dataset_id != legacy, legacy
    assert resolve_task("fashion_mnist") == TASKS["fashion-mnist"]       # as a --task name too


def test_a_loading_script_dataset_is_explained(monkeypatch):
    def refuse(path, *args, **kwargs):
        raise RuntimeError(f"Dataset scripts are no longer supported, but found {path.split('/')[-1]}.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(datasets, "get_dataset_split_names", refuse)
    for call in (lambda: open_split(resolve_task("imagenet-1k"), "train", streaming=True),
                 lambda: list_splits(resolve_task("imagenet-1k"))):
        with pytest.raises(hf_px.DataError) as info:
            call()
        message = str(info.value)
        assert "ILSVRC/imagenet-1k is a loading-script dataset" in message and "\n" not in message
        assert "save_to_disk folder or an image folder" in message and "parquet" in message


def test_a_task_fixes_the_hubs_label_quirks(tmp_path, monkeypatch):
    """CIFAR-100's class 26 is 'cra' on the Hub; Fashion-MNIST's class 0 is 'T - shirt / top'."""
    names = ["apple", "cra", "dolphin"]
    stored = _tiny([0, 1, 2] * 3, datasets.ClassLabel(names=names))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: stored.rename_column("label", "fine_label")
                        .rename_column("image", "img"))
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda *a, **k: ["train"])
    sample = sample_task(resolve_task("cifar100"), per_class=1)
    assert sample.label_names == ["apple", "crab", "dolphin"]
    assert data._display_names(TASKS["fashion-mnist"], ["T - shirt / top", "Trouser"]) == ["T-shirt/top", "Trouser"]


@pytest.mark.needs_fashion_mnist
def test_the_named_fashion_mnist_task_reads_the_installed_idx_files(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("went to the Hub"))
    task = resolve_task("fashion-mnist")
    assert list_splits(task) == ["train", "test"]
    sample = sample_task(task, per_class=1, eval_examples=10, seed=0)
    assert sample.label_names == FASHION and sample.eval_split == "test"
    images, labels = data.load_fashion_mnist("train")
    assert sample.score_labels == [int(labels[i]) for i in sample.score_indices] == list(range(10))
    assert all(np.array_equal(_pixels(image), images[i].numpy())
               for image, i in zip(sample.score_images, sample.score_indices))
