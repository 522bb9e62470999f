"""ddpm_lib.losses: the Gaussian KL, the per-t bound term L_{t-1} (Ho et al. Eqs. 5, 8, 12),
L_simple (Ho et al. Eq. 14), the discretized decoder L_0 (Ho et al. Eq. 13) and the bound in
bits per dimension; and the end-to-end check of chapter 05: a small model trained with L_simple
makes samples that match its 2-D training data."""

import math
from itertools import pairwise

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm_lib.forward import prior_kl, q_sample
from ddpm_lib.losses import (
    bits_per_dim,
    decoder_nll,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    simple_loss,
    vlb_term,
)
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.toy2d import Toy2DConfig, ToyEpsMLP, mmd, sample_toy, train_toy_model, two_moons

SCHEDULE = NoiseSchedule.from_betas(linear_betas(1000))
T = SCHEDULE.num_timesteps
W = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))


def random_model(xt, t):
    """An arbitrary eps_theta on (B, 3, H, W) inputs."""
    return torch.einsum("ij,bjhw->bihw", W, xt).sin() + t.view(-1, 1, 1, 1) / T


def random_batch(n=128, seed=0, t_min=2):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 3, 4, 4, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    t = torch.randint(t_min, T + 1, (n,), generator=gen)
    return x0, eps, t


def test_gaussian_kl_matches_torch_and_is_zero_only_for_equal_gaussians():
    gen = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(2, 100, generator=gen, dtype=torch.float64)
    v1, v2 = torch.rand(2, 100, generator=gen, dtype=torch.float64) + 0.01
    kl = gaussian_kl(m1, v1, m2, v2)
    torch.testing.assert_close(kl, kl_divergence(Normal(m1, v1.sqrt()), Normal(m2, v2.sqrt())))
    assert bool((kl > 0).all())
    torch.testing.assert_close(gaussian_kl(m1, v1, m1, v1), torch.zeros_like(m1))
    # broadcasting: one variance for many coordinates, as the posterior tables give
    kl_b = gaussian_kl(
        m1.view(10, 10), torch.tensor(0.5), m2.view(10, 10), torch.full((10, 1), 2.0)
    )
    assert kl_b.shape == (10, 10)


def test_gaussian_kl_refuses_zero_or_negative_variances():
    with pytest.raises(ValueError, match="positive variances"):
        gaussian_kl(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="positive variances"):
        gaussian_kl(torch.zeros(3), torch.ones(3), torch.zeros(3), -torch.ones(3))


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_vlb_term_is_the_weighted_noise_error_of_eq_12(variance):
    # L_{t-1} = lambda_t ||eps - eps_theta||^2 + C_t, for random data, noise, t and model.
    x0, eps, t = random_batch()
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), linear_betas(1000)])
    alpha_bars = torch.cumprod(1 - betas, 0)
    beta, alpha = betas[t], 1 - betas[t]
    beta_tilde = (1 - alpha_bars[t - 1]) / (1 - alpha_bars[t]) * beta
    sigma2 = beta_tilde if variance == "fixed_small" else beta
    lam = beta**2 / (2 * sigma2 * alpha * (1 - alpha_bars[t]))
    D = x0[0].numel()
    C = D / 2 * (torch.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1)
    xt = q_sample(SCHEDULE, x0, t, eps)
    squared_error = ((eps - random_model(xt, t)) ** 2).flatten(1).sum(1).double()
    kl = vlb_term(random_model, SCHEDULE, x0, t, eps=eps, variance=variance)
    assert kl.shape == (128,)
    torch.testing.assert_close(kl.double(), lam * squared_error + C, rtol=1e-4, atol=1e-5)


def test_vlb_term_is_zero_for_the_true_noise_and_positive_otherwise():
    x0, eps, t = random_batch(seed=1)
    kl = vlb_term(lambda xt, t: eps, SCHEDULE, x0, t, eps=eps)
    assert kl.abs().max() < 1e-3
    assert bool((vlb_term(random_model, SCHEDULE, x0, t, eps=eps) > 0).all())


