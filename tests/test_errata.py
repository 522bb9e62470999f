"""ddpm_lib.errata (chapter 08): every failure the chapter shows really fails, and every
correction really works. Toy sizes; each test runs in a few seconds on a CPU."""

import pytest
import torch
import torch.nn.functional as F

import ddpm_lib.errata as errata
from ddpm_lib.errata import (
    ArticleBlock,
    ArticleBlockShapeFixed,
    ArticleDDPM,
    CorrectedDDPM,
    EchoNet,
    GaussianMixtureOracle,
    article_failures,
    article_step,
    article_step_with_noise,
    best_constant,
    mean_only_step,
    noise_prediction_losses,
    random_timestep_model,
    run_article_script,
    run_chain,
    sqrt_alpha_posterior_step,
    strided_chain,
    variance_as_std_step,
)
from ddpm_lib.sampling import DDPMSolver, p_sample
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.toy2d import mmd

SCHEDULE = NoiseSchedule.from_betas(linear_betas(1000))
T = 1000
MU, S = 1.5, 0.5  # the chapter's 1-D data N(1.5, 0.5^2)
GAUSSIAN = GaussianMixtureOracle(SCHEDULE, [[MU]], S)
MIXTURE = GaussianMixtureOracle(
    SCHEDULE, [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], 0.15, [0.4, 0.3, 0.2, 0.1]
)
PAPER_STEP = DDPMSolver().step  # Algorithm 2's step rule, as run_chain takes it


def p_sample_chain(model, x, generator):
    """Algorithm 2 written out with p_sample: the independent version of run_chain(PAPER_STEP)."""
    for t in range(T, 0, -1):
        x = p_sample(model, SCHEDULE, x, t, generator=generator)
    return x


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny tensor operations: one thread is faster than two on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cheap_article_ddpm(monkeypatch):
    """ArticleDDPM(image_size, timesteps) without building its 87M-parameter network."""
    monkeypatch.setattr(errata, "ArticleUnet", lambda *args: EchoNet())
    return ArticleDDPM


class StandIn(torch.nn.Module):
    """A one-parameter network, called as the article calls its network: (x, t)."""

    def __init__(self, channels=3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x, t=None):
        return self.weight * x


class ColumnOracle(torch.nn.Module):
    """The 1-D Gaussian oracle applied to every pixel, called as the article calls its network:
    (x (B, C, H, W), t an int in 0..T-1)."""

    def forward(self, x, t):
        flat = x.reshape(-1, 1)
        return GAUSSIAN(flat, torch.full((flat.shape[0],), t + 1)).reshape(x.shape)


# ---- Running the code as written: the failures, in order ------------------------------------


def test_the_script_fails_first_with_a_type_error():
    with pytest.raises(TypeError, match="forward\\(\\) takes 2 positional arguments but 3"):
        run_article_script()


def test_article_failures_in_order():
    log = article_failures()
    assert len(log) == 4
    assert log[0][1].startswith("TypeError") and "takes 2 positional arguments" in log[0][1]
    assert log[1][1].startswith("RuntimeError")
    assert "(32) must match the size of tensor b (128) at non-singleton dimension 3" in log[1][1]
    assert "expected input[1, 128, 32, 32] to have 256 channels" in log[2][1]
    assert (
        "(3072) must match the size of tensor b (1024) at non-singleton dimension 1" in log[3][1]
    )


def test_time_embedding_broadcasts_along_the_width():
    block = ArticleBlock(3, 8)
    with pytest.raises(RuntimeError, match="non-singleton dimension 3"):
        block(torch.randn(1, 3, 5, 7))
    assert block(torch.randn(2, 3, 5, 1)).shape == (2, 8, 5, 8)  # W = 1: a wrong shape, silently
    with (
        torch.no_grad()
    ):  # W = C runs; with the convolutions zeroed, what is left is the embedding
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
        block.time_emb.bias.copy_(torch.arange(8.0))  # a different value for each "channel"
        out = block(torch.randn(1, 3, 5, 8))
    assert out.shape == (1, 8, 5, 8)
    assert (out[0, :, :, 3] == out[0, 0, 0, 3]).all()  # constant across the channels ...
    assert out[0, 0, 0, :].unique().numel() > 1  # ... and varying along the width


