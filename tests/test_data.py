"""ddpm_lib.data: the bundled digits, torchvision data sets and the offline fallback."""

import numpy as np
import pytest
import torch

from ddpm_lib import data
from ddpm_lib.data import load_images, to_model_range


def test_mini_mnist_splits_and_range():
    train, train_labels = load_images("mini_mnist", return_labels=True)
    test, test_labels = load_images("mini_mnist", split="test", return_labels=True)
    assert train.shape == (9000, 1, 28, 28) and test.shape == (1000, 1, 28, 28)
    assert train.dtype == torch.float32
    assert train.min() == -1 and train.max() == 1
    assert train_labels.shape == (9000,) and set(test_labels.tolist()) == set(range(10))
    # The splits are disjoint: no test image appears in the training split.
    train_keys = {row.tobytes() for row in train.flatten(1).numpy()}
    assert sum(row.tobytes() in train_keys for row in test.flatten(1).numpy()) < 5


def test_mini_mnist_matches_the_raw_file():
    with np.load(data.MINI_MNIST_PATH) as raw:
        first = raw["images"][0]
    img = load_images("mini_mnist")[0, 0]
    torch.testing.assert_close(img, torch.tensor(first).float() / 127.5 - 1)


def test_to_model_range_handles_colour():
    rgb = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    x = to_model_range(rgb)
    assert x.shape == (2, 3, 4, 5)
    assert x[:, 0].eq(1).all() and x[:, 1:].eq(-1).all()
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(np.zeros((1, 2, 2), dtype=np.float32))


def test_unknown_name_and_split_are_refused():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load_images("imagenet")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_images("mini_mnist", split="val")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_offline_falls_back_to_mini_mnist_and_says_so(name, tmp_path):
    # download=False into an empty folder fails the way an offline machine does.
    with pytest.warns(UserWarning, match=f"could not load '{name}'.*falling back.*mini_mnist"):
        images = load_images(name, root=tmp_path, download=False)
    assert images.shape == (9000, 1, 28, 28)


def test_torchvision_path_reads_what_torchvision_gives(monkeypatch, tmp_path):
    class FakeCIFAR:
        def __init__(self, root, train, download):
            self.data = np.full((3, 32, 32, 3), 255, dtype=np.uint8)
            self.targets = [0, 1, 2]

    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR)
    images, labels = load_images("cifar10", root=tmp_path, return_labels=True)
    assert images.shape == (3, 3, 32, 32) and images.eq(1).all()
    assert labels.tolist() == [0, 1, 2]


def test_missing_torchvision_falls_back_to_mini_mnist(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ModuleNotFoundError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.warns(UserWarning, match="ModuleNotFoundError.*falling back"):
        images = load_images("mnist")
    assert images.shape == (9000, 1, 28, 28)


def test_load_mini_mnist_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load_mini_mnist("validation")
