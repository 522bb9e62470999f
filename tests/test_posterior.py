"""ddpm_lib.posterior: q(x_{t-1} | x_t, x_0) (Ho et al. Eqs. 6-7) and x_0 from the noise."""

import math

import pytest
import torch

from ddpm_lib.errata import GaussianMixtureOracle
from ddpm_lib.forward import q_sample
from ddpm_lib.posterior import predict_x0_from_eps, q_posterior_mean_variance
from ddpm_lib.reverse import p_mean_variance
from ddpm_lib.schedules import NoiseSchedule, cosine_betas, linear_betas

SCHEDULE = NoiseSchedule.from_betas(linear_betas(1000))
T = SCHEDULE.num_timesteps


def float64_tables(betas):
    """beta, alpha, alpha-bar in float64, paper-indexed (row 0: beta_0 = 0)."""
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas.double()])
    alphas = 1 - betas
    return betas, alphas, torch.cumprod(alphas, 0)


def test_tables_match_completing_the_square():
    # The posterior is a Gaussian with precision a and mean b / a, read off the exponent of
    # q(x_t | x_{t-1}) q(x_{t-1} | x_0): a = alpha_t / beta_t + 1 / (1 - alpha_bar_{t-1}).
    for schedule_betas in [linear_betas(1000), cosine_betas(1000)]:
        schedule = NoiseSchedule.from_betas(schedule_betas)
        betas, alphas, alpha_bars = float64_tables(schedule_betas)
        t = torch.arange(2, 1001)
        a = alphas[t] / betas[t] + 1 / (1 - alpha_bars[t - 1])
        b_xt = alphas[t].sqrt() / betas[t]
        b_x0 = alpha_bars[t - 1].sqrt() / (1 - alpha_bars[t - 1])
        close = dict(rtol=1e-5, atol=0)
        torch.testing.assert_close(schedule.posterior_variance[t].double(), 1 / a, **close)
        torch.testing.assert_close(schedule.posterior_coef_xt[t].double(), b_xt / a, **close)
        torch.testing.assert_close(schedule.posterior_coef_x0[t].double(), b_x0 / a, **close)


def brute_force(x0, xt, t, num_points=200_001):
    """Mean and variance of q(x_{t-1} | x_t, x_0) by multiplying the two densities on a grid."""
    betas, alphas, alpha_bars = float64_tables(linear_betas(1000))
    b, a, ab_prev = betas[t].item(), alphas[t].item(), alpha_bars[t - 1].item()
    centres = [math.sqrt(ab_prev) * x0, xt / math.sqrt(a)]
    width = 10 * max(math.sqrt(1 - ab_prev), math.sqrt(b / a))
    x = torch.linspace(min(centres) - width, max(centres) + width, num_points, dtype=torch.float64)
    log_w = -((x - math.sqrt(ab_prev) * x0) ** 2) / (2 * (1 - ab_prev))  # q(x_{t-1} | x_0)
    log_w = log_w - (xt - math.sqrt(a) * x) ** 2 / (2 * b)  # q(x_t | x_{t-1})
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    mean = (w * x).sum()
    return mean.item(), (w * (x - mean) ** 2).sum().item()


@pytest.mark.parametrize("t", [2, 5, 50, 400, 1000])
def test_posterior_matches_brute_force_on_a_grid(t):
    gen = torch.Generator().manual_seed(t)
    x0 = torch.tensor([[-0.4]])
    xt = q_sample(SCHEDULE, x0, t, generator=gen)
    mean, var = q_posterior_mean_variance(SCHEDULE, x0, xt, t)
    grid_mean, grid_var = brute_force(x0.item(), xt.item(), t)
    assert mean.item() == pytest.approx(grid_mean, rel=1e-5, abs=1e-6)
    assert var.item() == pytest.approx(grid_var, rel=1e-4)


def test_shapes_and_per_item_timesteps():
    x0 = torch.randn(4, 3, 8, 8)
    xt = torch.randn(4, 3, 8, 8)
    t = torch.tensor([1, 10, 500, 1000])
    mean, var = q_posterior_mean_variance(SCHEDULE, x0, xt, t)
    assert mean.shape == (4, 3, 8, 8) and var.shape == (4, 1, 1, 1)
    for i in range(4):
        one_mean, one_var = q_posterior_mean_variance(SCHEDULE, x0[i : i + 1], xt[i : i + 1], t[i])
        torch.testing.assert_close(mean[i : i + 1], one_mean)
        torch.testing.assert_close(var[i : i + 1], one_var)
    torch.testing.assert_close(var.flatten(), SCHEDULE.posterior_variance[t])


