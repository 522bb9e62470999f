"""ddpm_lib.fast and ddpm_lib.profiling: the fast path gives the plain path's numbers (exactly in
float32 with the switches off, within stated tolerances with them on), and the measuring helpers
count right.

Tolerances (CPU; a GPU run of scripts/bench_gpu.py records its own):
- FastNet and sample_fast in float32 without compile: exactly equal (the same forward pass, the
  same sampling loop, the same draws);
- channels-last: 1e-5 (convolutions may add their terms in another order);
- fused AdamW + channels-last over a few training steps: losses within 1e-4 relative;
- bf16 autocast: one network output within 2% (relative RMS), losses within 2%, a 20-step
  sample within 5% (relative RMS);
- torch.compile (slow test): 1e-4;
- a CUDA graph (CUDA only): 1e-5 against the same network run eagerly.
"""

import copy

import pytest
import torch
from conftest import tiny_unet_config

from ddpm_lib import fast
from ddpm_lib.fast import (
    AutocastNet,
    CUDAGraphNet,
    FastNet,
    autocast,
    prepare_model,
    sample_fast,
    sampling_net,
)
from ddpm_lib.profiling import (
    DeviceReads,
    count_flops,
    host_time_per_call,
    matmul_tflops,
    randomize_zero_layers,
    time_per_call,
)
from ddpm_lib.sampling import sample, sample_progressive
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.training import TrainConfig, train_step
from ddpm_lib.unet import UNet, UNetConfig
from ddpm_lib.utils import PRECISIONS, check_timesteps

SCHEDULE = NoiseSchedule.from_betas(linear_betas(1000))
SHORT = NoiseSchedule.from_betas(linear_betas(100, 1e-3, 0.2))
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


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
def test_fastnet_is_the_unets_forward_without_checks(config, training):
    model = random_unet(config).train(training)
    xt = torch.randn(3, config.in_channels, config.image_size, config.image_size)
    t = torch.tensor([1, 37, 1000])
    torch.manual_seed(5)  # the same dropout masks for both
    expected = model(xt, t)
    torch.manual_seed(5)
    torch.testing.assert_close(FastNet(model)(xt, t), expected, rtol=0, atol=0)


def test_fastnet_runs_the_unets_own_forward_pass(monkeypatch):
    """One forward pass in the library: FastNet calls UNet._forward, as UNet.forward does."""
    model = random_unet(tiny())
    calls = []
    original = UNet._forward

    def counted(self, xt, t, labels=None):
        calls.append(labels)
        return original(self, xt, t, labels)

    monkeypatch.setattr(UNet, "_forward", counted)
    xt, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 700])
    torch.testing.assert_close(FastNet(model)(xt, t), model(xt, t), rtol=0, atol=0)
    assert calls == [None, None]
    assert not hasattr(fast, "unet_forward") and not hasattr(fast, "make_denoise_step")


def test_fastnet_takes_labels_for_a_conditional_model():
    model = random_unet(tiny(num_classes=3))
    torch.nn.init.normal_(model.class_emb.weight)  # zero-initialised: make the labels matter
    xt, t = torch.randn(4, 1, 16, 16), torch.tensor([3, 700, 5, 1000])
    labels = torch.tensor([0, 1, 2, 3])  # 3: the null label
    net = FastNet(model)
    assert net.null_label == model.null_label == 3
    torch.testing.assert_close(net(xt, t, labels), model(xt, t, labels), rtol=0, atol=0)
    torch.testing.assert_close(net(xt, t), model(xt, t), rtol=0, atol=0)  # no label
    assert (net(xt, t, labels) - net(xt, t)).abs().max() > 0
    compiled = prepare_model(model, compile=True)  # torch.compile's wrapper passes it on
    assert compiled.null_label == 3


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
    assert calls == [
        {"dynamic": False, "mode": None},
        {"dynamic": False, "mode": "reduce-overhead"},
    ]
    with pytest.raises(ValueError, match="needs compile=True"):
        prepare_model(random_unet(tiny()), cuda_graphs=True)
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        prepare_model(random_unet(tiny()), compile=True, ddp=True, cuda_graphs=True)
    with pytest.raises(ValueError, match="set compile=True"):
        TrainConfig(cuda_graphs=True)


def test_fastnet_calls_other_models_as_they_are():
    class Other(torch.nn.Module):
        def forward(self, xt, t, labels=None):
            out = xt * t.view(-1, 1, 1, 1)
            return out if labels is None else out + labels.view(-1, 1, 1, 1)

    xt = torch.randn(2, 3, 4, 4)
    net = prepare_model(Other(), channels_last=True)
    assert net.null_label is None
    out = net(xt, torch.tensor([2, 3]))
    torch.testing.assert_close(out, xt * torch.tensor([2.0, 3.0]).view(-1, 1, 1, 1))
    out = net(xt, torch.tensor([2, 3]), torch.tensor([10, 20]))
    expected = xt * torch.tensor([2.0, 3.0]).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, expected + torch.tensor([10.0, 20.0]).view(-1, 1, 1, 1))


