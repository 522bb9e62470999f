"""ddpm_lib.data: the bundled digits, torchvision data sets, the offline fallback, folders."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


# Folders of images: the layout of torchvision's ImageFolder, built here with PIL.


def save_png(path, pixels) -> Path:
    """Write uint8 pixels (H, W) or (H, W, C) as a PNG at path, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def random_pixels(seed, height, width, channels=None):
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_flat_grey_folder_reads_every_pixel(tmp_path):
    pixels = [random_pixels(i, 6, 5) for i in range(3)]
    for i, p in enumerate(pixels):
        save_png(tmp_path / f"img{i}.png", p)
    (tmp_path / "notes.txt").write_text("not an image: skipped")
    save_png(tmp_path / ".hidden.png", random_pixels(9, 2, 2))  # hidden: skipped
    images = load_images(tmp_path)
    assert images.shape == (3, 1, 6, 5) and images.dtype == torch.float32
    expected = torch.tensor(np.stack(pixels)).float().unsqueeze(1) / 127.5 - 1
    torch.testing.assert_close(images, expected, atol=0, rtol=0)
    assert load_images(str(tmp_path)).equal(images)  # a str path works too
    with pytest.raises(ValueError, match="no class subfolders, so its images have no labels"):
        load_images(tmp_path, return_labels=True)


def test_colour_folder_and_channel_conversion(tmp_path):
    rgb = random_pixels(0, 4, 4, 3)
    save_png(tmp_path / "colour" / "a.png", rgb)
    grey = random_pixels(1, 4, 4)
    save_png(tmp_path / "grey" / "b.png", grey)
    images = load_images(tmp_path / "colour")
    assert images.shape == (1, 3, 4, 4)
    torch.testing.assert_close(images[0], to_model_range(rgb[None])[0], atol=0, rtol=0)
    # channels=1: PIL's own grey conversion (ITU-R 601 luma).
    luma = np.array(Image.fromarray(rgb).convert("L"))
    as_grey = load_images(tmp_path / "colour", channels=1)
    torch.testing.assert_close(as_grey, to_model_range(luma[None]), atol=0, rtol=0)
    # channels=3 on a grey image repeats its one channel.
    as_rgb = load_images(tmp_path / "grey", channels=3)
    assert as_rgb.shape == (1, 3, 4, 4)
    assert all(as_rgb[0, c].equal(load_images(tmp_path / "grey")[0, 0]) for c in range(3))


def test_default_channels_and_alpha(tmp_path):
    save_png(tmp_path / "mixed" / "grey.png", random_pixels(0, 4, 4))
    save_png(tmp_path / "mixed" / "rgb.png", random_pixels(1, 4, 4, 3))
    assert load_images(tmp_path / "mixed").shape == (2, 3, 4, 4)  # one colour image: 3
    rgba = random_pixels(2, 4, 4, 4)
    save_png(tmp_path / "alpha" / "rgba.png", rgba)
    images = load_images(tmp_path / "alpha")
    torch.testing.assert_close(images, to_model_range(rgba[None, ..., :3]), atol=0, rtol=0)


def test_class_folders_give_imagefolder_labels_and_order(tmp_path):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert data.IMAGE_EXTENSIONS == IMG_EXTENSIONS  # the same files count as images

    sizes = {"zebra": 2, "ant": 3, "moth": 1}
    for k, (name, count) in enumerate(sizes.items()):
        for i in range(count):
            save_png(tmp_path / name / f"{i}.png", random_pixels(10 * k + i, 5, 5, 3))
    save_png(tmp_path / "moth" / "deeper" / "x.png", random_pixels(99, 5, 5, 3))
    images, labels = load_images(tmp_path, return_labels=True)
    reference = ImageFolder(str(tmp_path))  # torchvision's convention, computed independently
    assert reference.classes == ["ant", "moth", "zebra"]
    assert labels.dtype == torch.int64 and labels.tolist() == reference.targets
    assert images.shape == (7, 3, 5, 5)
    for image, (path, _) in zip(images, reference.samples, strict=True):
        with Image.open(path) as im:
            torch.testing.assert_close(image, to_model_range(np.array(im)[None])[0])
    # A Jupyter checkpoint folder and stray files are not classes.
    save_png(tmp_path / ".ipynb_checkpoints" / "x.png", random_pixels(0, 5, 5, 3))
    (tmp_path / "README.txt").write_text("about these images")
    assert load_images(tmp_path, return_labels=True)[1].equal(labels)


def test_stretch_matches_an_antialiased_bilinear_resize(tmp_path):
    pixels = random_pixels(0, 30, 40, 3)
    save_png(tmp_path / "a.png", pixels)
    images = load_images(tmp_path, image_size=16, resize="stretch")
    assert images.shape == (1, 3, 16, 16)
    # torch's antialiased bilinear resize, which follows PIL's: within a level or so of 255.
    x = torch.tensor(pixels).permute(2, 0, 1)[None].double()
    resized = torch.nn.functional.interpolate(
        x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False
    )
    assert (images.double() - (resized / 127.5 - 1)).abs().max() < 1.5 / 127.5
    assert images.min() >= -1 and images.max() <= 1


