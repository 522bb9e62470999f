"""ddpm_lib.metrics: the Frechet distance, the digit classifier, the quality table."""

import json
import math

import pytest
import torch

from ddpm_lib.checkpoints import load_pretrained
from ddpm_lib.data import load_mini_mnist
from ddpm_lib.metrics import (
    CLASSIFIER_PATH,
    classifier_accuracy,
    digit_quality,
    draw_digits,
    frechet_distance,
    from_uint8,
    load_digit_classifier,
    quality_table,
    reference_split,
    save_digit_classifier,
    to_uint8,
    train_digit_classifier,
)


def test_frechet_distance_of_gaussians():
    gen = torch.Generator().manual_seed(0)
    a = 1.0 + 2.0 * torch.randn(100_000, 1, generator=gen)
    b = -0.5 + 0.5 * torch.randn(100_000, 1, generator=gen)
    assert frechet_distance(a, b) == pytest.approx(1.5**2 + 1.5**2, abs=0.05)
    # Independent coordinates add up; the distance is symmetric; a set is at 0 from itself.
    x = torch.randn(50_000, 3, generator=gen) * torch.tensor([1.0, 2.0, 3.0])
    y = torch.randn(50_000, 3, generator=gen) + torch.tensor([1.0, 0.0, 0.0])
    expected = 1.0 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.03)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-6)
    assert abs(frechet_distance(x, x)) < 1e-6


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        frechet_distance(torch.zeros(10), torch.zeros(10))


def test_reference_split_is_disjoint_and_balanced():
    train_idx, held_out = reference_split()
    assert len(train_idx) == 8000 and len(held_out) == 1000
    assert not set(train_idx.tolist()) & set(held_out.tolist())
    _, labels = load_mini_mnist("train")
    counts = torch.bincount(labels[held_out], minlength=10)
    assert counts.min() > 70  # every class, as the digits are sorted by class


def test_shipped_classifier_is_accurate():
    assert CLASSIFIER_PATH.exists(), "run scripts/train_digit_classifier.py"
    classifier, info = load_digit_classifier()
    images, labels = load_mini_mnist("test")
    accuracy = classifier_accuracy(classifier, images, labels)
    assert accuracy > 0.97
    assert accuracy == pytest.approx(float(info["test_accuracy"]), abs=1e-3)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        classifier(torch.zeros(2, 1, 14, 14))
    with pytest.raises(FileNotFoundError, match="train_digit_classifier"):
        load_digit_classifier("/nonexistent/classifier.safetensors")


def test_noise_scores_much_worse_than_real_digits():
    classifier, _ = load_digit_classifier()
    train_images, _ = load_mini_mnist("train")
    real_as_generated = train_images[reference_split()[1]][::5]  # 200 digits, all classes
    table = quality_table(real_as_generated, classifier)
    gen, real, noise = table["generated"], table["real"], table["noise"]
    assert gen["n"] == real["n"] == noise["n"] == 200
    assert noise["frechet_distance"] > 5 * real["frechet_distance"]
    assert noise["frechet_distance"] > 5 * gen["frechet_distance"]
    assert gen["confidence"] > 0.9 and real["confidence"] > 0.9
    assert gen["class_entropy_bits"] > 3.2 and noise["class_entropy_bits"] < 2.5
    assert sum(gen["class_counts"]) == 200 and len(gen["class_counts"]) == 10
    nn = table["nearest_train_distance"]
    assert nn["generated"] < 0.05  # these "samples" are training digits (0 but for rounding)
    assert nn["test"] > 1.0


def test_small_images_are_compared_at_their_size():
    classifier, _ = load_digit_classifier()
    images, _ = load_mini_mnist("test")
    small = torch.nn.functional.avg_pool2d(images[::50], 2)  # 20 digits at 14x14
    table = quality_table(small, classifier)
    assert table["generated"]["n"] == 20
    assert table["noise"]["frechet_distance"] > 2 * table["real"]["frechet_distance"]


def test_digit_quality_of_a_single_class():
    classifier, _ = load_digit_classifier()
    images, labels = load_mini_mnist("test")
    ones = images[labels == 1]
    q = digit_quality(ones, classifier, images)
    assert q["class_counts"][1] > 0.9 * len(ones)
    assert q["class_entropy_bits"] < 0.7 < math.log2(10)