def test_down_path_channels_do_not_chain():
    unet = ArticleDDPM(image_size=32).unet
    assert unet.down[0].conv2.out_channels == 128 and unet.down[1].conv1.in_channels == 256
    with pytest.raises(RuntimeError, match="to have 256 channels, but got 128"):
        unet.down[1](torch.randn(1, 128, 32, 32))


# ---- What is wrong once it runs --------------------------------------------------------------


def test_blocks_draw_their_own_timestep():
    block = ArticleBlockShapeFixed(3, 8)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert not torch.equal(block(x), block(x))  # random output for a fixed input
        torch.manual_seed(0)
        first = block(x)
        torch.manual_seed(0)
        assert torch.equal(first, block(x))  # the randomness is the block's own randint


def test_run_chain_with_the_paper_step_is_a_p_sample_loop():
    x_T = torch.randn(300, 2, generator=torch.Generator().manual_seed(5))
    ours = run_chain(PAPER_STEP, MIXTURE, SCHEDULE, x_T, torch.Generator().manual_seed(6))
    plain = p_sample_chain(MIXTURE, x_T, torch.Generator().manual_seed(6))
    torch.testing.assert_close(ours, plain, atol=0, rtol=0)


def test_a_model_not_told_t_cannot_reach_the_oracle_loss():
    losses = noise_prediction_losses(GAUSSIAN, 3000, torch.Generator().manual_seed(0))
    assert losses["oracle, told t"] < 0.6 * losses["best without t"] < 0.6 * losses["zero"]


def test_a_model_told_a_random_t_samples_the_wrong_distribution():
    gen = torch.Generator().manual_seed(0)
    x = run_chain(
        PAPER_STEP, random_timestep_model(GAUSSIAN, T, gen), SCHEDULE, torch.randn(2000, 1), gen
    )
    assert abs(x.mean() - MU) > 0.3


def test_fresh_noise_target_prefers_zero():
    losses = noise_prediction_losses(GAUSSIAN, 3000, torch.Generator().manual_seed(1))
    assert losses["oracle against fresh noise"] > losses["zero"] + 0.5


def test_article_forward_returns_the_prediction(cheap_article_ddpm):
    model = cheap_article_ddpm(image_size=4)
    model.unet = StandIn()
    with torch.no_grad():
        model.unet.weight.zero_()  # a network that predicts 0: forward returns 0, not a loss
    out = model(torch.randn(2, 3, 4, 4), 10)
    assert out.shape == (2, 3, 4, 4) and (out == 0).all()


def test_forward_with_a_batch_of_timesteps(cheap_article_ddpm):
    model = cheap_article_ddpm(image_size=8)  # its network is EchoNet: forward returns x_t
    x0 = torch.ones(8, 1, 8, 8)
    with pytest.raises(RuntimeError, match="must match"):
        model(x0[:5], torch.arange(5))
    t = torch.tensor([0, 100, 200, 300, 400, 500, 600, 999])
    torch.manual_seed(0)
    eps = torch.randn_like(x0)
    torch.manual_seed(0)
    xt = model(x0, t)  # B = W = 8: runs
    ab = model.alpha_bar[t]  # (8,) broadcast along the width: column j gets image j's level
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    assert not torch.allclose(xt[0], ab[0].sqrt() * x0[0] + (1 - ab[0]).sqrt() * eps[0])


def test_article_tables_are_the_books_shifted_by_one(cheap_article_ddpm):
    model = cheap_article_ddpm(image_size=4)
    assert (model.alpha_bar - SCHEDULE.alpha_bars[1:]).abs().max() < 1e-5


