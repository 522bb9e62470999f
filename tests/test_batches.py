"""ddpm_lib.batches: the checks of training images and labels, fit_images, each step's batch
(flips, label dropout at the configured rate, reproducible) and a process's share of it."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from training_setup import T, tiny_config, tiny_data, tiny_run

from ddpm_lib.batches import (
    check_finite_images,
    check_training_data,
    check_training_labels,
    draw_batch,
    fit_images,
    share_of_batch,
)


def test_fit_images_resizes_and_refuses_nan_or_inf():
    images = torch.rand(5, 1, 28, 28) * 2 - 1
    small = fit_images(images, 14)
    assert small.shape == (5, 1, 14, 14)
    torch.testing.assert_close(small, torch.nn.functional.avg_pool2d(images, 2))
    assert fit_images(images, 28) is images
    assert fit_images(small, 28).shape == (5, 1, 28, 28)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = images.clone()
        broken[3, 0, 5, 5] = bad
        with pytest.raises(ValueError, match="1 of 5 images, the first at index 3"):
            fit_images(broken, 14)
        with pytest.raises(ValueError, match="NaN or inf"):
            fit_images(broken, 28)  # even when nothing needs resizing
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fit_images(images[0], 14)


def test_training_data_checks():
    config, data = tiny_config(), tiny_data()
    check_training_data(data, config)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        check_training_data(data.repeat(1, 3, 1, 1), config)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        check_training_data(data * 255, config)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        check_training_data((data > 0).long(), config)
    broken = data.clone()
    broken[[2, 7], 0, 0, 0] = float("nan")
    with pytest.raises(
        ValueError, match="data hold NaN or inf: 2 of 32 images, the first at index 2"
    ):
        check_training_data(broken, config)
    check_finite_images(torch.zeros(0, 1, 8, 8))  # no images: nothing to refuse


def test_training_labels_checks():
    conditional, unconditional = tiny_config(num_classes=3), tiny_config()
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.equal(check_training_labels(labels, conditional, 4), labels)
    assert check_training_labels(None, unconditional, 4) is None
    with pytest.raises(ValueError, match="unconditional model"):
        check_training_labels(labels, unconditional, 4)
    with pytest.raises(ValueError, match=r"class-conditional \(UNetConfig.num_classes=3\)"):
        check_training_labels(None, conditional, 4)
    with pytest.raises(ValueError, match="label_dropout"):
        check_training_labels(None, unconditional, 4, label_dropout=0.1)
    with pytest.raises(ValueError, match="4 integers"):
        check_training_labels(labels[:3], conditional, 4)
    with pytest.raises(ValueError, match="null label"):
        check_training_labels(torch.tensor([0, 1, 2, 3]), conditional, 4)  # 3 = num_classes
    with pytest.raises(ValueError, match="lie in"):
        check_training_labels(torch.tensor([0, 1, 2, 4]), conditional, 4)


def test_label_dropout_drops_labels_at_the_configured_rate():
    """Over 200 batches of 64, the fraction of null labels is label_dropout within 4 standard
    deviations of a binomial count; kept labels are the images' own."""
    data = torch.arange(100.0).view(100, 1, 1, 1)  # image i holds the number i
    labels = torch.arange(100) % 7
    config = tiny_run(batch_size=64, label_dropout=0.2)
    generator = torch.Generator().manual_seed(0)
    dropped = kept = 0
    for _ in range(200):
        x0, y = draw_batch(data, labels, generator, config, null_label=7)
        index = x0.flatten().long()
        drop = y == 7
        assert torch.equal(y[~drop], labels[index[~drop]])
        dropped, kept = dropped + int(drop.sum()), kept + int((~drop).sum())
    n, p = dropped + kept, config.label_dropout
    assert n == 200 * 64
    assert abs(dropped - n * p) < 4 * math.sqrt(n * p * (1 - p))
    # Reproducible from the generator; no dropout draws nothing extra and drops nothing.
    again = draw_batch(data, labels, torch.Generator().manual_seed(0), config, null_label=7)
    first = draw_batch(data, labels, torch.Generator().manual_seed(0), config, null_label=7)
    assert all(torch.equal(a, b) for a, b in zip(again, first, strict=True))
    _, y = draw_batch(data, labels, generator, replace(config, label_dropout=0.0), 7)
    assert not (y == 7).any()
    x0, y = draw_batch(data, None, generator, config, None)
    assert y is None and x0.shape == (64, 1, 1, 1)


def test_random_flips_flip_half_of_the_images():
    data = torch.arange(4.0).view(1, 1, 1, 4).expand(500, 1, 1, 4)  # [0, 1, 2, 3] left to right
    config = tiny_run(batch_size=500, random_flip=True)
    x0, _ = draw_batch(data, None, torch.Generator().manual_seed(0), config, None)
    flipped = x0[:, 0, 0, 0] == 3
    assert torch.equal(x0[flipped], data[: int(flipped.sum())].flip(3))
    assert abs(int(flipped.sum()) - 250) < 4 * math.sqrt(125)


def test_each_process_takes_its_share_of_the_whole_batch():
    x0 = torch.randn(8, 1, 4, 4)
    whole = [
        share_of_batch(
            x0, T, torch.Generator().manual_seed(1), SimpleNamespace(rank=0, world_size=1)
        )
    ]
    parts = [
        share_of_batch(
            x0, T, torch.Generator().manual_seed(1), SimpleNamespace(rank=rank, world_size=2)
        )
        for rank in (0, 1)
    ]
    for i in range(3):  # x0, t, eps: the two halves make the whole
        torch.testing.assert_close(torch.cat([p[i] for p in parts]), whole[0][i])
    t = whole[0][1]
    assert t.dtype == torch.int64 and 1 <= int(t.min()) and int(t.max()) <= T