def test_autocast_precisions():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    assert PRECISIONS == ("fp32", "bf16", "fp16")  # the names, in one place (ddpm_lib.utils)
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("cpu", "fp64")


def test_sampling_net_pieces_and_bad_input():
    model = random_unet(tiny())
    assert isinstance(sampling_net(model), FastNet) and not model.training  # eval mode
    assert sampling_net(model).model is model  # nothing to copy
    net = sampling_net(model, "bf16")
    assert isinstance(net, AutocastNet) and net.net.model is model
    net = sampling_net(model, "bf16", cast_weights=True)
    assert isinstance(net, FastNet) and net.model is not model  # a cast copy
    assert next(net.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        sampling_net(model, cuda_graph=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        sampling_net(model, "int8")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        CUDAGraphNet(FastNet(model))(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))


def test_sampling_net_bf16_eps_within_two_percent():
    model = random_unet(tiny(in_channels=3)).eval()
    xt, t = torch.randn(4, 3, 16, 16), torch.full((4,), 500)
    with torch.no_grad():
        eps = model(xt, t)
        for switches in [dict(), dict(channels_last=True), dict(cast_weights=True)]:
            eps16 = sampling_net(model, "bf16", **switches)(xt, t)
            assert eps16.dtype == torch.float32 and 0 < rel_rms(eps16, eps) < 2e-2, switches


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(variance="fixed_large", num_steps=10),
        dict(num_steps=10),
        dict(solver="ddim", num_steps=10),
        dict(eta=0.5, num_steps=10),
        dict(solver="dpm_solver++", num_steps=10),
    ],
    ids=["ddpm", "ddpm-large", "ddpm-strided", "ddim", "ddim-eta", "dpm-solver++"],
)
def test_sample_fast_fp32_is_sample_exactly(options):
    model = random_unet(tiny(num_timesteps=100))
    shape = (3, 1, 16, 16)
    expected = sample(
        model, SHORT, shape, torch.Generator().manual_seed(0), progress=False, **options
    )
    got = sample_fast(
        model, SHORT, shape, torch.Generator().manual_seed(0), progress=False, **options
    )  # CPU: every switch off
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sample_fast_with_guidance_is_sample_exactly():
    model = random_unet(tiny(num_timesteps=100, num_classes=3))
    torch.nn.init.normal_(model.class_emb.weight)
    shape, labels = (3, 1, 16, 16), torch.tensor([0, 1, 2])
    options = dict(labels=labels, guidance=2.0, num_steps=10, progress=False)
    expected = sample(model, SHORT, shape, torch.Generator().manual_seed(0), **options)
    got = sample_fast(model, SHORT, shape, torch.Generator().manual_seed(0), **options)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    unguided = sample(
        model,
        SHORT,
        shape,
        torch.Generator().manual_seed(0),
        num_steps=10,
        labels=labels,
        progress=False,
    )
    assert (unguided - expected).abs().max() > 1e-3  # the guidance did something
    one_label = sample_fast(
        model, SHORT, shape, torch.Generator().manual_seed(0), **(options | dict(labels=1))
    )
    expected = sample(
        model, SHORT, shape, torch.Generator().manual_seed(0), **(options | dict(labels=1))
    )
    torch.testing.assert_close(one_label, expected, rtol=0, atol=0)


def test_sample_fast_restores_the_mode_and_the_generator_matters():
    model = random_unet(tiny(num_timesteps=100)).train()
    shape = (3, 1, 16, 16)
    expected = sample_fast(
        model, SHORT, shape, torch.Generator().manual_seed(0), num_steps=5, progress=False
    )
    assert model.training
    model.eval()
    sample_fast(model, SHORT, shape, torch.Generator().manual_seed(0), num_steps=5, progress=False)
    assert not model.training
    other = sample_fast(
        model, SHORT, shape, torch.Generator().manual_seed(1), num_steps=5, progress=False
    )
    assert (other - expected).abs().max() > 0.1


