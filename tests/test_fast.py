"""ddpm_lib.fast: the fast path gives the plain path's numbers (exactly in float32 with the
switches off, within stated tolerances with them on), and its measuring helpers count right.

Tolerances (CPU; a GPU run of scripts/bench_gpu.py records its own):
- unet_forward, make_denoise_step and sample_fast in float32 without compile: exactly equal;
- channels-last: 1e-5 (convolutions may add their terms in another order);
- fused AdamW + channels-last over a few training steps: losses within 1e-4 relative;
- bf16 autocast: one network output within 2% (relative RMS), losses within 2%, a 100-step
  sample within 5% (relative RMS);
- torch.compile (slow test): 1e-4.
"""

import copy

import pytest
import torch
from conftest import tiny_unet_config

from ddpm_lib.fast import (
    FAST_PRECISIONS,
    DeviceReads,
    FastNet,
    autocast,
    bench_table,
    count_flops,
    host_time_per_call,
    is_profiler_annotation,
    kernel_profile,
    make_denoise_step,
    matmul_tflops,
    prepare_model,
    randomize_zero_layers,
    sample_fast,
    time_per_call,
    unet_forward,
)
from ddpm_lib.losses import simple_loss
from ddpm_lib.sampling import VARIANCES, p_sample, sample, sample_progressive
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.training import TrainConfig, train_step
from ddpm_lib.unet import UNet, UNetConfig

SCHEDULE = NoiseSchedule.from_betas(linear_betas(1000))
SHORT = NoiseSchedule.from_betas(linear_betas(100, 1e-3, 0.2))


def tiny(**overrides) -> UNetConfig:
    return tiny_unet_config(**overrides)


def random_unet(config: UNetConfig, seed: int = 0) -> UNet:
    """A U-Net whose zero-initialised layers have random weights, as after training."""
    torch.manual_seed(seed)
    model = UNet(config)
    randomize_zero_layers(model)
    return model


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


@pytest.mark.parametrize(
    "config",
    [tiny(), tiny(in_channels=3, image_size=15), UNetConfig.toy(), tiny(dropout=0.3)],
    ids=["attention", "padded", "toy", "dropout"],
)
@pytest.mark.parametrize("training", [False, True])
def test_unet_forward_is_the_forward_without_checks(config, training):
    model = random_unet(config).train(training)
    xt = torch.randn(3, config.in_channels, config.image_size, config.image_size)
    t = torch.tensor([1, 37, 1000])
    torch.manual_seed(5)  # the same dropout masks for both
    expected = model(xt, t)
    torch.manual_seed(5)
    torch.testing.assert_close(unet_forward(model, xt, t), expected, rtol=0, atol=0)


def test_prepare_model_shares_weights_and_converts_in_place():
    model = random_unet(tiny(in_channels=3))
    xt, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    expected = model(xt, t)
    net = prepare_model(model, channels_last=True)
    assert isinstance(net, FastNet) and net.model is model
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}
    assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(net(xt, t), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(xt, t), expected, rtol=1e-5, atol=1e-5)  # values unchanged


def test_prepare_model_compile_wraps_without_compiling_yet():
    model = random_unet(tiny())
    net = prepare_model(model, compile=True)
    assert net._orig_mod.model is model  # torch.compile's wrapper; compiles on the first call


def test_prepare_model_cuda_graphs_asks_compile_for_them(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: calls.append(kw) or net)
    prepare_model(random_unet(tiny()), compile=True)
    prepare_model(random_unet(tiny()), compile=True, cuda_graphs=True)
    assert calls == [{"dynamic": False, "mode": None},
                     {"dynamic": False, "mode": "reduce-overhead"}]  # fmt: skip
    with pytest.raises(ValueError, match="needs compile=True"):
        prepare_model(random_unet(tiny()), cuda_graphs=True)
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        prepare_model(random_unet(tiny()), compile=True, ddp=True, cuda_graphs=True)
    with pytest.raises(ValueError, match="set compile=True"):
        TrainConfig(cuda_graphs=True)


def test_fastnet_calls_other_models_as_they_are():
    class Other(torch.nn.Module):
        def forward(self, xt, t):
            return xt * t.view(-1, 1, 1, 1)

    xt = torch.randn(2, 3, 4, 4)
    out = prepare_model(Other(), channels_last=True)(xt, torch.tensor([2, 3]))
    torch.testing.assert_close(out, xt * torch.tensor([2.0, 3.0]).view(-1, 1, 1, 1))


