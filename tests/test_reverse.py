"""ddpm_lib.reverse, the one-step functions: p_mean_variance and p_sample (Ho et al. Eq. 11,
Algorithm 2's step). Tests of the full loop, sample(), live in tests/test_sampling_loop.py."""

import pytest
import torch

from ddpm_lib.forward import q_sample
from ddpm_lib.posterior import q_posterior_mean_variance
from ddpm_lib.reverse import VARIANCES, p_mean_variance, p_sample
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.utils import extract

SCHEDULE = NoiseSchedule.from_betas(linear_betas(1000))
T = SCHEDULE.num_timesteps


def random_model(xt, t):
    """Some eps_theta(x_t, t): any function of both will do."""
    return torch.sin(3 * xt) + t.view(-1, *([1] * (xt.dim() - 1))) / T


def test_p_variances_are_the_two_paper_choices():
    assert VARIANCES == ("fixed_small", "fixed_large")
    xt = torch.randn(T, 2)
    t = torch.arange(1, T + 1)
    _, small = p_mean_variance(random_model, SCHEDULE, xt, t, "fixed_small")
    _, large = p_mean_variance(random_model, SCHEDULE, xt, t, "fixed_large")
    assert small.shape == large.shape == (T, 1)
    torch.testing.assert_close(small.flatten(), SCHEDULE.posterior_variance[1:])
    torch.testing.assert_close(large.flatten(), SCHEDULE.betas[1:])
    default_mean, default_var = p_mean_variance(random_model, SCHEDULE, xt, t)
    torch.testing.assert_close(default_var, small)


def test_p_mean_is_eq_11_from_float64_betas():
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), linear_betas(1000)])
    alpha_bars = torch.cumprod(1 - betas, 0)
    gen = torch.Generator().manual_seed(0)
    xt = torch.randn(T, 3, 2, 2, generator=gen)
    t = torch.arange(1, T + 1)
    eps_pred = random_model(xt, t).double()
    coef = (betas[t] / (1 - alpha_bars[t]).sqrt()).view(-1, 1, 1, 1)
    expected = (xt.double() - coef * eps_pred) / (1 - betas[t]).sqrt().view(-1, 1, 1, 1)
    mean, _ = p_mean_variance(random_model, SCHEDULE, xt, t)
    torch.testing.assert_close(mean.double(), expected, atol=2e-6, rtol=1e-5)