def test_at_t1_the_posterior_is_x0_with_no_spread():
    x0, xt = torch.randn(5, 2), torch.randn(5, 2)
    mean, var = q_posterior_mean_variance(SCHEDULE, x0, xt, 1)
    torch.testing.assert_close(mean, x0)
    assert bool((var == 0).all())


def test_predict_x0_inverts_q_sample_at_every_t():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(T, 16, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    t = torch.arange(1, T + 1)
    x0_back = predict_x0_from_eps(SCHEDULE, q_sample(SCHEDULE, x0, t, eps), t, eps)
    # Exact up to float32 rounding of x_t (a few ulps of |x_t| <= ~4), which the division by
    # sqrt(alpha_bar_t) amplifies: up to ~160x at t = T.
    err = (x0_back - x0).abs().amax(dim=1)
    bound = 4e-7 * (2 + 4 / SCHEDULE.sqrt_alpha_bars[t])
    assert bool((err < bound).all()), (err / bound).max()


def test_eps_parameterised_mean_with_the_true_noise_is_the_posterior_mean():
    # Ho et al. Eq. 10: mu_tilde = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t).
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(T, 8, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    t = torch.arange(1, T + 1)
    xt = q_sample(SCHEDULE, x0, t, eps)
    betas, alphas, alpha_bars = float64_tables(linear_betas(1000))
    coef = (betas[t] / (1 - alpha_bars[t]).sqrt())[:, None]
    mean_eps = (xt.double() - coef * eps.double()) / alphas[t].sqrt()[:, None]
    mean, _ = q_posterior_mean_variance(SCHEDULE, x0, xt, t)
    torch.testing.assert_close(mean.double(), mean_eps, atol=3e-6, rtol=1e-5)


@pytest.mark.parametrize("t", [2, 5, 50, 400, T])
def test_the_oracle_in_eq_11_gives_the_true_reverse_mean_of_a_mixture(t):
    # Book Eq. (eq-oracle-mean): with eps_theta = E[eps | x_t], mu_theta = E[x_{t-1} | x_t], for
    # non-Gaussian data too. Exact side: per component k, (x_{t-1}, x_t) is a Gaussian pair
    # (Book Eq. (eq-gaussian-conditioning)), weighted by p(k | x_t); float64 throughout.
    weights, means, stds = [0.7, 0.3], [-1.0, 1.2], [0.2, 0.4]
    oracle = GaussianMixtureOracle(SCHEDULE, [[m] for m in means], stds, weights)
    xt = torch.linspace(-3, 3, 61)[:, None]
    mean_theta, _ = p_mean_variance(oracle, SCHEDULE, xt, t)
    _, alphas, alpha_bars = float64_tables(linear_betas(1000))
    x = xt.double()[:, 0]
    log_r, cond_means = [], []
    for w, m, sd in zip(weights, means, stds, strict=True):
        v_prev, v_t = (alpha_bars[[t - 1, t]] * sd**2 + 1 - alpha_bars[[t - 1, t]]).unbind()
        mean_t = alpha_bars[t].sqrt() * m
        log_r.append(math.log(w) - 0.5 * (x - mean_t) ** 2 / v_t - 0.5 * torch.log(v_t))
        slope = alphas[t].sqrt() * v_prev / v_t  # Cov(x_{t-1}, x_t | k) / Var(x_t | k)
        cond_means.append(alpha_bars[t - 1].sqrt() * m + slope * (x - mean_t))
    r = torch.stack(log_r).softmax(0)  # p(k | x_t)
    exact = (r * torch.stack(cond_means)).sum(0)
    torch.testing.assert_close(mean_theta.double()[:, 0], exact, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("bad_t", [0, -1, T + 1])
def test_timesteps_outside_1_to_T_are_refused(bad_t):
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="1..T"):
        q_posterior_mean_variance(SCHEDULE, x, x, bad_t)
    with pytest.raises(ValueError, match="1..T"):
        predict_x0_from_eps(SCHEDULE, x, bad_t, x)


def test_bad_shapes_and_types_are_refused():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="shape"):
        q_posterior_mean_variance(SCHEDULE, x, torch.randn(2, 4), 5)
    with pytest.raises(ValueError, match="shape"):
        predict_x0_from_eps(SCHEDULE, x, 5, torch.randn(3, 3))
    with pytest.raises(ValueError, match="shape"):
        q_posterior_mean_variance(SCHEDULE, x, x, torch.tensor([1, 2, 3]))  # one t per item
    with pytest.raises(TypeError, match="integer"):
        predict_x0_from_eps(SCHEDULE, x, torch.tensor([1.0, 2.0]), x)
