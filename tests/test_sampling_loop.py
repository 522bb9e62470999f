"""ddpm_lib.sampling's loop (chapter 07): sample and sample_progressive, Algorithm 2."""

import pytest
import torch

from ddpm_lib.posterior import predict_x0_from_eps
from ddpm_lib.profiling import randomize_zero_layers
from ddpm_lib.sampling import p_sample, sample, sample_progressive
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.unet import UNet, UNetConfig

T = 10


@pytest.fixture
def schedule():
    return NoiseSchedule.from_betas(linear_betas(T, 1e-3, 0.2))


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = UNet(UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2),
                          num_res_blocks=1, attention_resolutions=(), dropout=0.1, num_groups=4,
                          num_timesteps=T))  # fmt: skip
    randomize_zero_layers(net)  # random weights where the untrained net has zeros
    return net


def test_sample_is_reproducible_with_a_generator(model, schedule):
    shape = (3, 1, 8, 8)
    a = sample(model, schedule, shape, torch.Generator().manual_seed(0), progress=False)
    b = sample(model, schedule, shape, torch.Generator().manual_seed(0), progress=False)
    c = sample(model, schedule, shape, torch.Generator().manual_seed(1), progress=False)
    assert a.shape == shape and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - c).abs().mean() > 0.1


def test_sample_is_algorithm_2(model, schedule):
    """sample() equals a plain loop over p_sample with the same random stream."""
    shape = (2, 1, 8, 8)
    gen = torch.Generator().manual_seed(7)
    model.eval()
    x = torch.randn(shape, generator=gen)
    for t in range(T, 0, -1):
        x = p_sample(model, schedule, x, t, generator=gen)
    ours = sample(model, schedule, shape, torch.Generator().manual_seed(7), progress=False)
    torch.testing.assert_close(ours, x, atol=0, rtol=0)


def test_sample_progressive_yields_every_step(model, schedule):
    shape = (2, 1, 8, 8)
    items = list(sample_progressive(model, schedule, shape, torch.Generator().manual_seed(0),
                                    progress=False))  # fmt: skip
    assert [t for t, _, _ in items] == [*range(T, 0, -1), 0]
    final = sample(model, schedule, shape, torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(items[-1][1], final, atol=0, rtol=0)
    torch.testing.assert_close(items[-1][2], final, atol=0, rtol=0)
    t, xt, x0_pred = items[3]
    model.eval()
    with torch.no_grad():
        expected = predict_x0_from_eps(schedule, xt, t, model(xt, t))
    torch.testing.assert_close(x0_pred, expected)
    assert not x0_pred.requires_grad and not xt.requires_grad


def test_sampling_uses_eval_mode_and_restores_it(model, schedule):
    model.train()  # dropout 0.1: eval mode is what makes the sample reproducible
    a = sample(model, schedule, (2, 1, 8, 8), torch.Generator().manual_seed(0), progress=False)
    assert model.training
    model.eval()
    b = sample(model, schedule, (2, 1, 8, 8), torch.Generator().manual_seed(0), progress=False)
    assert not model.training
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_oracle_for_one_image_returns_it(schedule):
    x_star = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)

    def oracle(xt, t):
        sqrt_ab = schedule.sqrt_alpha_bars[t].view(-1, 1, 1, 1)
        return (xt - sqrt_ab * x_star) / schedule.sqrt_one_minus_alpha_bars[t].view(-1, 1, 1, 1)

    out = sample(oracle, schedule, (5, 1, 4, 4), torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(out, x_star.expand(5, -1, -1, -1), atol=1e-5, rtol=0)


def test_fixed_large_variance_differs(model, schedule):
    kwargs = dict(shape=(2, 1, 8, 8), progress=False)
    small = sample(model, schedule, generator=torch.Generator().manual_seed(0), **kwargs)
    large = sample(model, schedule, generator=torch.Generator().manual_seed(0),
                   variance="fixed_large", **kwargs)  # fmt: skip
    assert (small - large).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="variance"):
        sample(model, schedule, variance="huge", **kwargs)


def test_bad_input_is_refused(model, schedule):
    with pytest.raises(ValueError, match="shape"):
        sample(model, schedule, (0, 1, 8, 8), progress=False)
    with pytest.raises(ValueError, match="shape"):
        sample(model, schedule, (4,), progress=False)
    with pytest.raises(ValueError, match="in_channels=1"):
        sample(model, schedule, (2, 3, 8, 8), progress=False)
    long_schedule = NoiseSchedule.from_betas(linear_betas(1000))
    with pytest.raises(ValueError, match="T = 1000 steps but the U-Net was built for t in 1..10"):
        sample(model, long_schedule, (2, 1, 8, 8), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_generator_on_the_wrong_device(model, schedule):
    with pytest.raises(ValueError, match="torch.Generator"):
        sample(model.cuda(), schedule, (2, 1, 8, 8), torch.Generator().manual_seed(0))
