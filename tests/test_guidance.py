"""ddpm_lib.guidance (chapter 10) and the class-conditional U-Net: classifier and classifier-free
guidance against closed forms on Gaussian classes, and the errors for bad labels and weights."""

import math

import pytest
import torch
from conftest import tiny_unet_config

from ddpm_lib.fast import sample_fast
from ddpm_lib.guidance import (
    GaussianClasses,
    NoisyClassifier,
    NoisyClassifierConfig,
    cfg_eps,
    classifier_guidance,
    load_noisy_classifier,
    save_noisy_classifier,
    train_noisy_classifier,
)
from ddpm_lib.profiling import DeviceReads, randomize_zero_layers
from ddpm_lib.sampling import noise_predictor, sample, sample_progressive
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.unet import UNet

T = 1000
SCHEDULE = NoiseSchedule.from_betas(linear_betas(T))
TOY = GaussianClasses(SCHEDULE, [[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0]], 0.3, [0.5, 0.3, 0.2])
SHORT = NoiseSchedule.from_betas(linear_betas(100, 1e-3, 0.2))


def points(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=gen) * 1.5, torch.randint(0, 3, (n,), generator=gen)


def test_the_toy_is_bayes_rule():
    """Its p(y | x_t) sums to one and its marginal noise is the posterior-weighted average."""
    x, y = points()
    for t in (5, 400, 990):
        tt = torch.full((len(x),), t)
        p = TOY.logits(x, tt).exp()
        torch.testing.assert_close(p.sum(1), torch.ones(len(x)))
        eps_y = torch.stack([TOY(x, tt, torch.full_like(y, k)) for k in range(3)], 1)
        torch.testing.assert_close(TOY(x, tt), (p[..., None] * eps_y).sum(1))
        torch.testing.assert_close(TOY(x, tt, torch.full_like(y, 3)), TOY(x, tt))  # null label
        # log q_t(x | y) + log p(y) - log q_t(x) = log p(y | x)
        lhs = TOY.log_q(x, tt, y) + TOY.log_weights[y] - TOY.log_q(x, tt)
        torch.testing.assert_close(lhs, TOY.logits(x, tt).gather(1, y[:, None])[:, 0])


@pytest.mark.parametrize("t", [3, 250, 900])
def test_classifier_guidance_with_scale_one_is_the_conditional_score(t):
    x, y = points()
    tt = torch.full((len(x),), t)
    guided = classifier_guidance(TOY.logits, SCHEDULE, y, 1.0)(x, t, TOY(x, tt))
    torch.testing.assert_close(guided, TOY(x, tt, y), atol=5e-5, rtol=1e-4)
    unguided = classifier_guidance(TOY.logits, SCHEDULE, y, 0.0)(x, t, TOY(x, tt))
    torch.testing.assert_close(unguided, TOY(x, tt))


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 8.0])
def test_cfg_is_the_score_of_the_sharpened_conditional(w):
    """(1 + w) eps(x, y) - w eps(x) = -sqrt(1 - ab) grad log [q_t(x) p_t(y | x)^(1 + w)]."""
    x, y = points(seed=1)
    for t in (10, 500):
        tt = torch.full((len(x),), t)
        guided = noise_predictor(TOY, (len(x), 2), T, labels=y, guidance=w)(x, tt)
        torch.testing.assert_close(cfg_eps(TOY(x, tt, y), TOY(x, tt), w), guided)
        xg = x.clone().requires_grad_()
        target = TOY.log_q(xg, t) + (1 + w) * TOY.logits(xg, t).gather(1, y[:, None])[:, 0]
        score = torch.autograd.grad(target.sum(), xg)[0]
        expected = -SCHEDULE.sqrt_one_minus_alpha_bars[t] * score
        torch.testing.assert_close(guided, expected, atol=2e-4, rtol=1e-4)
    if w == 0.0:
        plain = noise_predictor(TOY, (len(x), 2), T, labels=y)(x, torch.full((len(x),), 7))
        torch.testing.assert_close(plain, TOY(x, torch.full((len(x),), 7), y))