def test_vlb_term_draws_eps_with_the_generator_and_is_differentiable():
    x0, _, t = random_batch(n=8, seed=2)
    a = vlb_term(random_model, SCHEDULE, x0, t, generator=torch.Generator().manual_seed(3))
    b = vlb_term(random_model, SCHEDULE, x0, t, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    net = torch.nn.Linear(2, 2)
    kl = vlb_term(lambda xt, t: net(xt), SCHEDULE, torch.randn(4, 2), 5)
    kl.sum().backward()
    assert net.weight.grad is not None


def test_vlb_term_refuses_t1_and_bad_input():
    x0, eps, _ = random_batch(n=4)
    with pytest.raises(ValueError, match="L_0"):
        vlb_term(random_model, SCHEDULE, x0, 1, eps=eps)
    with pytest.raises(ValueError, match="L_0"):
        vlb_term(random_model, SCHEDULE, x0, torch.tensor([5, 1, 7, 9]), eps=eps)
    with pytest.raises(ValueError, match="2..T = 2..1000"):
        vlb_term(random_model, SCHEDULE, x0, T + 1, eps=eps)
    with pytest.raises(ValueError, match="shape"):
        vlb_term(random_model, SCHEDULE, x0, 5, eps=eps[:, :1])
    with pytest.raises(ValueError, match="fixed_small"):
        vlb_term(random_model, SCHEDULE, x0, 5, eps=eps, variance="learned")


def test_simple_loss_is_the_mse_of_the_noise_prediction():
    x0, eps, t = random_batch(t_min=1)
    xt = q_sample(SCHEDULE, x0, t, eps)
    expected = ((eps - random_model(xt, t)) ** 2).mean()
    torch.testing.assert_close(simple_loss(random_model, SCHEDULE, x0, t, eps), expected)
    zero = simple_loss(lambda xt, t: torch.zeros_like(xt), SCHEDULE, x0, t, eps)
    torch.testing.assert_close(zero, (eps**2).mean())  # predicting no noise scores E[eps^2]
    assert simple_loss(lambda xt, t: eps, SCHEDULE, x0, t, eps).item() == 0


def test_simple_loss_draws_t_uniformly_from_1_to_T_with_the_generator():
    schedule = NoiseSchedule.from_betas(linear_betas(10, 1e-2, 0.2))
    seen = []

    def model(xt, t):
        seen.append(t)
        return torch.zeros_like(xt)

    x0 = torch.zeros(20_000, 2)
    loss_a = simple_loss(model, schedule, x0, generator=torch.Generator().manual_seed(0))
    loss_b = simple_loss(model, schedule, x0, generator=torch.Generator().manual_seed(0))
    assert loss_a.item() == loss_b.item()
    torch.testing.assert_close(seen[0], seen[1])
    counts = torch.bincount(seen[0], minlength=11)
    assert counts[0] == 0 and counts[1:].sum() == 20_000  # t = 0 never drawn
    assert counts[1:].min() > 1800 and counts[1:].max() < 2200  # 2000 +- 4.7 sigma


def test_simple_loss_trains_the_model():
    net = torch.nn.Linear(2, 2)
    loss = simple_loss(lambda xt, t: net(xt), SCHEDULE, torch.randn(16, 2))
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_simple_loss_refuses_bad_input():
    x0, eps, t = random_batch(n=4, t_min=1)
    with pytest.raises(ValueError, match="1..T"):
        simple_loss(random_model, SCHEDULE, x0, t=0)
    with pytest.raises(ValueError, match="1..T"):
        simple_loss(random_model, SCHEDULE, x0, t=torch.tensor([1, 2, 3, T + 1]))
    with pytest.raises(ValueError, match="shape"):
        simple_loss(random_model, SCHEDULE, x0, t=t[:2])
    with pytest.raises(ValueError, match="shape"):
        simple_loss(random_model, SCHEDULE, x0, t, eps=eps[:2])
    with pytest.raises(ValueError, match="xt's shape"):
        simple_loss(lambda xt, t: xt.mean(1), SCHEDULE, x0, t, eps)


@pytest.fixture
def one_thread():
    """Toy-size tensors run far faster on one thread on a busy CPU; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_toy_model_trained_with_simple_loss_samples_the_data(one_thread):
    # Chapter 05's experiment at toy size (T = 100, 3000 Adam steps; about 10-20 s on one core).
    config = Toy2DConfig.for_size("toy")
    schedule = config.schedule()
    data_gen = torch.Generator().manual_seed(0)
    train_data = two_moons(20_000, data_gen)
    held_out = two_moons(config.num_samples, data_gen)
    with torch.random.fork_rng():  # the weights' initialisation; leave the global RNG alone
        torch.manual_seed(0)
        model = ToyEpsMLP(config.num_timesteps, hidden=config.hidden)
    train_gen = torch.Generator().manual_seed(0)
    train_toy_model(
        model, schedule, train_data, config.num_steps, config.batch_size, config.lr, train_gen
    )

    # The threshold comes from two baselines measured alongside: a second draw of the data (what
    # a perfect sampler scores: 0.025 at n = 2000) and pure N(0, I) noise (a model that learned
    # nothing: 0.19). While the chapter was written, models that had learned only the rough shape
    # of the moons (a blurred cloud around them) scored 0.09-0.16: an MLP with t fed in at the
    # input only, and this model stopped after 300 or 1000 of its 3000 steps (0.13 and 0.09).
    # The chapter's model scores about 0.045 with either variance. A third of the
    # way from the data baseline to the noise baseline (about 0.08) separates the two with room
    # on both sides, and moves with the baselines if the data or the metric change.
    data_baseline = mmd(two_moons(config.num_samples, data_gen), held_out)
    noise_baseline = mmd(torch.randn(config.num_samples, 2, generator=data_gen), held_out)
    assert data_baseline < 0.05 and noise_baseline > 0.15  # the metric itself separates them
    threshold = data_baseline + (noise_baseline - data_baseline) / 3
    for variance in ["fixed_small", "fixed_large"]:
        gen = torch.Generator().manual_seed(2)
        samples = sample_toy(model, schedule, config.num_samples, gen, variance)
        score = mmd(samples, held_out)
        assert score < threshold, (variance, score, threshold, data_baseline, noise_baseline)


@pytest.mark.parametrize("num_timesteps", [1000, 100, 10])
def test_prior_kl_is_the_kl_from_q_xT_given_x0_to_the_standard_normal(num_timesteps):
    """L_T = KL(q(x_T | x_0) || N(0, I)) summed per item (Book Eq. eq-prior-kl): against
    gaussian_kl and torch.distributions.kl_divergence, with q(x_T | x_0) from alpha-bar_T."""
    schedule = NoiseSchedule.from_betas(linear_betas(num_timesteps))
    gen = torch.Generator().manual_seed(num_timesteps)
    x0 = torch.rand(4, 3, 5, 5, generator=gen) * 2 - 1
    ab_T = schedule.alpha_bars[-1].double()
    mean, var = ab_T.sqrt() * x0.double(), (1 - ab_T).expand(x0.shape)  # Eq. 4 at t = T
    zero, one = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
    by_gaussian_kl = gaussian_kl(mean, var, zero, one).flatten(1).sum(1)
    by_torch = kl_divergence(Normal(mean, var.sqrt()), Normal(zero, one)).flatten(1).sum(1)
    got = prior_kl(schedule, x0)
    assert got.shape == (4,) and got.dtype == torch.float64
    torch.testing.assert_close(got, by_gaussian_kl, rtol=1e-9, atol=0)
    torch.testing.assert_close(got, by_torch, rtol=1e-9, atol=0)
    assert bool((got > 0).all())


def test_prior_kl_refuses_an_unbatched_input():
    with pytest.raises(ValueError, match="batch"):
        prior_kl(SCHEDULE, torch.zeros(5))


# ---- The discretized decoder L_0 and the bound in bits per dimension ------------------------

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 values of a coordinate


def exact_log_masses(mean: float, std: float) -> torch.Tensor:
    """log of N(mean, std^2)'s mass on each of the 256 bins (edge bins open), with mpmath at 60
    digits: an independent computation, exact far into the tails."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    edges = [-mpmath.inf, *[mpmath.mpf(k) / mpmath.mpf("127.5") - 1 + mpmath.mpf(1) / 255
                            for k in range(255)], mpmath.inf]  # fmt: skip

    def mass(lo, hi):  # by erfc of the distance to the mean: exact in either tail
        z_lo, z_hi = (lo - mean) / (std * mpmath.sqrt(2)), (hi - mean) / (std * mpmath.sqrt(2))
        if z_lo >= 0:  # the whole bin above the mean
            return (mpmath.erfc(z_lo) - mpmath.erfc(z_hi)) / 2
        return (mpmath.erfc(-z_hi) - mpmath.erfc(-z_lo)) / 2

    masses = [mass(lo, hi) for lo, hi in pairwise(edges)]
    return torch.tensor([float(mpmath.log(m)) for m in masses], dtype=torch.float64)