def test_sample_fast_refuses_bad_input():
    model = random_unet(tiny(num_timesteps=100))
    with pytest.raises(ValueError, match="the schedule has T = 1000"):
        sample_fast(model, SCHEDULE, (2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"takes images \(B, 1, H, W\)"):
        sample_fast(model, SHORT, (2, 3, 16, 16))
    with pytest.raises(ValueError, match="unconditional model"):
        sample_fast(model, SHORT, (2, 1, 16, 16), labels=torch.tensor([0, 1]))
    conditional = random_unet(tiny(num_timesteps=100, num_classes=3))
    with pytest.raises(ValueError, match="labels must lie in"):
        sample_fast(conditional, SHORT, (2, 1, 16, 16), labels=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="precision must be one of"):
        sample_fast(model, SHORT, (2, 1, 16, 16), precision="fp8")


def test_sample_fast_bf16_within_five_percent():
    model = random_unet(tiny(num_timesteps=100))
    shape = (4, 1, 16, 16)
    expected = sample(
        model, SHORT, shape, torch.Generator().manual_seed(0), num_steps=20, progress=False
    )
    got = sample_fast(
        model,
        SHORT,
        shape,
        torch.Generator().manual_seed(0),
        precision="bf16",
        channels_last=True,
        num_steps=20,
        progress=False,
    )
    assert 0 < rel_rms(got, expected) < 5e-2


def test_sample_fast_bf16_weights_within_five_percent_and_model_untouched():
    model = random_unet(tiny(num_timesteps=100, image_size=14))
    shape = (4, 1, 14, 14)
    expected = sample(
        model, SHORT, shape, torch.Generator().manual_seed(0), num_steps=20, progress=False
    )
    got = sample_fast(
        model,
        SHORT,
        shape,
        torch.Generator().manual_seed(0),
        precision="bf16",
        cast_weights=True,
        channels_last=True,
        num_steps=20,
        progress=False,
    )
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
    x = torch.zeros(2, 1)
    with DeviceReads() as reads:
        float(torch.ones(()))  # this test's own read: not ddpm_lib's
        check_timesteps(torch.tensor([3, 4]), 10, x)  # a tensor t: read once
        check_timesteps(3, 10, x)  # an int: no read
    assert reads.count == 1, reads.where
    assert next(iter(reads.where)).startswith("ddpm_lib.utils:")
    with DeviceReads(package=__name__) as mine:
        bool(torch.ones(()) > 0)
        torch.ones(2).sum().item()
    assert mine.count == 2


@pytest.mark.parametrize(
    "what",
    [
        "training, plain model",
        "training, fast path",
        "sampling, plain model",
        "sampling, fast path",
    ],
)
def test_training_and_sampling_steps_never_wait_for_the_device(what):
    """On a GPU, each read of a device value stalls the queue: a step must make none."""
    model = UNet(tiny_unet_config(num_timesteps=100))
    generator = torch.Generator().manual_seed(0)
    fast_path = what.endswith("fast path")
    if what.startswith("training"):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x0 = torch.rand(4, 1, 16, 16) * 2 - 1
        net = prepare_model(copy.deepcopy(model), channels_last=True) if fast_path else model
        with DeviceReads() as reads:
            train_step(net, SHORT, x0, optimizer, lr=1e-3, generator=generator)
        assert reads.count == 0, reads.where
        return
    net = sampling_net(model, "bf16", channels_last=True) if fast_path else model
    steps = sample_progressive(net, SHORT, (2, 1, 16, 16), generator, progress=False)
    next(steps)
    with DeviceReads() as reads:
        for _ in range(3):
            next(steps)
    assert reads.count == 0, reads.where


def test_sample_fast_reads_only_at_its_entry():
    """The labels are checked once (one read), at the entry; the steps read nothing."""
    model = random_unet(tiny(num_timesteps=100, num_classes=3))
    counts = []
    for num_steps in (2, 10):
        with DeviceReads() as reads:
            sample_fast(
                model,
                SHORT,
                (3, 1, 16, 16),
                torch.Generator().manual_seed(0),
                num_steps=num_steps,
                labels=torch.tensor([0, 1, 2]),
                guidance=1.0,
                precision="bf16",
                progress=False,
            )
        counts.append(reads.count)
    assert counts == [1, 1], counts


def test_count_flops_counts_products():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    assert count_flops(lambda: a + 1) == 0  # element-wise work is not counted
    assert matmul_tflops("cpu", torch.float32, n=64, iters=2) > 0


@pytest.mark.slow
def test_compiled_fast_path_matches_on_cpu():
    """torch.compile (Inductor's C++ backend here): about a minute on a 2-core CPU."""
    model = random_unet(tiny()).eval()
    xt = torch.randn(2, 1, 16, 16)
    compiled = sampling_net(model, channels_last=True, compile=True)
    with torch.no_grad():
        for t in (900, 3):
            t_batch = torch.full((2,), t)
            torch.testing.assert_close(
                compiled(xt, t_batch), model(xt, t_batch), rtol=1e-4, atol=1e-4
            )


# CUDA only: the CUDA graph. Nothing here runs on a CPU.


def cuda_unet(**overrides) -> UNet:
    return random_unet(tiny(num_timesteps=100, **overrides)).cuda().eval()


@needs_cuda
def test_cuda_graph_replays_the_network():
    model = cuda_unet()
    net = CUDAGraphNet(FastNet(model))
    outputs = []
    with torch.no_grad():
        for seed in range(3):
            g = torch.Generator("cuda").manual_seed(seed)
            xt = torch.randn(4, 1, 16, 16, device="cuda", generator=g)
            t = torch.randint(1, 101, (4,), device="cuda", generator=g)
            out = net(xt, t)  # the first call records, every call replays
            torch.testing.assert_close(out, model(xt, t), rtol=1e-5, atol=1e-5)
            outputs.append((out, model(xt, t)))
    assert net.graph is not None
    for out, expected in outputs:  # each call handed back its own copy, not the buffer
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="recorded for inputs of shapes"):
        net(torch.randn(2, 1, 16, 16, device="cuda"), torch.tensor([1, 2], device="cuda"))