def test_guidance_samples_one_class_then_sharpens_it():
    one = torch.ones(8000, dtype=torch.long)
    draws = {
        w: sample(TOY, SCHEDULE, (8000, 2), torch.Generator().manual_seed(0), labels=one,
                  guidance=w, num_steps=50, solver="dpm_solver++", progress=False)
        for w in (0.0, 3.0)
    }  # fmt: skip
    mean0 = draws[0.0].mean(0)
    torch.testing.assert_close(mean0, TOY.means[1], atol=0.02, rtol=0)
    assert abs(draws[0.0].std(0).mean().item() - 0.3) < 0.02
    assert draws[3.0].std(0).mean() < draws[0.0].std(0).mean()


def test_cfg_and_guidance_bad_input():
    with pytest.raises(ValueError, match="w must be >= 0"):
        cfg_eps(torch.zeros(2), torch.zeros(2), -1.0)
    with pytest.raises(ValueError, match="shape"):
        cfg_eps(torch.zeros(2), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="w must be >= 0"):
        noise_predictor(TOY, (4, 2), T, labels=torch.zeros(4, dtype=torch.long), guidance=-0.5)
    with pytest.raises(ValueError, match="needs labels"):
        noise_predictor(TOY, (4, 2), T, guidance=1.0)
    with pytest.raises(ValueError, match="scale"):
        classifier_guidance(TOY.logits, SCHEDULE, torch.zeros(4, dtype=torch.long), -1.0)


def conditional_unet(num_classes=3):
    torch.manual_seed(0)
    model = UNet(tiny_unet_config(num_timesteps=100, num_classes=num_classes))
    randomize_zero_layers(model)  # the zero-initialised layers (class embedding too) get values
    return model.eval()


def test_conditional_unet_uses_its_labels_and_the_null_label():
    model = conditional_unet()
    x, t = torch.randn(4, 1, 16, 16), torch.full((4,), 50)
    with torch.no_grad():
        a = model(x, t, torch.tensor([0, 1, 2, 0]))
        b = model(x, t, torch.tensor([1, 1, 2, 0]))
        null = model(x, t, torch.full((4,), model.null_label))
        none = model(x, t)
    assert (a[0] - b[0]).abs().max() > 1e-4  # another label, another prediction
    torch.testing.assert_close(a[1:], b[1:])  # the other images are unaffected
    torch.testing.assert_close(null, none)  # labels=None means the null label
    new = UNet(tiny_unet_config(num_timesteps=100, num_classes=3))
    assert new.class_emb.weight.abs().max() == 0  # zero-initialised: starts unconditional


def test_labels_are_checked_where_the_user_calls():
    model = conditional_unet()
    x, t = torch.randn(4, 1, 16, 16), torch.full((4,), 50)
    with pytest.raises(ValueError, match="0..2"):
        model(x, t, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match="0..2"):
        model(x, t, torch.tensor([0, -1, 2, 0]))
    with pytest.raises(ValueError, match="4 integers"):
        model(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="4 integers"):
        model(x, t, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    unconditional = UNet(tiny_unet_config(num_timesteps=100))
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, t, torch.tensor([0, 1, 2, 0]))
    kw = dict(shape=(4, 1, 16, 16), progress=False, num_steps=5)
    with pytest.raises(ValueError, match="unconditional"):
        sample(unconditional, SHORT, labels=torch.tensor([0, 1, 2, 0]), **kw)
    with pytest.raises(ValueError, match="unconditional"):
        sample(unconditional, SHORT, labels=torch.tensor([0, 1, 2, 0]), guidance=2.0, **kw)
    with pytest.raises(ValueError, match="needs labels"):
        sample(model, SHORT, guidance=2.0, **kw)
    with pytest.raises(ValueError, match="0..2"):
        sample(model, SHORT, labels=torch.tensor([0, 1, 2, 3 + 1]), **kw)
    # The null label (3) is the network's "no label": model() takes it, a sampler asks for a
    # class and refuses it (labels=None draws with no label).
    assert model(x, t, torch.tensor([0, 1, 2, 3])).shape == x.shape
    for guidance in [0.0, 2.0]:
        with pytest.raises(ValueError, match=r"0..2 \(for no label: labels=None\)"):
            sample(model, SHORT, labels=torch.tensor([0, 1, 2, 3]), guidance=guidance, **kw)
        with pytest.raises(ValueError, match="0..2"):
            sample_fast(model, SHORT, labels=3, guidance=guidance, **kw)
    with pytest.raises(ValueError, match="4 integers"):
        sample(model, SHORT, labels=torch.tensor([0, 1]), **kw)