def test_p_mean_with_the_true_noise_is_the_posterior_mean():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(64, 1, 4, 4, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    t = torch.randint(1, T + 1, (64,), generator=gen)
    xt = q_sample(SCHEDULE, x0, t, eps)
    mean, var = p_mean_variance(lambda xt, t: eps, SCHEDULE, xt, t, "fixed_small")
    post_mean, post_var = q_posterior_mean_variance(SCHEDULE, x0, xt, t)
    torch.testing.assert_close(mean, post_mean, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(var, post_var)


def test_p_mean_variance_passes_paper_timesteps_to_the_model():
    seen = []

    def model(xt, t):
        seen.append(t.clone())
        return torch.zeros_like(xt)

    p_mean_variance(model, SCHEDULE, torch.randn(3, 2), torch.tensor([1, 500, 1000]))
    p_mean_variance(model, SCHEDULE, torch.randn(3, 2), 7)
    assert seen[0].tolist() == [1, 500, 1000] and seen[0].dtype == torch.int64
    assert seen[1].tolist() == [7, 7, 7]


def test_p_mean_variance_is_differentiable():
    net = torch.nn.Linear(2, 2)
    mean, _ = p_mean_variance(lambda xt, t: net(xt), SCHEDULE, torch.randn(4, 2), 10)
    mean.sum().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variance", VARIANCES)
def test_p_sample_is_mean_plus_sigma_z_from_the_generator(variance):
    xt = torch.randn(6, 3)
    t = torch.tensor([2, 3, 10, 100, 500, 1000])
    mean, var = p_mean_variance(random_model, SCHEDULE, xt, t, variance)
    z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    x_prev = p_sample(random_model, SCHEDULE, xt, t, generator=gen, variance=variance)
    torch.testing.assert_close(x_prev, mean + var.sqrt() * z)
    again = p_sample(random_model, SCHEDULE, xt, t, torch.Generator().manual_seed(5), variance)
    torch.testing.assert_close(again, x_prev)


@pytest.mark.parametrize("variance", VARIANCES)
def test_p_sample_adds_no_noise_at_t1(variance):
    # Algorithm 2: z = 0 when t = 1. In a batch with mixed t, only the t = 1 items are exact.
    xt = torch.randn(4, 5)
    t = torch.tensor([1, 2, 1, 50])
    mean, _ = p_mean_variance(random_model, SCHEDULE, xt, t, variance)
    x_prev = p_sample(random_model, SCHEDULE, xt, t, torch.Generator().manual_seed(0), variance)
    torch.testing.assert_close(x_prev[[0, 2]], mean[[0, 2]])
    assert not torch.allclose(x_prev[[1, 3]], mean[[1, 3]])


@pytest.mark.parametrize("variance", VARIANCES)
def test_p_sample_has_the_right_spread(variance):
    xt = torch.full((50_000, 1), 0.3)
    gen = torch.Generator().manual_seed(2)
    x_prev = p_sample(random_model, SCHEDULE, xt, 400, generator=gen, variance=variance)
    mean, var = p_mean_variance(random_model, SCHEDULE, xt[:1], 400, variance)
    assert x_prev.mean().item() == pytest.approx(mean.item(), abs=4 * (var.item() / 5e4) ** 0.5)
    assert x_prev.var().item() == pytest.approx(var.item(), rel=0.03)


def test_p_sample_runs_without_gradients():
    net = torch.nn.Linear(2, 2)
    x_prev = p_sample(lambda xt, t: net(xt), SCHEDULE, torch.randn(4, 2), 10)
    assert not x_prev.requires_grad


@pytest.mark.parametrize(("s", "variance"), [(1.0, "fixed_large"), (0.0, "fixed_small")])
def test_p_sample_chain_is_exact_where_the_fixed_variance_is_the_true_one(s, variance):
    # For data N(m, s^2) the best noise prediction E[eps | x_t] has a closed form. With it, the
    # model's step is the true reverse step q(x_{t-1} | x_t) when sigma_t^2 is its true variance:
    # beta_t for s = 1, beta_tilde_t for s = 0 (chapter 04). Then the chain must end at N(m, s^2)
    # for any T; a short one keeps the test fast.
    schedule = NoiseSchedule.from_betas(linear_betas(50, 2e-3, 0.4))
    m, n = 0.7, 20_000

    def oracle(xt, t):
        ab = extract(schedule.alpha_bars, t, xt.shape)
        return (1 - ab).sqrt() / (ab * s**2 + 1 - ab) * (xt - ab.sqrt() * m)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=gen)
    for t in range(50, 0, -1):
        x = p_sample(oracle, schedule, x, t, generator=gen, variance=variance)
    if s == 0:  # a point mass: every chain ends exactly at m
        torch.testing.assert_close(x, torch.full_like(x, m))
    else:
        assert x.mean().item() == pytest.approx(m, abs=4 * s / n**0.5)
        assert x.std().item() == pytest.approx(s, rel=4 / (2 * n) ** 0.5)


def test_p_unknown_variance_name_is_refused():
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="fixed_small"):
        p_mean_variance(random_model, SCHEDULE, x, 5, variance="learned")
    with pytest.raises(ValueError, match="fixed_large"):
        p_sample(random_model, SCHEDULE, x, 5, variance="large")


@pytest.mark.parametrize("bad_t", [0, T + 1])
def test_p_timesteps_outside_1_to_T_are_refused(bad_t):
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="1..T"):
        p_mean_variance(random_model, SCHEDULE, x, bad_t)
    with pytest.raises(ValueError, match="1..T"):
        p_sample(random_model, SCHEDULE, x, bad_t)


def test_p_bad_model_output_or_t_shape_is_refused():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="xt's shape"):
        p_mean_variance(lambda xt, t: xt[:, :1], SCHEDULE, x, 5)
    with pytest.raises(ValueError, match="xt's shape"):
        p_sample(lambda xt, t: None, SCHEDULE, x, 5)
    with pytest.raises(ValueError, match="shape"):
        p_sample(random_model, SCHEDULE, x, torch.tensor([1, 2]))


def test_sampling_still_offers_the_one_step_functions():
    """ddpm_lib.sampling re-exports them (the public API of DESIGN.md names them there)."""
    from ddpm_lib import sampling

    assert sampling.p_sample is p_sample and sampling.p_mean_variance is p_mean_variance
