"""ddpm_lib.restoration (chapter 11): the noise level to t map against a brute-force search, the
methods against exact oracles on toys whose answers are closed form, the known-pixel and
low-pass invariants, the baselines against scipy, and bad input."""

import math

import numpy as np
import pytest
import torch
from conftest import tiny_unet_config
from scipy.ndimage import gaussian_filter

from ddpm_lib.errata import GaussianMixtureOracle
from ddpm_lib.forward import q_sample
from ddpm_lib.metrics import gaussian_blur, psnr
from ddpm_lib.restoration import (
    MASKS,
    check_mask,
    denoise,
    downsample,
    inpaint,
    low_pass,
    make_mask,
    noise_level_to_timestep,
    noise_levels,
    renoise,
    repaint_segments,
    super_resolve,
    upsample,
)
from ddpm_lib.sampling import timesteps
from ddpm_lib.schedules import NoiseSchedule, cosine_betas, linear_betas
from ddpm_lib.unet import UNet

T = 1000
SCHEDULE = NoiseSchedule.from_betas(linear_betas(T))
ALPHA_BARS = torch.cumprod(1 - SCHEDULE.betas.double(), 0)  # (T+1,), a second computation


def pixelwise(oracle):
    """An oracle on (B, D) vectors as a model of images (B, 1, 1, D) or (B, 1, h, w)."""
    return lambda xt, t: oracle(xt.flatten(1), t).view_as(xt)


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    model = UNet(tiny_unet_config(num_timesteps=T))
    with torch.no_grad():  # a non-zero output layer, so that the network's output matters
        model.conv_out.weight.normal_(0, 0.02)
    return model.eval()


def digits_like(n, size=16, generator=None):
    """Images in [-1, 1] with a dark background, like digits."""
    x = -torch.ones(n, 1, size, size)
    x[..., size // 4 : 3 * size // 4, size // 3 : size // 2] = torch.rand(
        n, 1, 1, 1, generator=generator
    )
    return x


# ---- the noise level to t map ---------------------------------------------------------------


@pytest.mark.parametrize(
    "betas",
    [linear_betas(T), cosine_betas(T), linear_betas(10, 0.05, 0.3)],
    ids=["linear", "cosine", "T=10"],
)
def test_noise_level_to_timestep_is_the_brute_force_search(betas):
    schedule = NoiseSchedule.from_betas(betas)
    n = schedule.num_timesteps
    ab = torch.cumprod(1 - schedule.betas.double(), 0)
    levels = ((1 - ab) / ab).sqrt()
    torch.testing.assert_close(noise_levels(schedule), levels, rtol=1e-10, atol=0)
    queries = torch.cat(
        [(levels[1:-1] * levels[2:]).sqrt(), levels[1:] * (1 - 1e-9), levels[1:] * (1 + 1e-9)]
    )
    queries = [q for q in queries.tolist() if q <= levels[-1]] + [levels[1].item() / 3]
    for sigma in queries:
        t, top_up = noise_level_to_timestep(schedule, sigma)
        assert t == next(k for k in range(1, n + 1) if levels[k] >= sigma), sigma
        assert top_up**2 + sigma**2 == pytest.approx(levels[t].item() ** 2, rel=1e-9)


def test_a_noise_level_of_the_schedule_needs_no_top_up():
    t, top_up = noise_level_to_timestep(SCHEDULE, noise_levels(SCHEDULE)[400].item())
    assert t == 400 and top_up == 0.0
    assert noise_level_to_timestep(SCHEDULE, torch.tensor(0.5)) == noise_level_to_timestep(
        SCHEDULE, 0.5
    )