def test_tables_do_not_follow_the_model(cheap_article_ddpm):
    model = cheap_article_ddpm(image_size=4)
    model.unet = StandIn()
    model.to("meta")
    assert model.unet.weight.device.type == "meta"
    assert {model.beta.device.type, model.alpha.device.type, model.alpha_bar.device.type} == {
        "cpu"
    }
    with pytest.raises(RuntimeError, match="device"):
        model.sample(2)  # x_T is drawn on the CPU
    corrected = CorrectedDDPM(StandIn(), SCHEDULE).to("meta")
    assert corrected.alpha_bars.device.type == "meta"
    assert corrected.schedule.posterior_variance.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_article_fails_and_the_correction_runs(cheap_article_ddpm):
    model = cheap_article_ddpm(image_size=4)
    model.unet = StandIn()
    model.to("cuda")
    with pytest.raises(RuntimeError, match="device"):
        model.sample(2)
    with pytest.raises(RuntimeError, match="device|cuda|cpu"):
        model(torch.randn(2, 3, 4, 4, device="cuda"), torch.tensor([1, 2], device="cuda"))
    corrected = CorrectedDDPM(StandIn(), SCHEDULE).to("cuda")
    loss = corrected(torch.randn(4, 3, 4, 4, device="cuda"))
    assert loss.device.type == "cuda" and loss.requires_grad
    assert corrected.sample((2, 3, 4, 4)).device.type == "cuda"


def test_article_sample_keeps_a_graph(cheap_article_ddpm):
    model = cheap_article_ddpm(image_size=4, timesteps=20)
    model.unet = StandIn()
    assert model.sample(2).grad_fn is not None
    corrected = CorrectedDDPM(StandIn(), NoiseSchedule.from_betas(linear_betas(20)))
    assert corrected.sample((2, 3, 4, 4)).grad_fn is None


# ---- The exact oracle --------------------------------------------------------------------


def test_oracle_matches_the_gaussian_formula():
    t = torch.tensor([1, 10, 300, 1000])
    xt = torch.randn(4, 1)
    ab = SCHEDULE.alpha_bars[t][:, None]
    expected = (1 - ab).sqrt() / (ab * S**2 + 1 - ab) * (xt - ab.sqrt() * MU)
    torch.testing.assert_close(GAUSSIAN(xt, t), expected)


