"""The solvers of the sampling loop (ddpm_lib.solvers, chapter 09): timesteps, DDIM and
DPM-Solver++(2M), checked against closed forms, Monte Carlo, and diffusers' schedulers (an
independent implementation)."""

import math

import pytest
import torch
from conftest import tiny_unet_config
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ddpm_lib.forward import q_sample
from ddpm_lib.profiling import DeviceReads
from ddpm_lib.sampling import (
    DDPMSolver,
    jump_coefficients,
    p_mean_variance,
    sample,
    sample_loop,
    sample_progressive,
    timesteps,
)
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.solvers import DDIMSolver, DPMSolverPP2M, ddim_step
from ddpm_lib.unet import UNet

T = 1000
SCHEDULE = NoiseSchedule.from_betas(linear_betas(T))
BETAS = SCHEDULE.betas[1:].double().numpy()  # diffusers' 0-based betas: k = t - 1
MU, S = 0.5, 0.2  # Gaussian data N(MU, S^2) in every coordinate


def gaussian_oracle(xt, t):
    """E[eps | x_t] for data N(MU, S^2): the exact noise predictor (chapter 04)."""
    ab = SCHEDULE.alpha_bars[t].view(-1, *([1] * (xt.dim() - 1)))
    return (1 - ab).sqrt() * (xt - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)


def perturbed_oracle(xt, t):
    """An imperfect predictor, so that solvers that differ show it."""
    return gaussian_oracle(xt, t) + 0.05 * torch.sin(3 * xt)


# ---- timesteps ----------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("n", [1, 3, 7, 10, 16, 50, 333, 999, 1000])
def test_timesteps_are_diffusers_spacings_in_paper_indexing(spacing, n):
    theirs = DDIMScheduler(num_train_timesteps=T, trained_betas=BETAS, timestep_spacing=spacing)
    theirs.set_timesteps(n)
    assert timesteps(T, n, spacing) == (theirs.timesteps.numpy() + 1).tolist()


def test_timesteps_defaults_and_bad_input():
    assert timesteps(T) == list(range(T, 0, -1))
    assert timesteps(10, 10) == list(range(10, 0, -1))
    assert timesteps(T, 10)[0] == T  # trailing starts at t = T
    assert timesteps(T, 10, "leading")[-1] == 1 and timesteps(T, 10, "leading")[0] == 901
    for bad in (0, T + 1, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            timesteps(T, bad)
    with pytest.raises(ValueError, match="spacing"):
        timesteps(T, 10, "linspace")


def test_the_loop_refuses_bad_sequences():
    x = torch.zeros(2, 1)
    for ts, what in [([5, 7, 0], "decrease"), ([1001, 500, 0], "1..T"), ([5], "start")]:
        with pytest.raises(ValueError, match=what):
            list(sample_loop(gaussian_oracle, SCHEDULE, x, ts, DDPMSolver()))
    with pytest.raises(ValueError, match="decrease"):
        list(sample_loop(gaussian_oracle, SCHEDULE, x, [5, 5, 0], DDPMSolver()))


# ---- DDIM ---------------------------------------------------------------------------------


def test_jump_coefficients_are_the_skipped_chain_and_one_step_is_the_schedule():
    ab = torch.cumprod(torch.cat([torch.zeros(1), torch.as_tensor(BETAS)]).neg().add(1), 0)
    for t, s in [(1000, 900), (57, 3), (2, 0), (10, 9)]:
        a, b, b_tilde = (v.double() for v in jump_coefficients(SCHEDULE, t, s))
        torch.testing.assert_close(a, ab[t] / ab[s], rtol=1e-6, atol=0)
        torch.testing.assert_close(b, 1 - ab[t] / ab[s], rtol=2e-6, atol=0)
        torch.testing.assert_close(b_tilde, (1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s]),
                                   rtol=2e-6, atol=1e-12)  # fmt: skip
    a, b, b_tilde = jump_coefficients(SCHEDULE, 10, 9)
    assert (a, b, b_tilde) == (SCHEDULE.alphas[10], SCHEDULE.betas[10],
                               SCHEDULE.posterior_variance[10])  # fmt: skip