def test_autocast_precisions():
    assert FAST_PRECISIONS == ("fp32", "bf16", "fp16")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("cpu", "fp64")


@pytest.mark.parametrize("variance", VARIANCES)
def test_denoise_step_fp32_is_p_sample_exactly(variance):
    model = random_unet(tiny()).eval()
    xt = torch.randn(4, 1, 16, 16)
    step = make_denoise_step(prepare_model(model), SCHEDULE, xt.shape, variance=variance)
    for t in (1000, 500, 2, 1):
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t))
        expected = p_sample(
            model, SCHEDULE, xt, t, torch.Generator().manual_seed(t), variance=variance
        )
        torch.testing.assert_close(step(xt, t, z), expected, rtol=0, atol=0)


def test_denoise_step_bf16_within_two_percent():
    model = random_unet(tiny(in_channels=3)).eval()
    xt, z, t = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), 500
    step32 = make_denoise_step(prepare_model(model), SCHEDULE, xt.shape, "fp32")
    step16 = make_denoise_step(prepare_model(model, True), SCHEDULE, xt.shape, "bf16")
    coef = SCHEDULE.betas[t] / SCHEDULE.sqrt_one_minus_alpha_bars[t] / SCHEDULE.alphas[t].sqrt()
    eps_error = (step16(xt, t, z) - step32(xt, t, z)) / coef  # the network's error
    with torch.no_grad():
        eps = model(xt, t)
    assert eps_error.abs().max() > 0  # bf16 did run
    assert float(eps_error.pow(2).mean().sqrt() / eps.pow(2).mean().sqrt()) < 2e-2


def test_denoise_step_bad_input():
    net = prepare_model(random_unet(tiny()))
    with pytest.raises(ValueError, match="variance must be one of"):
        make_denoise_step(net, SCHEDULE, (2, 1, 16, 16), variance="learned")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        make_denoise_step(net, SCHEDULE, (2, 1, 16, 16), cuda_graph=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        make_denoise_step(net, SCHEDULE, (2, 1, 16, 16), "int8")


def test_sample_fast_fp32_is_sample_exactly_and_restores_mode():
    model = random_unet(UNetConfig.toy()).train()
    shape = (3, 1, 14, 14)
    expected = sample(model, SHORT, shape, torch.Generator().manual_seed(0), progress=False)
    assert model.training
    got = sample_fast(model, SHORT, shape, torch.Generator().manual_seed(0))  # CPU: all off
    assert model.training
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    other = sample_fast(model, SHORT, shape, torch.Generator().manual_seed(1))
    assert (other - expected).abs().max() > 0.1  # the generator matters


def test_sample_fast_bf16_within_five_percent():
    model = random_unet(UNetConfig.toy())
    shape = (4, 1, 14, 14)
    expected = sample(model, SHORT, shape, torch.Generator().manual_seed(0), progress=False)
    got = sample_fast(
        model, SHORT, shape, torch.Generator().manual_seed(0), precision="bf16",
        channels_last=True,
    )  # fmt: skip
    assert 0 < rel_rms(got, expected) < 5e-2


def test_sample_fast_bf16_weights_within_five_percent_and_model_untouched():
    model = random_unet(UNetConfig.toy())
    shape = (4, 1, 14, 14)
    expected = sample(model, SHORT, shape, torch.Generator().manual_seed(0), progress=False)
    got = sample_fast(
        model, SHORT, shape, torch.Generator().manual_seed(0), precision="bf16",
        cast_weights=True, channels_last=True,
    )  # fmt: skip
    assert got.dtype == torch.float32 and 0 < rel_rms(got, expected) < 5e-2
    assert all(p.dtype == torch.float32 for p in model.parameters())  # a copy was cast
    assert model.conv_in.weight.is_contiguous()  # and laid out channels-last


def test_prepare_model_dtype_runs_the_network_in_it():
    model = random_unet(tiny(in_channels=3))
    xt, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    expected = model(xt, t)
    net = prepare_model(copy.deepcopy(model), dtype=torch.bfloat16)
    assert next(net.parameters()).dtype == torch.bfloat16
    out = net(xt, t)
    assert out.dtype == torch.float32 and out.shape == xt.shape
    assert 0 < rel_rms(out, expected) < 2e-2


def loss_curve(base: UNet, precision="fp32", fused=None, steps=5, **switches):
    model = copy.deepcopy(base)
    net = prepare_model(model, **switches) if switches else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 14, 14, generator=torch.Generator().manual_seed(1)) * 2 - 1
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    losses = [
        train_step(net, SCHEDULE, x0, optimizer, lr=1e-3, generator=generator, amp_dtype=amp_dtype)
        for _ in range(steps)
    ]
    return torch.stack(losses), model


