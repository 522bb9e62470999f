"""ddpm_lib.diagnose (chapter 08): each check fails on the fault it names, passes without it."""

import torch
from conftest import tiny_unet_config

from ddpm_lib.diagnose import (
    Finding,
    check_data_range,
    check_eval_mode,
    check_loss,
    check_noise_prediction,
    check_sampler,
    check_schedule,
    check_uses_t,
    diagnose,
    empirical_loss_floor,
)
from ddpm_lib.errata import GaussianMixtureOracle, article_step, run_chain
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.unet import UNet

SCHEDULE = NoiseSchedule.from_betas(linear_betas(1000))
DATA = torch.rand(32, 2, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8  # in [-1, 1]
ORACLE = GaussianMixtureOracle(SCHEDULE, DATA, 1e-3)  # knows the data: nearly the exact eps


def test_data_range_names_the_usual_scalings():
    assert check_data_range(DATA).ok
    assert "x * 2 - 1" in check_data_range((DATA + 1) / 2).message
    assert "127.5" in check_data_range((DATA + 1) * 127.5).message
    assert not check_data_range(DATA * 3).ok


def test_schedule_length_and_eval_mode():
    model = UNet(tiny_unet_config(num_timesteps=100))
    assert not check_schedule(model, SCHEDULE).ok
    assert check_schedule(model, NoiseSchedule.from_betas(linear_betas(100))).ok
    assert not check_eval_mode(model.train()).ok and check_eval_mode(model.eval()).ok


def test_uses_t_catches_a_blind_network_and_a_random_t():
    gen = torch.Generator().manual_seed(1)
    assert check_uses_t(ORACLE, SCHEDULE, DATA, gen).ok
    assert not check_uses_t(lambda xt, t: 0.5 * xt, SCHEDULE, DATA, gen).ok

    def random_t(xt, t):
        return ORACLE(xt, torch.randint(1, 1001, t.shape, generator=gen))

    assert not check_uses_t(random_t, SCHEDULE, DATA, gen).ok


def test_noise_prediction_and_loss_against_zero_and_the_floor():
    gen = torch.Generator().manual_seed(2)
    for t in (100, 900):
        assert check_noise_prediction(ORACLE, SCHEDULE, DATA, t, gen).ok
        assert not check_noise_prediction(lambda xt, t: torch.zeros_like(xt), SCHEDULE, DATA, t,
                                          gen).ok  # fmt: skip
    assert check_loss(ORACLE, SCHEDULE, DATA, gen).ok
    assert not check_loss(lambda xt, t: torch.zeros_like(xt), SCHEDULE, DATA, gen).ok

    def leaky(xt, t):  # knows which image each x_t came from: the noise, exactly
        ab = SCHEDULE.alpha_bars[t][:, None]
        return (xt - ab.sqrt() * DATA) / (1 - ab).sqrt()

    found = check_loss(leaky, SCHEDULE, DATA, gen)
    assert not found.ok and "sees the noise" in found.message, found


def test_the_empirical_floor_is_the_oracle_of_the_data():
    """The memorising optimum is the mixture oracle of the data points with a vanishing width."""
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(1, 1001, (32,), generator=gen)
    eps = torch.randn(32, 2, generator=gen)
    floor = empirical_loss_floor(SCHEDULE, DATA, t, eps)
    ab = SCHEDULE.alpha_bars[t][:, None]
    xt = ab.sqrt() * DATA + (1 - ab).sqrt() * eps
    by_oracle = ((ORACLE(xt, t) - eps) ** 2).mean().item()
    assert abs(floor - by_oracle) < 0.01 * max(by_oracle, 1e-3) + 1e-4


def test_the_sampler_check_tells_the_articles_step_from_the_papers():
    assert check_sampler(lambda m, s, shape, g: __import__("ddpm_lib").sampling.sample(
        m, s, shape, g, progress=False)).ok  # fmt: skip

    def article(model, schedule, shape, generator):
        return run_chain(article_step, model, schedule, torch.randn(shape, generator=generator))

    finding = check_sampler(article, torch.Generator().manual_seed(0))
    assert not finding.ok and "sampler is wrong" in finding.message


def test_diagnose_returns_findings():
    findings = diagnose(ORACLE, SCHEDULE, DATA, num_images=16)
    assert all(isinstance(f, Finding) for f in findings) and all(f.ok for f in findings), [
        str(f) for f in findings
    ]
    assert {f.name for f in findings} >= {"data range", "uses t", "loss", "sampler"}
