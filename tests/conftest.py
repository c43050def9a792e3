"""Shared test fixtures: a network guard, and skipping where the Fashion-MNIST package is missing."""

import socket

import pytest

from hf_px.data import FASHION_MNIST_ROOT

FASHION_MNIST_INSTALLED = all((FASHION_MNIST_ROOT / f"{prefix}-{kind}-ubyte.gz").is_file()
                              for prefix in ("train", "t10k") for kind in ("images-idx3", "labels-idx1"))


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_fashion_mnist") and not FASHION_MNIST_INSTALLED:
        pytest.skip(f"Fashion-MNIST IDX files not in {FASHION_MNIST_ROOT}: run `bash scripts/setup.sh` "
                    "(apt-get install -y dataset-fashion-mnist)")


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