@needs_cuda
def test_cuda_graph_with_labels():
    model = cuda_unet(num_classes=3)
    torch.nn.init.normal_(model.class_emb.weight)
    net = CUDAGraphNet(FastNet(model))
    assert net.null_label == 3
    xt = torch.randn(4, 1, 16, 16, device="cuda")
    t = torch.tensor([1, 50, 99, 100], device="cuda")
    with torch.no_grad():
        for labels in ([0, 1, 2, 3], [2, 2, 0, 1]):
            labels = torch.tensor(labels, device="cuda")
            torch.testing.assert_close(
                net(xt, t, labels), model(xt, t, labels), rtol=1e-5, atol=1e-5
            )
        with pytest.raises(ValueError, match="recorded for inputs of shapes"):
            net(xt, t)  # recorded with labels: they are needed


@needs_cuda
@pytest.mark.parametrize("solver", ["ddpm", "ddim", "dpm_solver++"])
def test_sample_fast_cuda_graph_fp32_matches_sample(solver):
    model = cuda_unet()
    shape, g = (4, 1, 16, 16), lambda: torch.Generator("cuda").manual_seed(0)
    expected = sample(model, SHORT, shape, g(), solver=solver, num_steps=20, progress=False)
    got = sample_fast(
        model,
        SHORT,
        shape,
        g(),
        solver=solver,
        num_steps=20,
        progress=False,
        precision="fp32",
        cuda_graph=True,
    )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_sample_fast_cuda_graph_with_guidance_matches_sample():
    model = cuda_unet(num_classes=3)
    torch.nn.init.normal_(model.class_emb.weight)
    shape, g = (3, 1, 16, 16), lambda: torch.Generator("cuda").manual_seed(0)
    options = dict(
        labels=torch.tensor([0, 1, 2], device="cuda"), guidance=2.0, num_steps=20, progress=False
    )
    expected = sample(model, SHORT, shape, g(), **options)
    got = sample_fast(model, SHORT, shape, g(), precision="fp32", cuda_graph=True, **options)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_sample_fast_defaults_on_cuda_within_five_percent(monkeypatch):
    """On CUDA the defaults are a low-precision copy of the weights and a CUDA graph."""
    recorded = []
    record = CUDAGraphNet._record
    monkeypatch.setattr(
        CUDAGraphNet, "_record", lambda self, x: recorded.append(1) or record(self, x)
    )
    model = cuda_unet()
    shape, g = (4, 1, 16, 16), lambda: torch.Generator("cuda").manual_seed(0)
    expected = sample(model, SHORT, shape, g(), num_steps=20, progress=False)
    got = sample_fast(model, SHORT, shape, g(), num_steps=20, progress=False)
    assert recorded == [1]  # one graph, recorded once, replayed at every step
    assert got.dtype == torch.float32 and 0 < rel_rms(got, expected) < 5e-2
    assert all(p.dtype == torch.float32 for p in model.parameters())


@needs_cuda
def test_cuda_graph_sampling_steps_never_wait_for_the_device():
    model = cuda_unet()
    generator = torch.Generator("cuda").manual_seed(0)
    net = sampling_net(model, "bf16", cast_weights=True, channels_last=True, cuda_graph=True)
    steps = sample_progressive(net, SHORT.to("cuda"), (2, 1, 16, 16), generator, progress=False)
    next(steps)  # records the graph
    next(steps)
    torch.cuda.synchronize()
    with DeviceReads() as reads:
        torch.cuda.set_sync_debug_mode("error")  # any wait for the GPU raises
        try:
            for _ in range(3):
                next(steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert reads.count == 0, reads.where