def test_ddim_with_eta_1_on_one_step_is_p_samples_mean_and_variance():
    gen = torch.Generator().manual_seed(0)
    xt = torch.randn(6, 3, generator=gen)
    for t in (1000, 500, 2):
        eps = perturbed_oracle(xt, torch.full((6,), t))
        mean, var = p_mean_variance(lambda x, tt, eps=eps: eps, SCHEDULE, xt, t)
        zero = ddim_step(SCHEDULE, xt, t, t - 1, eps, eta=1.0, noise=torch.zeros_like(xt))
        torch.testing.assert_close(zero, mean, atol=2e-6, rtol=1e-5)
        noise = torch.randn(xt.shape, generator=gen)
        one = ddim_step(SCHEDULE, xt, t, t - 1, eps, eta=1.0, noise=noise)
        torch.testing.assert_close((one - zero) / noise, var.sqrt().expand_as(xt), rtol=1e-4,
                                   atol=1e-6)  # fmt: skip


def test_ddim_with_the_true_noise_jumps_to_x0_for_eta_0():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(5, 1, 4, 4, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    for t, t_prev in [(1000, 0), (700, 0), (700, 300), (20, 1)]:
        xt = q_sample(SCHEDULE, x0, t, eps)
        out = ddim_step(SCHEDULE, xt, t, t_prev, eps, eta=0.0)
        target = x0 if t_prev == 0 else q_sample(SCHEDULE, x0, t_prev, eps)
        torch.testing.assert_close(out, target, atol=2e-4, rtol=0)  # the same eps, t_prev


def test_strided_ddpm_is_ddim_with_eta_1():
    """Two formulas of the same step: Algorithm 2 on the skipped chain, and Song et al.'s."""
    gen = torch.Generator().manual_seed(2)
    xt = torch.randn(8, 2, generator=gen)
    for t, s in [(1000, 800), (400, 333), (50, 1)]:
        eps = perturbed_oracle(xt, torch.full((8,), t))
        ddpm = DDPMSolver().step(SCHEDULE, xt, t, s, eps, torch.Generator().manual_seed(9))
        same_noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(9))
        ddim = ddim_step(SCHEDULE, xt, t, s, eps, eta=1.0, noise=same_noise)
        torch.testing.assert_close(ddpm, ddim, atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_keeps_the_marginals(eta):
    """Song et al.'s lemma: steps of q_sigma(x_s | x_t, x_0) from x_T ~ q(x_T | x_0) visit
    x_t ~ q(x_t | x_0) at every timestep of the sequence, for any eta (Monte Carlo, with the
    predictor that knows each chain's x_0, so that eps_pred is the noise that made x_t)."""
    n, ts = 40_000, timesteps(T, 10)
    gen = torch.Generator().manual_seed(3)
    x0 = MU + S * torch.randn(n, 1, generator=gen)  # one data point per chain

    def knows_x0(xt, t):
        ab = SCHEDULE.alpha_bars[t].view(-1, 1)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()

    x_T = q_sample(SCHEDULE, x0, T, torch.randn(n, 1, generator=gen))
    seen = {
        t: x.clone()
        for t, x, _ in sample_loop(
            knows_x0, SCHEDULE, x_T, [*ts, 0], DDIMSolver(eta), generator=gen
        )
    }
    for t in ts[1:]:
        ab = SCHEDULE.alpha_bars[t].item()
        mean, std = math.sqrt(ab) * MU, math.sqrt(ab * S**2 + 1 - ab)
        x = seen[t]
        assert abs(x.mean().item() - mean) < 5 * std / math.sqrt(n), t
        assert abs(x.std().item() / std - 1) < 0.015, t
        # and given x_0, the noise that x_t carries is standard normal and independent of x_0
        noise = knows_x0(x, torch.full((n,), t))
        assert abs(noise.std().item() - 1) < 0.015 and abs(noise.mean().item()) < 0.03, t
        assert abs(torch.corrcoef(torch.cat([noise, x0], 1).T)[0, 1].item()) < 0.03, t
    torch.testing.assert_close(seen[0], x0, atol=1e-4, rtol=0)  # the last step lands on x_0


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_agrees_with_diffusers(spacing, eta):
    theirs = DDIMScheduler(num_train_timesteps=T, trained_betas=BETAS, timestep_spacing=spacing,
                           clip_sample=False, set_alpha_to_one=True)  # fmt: skip
    theirs.set_timesteps(20)
    gen = torch.Generator().manual_seed(4)
    x_T = torch.randn(6, 4, generator=gen)
    noises = [torch.randn(6, 4, generator=gen) for _ in range(20)]
    x = x_T.clone()
    for k, z in zip(theirs.timesteps, noises, strict=True):
        eps = perturbed_oracle(x, torch.full((6,), int(k) + 1))
        x = theirs.step(eps, int(k), x, eta=eta, variance_noise=z).prev_sample
    ts = [*timesteps(T, 20, spacing), 0]
    y = x_T.clone()
    for (t, s), z in zip(zip(ts, ts[1:], strict=False), noises, strict=True):
        y = ddim_step(SCHEDULE, y, t, s, perturbed_oracle(y, torch.full((6,), t)), eta, z)
    torch.testing.assert_close(y, x, atol=5e-6, rtol=1e-5)


def test_ddim_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="eta"):
        ddim_step(SCHEDULE, x, 10, 5, x, eta=-0.1)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(SCHEDULE, x, 10, 5, x, eta=0.5)
    with pytest.raises(ValueError, match="t_prev < t"):
        ddim_step(SCHEDULE, x, 10, 10, x)
    with pytest.raises(ValueError, match="1 <= t <= T"):
        ddim_step(SCHEDULE, x, 1001, 5, x)
    with pytest.raises(TypeError, match="int"):
        ddim_step(SCHEDULE, x, torch.tensor(10), 5, x)
    with pytest.raises(ValueError, match="shape"):
        ddim_step(SCHEDULE, x, 10, 5, x[:1])
    with pytest.raises(ValueError, match="eta"):
        DDIMSolver(-1.0)


