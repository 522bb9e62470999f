"""ddpm_lib.forward: q_step (Ho et al. Eq. 2), q_sample and q_mean_variance (Eq. 4)."""

import math

import pytest
import torch

from ddpm_lib.forward import q_mean_variance, q_sample, q_step
from ddpm_lib.schedules import NoiseSchedule, cosine_betas, linear_betas

T = 1000
LINEAR = NoiseSchedule.from_betas(linear_betas(T))
COSINE = NoiseSchedule.from_betas(cosine_betas(T))


def alpha_bars64(betas: torch.Tensor) -> torch.Tensor:
    """(T+1,) float64 alpha-bar_t = prod_{s<=t} (1 - beta_s), with alpha-bar_0 = 1."""
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas.double(), 0)])


def batch(b=3, generator_seed=0):
    gen = torch.Generator().manual_seed(generator_seed)
    x = torch.rand(b, 1, 5, 5, generator=gen) * 2 - 1  # (B, 1, 5, 5) in [-1, 1]
    eps = torch.randn(x.shape, generator=gen)
    return x, eps


@pytest.mark.parametrize("t", [1, 2, 500, 999, 1000])
def test_q_step_against_a_float64_reference(t):
    x_prev, eps = batch()
    beta = linear_betas(T)[t - 1]  # float64 beta_t (the (T,) tensor is 0-based)
    expected = (1 - beta).sqrt() * x_prev.double() + beta.sqrt() * eps.double()
    torch.testing.assert_close(q_step(LINEAR, x_prev, t, eps=eps).double(), expected)


@pytest.mark.parametrize(
    ("schedule", "betas"),
    [(LINEAR, linear_betas(T)), (COSINE, cosine_betas(T))],
    ids=["lin", "cos"],
)
@pytest.mark.parametrize("t", [1, 10, 250, 999, 1000])
def test_q_sample_against_a_float64_reference(schedule, betas, t):
    x0, eps = batch()
    ab = alpha_bars64(betas)[t]
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    torch.testing.assert_close(q_sample(schedule, x0, t, eps=eps).double(), expected)


@pytest.mark.parametrize("t", [1, 10, 250, 1000])
def test_q_mean_variance_values_and_shapes(t):
    x0, _ = batch()
    mean, variance = q_mean_variance(COSINE, x0, t)
    assert mean.shape == x0.shape and variance.shape == (3, 1, 1, 1)
    ab = alpha_bars64(cosine_betas(T))[t]
    torch.testing.assert_close(mean.double(), ab.sqrt() * x0.double())
    # Relative precision also at t = 1, where 1 - alpha-bar_t is small (float64 table).
    torch.testing.assert_close(variance.double(), (1 - ab).expand(3, 1, 1, 1), rtol=1e-6, atol=0)


def test_q_mean_variance_keeps_the_shape_of_any_batch():
    x0 = torch.zeros(2, 3, 4, 4)
    mean, variance = q_mean_variance(LINEAR, x0, torch.tensor([1, 2]))
    assert mean.shape == (2, 3, 4, 4) and variance.shape == (2, 1, 1, 1)
    mean, variance = q_mean_variance(LINEAR, torch.zeros(5, 7), 3)
    assert mean.shape == (5, 7) and variance.shape == (5, 1)


def test_q_sample_with_zero_noise_is_the_mean():
    x0, _ = batch()
    t = torch.tensor([1, 400, 1000])
    mean, _ = q_mean_variance(LINEAR, x0, t)
    torch.testing.assert_close(q_sample(LINEAR, x0, t, eps=torch.zeros_like(x0)), mean)


def test_q_sample_at_t1_is_one_step_of_the_chain():
    x0, eps = batch()
    torch.testing.assert_close(q_sample(LINEAR, x0, 1, eps=eps), q_step(LINEAR, x0, 1, eps=eps))
    torch.testing.assert_close(q_sample(COSINE, x0, 1, eps=eps), q_step(COSINE, x0, 1, eps=eps))


def test_two_steps_compose_into_one_jump_in_distribution():
    """x_2 = sqrt(a_2) (sqrt(a_1) x0 + sqrt(b_1) e1) + sqrt(b_2) e2 has the noise variance of
    q_sample at t = 2, exactly: a_2 b_1 + b_2 = 1 - alpha-bar_2."""
    a = LINEAR.alphas.double()
    b = LINEAR.betas.double()
    _, variance = q_mean_variance(LINEAR, torch.zeros(1, 1), 2)
    torch.testing.assert_close(variance.double().squeeze(), a[2] * b[1] + b[2], rtol=1e-6, atol=0)


