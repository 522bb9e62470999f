"""ddpm_lib.schedules: the beta schedules and the NoiseSchedule tables (paper indexing)."""

import math

import pytest
import torch

from ddpm_lib.schedules import NoiseSchedule, cosine_betas, linear_betas


def test_linear_betas_are_the_papers_defaults():
    betas = linear_betas()
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    steps = betas.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, (0.02 - 1e-4) / 999))


def test_cosine_betas_match_the_alpha_bar_formula():
    T, s = 1000, 0.008
    schedule = NoiseSchedule.from_betas(cosine_betas(T, s))

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in [1, 2, 100, 500, 900, 990]:
        assert schedule.alpha_bars[t].item() == pytest.approx(f(t) / f(0), rel=1e-5)
    assert cosine_betas(T).max().item() == pytest.approx(0.999)  # clipped at the end


def test_tables_have_a_t0_row_and_length_T_plus_1():
    schedule = NoiseSchedule.from_betas(linear_betas(50))
    assert schedule.num_timesteps == 50
    for name in [
        "betas", "alphas", "alpha_bars", "sqrt_alpha_bars", "sqrt_one_minus_alpha_bars",
        "posterior_variance", "posterior_coef_x0", "posterior_coef_xt",
    ]:  # fmt: skip
        table = getattr(schedule, name)
        assert table.shape == (51,), name
        assert table.dtype == torch.float32, name
    assert schedule.betas[0] == 0 and schedule.alphas[0] == 1 and schedule.alpha_bars[0] == 1
    assert schedule.betas[1].item() == pytest.approx(1e-4)


def test_tables_against_a_float64_loop():
    betas = linear_betas(1000)
    schedule = NoiseSchedule.from_betas(betas)
    ab = 1.0
    for t in range(1, 1001):
        beta = betas[t - 1].item()
        ab_prev, ab = ab, ab * (1 - beta)
        assert schedule.alpha_bars[t].item() == pytest.approx(ab, rel=1e-6)
        assert schedule.sqrt_one_minus_alpha_bars[t].item() == pytest.approx(
            math.sqrt(1 - ab), rel=1e-6
        )
        assert schedule.posterior_variance[t].item() == pytest.approx(
            (1 - ab_prev) / (1 - ab) * beta, rel=1e-6, abs=1e-12
        )
        assert schedule.posterior_coef_x0[t].item() == pytest.approx(
            math.sqrt(ab_prev) * beta / (1 - ab), rel=1e-6
        )
        assert schedule.posterior_coef_xt[t].item() == pytest.approx(
            math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab), rel=1e-6, abs=1e-12
        )


def test_small_t_precision_beats_float32_recomputation():
    """1 - alpha-bar_1 = beta_1 = 1e-4: computed in float64 and stored float32, exact to ~1e-7."""
    schedule = NoiseSchedule.from_betas(linear_betas())
    assert (schedule.sqrt_one_minus_alpha_bars[1].item() ** 2) == pytest.approx(1e-4, rel=1e-6)


def test_to_returns_a_new_schedule():
    schedule = NoiseSchedule.from_betas(linear_betas(10))
    moved = schedule.to("cpu")
    assert moved is not schedule and moved.device == torch.device("cpu")
    torch.testing.assert_close(moved.alpha_bars, schedule.alpha_bars)


def test_schedule_is_frozen():
    schedule = NoiseSchedule.from_betas(linear_betas(10))
    with pytest.raises(AttributeError):
        schedule.betas = torch.zeros(11)


@pytest.mark.parametrize(
    "betas, match",
    [
        (torch.tensor([0.1, 0.0, 0.2]), "between 0 and 1"),
        (torch.tensor([0.1, 1.0]), "between 0 and 1"),
        (torch.zeros(2, 3) + 0.1, "1-D"),
        (torch.tensor([]), "non-empty"),
    ],
)
def test_from_betas_rejects_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule.from_betas(betas)


def test_linear_betas_rejects_bad_arguments():
    with pytest.raises(ValueError, match="beta_1"):
        linear_betas(10, beta_1=0.1, beta_T=0.01)
    with pytest.raises(ValueError, match="at least 1"):
        linear_betas(0)
    with pytest.raises(ValueError, match="at least 1"):
        cosine_betas(0)
