"""The training rows of scripts/bench_gpu.py: one AdamW step (ddpm_lib.training.train_step,
gradient clipping 1.0) of the paper's CIFAR-10 U-Net and of diffusers' UNet2DModel configured as
google/ddpm-cifar10-32 (the same 35.7M-parameter network), with the fast path's switches.

FLOPs are counted once per model with torch.utils.flop_counter (forward + backward, on the math
attention so that every product is seen); the fraction of the card's bf16 peak uses the large
bf16 matrix product that the run timed first.
"""

import time
from dataclasses import dataclass

import torch
from bench_profile import host_side, kernel_breakdown
from bench_run import Job
from torch import nn

from ddpm_lib.fast import prepare_model
from ddpm_lib.losses import simple_loss
from ddpm_lib.profiling import count_flops, randomize_zero_layers, time_per_call
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.training import train_step
from ddpm_lib.unet import UNet, UNetConfig
from ddpm_lib.utils import precision_dtype

LR, GRAD_CLIP = 2e-4, 1.0  # the paper's learning rate and gradient clipping, for both models
COMPILE_ON_CPU = "torch.compile skipped on a CPU (minutes of C++ compilation); --compile forces it"


@dataclass(frozen=True)
class TrainVariant:
    """One training row: the network, and the switches it runs with."""

    id: str
    model: str  # "ours" (ddpm_lib's UNet) or "diffusers"
    precision: str  # "fp32", or "bf16" autocast
    fast: bool = False  # through fast.prepare_model (no checks); else the model itself
    channels_last: bool = False
    compile: bool | str = False  # True, or "graphs": with CUDA graphs (mode "reduce-overhead")
    fused_adamw: bool = False
    profile: bool = False  # also profile a few steps: GPU kernel time by kind
    priority: int = 1  # rows run in priority order: what a budget leaves out is the least needed
    note: str = ""

    def switches(self) -> dict:
        """The switches, as the JSON records them."""
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "fused_adamw": self.fused_adamw,
            "unchecked_forward": self.model == "ours" and self.fast,
        }


FAST = dict(fast=True, channels_last=True, fused_adamw=True)  # the fast path's switches
TRAIN_VARIANTS = [
    TrainVariant("ours-fp32", "ours", "fp32", note="the library's default path"),
    TrainVariant("ours-bf16", "ours", "bf16", profile=True, note="TrainConfig(precision='bf16')"),
    TrainVariant(
        "ours-bf16-fused",
        "ours",
        "bf16",
        fast=True,
        fused_adamw=True,
        note="+ fused AdamW, no checks",
    ),
    TrainVariant("ours-fast-nocompile", "ours", "bf16", **FAST, note="+ channels-last"),
    TrainVariant("diffusers-fp32", "diffusers", "fp32"),
    TrainVariant("diffusers-bf16", "diffusers", "bf16"),
    TrainVariant(
        "ours-fast",
        "ours",
        "bf16",
        **FAST,
        compile=True,
        profile=True,
        priority=2,
        note="the fast path: + compile",
    ),
    TrainVariant(
        "diffusers-bf16-compile",
        "diffusers",
        "bf16",
        compile=True,
        profile=True,
        priority=2,
        note="its best",
    ),
    TrainVariant(
        "ours-fast-graphs",
        "ours",
        "bf16",
        **FAST,
        compile="graphs",
        profile=True,
        priority=2,
        note="+ CUDA graphs: TrainConfig(cuda_graphs=True)",
    ),
    TrainVariant(
        "ours-fast-nchw",
        "ours",
        "bf16",
        fast=True,
        fused_adamw=True,
        compile=True,
        profile=True,
        priority=3,
        note="the fast path without channels-last",
    ),
    TrainVariant(
        "ours-bf16-compile",
        "ours",
        "bf16",
        compile=True,
        priority=4,
        note="torch.compile(model)",
    ),
    TrainVariant(
        "diffusers-fast",
        "diffusers",
        "bf16",
        **FAST,
        compile=True,
        priority=4,
        note="our switches on it",
    ),
    TrainVariant(
        "diffusers-graphs",
        "diffusers",
        "bf16",
        compile="graphs",
        priority=4,
        note="torch.compile(mode='reduce-overhead')",
    ),
]
# If fused AdamW and compile do not get along on this torch (pytorch/pytorch#126585: the
# gradients' strides), the fast path is measured with the default (foreach) AdamW instead.
FALLBACKS = {
    "ours-fast": TrainVariant(
        "ours-fast-foreach",
        "ours",
        "bf16",
        fast=True,
        channels_last=True,
        compile=True,
        profile=True,
        priority=2,
        note="the fast path, foreach AdamW (fused failed)",
    ),
}


def ours_train_config(tiny: bool) -> UNetConfig:
    if tiny:
        return UNetConfig(
            image_size=16,
            base_channels=16,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(8,),
            num_groups=8,
        )
    return UNetConfig.ddpm_cifar10()


def diffusers_unet(tiny: bool):
    """diffusers' UNet2DModel as google/ddpm-cifar10-32 (35.7M parameters), or a tiny one."""
    from diffusers import UNet2DModel  # a benchmark-only dependency: its rows record its absence

    common = dict(
        in_channels=3,
        out_channels=3,
        dropout=0.1,
        attention_head_dim=None,  # one head, as DDPM
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        norm_eps=1e-6,
    )
    if tiny:
        return UNet2DModel(
            sample_size=16,
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            **common,
        )
    return UNet2DModel(
        sample_size=32,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        **common,
    )