def test_training_fast_path_matches_the_plain_path():
    base = random_unet(UNetConfig.toy())
    plain, plain_model = loss_curve(base)
    unchecked, unchecked_model = loss_curve(base, channels_last=False)
    torch.testing.assert_close(unchecked, plain, rtol=0, atol=0)
    for p, q in zip(unchecked_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    fused, _ = loss_curve(base, fused=True, channels_last=True)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    low, _ = loss_curve(base, "bf16", fused=True, channels_last=True)
    assert (low - plain).abs().max() > 0  # bf16 did run
    torch.testing.assert_close(low, plain, rtol=2e-2, atol=1e-3)
    assert plain[-1] < plain[0]  # and it learns


def test_time_per_call_calls_warmup_plus_iters():
    calls = []
    seconds = time_per_call(lambda: calls.append(1), iters=7, warmup=2)
    assert len(calls) == 9 and seconds >= 0


def test_randomize_zero_layers_fills_only_the_zero_parameters():
    model = UNet(tiny_unet_config())
    before = {name: p.clone() for name, p in model.named_parameters()}
    zero = [name for name, p in before.items() if p.abs().max() == 0]
    assert "conv_out.weight" in zero  # the U-Net's last convolution starts at zero
    randomize_zero_layers(model, std=0.5)
    for name, p in model.named_parameters():
        if name in zero:
            assert p.abs().max() > 0
            if p.numel() > 50:  # enough values to check their spread
                assert 0.3 < p.std() < 0.7
        else:
            assert torch.equal(p, before[name])
    assert model(torch.randn(2, 1, 16, 16), 5).abs().max() > 0  # eps_pred is no longer 0


def test_host_time_per_call_times_each_call_alone():
    calls = []
    seconds = host_time_per_call(lambda: calls.append(1), iters=4)
    assert len(calls) == 4 and 0 <= seconds < 0.1


def test_device_reads_counts_only_the_package_reads():
    with DeviceReads() as reads:
        float(torch.ones(()))  # this test's own read: not ddpm_lib's
        # A caller's t has no range note: check_timesteps reads it once; the checks after it
        # (q_sample's, extract's) use the note that check made.
        simple_loss(lambda xt, t: xt, SHORT, torch.zeros(2, 1, 4, 4), t=torch.tensor([3, 4]))
    assert reads.count == 1, reads.where
    assert next(iter(reads.where)).startswith("ddpm_lib.utils:")
    with DeviceReads(package=__name__) as mine:
        bool(torch.ones(()) > 0)
        torch.ones(2).sum().item()
    assert mine.count == 2


def test_training_and_sampling_steps_never_wait_for_the_device():
    """On a GPU, each read of a device value stalls the queue: a step must make none."""
    model = UNet(tiny_unet_config(num_timesteps=100))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    for net in (model, prepare_model(copy.deepcopy(model), channels_last=True)):
        with DeviceReads() as reads:
            train_step(net, SHORT, x0, optimizer, lr=1e-3, generator=generator)
        assert reads.count == 0, reads.where
    steps = sample_progressive(model, SHORT, (2, 1, 16, 16), generator, progress=False)
    next(steps)
    with DeviceReads() as reads:
        for _ in range(3):
            next(steps)
    assert reads.count == 0, reads.where


def test_count_flops_counts_products():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    assert count_flops(lambda: a + 1) == 0  # element-wise work is not counted
    assert matmul_tflops("cpu", torch.float32, n=64, iters=2) > 0


def results(**summary):
    meta = dict(torch="2.x", date="today", command="python scripts/bench_gpu.py", size="full",
                gpu="Some GPU", device="cuda")  # fmt: skip
    ok = dict(status="ok", batch=128, ms_per_step=20.0, images_per_s=6400.0, tflops=239.0,
              frac_bf16_peak=0.34, first_call_s=40.0, host_ms_per_step=12.5,
              syncs_per_step=0)  # fmt: skip
    return {
        "meta": meta,
        "peak": {"matmul_n": 8192, "bf16_matmul_tflops": 700.0, "fp32_matmul_tflops": 50.0},
        "train": [
            dict(id="ours-fast", note="the fast path", **ok),
            dict(id="diffusers-bf16-compile", status="skipped", reason="time budget", batch=128),
            dict(id="ours-fp32", status="error", error="RuntimeError: boom", batch=128),
        ],
        "sample": [
            dict(
                id="fast",
                status="ok",
                images=1000,
                num_timesteps=1000,
                ms_per_step=5.0,
                s_for_1000_steps=5.0,
                s_for_1000_steps_measured=5.2,
                speedup_vs_eager_fp32=4.0,
                check_eps_rel_rms_diff=0.004,
            ),
        ],  # fmt: skip
        "summary": summary,
    }


def test_profiler_annotations_are_not_counted_as_kernels():
    assert is_profiler_annotation("Optimizer.step#AdamW.step")
    assert is_profiler_annotation("ProfilerStep#3")
    assert is_profiler_annotation("## Call CompiledFxGraph fabc ##")
    for kernel in ["void at::native::vectorized_elementwise_kernel<4, silu_kernel<float>>",
                   "triton_red_fused_native_group_norm_22", "Memcpy DtoD (Device -> Device)",
                   "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwc",
                   "void at::native::elementwise_kernel<128, 4, [lambda()#1]>"]:  # fmt: skip
        assert not is_profiler_annotation(kernel)
    # As in the committed runs before the fix: the optimizer's range counted once more.
    profile = {
        "kernel_ms_per_step": 31.5, "wall_ms_per_step_profiled": 63.0,
        "by_kind_ms": {"convolution": 20.0, "optimizer and clipping": 5.5, "other": 6.0},
        "top_kernels": [["sm90_conv", 20.0, 3.0], ["Optimizer.step#AdamW.step", 4.5, 1.0],
                        ["multi_tensor_apply_kernel<FusedAdamMathFunctor>", 1.0, 2.0]],
    }  # fmt: skip
    fixed = kernel_profile(profile)
    assert fixed["kernel_ms_per_step"] == 27.0 and fixed["gpu_busy_fraction"] == round(27 / 63, 3)
    assert fixed["by_kind_ms"] == {
        "convolution": 20.0,
        "optimizer and clipping": 1.0,
        "other": 6.0,
    }
    assert [k[0] for k in fixed["top_kernels"]] == ["sm90_conv", profile["top_kernels"][2][0]]
    assert profile["kernel_ms_per_step"] == 31.5  # the input is left as it was
    assert kernel_profile(fixed) == fixed  # nothing left to remove


def test_bench_table_shows_every_row_and_the_verdicts():
    table = bench_table(
        results(sample_fast_vs_eager_fp32=dict(ratio=4.0, target=3.0, met=True, fastest="fast"))
    )
    assert "**Some GPU**" in table and "python scripts/bench_gpu.py" in table
    assert (
        "| ours-fast (the fast path) | 128 | 20.0 | 6400 | 239.0 | 34% | 40.0 | 12.5 | 0 |"
        in table
    )
    assert "skipped: time budget" in table and "error: RuntimeError: boom" in table
    # A run from before the host columns: "-" there.
    assert "| fast | 1000 | 5.00 | 5.0 | 5.2 | 4.00x | 4.0e-03 | - | - |" in table
    assert "4.00x (target 3.0x: met)" in table


@pytest.mark.slow
def test_compiled_fast_path_matches_on_cpu():
    """torch.compile (Inductor's C++ backend here): about a minute on a 2-core CPU."""
    model = random_unet(tiny()).eval()
    xt = torch.randn(2, 1, 16, 16)
    net = prepare_model(model, channels_last=True, compile=True)
    plain = make_denoise_step(prepare_model(model), SCHEDULE, xt.shape)
    compiled = make_denoise_step(net, SCHEDULE, xt.shape)
    for t in (900, 3):
        z = torch.randn(xt.shape)
        torch.testing.assert_close(compiled(xt, t, z), plain(xt, t, z), rtol=1e-4, atol=1e-4)
