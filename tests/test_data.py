"""hf_px.data: the offline Fashion-MNIST reader and class-balanced scoring samples."""

import gzip

import pytest
import torch

import hf_px
from hf_px.data import FASHION_MNIST_CLASSES, balanced_indices, load_fashion_mnist



@pytest.fixture(scope="module")
def train():
    return load_fashion_mnist("train")


@pytest.mark.needs_fashion_mnist
def test_train_split_shapes_dtypes_and_class_balance(train):
    images, labels = train
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert int(labels.min()) == 0 and int(labels.max()) == len(FASHION_MNIST_CLASSES) - 1 == 9
    assert torch.bincount(labels).tolist() == [6000] * 10
    mean = images.double().div(255).mean().item()
    assert abs(mean - 0.2860) < 1e-3    # the normalisation constant the example uses
    assert 0 < int(images.max()) <= 255 and images.float().std() > 0


@pytest.mark.needs_fashion_mnist
def test_test_split_shapes_and_class_balance():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10


@pytest.mark.needs_fashion_mnist
def test_balanced_sample_of_the_real_training_split(train):
    images, labels = train
    index = balanced_indices(labels, 10, seed=0)
    assert len(index) == 100 == len(set(index))
    assert torch.bincount(labels[index], minlength=10).tolist() == [10] * 10
    assert index == balanced_indices(labels, 10, seed=0)
    assert images[index].shape == (100, 28, 28)


def test_balanced_indices_exact_counts_sorted_and_seeded():
    labels = torch.tensor([2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    index = balanced_indices(labels, 3, seed=0)
    assert len(index) == 9
    assert [int(labels[i]) for i in index] == [0, 0, 0, 1, 1, 1, 2, 2, 2]     # sorted by class ...
    for cls in range(3):
        chunk = index[3 * cls:3 * cls + 3]
        assert chunk == sorted(chunk)                                      # ... then by index
    assert index == balanced_indices(labels, 3, seed=0)
    draws = {tuple(balanced_indices(labels, 3, seed=s)) for s in range(20)}
    assert len(draws) > 1                                                  # the seed matters
    assert balanced_indices(labels, 4, seed=7)[:4] == [1, 4, 7, 10]        # all of a class: every index


def test_balanced_indices_names_the_short_class():
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 5)
    with pytest.raises(hf_px.DataError, match=r"class 1 has 2 examples but per_class=3") as info:
        balanced_indices(labels, 3)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("per_class", [0, -1, 1.5, True])
def test_balanced_indices_rejects_bad_per_class(per_class):
    with pytest.raises(hf_px.DataError, match="per_class"):
        balanced_indices(torch.tensor([0, 1]), per_class)


def test_missing_root_says_how_to_install(tmp_path):
    with pytest.raises(hf_px.DataError) as info:
        load_fashion_mnist("train", root=tmp_path / "nowhere")
    message = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and "\n" not in message


def test_unknown_split():
    with pytest.raises(hf_px.DataError, match="split='validation'"):
        load_fashion_mnist("validation")


def test_reads_idx_files_from_root_and_rejects_corrupt_ones(tmp_path):
    images = torch.arange(3 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 28, 28)
    labels = torch.tensor([4, 0, 9], dtype=torch.uint8)
    header = (2051).to_bytes(4, "big") + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.numpy().tobytes()))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + labels.numpy().tobytes()))
    got_images, got_labels = load_fashion_mnist("test", root=tmp_path)
    assert torch.equal(got_images, images) and got_labels.tolist() == [4, 0, 9]
    assert got_labels.dtype == torch.int64

    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(hf_px.DataError, match="cannot read"):
        load_fashion_mnist("test", root=tmp_path)