def test_crop_resizes_the_centred_square(tmp_path):
    pixels = random_pixels(0, 20, 31)  # wide: 11 columns too many, 5 cut left and 6 right
    save_png(tmp_path / "wide" / "a.png", pixels)
    images = load_images(tmp_path / "wide", image_size=10)  # resize="crop" is the default
    square = Image.fromarray(pixels[:, 5:25])
    expected = np.array(square.resize((10, 10), Image.Resampling.BILINEAR))
    torch.testing.assert_close(images, to_model_range(expected[None]), atol=0, rtol=0)
    # What is cut off: a tall image, white at its top and bottom quarters, black between.
    tall = np.zeros((40, 20), dtype=np.uint8)
    tall[:10] = tall[30:] = 255
    save_png(tmp_path / "tall" / "b.png", tall)
    assert load_images(tmp_path / "tall", image_size=8).eq(-1).all()
    assert load_images(tmp_path / "tall", image_size=8, resize="stretch").max() == 1
    # An image already of the size is left as it is.
    save_png(tmp_path / "exact" / "c.png", random_pixels(1, 10, 10))
    assert load_images(tmp_path / "exact", image_size=10).equal(load_images(tmp_path / "exact"))


def test_mixed_sizes_need_an_image_size(tmp_path):
    save_png(tmp_path / "cats" / "a.png", random_pixels(0, 30, 20, 3))
    save_png(tmp_path / "cats" / "b.png", random_pixels(1, 30, 20, 3))
    save_png(tmp_path / "dogs" / "c.jpg", random_pixels(2, 16, 24, 3))
    message = r"a.png is 20x30 and dogs/c.jpg is 24x16 \(width x height\); pass image_size="
    with pytest.raises(ValueError, match=message):
        load_images(tmp_path)
    images, labels = load_images(tmp_path, image_size=8, return_labels=True)
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 0, 1]


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder of images at .*missing"):
        load_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown data set 'my_imgs', and no folder of that"):
        load_images("my_imgs")
    file = save_png(tmp_path / "one.png", random_pixels(0, 4, 4))
    with pytest.raises(NotADirectoryError, match="one.png is a file"):
        load_images(file)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in .*empty: no files ending in .jpg"):
        load_images(tmp_path / "empty")
    (tmp_path / "text_only").mkdir()
    (tmp_path / "text_only" / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="no images in .*text_only"):
        load_images(tmp_path / "text_only")


def test_unreadable_files_are_named(tmp_path):
    save_png(tmp_path / "flat" / "good.png", random_pixels(0, 8, 8))
    (tmp_path / "flat" / "fake.png").write_text("this is not a PNG")
    with pytest.raises(ValueError, match=r"cannot read 1 image file\(s\): fake.png \(Unident"):
        load_images(tmp_path / "flat")
    cut = save_png(tmp_path / "cut" / "whole.png", random_pixels(1, 64, 64, 3)).read_bytes()
    (tmp_path / "cut" / "whole.png").unlink()
    (tmp_path / "cut" / "short.png").write_bytes(cut[: len(cut) // 2])  # the header survives
    with pytest.raises(ValueError, match=r"cannot read 1 image file\(s\): short.png \(OSError"):
        load_images(tmp_path / "cut")
    deep = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000
    Image.fromarray(deep).save(tmp_path / "flat" / "deep.png")  # 16-bit: PIL would clip to 8
    with pytest.raises(ValueError, match=r"cannot read 2 .*deep.png \(mode I;16: 16- or 32-bit"):
        load_images(tmp_path / "flat")


def test_class_folders_mixed_with_loose_images_or_empty(tmp_path):
    save_png(tmp_path / "cats" / "a.png", random_pixels(0, 4, 4))
    save_png(tmp_path / "loose.png", random_pixels(1, 4, 4))
    with pytest.raises(ValueError, match=r"mixes class subfolders \(cats\) with loose images"):
        load_images(tmp_path)
    (tmp_path / "loose.png").unlink()
    (tmp_path / "dogs").mkdir()
    with pytest.raises(ValueError, match="class folder .*dogs holds no images"):
        load_images(tmp_path)


def test_bad_folder_arguments_are_refused(tmp_path):
    save_png(tmp_path / "a.png", random_pixels(0, 4, 4))
    with pytest.raises(ValueError, match="no 'test' split"):
        load_images(tmp_path, split="test")
    with pytest.raises(ValueError, match="a folder needs none"):
        load_images(tmp_path, root=tmp_path)
    for bad in [0, 2.5, True]:
        with pytest.raises(ValueError, match="image_size must be a positive int"):
            load_images(tmp_path, image_size=bad)
    with pytest.raises(ValueError, match="unknown resize 'pad'"):
        load_images(tmp_path, image_size=4, resize="pad")
    with pytest.raises(ValueError, match=r"channels must be 1 \(grey\) or 3"):
        load_images(tmp_path, channels=4)
    with pytest.raises(ValueError, match="apply to a folder of images.*fit_images"):
        load_images("mini_mnist", image_size=14)