# ---- DPM-Solver++(2M) ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 10, 20, 50])
def test_dpm_solver_agrees_with_diffusers(n):
    theirs = DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=BETAS, timestep_spacing="trailing",
        algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
        lower_order_final=True,
    )  # fmt: skip
    theirs.set_timesteps(n)
    x_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    x = x_T.clone()
    for k in theirs.timesteps:
        x = theirs.step(perturbed_oracle(x, torch.full((6,), int(k) + 1)), int(k), x).prev_sample
    ours = sample(perturbed_oracle, SCHEDULE, (6, 4), torch.Generator().manual_seed(5),
                  num_steps=n, solver="dpm_solver++", progress=False)  # fmt: skip
    torch.testing.assert_close(ours, x, atol=5e-6, rtol=1e-5)


def flow_exact(x_T: torch.Tensor, t: int) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T at time t, for Gaussian data: it keeps the
    standardised value z = (x_t - sqrt(ab_t) MU) / sqrt(ab_t S^2 + 1 - ab_t) fixed."""
    ab_T, ab_t = SCHEDULE.alpha_bars[T].double(), SCHEDULE.alpha_bars[t].double()
    z = (x_T.double() - ab_T.sqrt() * MU) / (ab_T * S**2 + 1 - ab_T).sqrt()
    return ab_t.sqrt() * MU + (ab_t * S**2 + 1 - ab_t).sqrt() * z


def test_second_order_converges_faster_than_first():
    """Error against the exact ODE solution at t = 50: DDIM about 1/n, DPM-Solver++(2M) about
    1/n^2 (n steps evenly spaced from T to 50; the last step to t = 0 is first order for both
    solvers, so the order is measured before it)."""
    x_T = torch.linspace(-3, 3, 64).reshape(-1, 1)
    exact = flow_exact(x_T, 50)
    errors = {}
    for name in ("ddim", "dpm_solver++"):
        for n in (8, 16, 32):
            ts = torch.linspace(T, 50, n + 1).round().long().tolist()
            solver = DDIMSolver() if name == "ddim" else DPMSolverPP2M()
            *_, (_, x, _) = sample_loop(gaussian_oracle, SCHEDULE, x_T, ts, solver)
            errors[name, n] = (x.double() - exact).abs().max().item()
    order = {
        name: math.log2(errors[name, 16] / errors[name, 32]) for name in ("ddim", "dpm_solver++")
    }
    assert 0.7 < order["ddim"] < 1.3, (order, errors)
    assert order["dpm_solver++"] > 1.6, (order, errors)
    assert errors["dpm_solver++", 16] < errors["ddim", 16] / 3, errors


# ---- sample() with the solvers -------------------------------------------------------------


def test_sample_defaults_to_algorithm_2_and_dispatches_the_solvers():
    kw = dict(shape=(4, 2), progress=False)
    ddpm = sample(perturbed_oracle, SCHEDULE, generator=torch.Generator().manual_seed(0), **kw)
    again = sample(perturbed_oracle, SCHEDULE, generator=torch.Generator().manual_seed(0),
                   solver="ddpm", num_steps=T, **kw)  # fmt: skip
    torch.testing.assert_close(ddpm, again, atol=0, rtol=0)
    a = sample(perturbed_oracle, SCHEDULE, (4, 2), torch.Generator().manual_seed(1), eta=0.0,
               num_steps=10, progress=False)  # fmt: skip
    b = sample(perturbed_oracle, SCHEDULE, (4, 2), torch.Generator().manual_seed(1),
               solver="ddim", num_steps=10, progress=False)  # fmt: skip
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # eta selects DDIM


def test_sample_refuses_bad_solver_options():
    kw = dict(shape=(2, 2), progress=False)
    with pytest.raises(ValueError, match="unknown solver"):
        sample(gaussian_oracle, SCHEDULE, solver="euler", **kw)
    with pytest.raises(ValueError, match="eta"):
        sample(gaussian_oracle, SCHEDULE, solver="dpm_solver++", eta=0.0, **kw)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        sample(gaussian_oracle, SCHEDULE, eta=-1.0, **kw)
    with pytest.raises(ValueError, match="generator"):
        sample(gaussian_oracle, SCHEDULE, eta=0.5, **kw)  # stochastic DDIM needs a generator
    with pytest.raises(ValueError, match="num_steps"):
        sample(gaussian_oracle, SCHEDULE, num_steps=0, **kw)
    with pytest.raises(ValueError, match="variance"):
        sample(gaussian_oracle, SCHEDULE, solver="ddim", variance="fixed_large", **kw)


def test_sampling_with_a_solver_reads_nothing_back(tiny_unet):
    """A step of every solver makes no read of a device value (chapter 20's DeviceReads)."""
    for solver in ("ddpm", "ddim", "dpm_solver++"):
        steps = sample_progressive(tiny_unet, SHORT, (2, 1, 16, 16), torch.Generator(),
                                   num_steps=10, solver=solver, progress=False)  # fmt: skip
        next(steps)
        with DeviceReads() as reads:
            for _ in range(3):
                next(steps)
        assert reads.count == 0, (solver, reads.where)


SHORT = NoiseSchedule.from_betas(linear_betas(100, 1e-3, 0.2))


@pytest.fixture
def tiny_unet():
    torch.manual_seed(0)
    return UNet(tiny_unet_config(num_timesteps=100))