@pytest.mark.parametrize(
    "mean, std",
    [(0.3, 0.2), (-0.996, 0.007), (0.9, 0.002), (1.3, 0.01), (-1.4, 0.05), (0.0, 3.0)],
)
def test_discretized_gaussian_log_likelihood_against_mpmath(mean, std):
    # Ho et al. Eq. 13, bin by bin, edge bins included; (0.9, 0.002) puts most bins hundreds of
    # standard deviations away (log masses down to about -1e5), (1.3, 0.01) has its mean off
    # the range, where the upper edge bin holds almost all the mass.
    got = discretized_gaussian_log_likelihood(LEVELS, torch.full_like(LEVELS, mean), std**2)
    assert got.dtype == torch.float64 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, exact_log_masses(mean, std), rtol=1e-9, atol=1e-12)
    assert got.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_discretized_gaussian_log_likelihood_refuses_data_off_the_grid_and_bad_variances():
    x = LEVELS[:4].clone()
    x[2] += 0.5 / 255  # halfway between two levels
    with pytest.raises(ValueError, match="256 levels"):
        discretized_gaussian_log_likelihood(x, torch.zeros(4), 0.01)
    with pytest.raises(ValueError, match="256 levels"):
        discretized_gaussian_log_likelihood(torch.tensor([1.5]), torch.zeros(1), 0.01)
    with pytest.raises(ValueError, match="positive"):
        discretized_gaussian_log_likelihood(LEVELS[:4], torch.zeros(4), 0.0)
    # float32 images as load_images makes them are on the grid
    as_float32 = discretized_gaussian_log_likelihood(LEVELS.float(), torch.zeros(256), 0.01)
    torch.testing.assert_close(as_float32, exact_log_masses(0.0, 0.1), rtol=1e-6, atol=1e-9)