def test_uint8_round_trip():
    x = torch.linspace(-1, 1, 256)
    assert to_uint8(x).dtype == torch.uint8 and to_uint8(x).tolist() == list(range(256))
    torch.testing.assert_close(from_uint8(to_uint8(x)), x, atol=1 / 255, rtol=0)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_train_and_save_a_classifier(tmp_path):
    images, labels = load_mini_mnist("train")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:2048]
    torch.manual_seed(0)
    model = train_digit_classifier(images[idx], labels[idx], epochs=2,
                                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    test_images, test_labels = load_mini_mnist("test")
    accuracy = classifier_accuracy(model, test_images, test_labels)
    assert accuracy > 0.5  # ten classes: chance is 0.1
    path = save_digit_classifier(model, tmp_path / "c.safetensors", test_accuracy=accuracy)
    loaded, info = load_digit_classifier(path)
    assert float(info["test_accuracy"]) == pytest.approx(accuracy)
    assert classifier_accuracy(loaded, test_images, test_labels) == accuracy


def test_frechet_distance_against_scipy_sqrtm_with_covariances_that_do_not_commute():
    """d^2 with Tr((S_a S_b)^{1/2}) from scipy.linalg.sqrtm, the usual FID code, in float64."""
    np = pytest.importorskip("numpy")
    scipy_linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(0)
    D = 6
    # Two covariances with the same spread of scales (0.1 to 10) along random orthogonal axes.
    scales = torch.logspace(-1, 1, D, dtype=torch.float64)[:, None]  # (D, 1)
    mix_a = scales * torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))[0]
    mix_b = scales * torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))[0]
    a = torch.randn(3000, D, generator=gen, dtype=torch.float64) @ mix_a
    b = torch.randn(2000, D, generator=gen, dtype=torch.float64) @ mix_b + 0.5
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    s_a, s_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    # The two covariances are far from commuting (no shared eigenvectors).
    assert np.abs(s_a @ s_b - s_b @ s_a).max() > 0.1 * np.abs(s_a @ s_b).max()

    def d2(cross_root):
        return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross_root)

    expected = d2(np.trace(scipy_linalg.sqrtm(s_a @ s_b)).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a.float(), b.float()) == pytest.approx(expected, rel=1e-5)
    # The shortcut Tr(S_a^{1/2} S_b^{1/2}), right only for commuting covariances, is far off here:
    # the comparison above can tell the two apart.
    shortcut = d2(np.trace(scipy_linalg.sqrtm(s_a) @ scipy_linalg.sqrtm(s_b)).real)
    assert abs(shortcut - expected) > 0.1 * expected


def test_the_shipped_weights_still_draw_digits():
    """The stored samples above were drawn on a GPU and cannot be redrawn here, so this ties the
    shipped weights themselves to their quality: 100 fresh digits, 10 calls of DPM-Solver++(2M).

    Measured on this CPU for seeds 0, 1, 2: Frechet distance 63.8, 58.5, 74.5 against 100 test
    digits (real digits score 39.1 at this sample size), confidence 0.91-0.96, class entropy
    3.23-3.30 bits of 3.32. Noise scores about 1000 with an entropy of 0.
    """
    model, schedule = load_pretrained("mnist")
    digits = draw_digits(model, schedule, 100, batch_size=100, seed=0, num_steps=10,
                         solver="dpm_solver++", progress=False)  # fmt: skip
    classifier, _ = load_digit_classifier()
    generated = quality_table(digits, classifier)["generated"]
    assert generated["frechet_distance"] < 120, generated
    assert generated["confidence"] > 0.85 and generated["class_entropy_bits"] > 3.1, generated


def test_the_shipped_pretrained_samples_keep_their_measured_quality():
    """The 1,000 samples stored with the pretrained MNIST model, re-scored as
    scripts/evaluate_pretrained.py does, give the figures of its quality.json and README
    (squared Frechet distance 11.0; 2.7 for real held-out digits; 1007 for noise).

    The tolerance (1%) holds the CPU's float32 differences from the measuring run (3e-4 for the
    samples' distance) and fails on a real regression: 10% of the samples replaced by noise
    scores 19.9, a classifier with random weights below 0.01, blurred samples 326.
    """
    np = pytest.importorskip("numpy")
    folder = CLASSIFIER_PATH.parent / "mnist"
    with np.load(folder / "eval_samples.npz") as f:
        samples = from_uint8(f["images"])
    samples = samples[:, None] if samples.dim() == 3 else samples  # (1000, 1, 28, 28)
    assert samples.shape == (1000, 1, 28, 28)
    measured = json.loads((folder / "quality.json").read_text())
    classifier, _ = load_digit_classifier()
    table = quality_table(samples, classifier)
    for row in ("generated", "real", "noise"):
        got, want = table[row], measured[row]
        assert got["n"] == want["n"] == 1000
        assert got["frechet_distance"] == pytest.approx(want["frechet_distance"], rel=0.01), row
        assert got["confidence"] == pytest.approx(want["confidence"], abs=0.005), row
        assert got["class_entropy_bits"] == pytest.approx(want["class_entropy_bits"], abs=0.02)
        pairs = zip(got["class_counts"], want["class_counts"], strict=True)
        moved = sum(abs(g - w) for g, w in pairs)
        assert moved <= 4, (row, got["class_counts"], want["class_counts"])
    nearest = table["nearest_train_distance"]["generated"]
    assert nearest == pytest.approx(measured["nearest_train_distance"]["generated"], rel=0.01)
    # The order that makes the figure mean something: real < generated << noise.
    fd = {row: table[row]["frechet_distance"] for row in ("real", "generated", "noise")}
    assert fd["real"] < fd["generated"] < fd["noise"] / 50
    # The README quotes the measured figures, rounded.
    readme = (folder / "README.md").read_text()
    for row, fmt in [("generated", "{:.1f}"), ("real", "{:.1f}"), ("noise", "{:.0f}")]:
        assert f"| {fmt.format(measured[row]['frechet_distance'])} |" in readme, row
