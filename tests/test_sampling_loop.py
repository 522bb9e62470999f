"""ddpm_lib.sampling's loop (chapter 07): sample and sample_progressive, Algorithm 2."""

from itertools import pairwise

import pytest
import torch

from ddpm_lib.posterior import predict_x0_from_eps
from ddpm_lib.profiling import randomize_zero_layers
from ddpm_lib.sampling import (
    DDPMSolver,
    p_sample,
    sample,
    sample_loop,
    sample_progressive,
    timesteps,
)
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.solvers import DDIMSolver, ddim_step
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


def test_more_bad_input_is_refused_when_called(model, schedule):
    """Checked when sample_progressive is called, not at the first step; no silent fallbacks."""
    shape = (2, 1, 8, 8)
    with pytest.raises(ValueError, match="num_steps"):
        sample_progressive(model, schedule, shape, num_steps=0)  # not iterated
    with pytest.raises(ValueError, match="the guidance weight"):
        sample_progressive(model, schedule, shape, guidance=-1.0)
    # A solver object that draws noise needs a generator, as eta= does (no global RNG).
    for kwargs in [{"eta": 0.5}, {"solver": DDIMSolver(0.5)}]:
        with pytest.raises(ValueError, match="pass a generator"):
            sample_progressive(model, schedule, shape, num_steps=3, **kwargs)
    sample(model, schedule, shape, num_steps=3, solver=DDIMSolver(0.0), progress=False)
    for eta in [-0.1, float("nan"), float("inf"), "one"]:
        with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
            DDIMSolver(eta)
        with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
            ddim_step(schedule, torch.zeros(shape), 5, 3, torch.zeros(shape), eta=eta)
    x = torch.zeros(shape)
    for ts in [[5.7, 3, 0], [5, 2.5, 0]]:  # never truncated to whole numbers
        with pytest.raises(ValueError, match="whole numbers"):
            list(sample_loop(lambda xt, t: xt, schedule, x, ts, DDPMSolver()))
    assert len(list(sample_loop(lambda xt, t: xt, schedule, x, [5.0, 3, 0], DDPMSolver()))) == 3


def test_the_hooks_change_eps_before_each_step_and_x_after_it(model, schedule):
    """eps_hook(x_t, t, eps) feeds the step; x_hook(x_s, s) feeds the next step and the result."""
    shape, calls = (2, 1, 8, 8), []

    def eps_hook(xt, t, eps):
        calls.append(("eps", t))
        return torch.zeros_like(eps)  # the step then sees no noise prediction at all

    def x_hook(x, s):
        calls.append(("x", s))
        return x + 1.0

    def plain_net(xt, t):
        return torch.full_like(xt, 3.0)

    solver = DDIMSolver(0.0)
    ts = [7, 4, 0]
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    *_, (_, out, _) = sample_loop(plain_net, schedule, x_T, ts, solver, eps_hook=eps_hook,
                                  x_hook=x_hook)  # fmt: skip
    assert calls == [("eps", 7), ("x", 4), ("eps", 4), ("x", 0)]
    expected = x_T
    for t, s in [(7, 4), (4, 0)]:  # by hand: a step with eps = 0, then + 1
        expected = ddim_step(schedule, expected, t, s, torch.zeros(shape)) + 1.0
    torch.testing.assert_close(out, expected)
    # Through sample(): the hooks reach the loop, the result is the last x_hook's.
    calls.clear()
    hooked = sample(model, schedule, shape, torch.Generator().manual_seed(0), num_steps=3,
                    eta=0.0, eps_hook=eps_hook, x_hook=x_hook, progress=False)  # fmt: skip
    assert [kind for kind, _ in calls] == ["eps", "x"] * 3 and calls[-1] == ("x", 0)
    expected = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # sample's x_T
    for t, s in pairwise([*timesteps(T, 3), 0]):
        expected = ddim_step(schedule, expected, t, s, torch.zeros(shape)) + 1.0
    torch.testing.assert_close(hooked, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_generator_on_the_wrong_device(model, schedule):
    with pytest.raises(ValueError, match="torch.Generator"):
        sample(model.cuda(), schedule, (2, 1, 8, 8), torch.Generator().manual_seed(0))