class DiffusersEps(nn.Module):
    """diffusers' UNet2DModel as eps_theta(x_t, t); diffusers counts time from 0: k = t - 1."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(xt, t - 1).sample


class TrainBench:
    """Measures the training rows of one run (see bench_gpu.py: args, size, device)."""

    def __init__(self, run, args, size, device: torch.device):
        self.run, self.args, self.size, self.device = run, args, size, device
        self.schedule = NoiseSchedule.from_betas(linear_betas(1000)).to(device)
        self.estimates = {"eager": 8.0 if device.type == "cuda" else 5.0, "compile": 55.0}
        self.flops: dict[str, int] = {}

    def jobs(self) -> list[Job]:
        jobs = []
        for v in TRAIN_VARIANTS:
            fallback = self.job(FALLBACKS[v.id]) if v.id in FALLBACKS else None
            jobs.append(self.job(v, fallback))
        return jobs

    def job(self, v: TrainVariant, fallback: Job | None = None) -> Job:
        skip = None
        if v.compile and not (self.device.type == "cuda" or self.args.compile):
            skip = COMPILE_ON_CPU
        if v.model == "diffusers" and self.args.no_diffusers:
            skip = "--no-diffusers"
        kind = "compile" if v.compile else "eager"
        info = dict(model=v.model, batch=self.size.train_batch, switches=v.switches(), note=v.note)
        return Job(
            section="train",
            id=v.id,
            fn=lambda: self.measure(v),
            priority=v.priority,
            est_s=lambda: self.estimates[kind],
            skip=skip,
            info=info,
            done=lambda entry: self.learn(v, entry),
            fallback=fallback,
        )

    def learn(self, v: TrainVariant, entry: dict) -> None:
        """A compiled row that ran tells how long the next one will take."""
        if v.compile and entry["status"] == "ok":
            self.estimates["compile"] = max(20.0, 1.1 * entry["wall_s"])

    def build(self, kind: str) -> nn.Module:
        torch.manual_seed(0)
        if kind == "ours":
            model = UNet(ours_train_config(self.args.tiny))
            randomize_zero_layers(model, std=0.02)
        else:
            model = DiffusersEps(diffusers_unet(self.args.tiny))
        return model.to(self.device).train()

    def flops_per_step(self, kind: str, model: nn.Module, x0: torch.Tensor) -> int:
        """Forward + backward of one step, counted on the math attention (every product seen)."""
        if kind not in self.flops:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def one_step():
                with sdpa_kernel(SDPBackend.MATH):
                    simple_loss(model, self.schedule, x0).backward()

            self.flops[kind] = count_flops(one_step)
            model.zero_grad(set_to_none=True)
        return self.flops[kind]

    def measure(self, v: TrainVariant) -> dict:
        device, size = self.device, self.size
        model = self.build(v.model)
        side = model.config.image_size if v.model == "ours" else model.unet.config.sample_size
        x0 = torch.rand(size.train_batch, 3, side, side, device=device) * 2 - 1
        flops = self.flops_per_step(v.model, model, x0)
        graphs = v.compile == "graphs"
        if v.fast:
            net = prepare_model(model, v.channels_last, bool(v.compile), cuda_graphs=graphs)
        elif v.compile:
            net = torch.compile(model, mode="reduce-overhead" if graphs else None)
        else:
            net = model
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=LR, weight_decay=0.0, fused=True if v.fused_adamw else None
        )
        amp_dtype = precision_dtype(v.precision)
        generator = torch.Generator(device=device).manual_seed(0)
        losses = []

        def step():
            loss = train_step(
                net,
                self.schedule,
                x0,
                optimizer,
                lr=LR,
                grad_clip=GRAD_CLIP,
                generator=generator,
                amp_dtype=amp_dtype,
            )
            losses.append(loss)

        t0 = time.perf_counter()
        step()  # the first call compiles, allocates the optimizer state, picks kernels
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        first_call_s = time.perf_counter() - t0
        seconds = time_per_call(step, size.train_iters, size.train_warmup, device)
        tflops = flops / seconds / 1e12
        peak = self.run.results["peak"].get("bf16_matmul_tflops")
        losses_cpu = torch.stack(losses).float().cpu()
        result = {
            "ms_per_step": round(seconds * 1e3, 3),
            "images_per_s": round(size.train_batch / seconds, 1),
            "tflops": float(f"{tflops:.4g}"),
            "frac_bf16_peak": float(f"{tflops / peak:.4g}") if peak else None,
            "flops_per_step": flops,
            "first_call_s": round(first_call_s, 2),
            "loss_first": round(float(losses_cpu[0]), 5),
            "loss_last": round(float(losses_cpu[-1]), 5),
            "loss_finite": bool(torch.isfinite(losses_cpu).all()),
        }
        if device.type == "cuda":
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result.update(host_side(step, device))
        if v.profile and (device.type == "cuda" or self.args.profile_cpu):
            result["profile"] = kernel_breakdown(step, 2, device)
        return result