def test_q_sample_monte_carlo_mean_and_variance():
    gen = torch.Generator().manual_seed(0)
    n, t = 20_000, 300
    x0 = torch.tensor([[-1.0], [0.5]]).expand(2, n)  # two values, n samples each
    xt = q_sample(LINEAR, x0, t, generator=gen).double()  # (2, n)
    mean, variance = q_mean_variance(LINEAR, x0[:, :1], t)
    se_mean = math.sqrt(variance[0, 0].item() / n)
    torch.testing.assert_close(xt.mean(1), mean[:, 0].double(), atol=5 * se_mean, rtol=0)
    torch.testing.assert_close(
        xt.var(1), variance[:, 0].double(), atol=0, rtol=5 * math.sqrt(2 / n)
    )


def test_q_sample_generator_makes_draws_repeat():
    x0, _ = batch()
    a = q_sample(LINEAR, x0, 500, generator=torch.Generator().manual_seed(7))
    b = q_sample(LINEAR, x0, 500, generator=torch.Generator().manual_seed(7))
    c = q_sample(LINEAR, x0, 500, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("fn", [q_step, q_sample], ids=["q_step", "q_sample"])
def test_mixed_timesteps_index_per_item(fn):
    x0, eps = batch(4)
    t = torch.tensor([1, 1000, 37, 500])
    together = fn(LINEAR, x0, t, eps=eps)
    for i in range(4):
        alone = fn(LINEAR, x0[i : i + 1], int(t[i]), eps=eps[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone)
    # And the items really differ: t = 1 keeps nearly all of x0, t = 1000 almost none.
    assert not torch.allclose(together[0], together[1])


def test_mixed_timesteps_index_per_item_in_q_mean_variance():
    x0, _ = batch(4)
    t = torch.tensor([1000, 1, 500, 37])
    mean, variance = q_mean_variance(COSINE, x0, t)
    torch.testing.assert_close(variance.flatten(), COSINE.sqrt_one_minus_alpha_bars[t] ** 2)
    torch.testing.assert_close(mean, COSINE.sqrt_alpha_bars[t].view(4, 1, 1, 1) * x0)


@pytest.mark.parametrize("fn", [q_step, q_sample, q_mean_variance])
@pytest.mark.parametrize("bad_t", [0, T + 1, torch.tensor([1, 2, 0]), torch.tensor([5, T + 1, 3])])
def test_timesteps_outside_1_to_T_are_refused(fn, bad_t):
    x0, eps = batch()
    kwargs = {} if fn is q_mean_variance else {"eps": eps}
    with pytest.raises(ValueError, match=r"1\.\.T = 1\.\.1000"):
        fn(LINEAR, x0, bad_t, **kwargs)


@pytest.mark.parametrize("fn", [q_step, q_sample, q_mean_variance])
def test_float_timesteps_are_refused(fn):
    x0, eps = batch()
    kwargs = {} if fn is q_mean_variance else {"eps": eps}
    with pytest.raises(TypeError, match="integer"):
        fn(LINEAR, x0, torch.tensor([1.0, 2.0, 3.0]), **kwargs)


@pytest.mark.parametrize("fn", [q_step, q_sample, q_mean_variance])
def test_one_timestep_per_item(fn):
    x0, eps = batch()
    kwargs = {} if fn is q_mean_variance else {"eps": eps}
    with pytest.raises(ValueError, match="one per image"):
        fn(LINEAR, x0, torch.tensor([1, 2]), **kwargs)


@pytest.mark.parametrize("fn", [q_step, q_sample], ids=["q_step", "q_sample"])
def test_noise_of_the_wrong_shape_is_refused(fn):
    x0, eps = batch()
    with pytest.raises(ValueError, match="eps has shape"):
        fn(LINEAR, x0, 5, eps=eps[:2])
    with pytest.raises(ValueError, match="eps has shape"):
        fn(LINEAR, x0, 5, eps=eps.flatten(1))


@pytest.mark.parametrize("fn", [q_step, q_sample, q_mean_variance])
def test_timesteps_on_another_device_are_refused(fn):
    """The meta device stands in for a GPU: the check compares devices before reading values."""
    x0, eps = batch()
    kwargs = {} if fn is q_mean_variance else {"eps": eps}
    t = torch.tensor([1, 2, 3], device="meta")
    with pytest.raises(ValueError, match="on meta but x is on cpu"):
        fn(LINEAR, x0, t, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
@pytest.mark.parametrize("fn", [q_step, q_sample, q_mean_variance])
def test_schedule_on_another_device_is_refused(fn):
    x0 = torch.zeros(3, 1, 4, 4, device="cuda")
    kwargs = {} if fn is q_mean_variance else {"eps": torch.zeros_like(x0)}
    with pytest.raises(ValueError, match="schedule.to"):
        fn(LINEAR, x0, 5, **kwargs)  # schedule on the CPU, data on the GPU
    out = fn(LINEAR.to("cuda"), x0, 5, **kwargs)
    assert (out[0] if isinstance(out, tuple) else out).device.type == "cuda"