def test_oracle_is_the_conditional_mean():
    gen = torch.Generator().manual_seed(0)
    x0 = MIXTURE.sample_data(20_000, gen)
    t = torch.randint(1, T + 1, (20_000,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    ab = SCHEDULE.alpha_bars[t][:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    eps_hat = MIXTURE(xt, t)
    losses = [((eps - s * eps_hat) ** 2).mean() for s in (0.9, 1.0, 1.1)]
    assert losses[1] < losses[0] and losses[1] < losses[2]
    residual = eps - eps_hat
    for g in (xt, xt**3, torch.sin(3 * xt)):
        assert (residual * g).mean(0).abs().max() < 4 * (residual * g).std() / 20_000**0.5


def test_oracle_without_t_for_standard_normal_data():
    # data N(0, 1): x_t ~ N(0, 1) at every t, so p(t | x_t) is uniform and
    # E[eps | x_t] = mean_t sqrt(1 - ab_t) * x_t
    standard = GaussianMixtureOracle(SCHEDULE, [[0.0]], 1.0)
    xt = torch.linspace(-3, 3, 7)[:, None]
    expected = SCHEDULE.sqrt_one_minus_alpha_bars[1:].mean() * xt
    torch.testing.assert_close(standard.eps_without_t(xt), expected, atol=1e-5, rtol=1e-5)


def test_noise_given_xt_has_the_oracles_mean():
    two_modes = GaussianMixtureOracle(SCHEDULE, [[-1.0], [1.5]], 0.1, [0.8, 0.2])
    x = torch.zeros(1, 1)
    draws = two_modes.sample_noise_given(x, 140, 40_000, torch.Generator().manual_seed(0))
    assert abs(draws.mean() - two_modes(x, 140).item()) < 4 * draws.std() / 40_000**0.5


def test_oracle_rejects_bad_input():
    with pytest.raises(ValueError, match="\\(K, D\\)"):
        GaussianMixtureOracle(SCHEDULE, [1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="positive"):
        GaussianMixtureOracle(SCHEDULE, [[1.0]], -1.0)
    with pytest.raises(ValueError, match="positive"):
        GaussianMixtureOracle(SCHEDULE, [[1.0], [2.0]], 1.0, [1.0])
    with pytest.raises(ValueError, match="\\(B, 2\\)"):
        MIXTURE(torch.zeros(3, 1), 5)
    with pytest.raises(ValueError, match="1..T"):
        MIXTURE(torch.zeros(3, 2), 0)


# ---- The samplers, with the exact oracle --------------------------------------------------


def test_article_step_is_the_articles_sampler(cheap_article_ddpm):
    model = cheap_article_ddpm(image_size=2)
    model.unet = ColumnOracle()
    torch.manual_seed(0)
    x_T = torch.randn(50, 3, 2, 2)
    torch.manual_seed(0)
    with torch.no_grad():
        theirs = model.sample(batch_size=50)
    ours = run_chain(article_step, GAUSSIAN, SCHEDULE, x_T.reshape(-1, 1))
    torch.testing.assert_close(theirs.reshape(-1, 1), ours, atol=1e-4, rtol=0)


def test_samplers_with_the_exact_oracle():
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(2000, 1, generator=gen)

    def chain(step):
        return run_chain(step, GAUSSIAN, SCHEDULE, x_T, gen)

    right = chain(PAPER_STEP)
    assert abs(right.mean() - MU) < 0.05 and abs(right.std() - S) < 0.03
    assert chain(article_step).std() < 1e-3  # E9 + E10: every sample at the mean
    assert chain(mean_only_step).std() < 0.01  # E10
    assert 0.1 < chain(article_step_with_noise).std() < 0.25  # E9
    assert chain(variance_as_std_step).std() < 0.1  # common mistake 1
    assert abs(chain(sqrt_alpha_posterior_step).mean() - MU) > 0.5  # common mistake 3


def test_strided_sampling_needs_the_right_previous_step():
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(2000, 1, generator=gen)
    good = strided_chain(GAUSSIAN, SCHEDULE, x_T, 10, gen)
    bad = strided_chain(GAUSSIAN, SCHEDULE, x_T, 10, gen, previous="t-1")
    assert abs(good.mean() - MU) < 0.05 and abs(good.std() - S) < 0.06
    assert abs(bad.mean() - MU) > 0.5
    one = strided_chain(GAUSSIAN, SCHEDULE, x_T, 1, torch.Generator().manual_seed(3))
    two = p_sample_chain(GAUSSIAN, x_T, torch.Generator().manual_seed(3))
    torch.testing.assert_close(one, two, atol=0, rtol=0)  # stride 1 is p_sample, exactly
    with pytest.raises(ValueError, match="previous"):
        strided_chain(GAUSSIAN, SCHEDULE, x_T, 10, gen, previous="t")


def test_article_sampler_collapses_a_mixture_to_one_point():
    gen = torch.Generator().manual_seed(0)
    data = MIXTURE.sample_data(1500, gen)
    x_T = torch.randn(1500, 2, generator=gen)
    collapsed = run_chain(article_step, MIXTURE, SCHEDULE, x_T, gen)
    right = run_chain(PAPER_STEP, MIXTURE, SCHEDULE, x_T, gen)
    # The MMD of two finite samples of one distribution: its mean over four independent pairs.
    floor = sum(mmd(data, MIXTURE.sample_data(1500, gen)) for _ in range(4)) / 4
    assert (collapsed - collapsed[0]).abs().max() < 1e-3
    assert mmd(right, data) < 2 * floor and mmd(collapsed, data) > 0.5


# ---- The corrected class ------------------------------------------------------------------


def test_corrected_forward_is_algorithm_1():
    # data x_0 = 0: then x_t = sqrt(1 - ab_t) eps, and a model that divides by that factor
    # predicts the very noise that made x_t. The loss is 0 only if the target is that noise.
    class Exact(torch.nn.Module):
        def forward(self, xt, t):
            return xt / SCHEDULE.sqrt_one_minus_alpha_bars[t].reshape(-1, 1, 1, 1)

    model = CorrectedDDPM(Exact(), SCHEDULE)
    loss = model(torch.zeros(16, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and loss.item() < 1e-10
    net = CorrectedDDPM(StandIn(channels=1), SCHEDULE)
    loss = net(torch.randn(8, 1, 4, 4))
    loss.backward()
    assert net.eps_model.weight.grad is not None


def test_corrected_sampler_reproduces_the_data():
    class OracleNet(torch.nn.Module):
        def forward(self, xt, t):
            return GAUSSIAN(xt, t)

    model = CorrectedDDPM(OracleNet(), SCHEDULE).train()
    x = model.sample((2000, 1), torch.Generator().manual_seed(0))
    assert abs(x.mean() - MU) < 0.05 and abs(x.std() - S) < 0.03
    assert model.training  # sampling ran in eval mode and then restored the mode


# ---- The other helpers and the common mistakes ----------------------------------------------


def test_best_constant():
    x = torch.tensor([0.0, 0.0, 0.0, 10.0])
    assert best_constant(x, "mse") == pytest.approx(2.5, abs=1e-9)
    assert best_constant(x, "huber", delta=0.1) == pytest.approx(0.1 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="huber"):
        best_constant(x, "l1")


def test_huber_minimiser_is_not_the_conditional_mean():
    two_modes = GaussianMixtureOracle(SCHEDULE, [[-1.0], [1.5]], 0.1, [0.8, 0.2])
    t_half = int((SCHEDULE.alpha_bars - 0.5).abs().argmin())  # alpha-bar_t = 0.5, as in 08
    draws = two_modes.sample_noise_given(torch.zeros(1, 1), t_half, 20_000, torch.Generator())
    assert abs(best_constant(draws, "mse") - two_modes(torch.zeros(1, 1), t_half).item()) < 0.02
    assert abs(best_constant(draws, "huber") - best_constant(draws, "mse")) > 0.1


def test_huber_minimiser_need_not_lie_between_the_mean_and_the_median():
    # masses 0.1 at -100, 0.45 at 0 and 0.45 at 0.9: mean -9.595, median 0 (chapter 08)
    x = torch.tensor([-100.0] * 2 + [0.0] * 9 + [0.9] * 9, dtype=torch.float64)
    grid = torch.linspace(-12, 2, 140_001, dtype=torch.float64)  # steps of 1e-4
    for delta in [0.5, 1.0, 3.0]:  # against a brute-force minimum of torch's own Huber loss
        c_grid = grid[:, None].expand(-1, len(x))
        losses = F.huber_loss(c_grid, x.expand_as(c_grid), delta=delta, reduction="none")
        best = grid[losses.mean(1).argmin()].item()
        assert best_constant(x, "huber", delta) == pytest.approx(best, abs=2e-4)
    c = best_constant(x, "huber", 1.0)
    assert c == pytest.approx(0.305 / 0.9, abs=1e-9)  # 0.1 + 0.45 c + 0.45 (c - 0.9) = 0
    assert not (x.mean().item() <= c <= x.median().item())
    assert best_constant(x, "huber", 1e-3) == pytest.approx(0.0, abs=1e-3)  # the median
    assert best_constant(x, "huber", 1e3) == pytest.approx(x.mean().item(), abs=1e-9)  # the mean
    symmetric = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0], dtype=torch.float64) + 2
    assert best_constant(symmetric, "huber", 0.5) == pytest.approx(2.0, abs=1e-9)


def test_backward_with_the_loss_scales_the_gradient():
    lin = torch.nn.Linear(2, 2)
    x = torch.randn(16, 2)
    loss = ((lin(x) - x) ** 2).mean()
    (right,) = torch.autograd.grad(loss, lin.weight, retain_graph=True)
    loss.backward(loss)
    torch.testing.assert_close(lin.weight.grad, loss.detach() * right)
