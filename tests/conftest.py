"""Shared test settings and fixtures: one torch thread, a network guard, the method registry restored after
every test, skipping where the Fashion-MNIST package is missing (only the tests that read it), a small local
dataset folder of real Fashion-MNIST images and a tiny transformers ViT folder (both laid out like Hub repos)."""

import os
import socket

import pytest
import torch

from hf_px.data import FASHION_MNIST_ROOT

# One intra-op thread for the suite and the processes it starts, unless the caller chose a number: the models
# here are tiny, so a second thread buys little, and on a shared 2-core machine OpenMP threads spinning against
# other jobs made tests/test_invariants.py take 523 s instead of 41 s.
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

FASHION_MNIST_INSTALLED = all((FASHION_MNIST_ROOT / f"{prefix}-{kind}-ubyte.gz").is_file()
                              for prefix in ("train", "t10k") for kind in ("images-idx3", "labels-idx1"))


SKIP_REASON = (f"Fashion-MNIST IDX files not in {FASHION_MNIST_ROOT}: run `bash scripts/setup.sh` "
               "(apt-get install -y dataset-fashion-mnist)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_fashion_mnist") and not FASHION_MNIST_INSTALLED:
        pytest.skip(SKIP_REASON)


@pytest.fixture(autouse=True)
def _restore_method_registry():
    """A test may register (or replace) pruning methods; the registry is as it was once it ends."""
    from hf_px.criteria import base

    before = dict(base._METHODS)
    names = {name: cls.name for name, cls in before.items()}
    yield
    base._METHODS.clear()
    base._METHODS.update(before)
    for name, cls in before.items():   # register_method(name, cls) renames the class it registers
        cls.name = names[name]


@pytest.fixture
def no_network(monkeypatch):
    """Offline mode on, and any socket connection fails the test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A `save_to_disk` folder of real Fashion-MNIST images: 6 per class in train, 3 in test (the tests that
    use it are skipped where the Fashion-MNIST package is missing)."""
    from hf_px.testing import write_fashion_mnist_dataset

    if not FASHION_MNIST_INSTALLED:
        pytest.skip(SKIP_REASON)

    return write_fashion_mnist_dataset(tmp_path_factory.mktemp("fmnist") / "data", per_class_train=6,
                                       per_class_test=3, layout="save_to_disk")


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    """A tiny randomly initialised transformers ViT (3 named classes, MIT licence) saved as a local folder."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"})
    folder = tmp_path_factory.mktemp("vit") / "tiny-vit"
    tf.ViTForImageClassification(config).save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# a tiny ViT\n")
    return folder