def test_topped_up_image_is_distributed_as_q_xt_given_x0():
    """Eq. (eq-sdedit-t) by Monte Carlo, through denoise's own start: with a model that returns
    zero noise and one DDIM step to 0, the result is x_t / sqrt(alpha_bar_t) = y + top-up."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, 3, 3, generator=gen) * 2 - 1
    for sigma in [0.07, 0.5, 2.0]:
        t, _ = noise_level_to_timestep(SCHEDULE, sigma)
        y = x0 + sigma * torch.randn(40_000, 1, 3, 3, generator=gen)
        out = denoise(
            lambda xt, tt: torch.zeros_like(xt),
            SCHEDULE,
            y,
            sigma,
            num_steps=1,
            solver="ddim",
            generator=gen,
        )
        level = math.sqrt((1 - ALPHA_BARS[t]) / ALPHA_BARS[t])
        assert (out.mean(0) - x0[0]).abs().max() < 5 * level / 200
        assert (out.std(0) / level - 1).abs().max() < 0.03


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan"), 158.0, 1e6])
def test_sigma_outside_the_schedule_is_refused(sigma):
    with pytest.raises(ValueError, match="sigma"):
        noise_level_to_timestep(SCHEDULE, sigma)
    with pytest.raises(ValueError, match="sigma"):
        denoise(lambda xt, t: xt, SCHEDULE, torch.zeros(1, 1, 4, 4) - 0.5, sigma)


# ---- denoising with an exact oracle ---------------------------------------------------------


def test_denoise_with_the_exact_predictor_draws_the_closed_form_posterior():
    """Data N(mu, s^2) per pixel: given y, the chain's result is N(mu + k (y - mu), k sb^2 +
    k^2 top^2) and the one-step prediction N(mu + k (y - mu), k^2 top^2), k = s^2/(s^2 + sb^2)."""
    mu, s, sigma, y0 = 0.2, 0.4, 0.5, 0.9
    oracle = pixelwise(GaussianMixtureOracle(SCHEDULE, [[mu]], s))
    t, top_up = noise_level_to_timestep(SCHEDULE, sigma)
    level2 = ((1 - ALPHA_BARS[t]) / ALPHA_BARS[t]).item()
    k = s**2 / (s**2 + level2)
    y = torch.full((20_000, 1, 1, 1), y0)
    gen = torch.Generator().manual_seed(1)
    chain = denoise(oracle, SCHEDULE, y, sigma, num_steps=t, generator=gen)
    one = denoise(oracle, SCHEDULE, y, sigma, num_steps=1, solver="ddim", generator=gen)
    for out, std in [(chain, math.sqrt(k * level2 + k**2 * top_up**2)), (one, k * top_up)]:
        assert abs(out.mean().item() - (mu + k * (y0 - mu))) < 4 * std / math.sqrt(20_000)
        assert out.std().item() == pytest.approx(std, rel=0.02)


def test_denoise_returns_y_shape_and_restores_training_mode(tiny_unet):
    tiny_unet.train()
    y = digits_like(2) + 0.3 * torch.randn(
        2, 1, 16, 16, generator=torch.Generator().manual_seed(0)
    )
    out = denoise(
        tiny_unet, SCHEDULE, y, 0.3, num_steps=3, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == y.shape and torch.isfinite(out).all() and tiny_unet.training
    tiny_unet.eval()


# ---- inpainting -----------------------------------------------------------------------------


def test_repaint_segments():
    ts = timesteps(T, 6) + [0]
    assert repaint_segments(ts, 1, 1) == [[a, b] for a, b in zip(ts, ts[1:], strict=False)]
    segs = repaint_segments(ts, 2, 3)
    assert segs == [ts[0:3]] * 3 + [ts[2:5]] * 3 + [ts[4:7]] * 3
    assert repaint_segments(ts, 10, 2) == [ts, ts]
    for bad in [(0, 1), (1, 0), (1.5, 1), (True, 2)]:
        with pytest.raises(ValueError, match="positive int"):
            repaint_segments(ts, *bad)


def test_renoise_is_the_forward_jump():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.7, -0.4]).repeat(100_000, 1)
    for s, t in [(0, 300), (100, 600), (999, 1000)]:
        xs = x0 if s == 0 else q_sample(SCHEDULE, x0, s, generator=gen)
        xt = renoise(SCHEDULE, xs, s, t, gen)
        assert (xt.mean(0) - ALPHA_BARS[t].sqrt() * x0[0]).abs().max() < 0.01
        assert (xt.std(0) / (1 - ALPHA_BARS[t]).sqrt() - 1).abs().max() < 0.01


@pytest.mark.parametrize(
    "resample, jump, solver",
    [(1, 1, "ddpm"), (3, 2, "ddpm"), (2, 3, "dpm_solver++"), (2, 1, "ddim")],
)
def test_known_pixels_are_kept_bit_for_bit(tiny_unet, resample, jump, solver):
    gen = torch.Generator().manual_seed(0)
    x = digits_like(3, generator=gen)
    mask = make_mask("scratches", 3, size=16, generator=gen)
    out = inpaint(
        tiny_unet, SCHEDULE, x, mask, gen, num_steps=5, resample=resample, jump=jump, solver=solver
    )
    known = mask.bool().expand_as(x)
    assert torch.equal(out[known], x[known])
    assert not torch.equal(out[~known], x[~known])


def test_missing_pixels_of_x_known_are_not_read(tiny_unet):
    x = digits_like(2)
    mask = make_mask("square", 2, size=16)
    spoiled = torch.where(mask.bool(), x, torch.full_like(x, float("nan")))
    a = inpaint(tiny_unet, SCHEDULE, x, mask, torch.Generator().manual_seed(5), num_steps=3)
    b = inpaint(tiny_unet, SCHEDULE, spoiled, mask, torch.Generator().manual_seed(5), num_steps=3)
    assert torch.equal(a, b)


def test_replacement_is_exact_for_independent_pixels():
    """With independent pixels the known one says nothing about the missing one: the exact
    conditional is the prior N(mu, s^2), whatever the known pixel is."""
    mu, s = -0.2, 0.3
    oracle = pixelwise(GaussianMixtureOracle(SCHEDULE, [[mu, mu]], s))
    x = torch.tensor([0.9, 0.0]).repeat(20_000, 1).view(-1, 1, 1, 2)
    out = inpaint(
        oracle, SCHEDULE, x, torch.tensor([[1, 0]]), torch.Generator().manual_seed(0), num_steps=T
    )
    b = out[..., 1]
    assert torch.equal(out[..., 0], x[..., 0])
    assert abs(b.mean().item() - mu) < 4 * s / math.sqrt(20_000)
    assert b.std().item() == pytest.approx(s, rel=0.02)


def test_resampling_fits_what_replacement_does_not():
    """Two pixels, both dark or both bright: the exact conditional almost never gives the
    missing pixel the other sign; replacement does, even with all 1000 steps; RePaint much less."""
    oracle = GaussianMixtureOracle(SCHEDULE, [[-0.6, -0.6], [0.6, 0.6]], 0.15)
    pairs = oracle.sample_data(2000, torch.Generator().manual_seed(2)).view(-1, 1, 1, 2)

    def misfits(num_steps, resample):
        gen = torch.Generator().manual_seed(3)
        known = torch.tensor([[1, 0]])
        out = inpaint(pixelwise(oracle), SCHEDULE, pairs, known, gen, num_steps=num_steps,
                      resample=resample)  # fmt: skip
        return (out[..., 1].sign() != out[..., 0].sign()).float().mean().item()

    replacement, repaint = misfits(T, 1), misfits(20, 5)
    assert replacement > 0.015 and repaint < replacement / 2, (replacement, repaint)


@pytest.mark.parametrize("kind", MASKS)
def test_make_mask(kind):
    a = make_mask(kind, 4, generator=torch.Generator().manual_seed(0))
    b = make_mask(kind, 4, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 28, 28) and torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    missing = 1 - a.mean().item()
    assert {"lower_half": 0.5, "square": 144 / 784}.get(kind, missing) == pytest.approx(missing)
    assert 0.05 < missing < 0.6


def test_mask_shapes_and_bad_masks():
    x = torch.zeros(2, 1, 8, 8)
    for good in [
        torch.ones(8, 8),
        torch.ones(2, 1, 8, 8, dtype=torch.bool),
        torch.ones(1, 1, 8, 8, dtype=torch.int64),
    ]:
        assert check_mask(good, x).shape == x.shape and check_mask(good, x).dtype == torch.bool
    for bad in [
        torch.ones(4, 4),
        torch.ones(8),
        torch.ones(3, 1, 8, 8),
        torch.ones(2, 2, 8, 8),
        torch.ones(8, 1),
    ]:
        with pytest.raises(ValueError, match="height and width"):
            check_mask(bad, x)
    for bad in [torch.full((8, 8), 0.5), torch.full((8, 8), 2), -torch.ones(8, 8)]:
        with pytest.raises(ValueError, match="only 0"):
            check_mask(bad, x)
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("circle", 2)


# ---- super-resolution -----------------------------------------------------------------------


def test_low_pass_is_an_orthogonal_projection():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 1, 7, 7, generator=gen, dtype=torch.float64)
    a, b = (torch.randn(2, 1, 28, 28, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(downsample(upsample(v, 4), 4), v)
    torch.testing.assert_close(low_pass(low_pass(a, 4), 4), low_pass(a, 4))
    torch.testing.assert_close((low_pass(a, 4) * b).sum(), (a * low_pass(b, 4)).sum())
    manual = a.view(2, 1, 7, 4, 7, 4).mean((3, 5))
    torch.testing.assert_close(downsample(a, 4), manual)


@pytest.mark.parametrize("low_size, resample, jump", [(4, 1, 1), (8, 1, 1), (4, 3, 2)])
def test_super_resolve_keeps_the_block_means(tiny_unet, low_size, resample, jump):
    """The last step puts the block means back exactly, up to float32 rounding in a few
    operations: far below 1e-5 for pixels of size about 1 (a grey level of an 8-bit image is
    8e-3), and in proportion for the large pixels that this untrained network makes."""
    gen = torch.Generator().manual_seed(0)
    x_low = downsample(digits_like(3, generator=gen), 16 // low_size)
    out = super_resolve(tiny_unet, SCHEDULE, x_low, gen, num_steps=4, resample=resample, jump=jump)
    assert out.shape == (3, 1, 16, 16)
    gap = (downsample(out, 16 // low_size) - x_low).abs().max().item()
    assert gap < 1e-5 * max(1.0, out.abs().max().item())  # rounding scales with the pixels


def test_ilvr_with_the_exact_predictor_draws_the_exact_conditional():
    """Independent N(mu, s^2) pixels: given the block mean, each pixel's deviation from it has
    mean 0 and variance s^2 (1 - 1/N^2); the block mean is kept."""
    mu, s = 0.1, 0.5
    oracle = pixelwise(GaussianMixtureOracle(SCHEDULE, [[mu] * 4], s))
    x_low = torch.full((20_000, 1, 1, 1), 0.4)
    out = super_resolve(
        oracle, SCHEDULE, x_low, torch.Generator().manual_seed(0), image_size=2, num_steps=T
    )
    deviation = out - upsample(x_low, 2)
    assert (downsample(out, 2) - x_low).abs().max() < 1e-5
    assert abs(deviation.mean().item()) < 0.01
    assert deviation.std().item() == pytest.approx(s * math.sqrt(0.75), rel=0.02)


def test_super_resolve_bad_sizes(tiny_unet):
    for shape in [(1, 1, 5, 5), (1, 1, 4, 8), (1, 1, 32, 32), (1, 1, 3, 3)]:
        with pytest.raises(ValueError, match="does not divide"):
            super_resolve(tiny_unet, SCHEDULE, torch.zeros(shape) - 0.5, num_steps=2)
    with pytest.raises(ValueError, match="image_size"):
        super_resolve(lambda xt, t: xt, SCHEDULE, torch.zeros(1, 1, 2, 2) - 0.5)


# ---- the baselines --------------------------------------------------------------------------


@pytest.mark.parametrize("width", [0.3, 1.0, 2.7])
def test_gaussian_blur_is_scipys(width):
    x = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = gaussian_filter(x.numpy(), sigma=(0, 0, width, width), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(gaussian_blur(x, width).numpy(), theirs, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        gaussian_blur(x, 0.0)


def test_psnr():
    x0 = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    x = x0.clone()
    x[0] += 0.1
    x[1, 0, 0, 0] = 2.0  # squared error 4 in one of 16 pixels: mse 0.25
    torch.testing.assert_close(
        psnr(x, x0),
        torch.tensor([10 * math.log10(4 / 0.01), 10 * math.log10(16)], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="shape"):
        psnr(x, x0[:1])


# ---- bad images -----------------------------------------------------------------------------


def test_images_that_were_not_rescaled_are_refused(tiny_unet):
    digit = digits_like(1)
    mask = make_mask("lower_half", 1, size=16)
    pixels_255 = (digit + 1) * 127.5
    unit = (digit + 1) / 2
    for x in [pixels_255, unit]:
        with pytest.raises(ValueError, match="scale"):
            inpaint(tiny_unet, SCHEDULE, x, mask, num_steps=2)
        with pytest.raises(ValueError, match="scale"):
            super_resolve(tiny_unet, SCHEDULE, downsample(x, 4), num_steps=2)
    with pytest.raises(ValueError, match="scale"):
        denoise(tiny_unet, SCHEDULE, pixels_255 + 10 * torch.randn(1, 1, 16, 16), 10.0)
    noisy = digit + 1.0 * torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    denoise(tiny_unet, SCHEDULE, noisy, 1.0, num_steps=2)  # noise beyond [-1, 1] is fine
    out = inpaint(tiny_unet, SCHEDULE, unit, mask, num_steps=2, check_range=False)
    assert torch.equal(out[mask.bool().expand_as(out)], unit[mask.bool().expand_as(unit)])


def test_not_images_and_not_finite_are_refused(tiny_unet):
    for x in [torch.zeros(16, 16), torch.zeros(1, 1, 16, 16, dtype=torch.int64), [[0.0]]]:
        with pytest.raises(ValueError, match="float images"):
            denoise(tiny_unet, SCHEDULE, x, 0.5)
        with pytest.raises(ValueError, match="float images"):
            inpaint(tiny_unet, SCHEDULE, x, torch.ones(16, 16))
    bad = digits_like(1)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        super_resolve(tiny_unet, SCHEDULE, downsample(bad, 4), check_range=False)
    with pytest.raises(ValueError, match="num_steps"):
        denoise(tiny_unet, SCHEDULE, digits_like(1), 0.5, num_steps=0)


def test_generator_on_another_device_is_refused(tiny_unet):
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    with pytest.raises(ValueError, match="generator"):
        denoise(tiny_unet, SCHEDULE, digits_like(1), 0.5, generator=torch.Generator(device="cuda"))


def test_bad_arguments_of_the_helpers():
    x = torch.zeros(1, 1, 6, 6)
    with pytest.raises(ValueError, match="blocks"):
        downsample(x, 4)
    for bad in [0, 2.0, True]:
        with pytest.raises(ValueError, match="factor"):
            upsample(x, bad)
    for s, t in [(5, 5), (6, 5), (-1, 5), (0, T + 1), (0, 2.0)]:
        with pytest.raises(ValueError, match="renoise"):
            renoise(SCHEDULE, x, s, t)
    with pytest.raises(ValueError, match="batch"):
        make_mask("square", 0)
    with pytest.raises(ValueError, match="float images"):
        gaussian_blur(torch.zeros(6, 6), 1.0)
