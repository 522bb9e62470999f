"""The sampling rows of scripts/bench_gpu.py: one step of DDPM's 1000-step sampling loop for 1000
images with the UNetConfig.mnist() network, plain against the fast path's network.

Every row runs the library's one loop, ddpm_lib.sampling.sample_progressive: the plain row with
the model itself (eager fp32), the others with ddpm_lib.fast.sampling_net (bf16 autocast or
bf16 weights, channels-last, compile, a CUDA graph of the forward pass), as sample_fast does.
A step of the loop is one network call and one solver step; every step costs the same, so each
row is timed over a few steps: its 1000-step time is that per-step time x 1000
("extrapolated"), and the fast rows also run all 1000 steps end to end when that is quick.
Each row's network is also checked at t = 500 against the plain float32 network.
"""

import time
from dataclasses import dataclass

import torch
from bench_profile import host_side, kernel_breakdown
from bench_run import Job
from bench_train import COMPILE_ON_CPU

from ddpm_lib.fast import sampling_net
from ddpm_lib.profiling import randomize_zero_layers, time_per_call
from ddpm_lib.sampling import DDPMSolver, p_sample, sample, sample_progressive
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.unet import UNet, UNetConfig


@dataclass(frozen=True)
class SampleVariant:
    """One sampling row: the switches of the network the loop calls (see fast.sampling_net)."""

    id: str
    precision: str  # "fp32", or "bf16"
    cast_weights: bool = False  # the whole network in bf16 (a cast copy), not autocast
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    profile: bool = False  # also profile a few steps: GPU kernel time by kind
    priority: int = 1
    est_s: float = 6.0
    note: str = ""

    @property
    def plain(self) -> bool:
        """The plain row: the model itself, with its checks, in the loop."""
        return self.id == "eager-fp32"

    def switches(self) -> dict:
        """The switches, as the JSON records them."""
        return {
            "precision": self.precision,
            "cast_weights": self.cast_weights,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "cuda_graph": self.cuda_graph,
            "unchecked_forward": not self.plain,
        }


SAMPLE_VARIANTS = [
    SampleVariant(
        "eager-fp32", "fp32", profile=True, est_s=10.0, note="the library's sample loop"
    ),
    SampleVariant(
        "fp32-nocheck", "fp32", est_s=5.0, note="the fast path's network, switches off (CPU)"
    ),
    SampleVariant("bf16", "bf16", note="autocast, eager"),
    SampleVariant("bf16-weights", "bf16", cast_weights=True, note="the network in bf16, eager"),
    SampleVariant(
        "fast",
        "bf16",
        cast_weights=True,
        cuda_graph=True,
        profile=True,
        est_s=15.0,
        note="sample_fast's default: + CUDA graph; also end to end",
    ),
    SampleVariant(
        "fast-compile",
        "bf16",
        cast_weights=True,
        channels_last=True,
        compile=True,
        cuda_graph=True,
        profile=True,
        priority=2,
        est_s=40.0,
        note="+ channels-last, compile; also end to end",
    ),
    SampleVariant(
        "bf16-cl", "bf16", channels_last=True, priority=4, note="autocast + channels-last"
    ),
    SampleVariant(
        "bf16-compile",
        "bf16",
        compile=True,
        priority=4,
        est_s=10.0,
        note="autocast, compiled, no graph",
    ),
]


def sample_config(tiny: bool) -> UNetConfig:
    if tiny:
        return UNetConfig(
            image_size=14,
            in_channels=1,
            base_channels=16,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(7,),
            num_groups=8,
        )
    return UNetConfig.mnist()


