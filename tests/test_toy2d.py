"""ddpm_lib.toy2d: the 2-D data, noise predictor, training loop, sampler and metric of chapter 05
(the end-to-end check is in tests/test_losses.py)."""

import math

import pytest
import torch

from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.toy2d import Toy2DConfig, ToyEpsMLP, mmd, sample_toy, train_toy_model, two_moons


@pytest.fixture
def one_thread():
    """Toy-size tensors run far faster on one thread on a busy CPU; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_moons_shape_location_and_reproducibility():
    a = two_moons(5000, torch.Generator().manual_seed(0))
    b = two_moons(5000, torch.Generator().manual_seed(0))
    assert a.shape == (5000, 2) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert a.mean(0).abs().max() < 0.05  # centred
    assert -1.8 < a[:, 0].min() and a[:, 0].max() < 1.8 and a[:, 1].abs().max() < 1.0
    # Without blur, every point lies on one of two unit half circles, centred at (-1/2, -1/4)
    # (upper moon) and (1/2, 1/4) (lower moon).
    clean = two_moons(1000, torch.Generator().manual_seed(1), noise=0.0)
    dist = [(clean - torch.tensor(c)).norm(dim=1) - 1 for c in ([-0.5, -0.25], [0.5, 0.25])]
    assert torch.minimum(dist[0].abs(), dist[1].abs()).max() < 1e-5
    upper = dist[0].abs() < 1e-5
    assert bool((clean[upper, 1] >= -0.25 - 1e-6).all())  # the upper half of its circle
    assert 0.45 < upper.float().mean() < 0.55


def test_toy_mlp_shapes_time_dependence_and_bad_input():
    model = ToyEpsMLP(num_timesteps=100, hidden=16, num_blocks=2)
    x = torch.randn(5, 2)
    out = model(x, torch.tensor([1, 2, 3, 50, 100]))
    assert out.shape == (5, 2)
    same_x = x[:1].expand(2, 2)
    both = model(same_x, torch.tensor([1, 100]))
    assert not torch.allclose(both[0], both[1])  # the timestep changes the prediction
    emb = model.time_embedding(torch.tensor([1, 100]))
    assert emb.shape == (2, 32) and emb.abs().max() <= 1
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        model(torch.randn(5, 3), torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="even"):
        ToyEpsMLP(100, time_features=7)


def test_mmd_is_zero_for_equal_sets_symmetric_and_grows_with_a_shift(one_thread):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 500, 2, generator=gen)
    assert mmd(x, x) == pytest.approx(0, abs=1e-3)
    assert mmd(x, y) == pytest.approx(mmd(y, x), rel=1e-4)
    shifts = [mmd(x, y + d) for d in (0.0, 0.3, 1.0, 3.0)]
    assert shifts == sorted(shifts) and shifts[-1] > 5 * shifts[0]
    with pytest.raises(ValueError, match="point sets"):
        mmd(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="point sets"):
        mmd(x[:, 0], y)


def test_toy_config_sizes_and_schedule():
    toy, full = Toy2DConfig.for_size("toy"), Toy2DConfig.for_size("full")
    assert toy.num_timesteps == 100 and full.num_timesteps == 1000
    assert full.num_steps > toy.num_steps
    schedule = toy.schedule()
    assert schedule.num_timesteps == 100
    assert schedule.betas[1].item() == pytest.approx(1e-3)
    assert schedule.betas[-1].item() == pytest.approx(0.2)
    assert schedule.alpha_bars[-1] < 1e-4  # x_T is (almost) pure noise
    paper = full.schedule()
    torch.testing.assert_close(paper.betas, NoiseSchedule.from_betas(linear_betas(1000)).betas)
    with pytest.raises(ValueError, match="toy"):
        Toy2DConfig.for_size("huge")


def test_train_toy_model_lowers_the_loss_and_sample_toy_is_reproducible(one_thread):
    schedule = NoiseSchedule.from_betas(linear_betas(20, 1e-2, 0.5))
    data = two_moons(2000, torch.Generator().manual_seed(0))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ToyEpsMLP(20, hidden=32)
    losses = train_toy_model(
        model, schedule, data, 300, 128, 3e-3, torch.Generator().manual_seed(0)
    )
    assert len(losses) == 300 and not model.training
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50
    a = sample_toy(model, schedule, 100, torch.Generator().manual_seed(1))
    b = sample_toy(model, schedule, 100, torch.Generator().manual_seed(1), "fixed_small")
    assert a.shape == (100, 2) and not a.requires_grad
    torch.testing.assert_close(a, b)
    c = sample_toy(model, schedule, 100, torch.Generator().manual_seed(1), "fixed_large")
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    ("dim", "bandwidths"), [(2, (0.05, 0.1, 0.2, 0.5, 1.0)), (2, (0.3, 1.0, 2.0)), (3, (0.5,))]
)
def test_mmd_against_a_direct_double_sum_in_float64(dim, bandwidths):
    """MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y) (the biased estimate, diagonal
    included), each mean a plain loop over all pairs in float64; k averaged over the widths."""
    gen = torch.Generator().manual_seed(dim)
    x = torch.randn(60, dim, generator=gen)
    y = 0.8 * torch.randn(45, dim, generator=gen) + 0.2

    def k(a, b):
        sq = sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True))
        return sum(math.exp(-sq / (2 * h * h)) for h in bandwidths) / len(bandwidths)

    def mean_k(a_set, b_set):
        return sum(k(a, b) for a in a_set for b in b_set) / (len(a_set) * len(b_set))

    xs, ys = x.double().tolist(), y.double().tolist()
    expected = math.sqrt(mean_k(xs, xs) + mean_k(ys, ys) - 2 * mean_k(xs, ys))
    assert mmd(x, y, bandwidths) == pytest.approx(expected, rel=1e-5)