def test_decoder_nll_of_a_model_that_knows_the_noise():
    # A model that returns the true noise predicts x0-hat = x_0, so each coordinate's mass is
    # that of N(x_0, beta_tilde_2) on the bin centred on x_0: Phi(h/s) - Phi(-h/s) inside,
    # Phi(h/s) in an edge bin, h = 1/255, s^2 = beta_tilde_2 (Ho et al.'s code).
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (6, 1, 5, 5), generator=gen)
    k[0, 0, 0, :2] = torch.tensor([0, 255])  # both edge bins appear
    x0 = k.float() / 127.5 - 1
    eps = torch.randn(x0.shape, generator=gen)
    got = decoder_nll(lambda xt, t: eps, SCHEDULE, x0, eps=eps)
    s = SCHEDULE.posterior_variance[2].double().sqrt()
    std_normal = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0).double())
    inside, edge = (
        std_normal.cdf(1 / 255 / s) - std_normal.cdf(-1 / 255 / s),
        std_normal.cdf(1 / 255 / s),
    )
    is_edge = (k == 0) | (k == 255)
    expected = -torch.where(is_edge, edge.log(), inside.log()).flatten(1).sum(1)
    assert got.shape == (6,) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=0)


def test_decoder_nll_refuses_off_grid_data_and_a_one_step_schedule():
    with pytest.raises(ValueError, match="levels"):
        decoder_nll(random_model, SCHEDULE, torch.rand(2, 3, 4, 4) * 2 - 1)
    one_step = NoiseSchedule.from_betas(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="T >= 2"):
        decoder_nll(random_model, one_step, torch.zeros(2, 3, 4, 4))


def test_bits_per_dim_is_unbiased_for_a_model_whose_bound_is_known():
    # For eps_theta = 0 and sigma_t^2 = beta_tilde_t, each L_{t-1} is lambda_t ||eps||^2 (Ho et al.
    # Eq. 12 with C_t = 0), of mean lambda_t D: the sum of the KL terms is sum_t lambda_t / ln 2
    # bits per dimension. The exact sum and the estimate from 5 uniform t per image must both
    # find it, within 4 standard errors over 6,000 images.
    schedule = NoiseSchedule.from_betas(linear_betas(20, 1e-3, 0.2))
    betas, alphas = schedule.betas.double(), schedule.alphas.double()
    one_minus_ab = schedule.sqrt_one_minus_alpha_bars.double() ** 2
    t = torch.arange(2, 21)
    lam = betas[t] / (2 * alphas[t] * one_minus_ab[t - 1])  # Book exercise 1 of chapter 05
    expected = (lam.sum() / torch.log(torch.tensor(2.0, dtype=torch.float64))).item()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 256, (6000, 1, 2, 2), generator=gen).float() / 127.5 - 1
    zero_model = lambda xt, t: torch.zeros_like(xt)  # noqa: E731
    for num_terms in [None, 5]:
        bound = bits_per_dim(zero_model, schedule, x0, num_terms=num_terms, generator=gen,
                             batch_size=8192)  # fmt: skip
        se = bound.kl_terms.std().item() / len(x0) ** 0.5
        assert abs(bound.kl_terms.mean().item() - expected) < 4 * se, (num_terms, se)
        # precise enough to catch T in place of T - 1 (5%), or a lost factor: exact 3%, K 10%
        assert 4 * se < (0.03 if num_terms is None else 0.1) * expected, (num_terms, se)
        torch.testing.assert_close(bound.total, bound.prior + bound.kl_terms + bound.decoder)
        torch.testing.assert_close(bound.prior, prior_kl(schedule, x0) / (4 * math.log(2)))
        assert bool((bound.decoder > 0).all())


def test_bits_per_dim_refuses_bad_num_terms():
    x0 = torch.zeros(2, 3, 4, 4)
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(ValueError, match="num_terms"):
            bits_per_dim(random_model, SCHEDULE, x0, num_terms=bad)