class SampleBench:
    """Measures the sampling rows of one run (see bench_gpu.py: args, size, device)."""

    def __init__(self, run, args, size, device: torch.device):
        self.run, self.args, self.size, self.device = run, args, size, device
        self.schedule = NoiseSchedule.from_betas(linear_betas(1000)).to(device)
        self.config = sample_config(args.tiny)
        side = self.config.image_size
        self.shape = (size.sample_images, self.config.in_channels, side, side)
        self.reference = {}
        self.eager_ms = None

    def jobs(self) -> list[Job]:
        on_cuda = self.device.type == "cuda"
        jobs = []
        for v in SAMPLE_VARIANTS:
            if v.id == "fp32-nocheck" and on_cuda:
                continue  # a check of exactness for the CPU test; on the GPU it only costs time
            skip = None
            if v.compile and not (on_cuda or self.args.compile):
                skip = COMPILE_ON_CPU
            elif v.cuda_graph and not on_cuda:
                skip = "CUDA graphs need a CUDA device"
            info = dict(
                images=self.shape[0],
                image_size=self.config.image_size,
                num_timesteps=self.schedule.num_timesteps,
                steps_timed=self.size.sample_iters,
                switches=v.switches(),
                note=v.note,
            )
            jobs.append(
                Job(
                    section="sample",
                    id=v.id,
                    fn=lambda v=v: self.measure(v),
                    priority=v.priority,
                    est_s=lambda v=v: v.est_s,
                    skip=skip,
                    info=info,
                )
            )
        return jobs

    def setup(self) -> dict:
        """The network, and one reference step at t = 500 of the plain path to check against."""
        if self.reference:
            return self.reference
        device, schedule, shape = self.device, self.schedule, self.shape
        torch.manual_seed(0)
        model = UNet(self.config)
        randomize_zero_layers(model, std=0.02)
        model = model.to(device).eval()
        t = min(500, schedule.num_timesteps)
        x = torch.randn(shape, generator=torch.Generator(device).manual_seed(1), device=device)
        with torch.no_grad():
            eps = model(x, t)
        x_prev = p_sample(model, schedule, x, t, generator=torch.Generator(device).manual_seed(2))
        t_batch = torch.full((shape[0],), t, device=device)
        self.reference.update(model=model, t=t, t_batch=t_batch, x=x, eps=eps, x_prev=x_prev)
        return self.reference

    @torch.no_grad()
    def compare(self, net) -> dict:
        """net's eps and its step at t = 500 (the library's DDPM solver) against the plain path."""
        ref, schedule = self.reference, self.schedule
        eps = net(ref["x"], ref["t_batch"]).float()
        noise = torch.Generator(self.device).manual_seed(2)  # the z of the reference step
        x_prev = DDPMSolver().step(schedule, ref["x"], ref["t"], ref["t"] - 1, eps, noise)
        rms = (eps - ref["eps"]).pow(2).mean().sqrt() / ref["eps"].pow(2).mean().sqrt()
        return {
            "check_max_abs_diff": float((x_prev - ref["x_prev"]).abs().max()),
            "check_eps_rel_rms_diff": float(rms),
        }

    def measure(self, v: SampleVariant) -> dict:
        ref, device, size = self.setup(), self.device, self.size
        T = self.schedule.num_timesteps
        t0 = time.perf_counter()
        if v.plain:
            net, result = ref["model"], {"check_max_abs_diff": 0.0, "check_eps_rel_rms_diff": 0.0}
        else:
            net = sampling_net(
                ref["model"], v.precision, v.cast_weights, v.channels_last, v.compile, v.cuda_graph
            )
            result = self.compare(net)  # this first call also compiles, or records the graph
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result["first_call_s"] = round(time.perf_counter() - t0, 2)
        generator = torch.Generator(device=device).manual_seed(0)
        steps = sample_progressive(net, self.schedule, self.shape, generator, progress=False)
        next(steps)  # x_T and the first network call

        def one_step():  # one solver step and the next network call
            next(steps)

        seconds = time_per_call(one_step, size.sample_iters, size.sample_warmup, device)
        if v.plain:
            self.eager_ms = seconds * 1e3
        result.update(
            {
                "ms_per_step": round(seconds * 1e3, 3),
                f"s_for_{T}_steps": round(seconds * T, 2),
                "extrapolated": True,
                **host_side(one_step, device),
            }
        )
        if not v.plain:
            eager = self.eager_ms
            result["speedup_vs_eager_fp32"] = round(eager / (seconds * 1e3), 2) if eager else None
        if v.profile and (device.type == "cuda" or self.args.profile_cpu):
            result["profile"] = kernel_breakdown(one_step, 3, device)
        steps.close()
        budget_s = self.run.budget_s
        affordable = seconds * T < 20 and (
            budget_s <= 0 or self.run.elapsed() + 1.5 * seconds * T < budget_s
        )
        if v.id.startswith("fast") and affordable:  # all T steps for real, from x_T to x_0
            t1 = time.perf_counter()
            x0 = sample(net, self.schedule, self.shape, generator, progress=False)
            finite = bool(torch.isfinite(x0).all())  # reading it waits for the GPU
            result[f"s_for_{T}_steps_measured"] = round(time.perf_counter() - t1, 2)
            result["full_run_finite"] = finite
        return result