def test_guided_sampling_of_a_unet_reads_nothing_per_step_and_is_reproducible():
    model = conditional_unet()
    labels = torch.tensor([0, 1, 2, 1])
    kw = dict(labels=labels, guidance=2.0, num_steps=8, solver="dpm_solver++", progress=False)
    a = sample(model, SHORT, (4, 1, 16, 16), torch.Generator().manual_seed(0), **kw)
    b = sample(model, SHORT, (4, 1, 16, 16), torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    steps = sample_progressive(model, SHORT, (4, 1, 16, 16), torch.Generator(), **kw)
    next(steps)
    with DeviceReads() as reads:
        for _ in range(3):
            next(steps)
    assert reads.count == 0, reads.where


def test_the_noisy_classifier_learns_and_round_trips(tmp_path):
    """On two classes (bright or dark images) it learns at small t, and saves and loads."""
    gen = torch.Generator().manual_seed(0)
    images = torch.cat([torch.full((64, 1, 8, 8), 0.8), torch.full((64, 1, 8, 8), -0.8)])
    labels = torch.cat([torch.zeros(64), torch.ones(64)]).long()
    model = NoisyClassifier(NoisyClassifierConfig(num_classes=2, base_channels=8,
                                                  num_groups=4, num_timesteps=100))  # fmt: skip
    losses = train_noisy_classifier(model, SHORT, images, labels, 60, batch_size=32, lr=3e-3,
                                    generator=gen, progress=False)  # fmt: skip
    assert sum(losses[-20:]) / 20 < 0.6 < math.log(2)  # below chance (noisy t pull it up)
    model.eval()
    with torch.no_grad():
        accuracy = (model(images, torch.full((128,), 1)).argmax(1) == labels).float().mean()
    assert accuracy > 0.95
    path = save_noisy_classifier(model, tmp_path / "c.safetensors", note="test")
    loaded, meta = load_noisy_classifier(path)
    assert meta["note"] == "test" and loaded.config == model.config
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([1, 50, 100])),
                                   model(x, torch.tensor([1, 50, 100])))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="train_noisy_classifier"):
        load_noisy_classifier(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="labels"):
        train_noisy_classifier(model, SHORT, images, labels[:5], 1, progress=False)


def test_diffusers_guides_only_above_a_guidance_scale_of_one():
    """Chapter 10, exercise 3: diffusers' guidance_scale is 1 + w, and its pipelines apply
    guidance only when it exceeds 1 (any smaller value runs the conditional model alone)."""
    import importlib.util
    from pathlib import Path

    # Read, not imported: the pipeline's import needs transformers, which the tests lack.
    root = Path(importlib.util.find_spec("diffusers").origin).parent
    source = (root / "pipelines/stable_diffusion/pipeline_stable_diffusion.py").read_text()
    guard = source.split("def do_classifier_free_guidance(self):")[1].split("def ")[0]
    assert "return self._guidance_scale > 1" in guard
    g, eps_c, eps_u = 7.5, torch.randn(3), torch.randn(3)  # their formula, our w = g - 1
    torch.testing.assert_close(eps_u + g * (eps_c - eps_u), cfg_eps(eps_c, eps_u, g - 1.0))
