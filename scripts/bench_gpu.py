"""Benchmark ddpm_lib on one GPU: training throughput and sampling speed, beside diffusers.

    python scripts/bench_gpu.py --out DIR           # the full benchmark on one CUDA card
    python scripts/bench_gpu.py --tiny --out DIR    # tiny sizes, seconds on a CPU (a smoke test)

Training: images/s, ms/step and achieved TFLOP/s of one AdamW step (ddpm_lib.training.train_step,
gradient clipping 1.0, batch 128 of 32x32 images) for the paper's CIFAR-10 U-Net
(UNetConfig.ddpm_cifar10()) and for diffusers' UNet2DModel configured as google/ddpm-cifar10-32
(the same 35.7M-parameter network), in fp32, bf16 autocast and bf16 autocast + torch.compile, and
on the library's fast path (ddpm_lib.fast: channels-last, fused AdamW, CUDA graphs, no host
syncs). FLOPs are counted once per model with torch.utils.flop_counter (forward + backward); the
fraction of the card's bf16 peak uses a large bf16 matrix product timed in the same run.

Sampling: DDPM's 1000-step loop for 1000 images with the UNetConfig.mnist() network: the plain
loop (ddpm_lib.sampling.sample_progressive, eager fp32) against the fast step
(ddpm_lib.fast.make_denoise_step: bf16, channels-last, CUDA graph; and also compiled). Every
step of the loop costs the same, so each variant is timed over a few steps; the 1000-step time
is that per-step time x 1000 ("extrapolated"), and the fast variants also run end to end.

Each row also tells the CPU's side of a step: its time to return when the GPU has nothing
queued (host_ms_per_step) and its waits for the GPU (syncs_per_step, torch.cuda's sync debug
mode; CUDA only).

Inputs are random (the timings do not depend on the values; the networks' zero-initialised
layers get random weights so that no product is trivially zero). Each variant is caught on its
own: a failure is recorded in the JSON and the run goes on. A time budget skips the variants
that would not fit (they are listed as skipped), and a watchdog ends the run if it overruns.

On the H100s of book/perf the eager variants took under a minute in all; the first call of a
compiled training variant took 65 to 90 s (its compilation) and of a compiled sampling variant
about 20 s: every essential variant needs about six minutes, so give --budget-s 360 (the default
budget, 150 s, skips the last compiled ones). --only runs chosen variants.

Writes DIR/bench_gpu_<card>.json (all results, with the card, torch version, date and command)
and DIR/bench_gpu_<card>.log (everything the run printed), and prints a table.
"""

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import defaultdict
from pathlib import Path

PROCESS_START = time.perf_counter()  # the budget counts the imports too
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import ddpm_lib from this working tree, installed or not

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from torch import nn  # noqa: E402

from ddpm_lib import fast  # noqa: E402
from ddpm_lib.sampling import p_sample, sample_progressive  # noqa: E402
from ddpm_lib.schedules import NoiseSchedule, linear_betas  # noqa: E402
from ddpm_lib.training import train_step  # noqa: E402
from ddpm_lib.unet import UNet, UNetConfig  # noqa: E402

LR, GRAD_CLIP = 2e-4, 1.0  # the paper's learning rate and gradient clipping, for both models

SIZES = {
    "full": dict(
        train_batch=128, train_iters=15, train_warmup=2, sample_images=1000, sample_iters=20,
        sample_warmup=3, peak_n=8192, peak_iters=20, budget_s=150.0,
    ),
    "tiny": dict(
        train_batch=2, train_iters=2, train_warmup=1, sample_images=4, sample_iters=3,
        sample_warmup=1, peak_n=256, peak_iters=3, budget_s=0.0,
    ),
}  # fmt: skip


def ours_train_config(tiny: bool) -> UNetConfig:
    if tiny:
        return UNetConfig(
            image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), num_groups=8,
        )  # fmt: skip
    return UNetConfig.ddpm_cifar10()


def sample_config(tiny: bool) -> UNetConfig:
    if tiny:
        return UNetConfig(
            image_size=14, in_channels=1, base_channels=16, channel_mults=(1, 2),
            num_res_blocks=1, attention_resolutions=(7,), num_groups=8,
        )  # fmt: skip
    return UNetConfig.mnist()


def diffusers_unet(tiny: bool):
    """diffusers' UNet2DModel as google/ddpm-cifar10-32 (35.7M parameters), or a tiny one."""
    from diffusers import UNet2DModel

    common = dict(
        in_channels=3, out_channels=3, dropout=0.1, attention_head_dim=None,  # one head, as DDPM
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    )  # fmt: skip
    if tiny:
        return UNet2DModel(
            sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), **common,
        )  # fmt: skip
    return UNet2DModel(
        sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), **common,
    )  # fmt: skip


class DiffusersEps(nn.Module):
    """diffusers' UNet2DModel as eps_theta(x_t, t); diffusers counts time from 0: k = t - 1."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(xt, t - 1).sample


# ---------------------------------------------------------------------------------------------
# The run: output files, time budget, watchdog


class Run:
    """Results, the time budget and the output files of one benchmark run."""

    def __init__(
        self, out: Path, stem: str, budget_s: float, hard_limit_s: float, meta: dict,
        start: float | None = None,
    ):  # fmt: skip
        self.out, self.stem, self.budget_s, self.hard_limit_s = out, stem, budget_s, hard_limit_s
        self.start = time.perf_counter() if start is None else start
        self.lock = threading.Lock()
        self.results = {"meta": meta, "peak": {}, "train": [], "sample": [], "summary": {}}
        self.current = None

    def start_watchdog(self) -> None:
        """End the process hard_limit_s after the start, keeping the results so far."""
        if self.hard_limit_s > 0:
            remaining = self.hard_limit_s - self.elapsed()
            threading.Thread(target=self._watchdog, args=(remaining,), daemon=True).start()

    @property
    def json_path(self) -> Path:
        return self.out / f"{self.stem}.json"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        with self.lock:
            self.results["meta"]["elapsed_s"] = round(self.elapsed(), 1)
            text = json.dumps(self.results, indent=1, default=str)
            self.json_path.write_text(text + "\n")

    def _watchdog(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0))
        self.results["meta"]["aborted"] = (
            f"the watchdog stopped the run after {self.elapsed():.0f} s, during {self.current!r}"
        )
        print(f"\nABORTED: {self.results['meta']['aborted']}", flush=True)
        self.save()
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)
        os._exit(3)

    def variant(
        self, section: str, vid: str, fn, est_s: float, skip: str | None = None,
        essential: bool = False, **info,
    ):  # fmt: skip
        """Run fn() -> dict of results as variant `vid` of `section`; record, never raise.

        It is skipped if it would end (elapsed + est_s) past the budget, or, if `essential`,
        past the watchdog's hard limit less 5 s.
        """
        entry = {"id": vid, **info}
        limit = self.budget_s
        if essential and self.hard_limit_s > 0:
            limit = max(limit, self.hard_limit_s - 5)
        if skip is None and limit > 0 and self.elapsed() + est_s > limit:
            skip = (
                f"time budget: {self.elapsed():.0f} s spent, about {est_s:.0f} s more needed, "
                f"limit {limit:.0f} s"
            )
        if skip is not None:
            entry.update(status="skipped", reason=skip)
            print(f"[{self.elapsed():6.1f} s] {section} {vid}: skipped ({skip})", flush=True)
        else:
            self.current = f"{section} {vid}"
            print(f"[{self.elapsed():6.1f} s] {section} {vid} ...", flush=True)
            t0 = time.perf_counter()
            try:
                entry.update(fn())
                entry["status"] = "ok"
            except Exception as e:  # noqa: BLE001 - one variant's failure must not end the run
                entry.update(status="error", error=f"{type(e).__name__}: {e}"[:2000])
                entry["traceback"] = traceback.format_exc()[-4000:]
                print(entry["traceback"], flush=True)
            entry["wall_s"] = round(time.perf_counter() - t0, 2)
            self.current = None
            try:  # (a broken CUDA context fails here too: it is recorded, the run goes on)
                torch._dynamo.reset()  # one variant's compiled code must not shape the next's
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception as e:  # noqa: BLE001
                entry["cleanup_error"] = f"{type(e).__name__}: {e}"[:500]
            shown = {k: v for k, v in entry.items() if k not in ("traceback", "switches")}
            print(f"[{self.elapsed():6.1f} s] {section} {vid}: {shown}", flush=True)
        with self.lock:
            self.results[section].append(entry)
        self.save()
        return entry


def tee_output(path: Path):
    """Copy everything written to this process's stdout and stderr (file descriptors 1 and 2,
    so also C++ and subprocess output) into `path`. Returns a function that stops copying."""
    sys.stdout.flush()
    sys.stderr.flush()
    log = open(path, "wb")  # noqa: SIM115 - closed by stop()
    read_fd, write_fd = os.pipe()
    saved_fd = os.dup(1)
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stdout.reconfigure(line_buffering=True)

    def pump():
        while chunk := os.read(read_fd, 65536):
            os.write(saved_fd, chunk)
            log.write(chunk)
            log.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()

    def stop():
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_fd, 1)  # closes this process's write ends of the pipe
        os.dup2(saved_fd, 2)
        thread.join(timeout=5)  # compile workers may still hold the pipe open: do not wait
        log.flush()

    return stop


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        commit = out.stdout.strip()
        if out.returncode != 0 or len(commit) != 40:
            return None
        # A copied tree (a GPU machine's, say) can hold another version than its HEAD: say so.
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return commit + (" + uncommitted changes" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(args, device: torch.device) -> dict:
    try:
        import diffusers

        diffusers_version = diffusers.__version__
    except Exception as e:  # noqa: BLE001
        diffusers_version = f"unavailable ({type(e).__name__}: {e})"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "size": "tiny" if args.tiny else "full",
        "device": str(device),
        "gpu": gpu,
        "gpu_capability": list(torch.cuda.get_device_capability(device)) if gpu else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "diffusers": diffusers_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "notes": (
            "fp32 rows: PyTorch defaults, so convolutions use TF32 tensor cores on Ampere and "
            "later (cudnn_allow_tf32) and matrix products do not. cudnn_benchmark applies to "
            "every row. Inputs are random; the networks' zero-initialised layers get random "
            "weights. Profiles: GPU kernel time per step by kind of kernel."
        ),
    }


# ---------------------------------------------------------------------------------------------
# Where the GPU's time goes: a profile of a few steps, its kernels sorted into kinds

KERNEL_KINDS = [  # (kind, pieces of lower-case kernel names); the first kind that matches wins
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("layout and copies", ("nchwtonhwc", "nhwctonchw", "transpose", "permute")),
    ("convolution", ("conv", "implicit_gemm", "fprop", "dgrad", "wgrad", "winograd", "cudnn")),
    ("matmul", ("gemm", "cutlass", "cublas", "matmul", "splitk")),
    ("optimizer and clipping", ("adam", "multi_tensor", "foreach")),
    ("normalization", ("group_norm", "groupnorm", "rowwisemoments", "welford", "norm")),
    ("layout and copies", ("copy", "cat", "memcpy", "memset")),
    ("element-wise", ("elementwise", "vectorized", "unrolled", "silu", "add", "mul", "dropout",
                      "fill", "philox", "rand", "where", "pow", "div", "sub")),
    ("reduction", ("reduce", "sum", "mean")),
]  # fmt: skip


def kernel_kind(name: str) -> str:
    """The kind of work a GPU kernel does, from its name (Triton kernels: from the fused ops)."""
    n = name.lower()
    if n.startswith("triton"):  # torch.compile's kernels are named after the ops they fuse
        return "normalization" if "norm" in n else "fused (compiled)"
    return next((kind for kind, keys in KERNEL_KINDS if any(k in n for k in keys)), "other")


def own_device_us(avg) -> float:
    """An averaged profiler row's own GPU time in microseconds (its field's name by version)."""
    us = getattr(avg, "self_device_time_total", None)
    return us if us is not None else getattr(avg, "self_cuda_time_total", 0)


def cpu_operators(prof, steps: int, top: int = 15) -> tuple[float, list]:
    """The CPU's side of a profile: the operators' own CPU time per step, and the top operators.

    Each top entry: [operator, own CPU ms per step, calls per step, own GPU ms per step]. Own
    times exclude the operators called inside. The sum leaves out the Python between operators:
    a step whose wall time is far above both its kernels and this sum spends that time in Python.
    """
    averages = prof.key_averages()
    total_ms = sum(avg.self_cpu_time_total for avg in averages) / 1e3 / steps
    ranked = sorted(averages, key=lambda a: -a.self_cpu_time_total)
    rows = [
        [avg.key[:120], round(avg.self_cpu_time_total / 1e3 / steps, 3),
         round(avg.count / steps, 1), round(own_device_us(avg) / 1e3 / steps, 3)]
        for avg in ranked[:top]
    ]  # fmt: skip
    return round(total_ms, 3), rows


def kernel_breakdown(fn, steps: int, device: torch.device) -> dict:
    """Profile `steps` calls of fn(): GPU kernel time per call, by kind, and the top kernels.

    Kernel times come from the CUDA profiler (CUPTI) and do not depend on the profiler's own
    overhead; the wall time, measured with the profiler on, does (it is an upper bound).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        fn()
        fast._synchronize(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
            fast._synchronize(device)
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
        kinds: dict[str, float] = defaultdict(float)
        kernels: dict[str, list] = defaultdict(lambda: [0.0, 0])
        target = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
        for event in prof.events():
            if event.device_type != target or (target == DeviceType.CPU and event.cpu_parent):
                continue  # on a CPU (tests): top-level operators stand in for kernels
            if target == DeviceType.CUDA and (
                getattr(event, "is_user_annotation", False)
                or fast.is_profiler_annotation(event.name)
            ):
                continue  # a marked range (the optimizer's step), not a kernel: no double count
            ms = event.time_range.elapsed_us() / 1e3 / steps
            kinds[kernel_kind(event.name)] += ms
            kernels[event.name][0] += ms
            kernels[event.name][1] += 1

        def by_time(kv):
            return -(kv[1][0] if isinstance(kv[1], list) else kv[1])

        if not kernels and target == DeviceType.CUDA:  # older profilers: the averaged table
            for avg in prof.key_averages():
                us = own_device_us(avg)
                skip = avg.key.startswith(("aten::", "autograd::")) or fast.is_profiler_annotation(
                    avg.key
                )
                if us > 0 and not skip:
                    kinds[kernel_kind(avg.key)] += us / 1e3 / steps
                    kernels[avg.key] = [us / 1e3 / steps, avg.count]
        top = sorted(kernels.items(), key=by_time)[:12]
        total = sum(kinds.values())
        cpu_ms, cpu_top = cpu_operators(prof, steps)
        return {
            "steps_profiled": steps,
            "kernel_ms_per_step": round(total, 3),
            "wall_ms_per_step_profiled": round(wall_ms, 3),
            "gpu_busy_fraction": round(min(total / wall_ms, 1.0), 3) if wall_ms else None,
            "by_kind_ms": {k: round(v, 3) for k, v in sorted(kinds.items(), key=by_time)},
            "top_kernels": [[name[:160], round(ms, 3), round(n / steps, 1)]
                            for name, (ms, n) in top],
            "cpu_ops_ms_per_step": cpu_ms,
            "top_cpu_ops": cpu_top,
        }  # fmt: skip
    except Exception as e:  # noqa: BLE001 - a profile is extra information, never a failure
        return {"error": f"{type(e).__name__}: {e}"[:500]}


# ---------------------------------------------------------------------------------------------
# Training

COMPILE_ON_CPU = "torch.compile skipped on a CPU (minutes of C++ compilation); --compile forces it"


def cuda_syncs(fn, device: torch.device) -> int | None:
    """How many times one call of fn() made the CPU wait for the GPU; None off CUDA.

    Counted by torch.cuda's sync debug mode, which warns at each synchronizing operation
    (a value read back, a copy to the host): every package's, not only ddpm_lib's.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def host_side(fn, device: torch.device) -> dict:
    """The CPU's side of a step: its time to issue one step, and its waits for the GPU.

    A diagnosis, not a result: if it fails, the error is recorded and the row's timings stay.
    """
    side = {}
    try:
        side["host_ms_per_step"] = round(fast.host_time_per_call(fn, 3, device) * 1e3, 3)
        side["syncs_per_step"] = cuda_syncs(fn, device)
    except Exception as err:  # noqa: BLE001 -- recorded, and the timed row is kept
        side["host_side_error"] = f"{type(err).__name__}: {err}"[:300]
    return side


def train_jobs(run: Run, args, size: dict, device: torch.device) -> list[dict]:
    """The training variants, as jobs for run.variant (see run_jobs)."""
    B = size["train_batch"]
    schedule = NoiseSchedule.from_betas(linear_betas(1000)).to(device)
    compile_skip = None if (device.type == "cuda" or args.compile) else COMPILE_ON_CPU
    est = {"eager": 8.0 if device.type == "cuda" else 5.0, "compile": 55.0}
    flops_cache: dict[str, int] = {}

    def build(kind: str) -> nn.Module:
        torch.manual_seed(0)
        if kind == "ours":
            model = UNet(ours_train_config(args.tiny))
            fast.randomize_zero_layers(model, std=0.02)
        else:
            model = DiffusersEps(diffusers_unet(args.tiny))
        return model.to(device).train()

    def flops_per_step(kind: str, model: nn.Module, x0: torch.Tensor) -> int:
        """Forward + backward of one step, counted on the math attention (every product seen)."""
        if kind not in flops_cache:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            from ddpm_lib.losses import simple_loss

            def one_step():
                with sdpa_kernel(SDPBackend.MATH):
                    simple_loss(model, schedule, x0).backward()

            flops_cache[kind] = fast.count_flops(one_step)
            model.zero_grad(set_to_none=True)
        return flops_cache[kind]

    def measure(kind, precision, wrap, channels_last, compile, fused, profile):
        model = build(kind)
        side = model.config.image_size if kind == "ours" else model.unet.config.sample_size
        x0 = torch.rand(B, 3, side, side, device=device) * 2 - 1
        flops = flops_per_step(kind, model, x0)
        if wrap == "fast":  # ddpm_lib.fast: the network without its checks, and the switches
            net = fast.prepare_model(model, channels_last, bool(compile),
                                     cuda_graphs=compile == "graphs")  # fmt: skip
        elif compile:  # the model itself, compiled as a user would if asked
            net = torch.compile(model, mode="reduce-overhead" if compile == "graphs" else None)
        else:
            net = model
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=LR, weight_decay=0.0, fused=True if fused else None
        )
        amp_dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        generator = torch.Generator(device=device).manual_seed(0)
        losses = []

        def step():
            loss = train_step(
                net, schedule, x0, optimizer, lr=LR, grad_clip=GRAD_CLIP, generator=generator,
                amp_dtype=amp_dtype,
            )  # fmt: skip
            losses.append(loss)

        t0 = time.perf_counter()
        step()  # the first call compiles, allocates the optimizer state, picks kernels
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        first_call_s = time.perf_counter() - t0
        seconds = fast.time_per_call(step, size["train_iters"], size["train_warmup"], device)
        tflops = flops / seconds / 1e12
        peak = run.results["peak"].get("bf16_matmul_tflops")
        losses_cpu = torch.stack(losses).float().cpu()
        result = {
            "ms_per_step": round(seconds * 1e3, 3),
            "images_per_s": round(B / seconds, 1),
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
        if profile and (device.type == "cuda" or args.profile_cpu):
            result["profile"] = kernel_breakdown(step, 2, device)
        return result

    # (priority, id, model, precision, network, channels_last, compile, fused AdamW, profile,
    # note): run in priority order, so that what the budget leaves out is the least needed.
    # network "model": the model itself (with its input checks); "fast": fast.prepare_model.
    # compile "graphs": compiled with CUDA graphs (mode "reduce-overhead").
    plan = [
        (1, "ours-fp32", "ours", "fp32", "model", False, False, False, False,
         "the library's default path"),
        (1, "ours-bf16", "ours", "bf16", "model", False, False, False, True,
         "TrainConfig(precision='bf16')"),
        (1, "ours-bf16-fused", "ours", "bf16", "fast", False, False, True, False,
         "+ fused AdamW, no checks"),
        (1, "ours-fast-nocompile", "ours", "bf16", "fast", True, False, True, False,
         "+ channels-last"),
        (1, "diffusers-fp32", "diffusers", "fp32", "model", False, False, False, False, ""),
        (1, "diffusers-bf16", "diffusers", "bf16", "model", False, False, False, False, ""),
        (2, "ours-fast", "ours", "bf16", "fast", True, True, True, True,
         "the fast path: + compile"),
        (2, "diffusers-bf16-compile", "diffusers", "bf16", "model", False, True, False, True,
         "its best"),
        (2, "ours-fast-graphs", "ours", "bf16", "fast", True, "graphs", True, True,
         "+ CUDA graphs: TrainConfig(cuda_graphs=True)"),
        (3, "ours-fast-nchw", "ours", "bf16", "fast", False, True, True, True,
         "the fast path without channels-last"),
        (4, "ours-bf16-compile", "ours", "bf16", "model", False, True, False, False,
         "torch.compile(model)"),
        (4, "diffusers-fast", "diffusers", "bf16", "fast", True, True, True, False,
         "our switches on it"),
        (4, "diffusers-graphs", "diffusers", "bf16", "model", False, "graphs", False, False,
         "torch.compile(mode='reduce-overhead')"),
    ]  # fmt: skip
    jobs = []
    for priority, vid, kind, precision, wrap, cl, compile, fused, profile, note in plan:
        skip = compile_skip if compile else None
        if kind == "diffusers" and args.no_diffusers:
            skip = "--no-diffusers"
        switches = {
            "precision": precision, "channels_last": cl, "compile": compile,
            "fused_adamw": fused, "unchecked_forward": kind == "ours" and wrap == "fast",
        }  # fmt: skip

        def fn(k=kind, p=precision, w=wrap, cl=cl, c=compile, f=fused, prof=profile):
            return measure(k, p, w, cl, c, f, prof)

        def done(entry, compiled=compile):
            if compiled and entry["status"] == "ok":
                est["compile"] = max(20.0, 1.1 * entry["wall_s"])

        jobs.append(dict(
            priority=priority, section="train", vid=vid, fn=fn, skip=skip, done=done,
            essential=priority <= 2, est=lambda c=compile: est["compile" if c else "eager"],
            info=dict(model=kind, batch=B, switches=switches, note=note),
        ))  # fmt: skip
    # If fused AdamW and compile do not get along on this torch (pytorch/pytorch#126585: the
    # gradients' strides), measure the fast path with the default (foreach) AdamW instead.
    fast_job = next(j for j in jobs if j["vid"] == "ours-fast")
    fast_job["fallback"] = dict(
        fast_job, vid="ours-fast-foreach", fallback=None,
        fn=lambda: measure("ours", "bf16", "fast", True, True, False, True),
        info=dict(fast_job["info"], switches=dict(fast_job["info"]["switches"], fused_adamw=False),
                  note="the fast path, foreach AdamW (fused failed)"),
    )  # fmt: skip
    return jobs


# ---------------------------------------------------------------------------------------------
# Sampling


def sample_jobs(run: Run, args, size: dict, device: torch.device) -> list[dict]:
    """The sampling variants, as jobs for run.variant (see train_jobs)."""
    N, iters, warmup = size["sample_images"], size["sample_iters"], size["sample_warmup"]
    schedule = NoiseSchedule.from_betas(linear_betas(1000)).to(device)
    T = schedule.num_timesteps
    config = sample_config(args.tiny)
    shape = (N, config.in_channels, config.image_size, config.image_size)
    on_cuda = device.type == "cuda"
    compile_skip = None if (on_cuda or args.compile) else COMPILE_ON_CPU
    graph_skip = None if on_cuda else "CUDA graphs need a CUDA device"
    state = {}

    def setup():
        """The network, and one reference step at t = 500 of the plain path to check against."""
        if state:
            return state
        torch.manual_seed(0)
        model = UNet(config)
        fast.randomize_zero_layers(model, std=0.02)
        model = model.to(device).eval()
        t = min(500, T)
        x = torch.randn(shape, generator=torch.Generator(device).manual_seed(1), device=device)
        z = torch.randn(shape, generator=torch.Generator(device).manual_seed(2), device=device)
        with torch.no_grad():
            eps = model(x, t)
        x_prev = p_sample(model, schedule, x, t, generator=torch.Generator(device).manual_seed(2))
        # x_prev = mean(eps) + sigma z: a change d in eps changes x_prev by -coef * d.
        coef = float(schedule.betas[t] / schedule.sqrt_one_minus_alpha_bars[t]
                     / schedule.alphas[t].sqrt())  # fmt: skip
        state.update(model=model, t=t, x=x, z=z, eps=eps, x_prev=x_prev, coef=coef)
        return state

    def compare(x_prev):
        s = state
        diff = x_prev.float() - s["x_prev"]
        eps_diff = diff / s["coef"]  # the network's error, recovered from the step's
        return {
            "check_max_abs_diff": float(diff.abs().max()),
            "check_eps_rel_rms_diff": float(eps_diff.pow(2).mean().sqrt()
                                            / s["eps"].pow(2).mean().sqrt()),
        }  # fmt: skip

    def eager_plain():
        model = setup()["model"]
        generator = torch.Generator(device=device).manual_seed(0)
        steps = sample_progressive(model, schedule, shape, generator, progress=False)
        seconds = fast.time_per_call(lambda: next(steps), iters, warmup, device)
        state["eager_ms"] = seconds * 1e3
        result = {
            "ms_per_step": round(seconds * 1e3, 3),
            f"s_for_{T}_steps": round(seconds * T, 2),
            "extrapolated": True,
            "check_max_abs_diff": 0.0,
            "check_eps_rel_rms_diff": 0.0,
            **host_side(lambda: next(steps), device),
        }
        if on_cuda or args.profile_cpu:
            result["profile"] = kernel_breakdown(lambda: next(steps), 3, device)
        steps.close()
        return result

    def fast_variant(precision, cast, channels_last, compile, cuda_graph, full_run, profile):
        s = setup()
        t0 = time.perf_counter()
        work, autocast_precision, dtype = s["model"], precision, None
        if cast:  # the whole network in bf16: a cast copy, no autocast (as sample_fast does)
            work, autocast_precision, dtype = copy.deepcopy(work), "fp32", torch.bfloat16
        elif channels_last:
            work = copy.deepcopy(work)  # keep the reference model's layout
        net = fast.prepare_model(work, channels_last, compile, dtype=dtype)
        step = fast.make_denoise_step(net, schedule, shape, autocast_precision, cuda_graph)
        result = compare(step(s["x"], s["t"], s["z"]))  # this first call also compiles
        if on_cuda:
            torch.cuda.synchronize(device)
        result["first_call_s"] = round(time.perf_counter() - t0, 2)
        generator = torch.Generator(device=device).manual_seed(0)
        loop = {"x": torch.randn(shape, generator=generator, device=device), "t": T}

        def one_step():
            z = torch.randn(shape, generator=generator, device=device)
            loop["x"] = step(loop["x"], loop["t"], z)
            loop["t"] = loop["t"] - 1 if loop["t"] > 1 else T

        seconds = fast.time_per_call(one_step, iters, warmup, device)
        eager_ms = state.get("eager_ms")
        result.update({
            "ms_per_step": round(seconds * 1e3, 3),
            f"s_for_{T}_steps": round(seconds * T, 2),
            "extrapolated": True,
            "speedup_vs_eager_fp32": round(eager_ms / (seconds * 1e3), 2) if eager_ms else None,
            **host_side(one_step, device),
        })  # fmt: skip
        if profile and (on_cuda or args.profile_cpu):
            result["profile"] = kernel_breakdown(one_step, 3, device)
        affordable = seconds * T < 20 and (
            run.budget_s <= 0 or run.elapsed() + 1.5 * seconds * T < run.budget_s
        )  # fmt: skip
        if full_run and affordable:  # all T steps for real, from x_T to x_0
            t1 = time.perf_counter()
            x = torch.randn(shape, generator=generator, device=device)
            for t in range(T, 0, -1):
                x = step(x, t, torch.randn(shape, generator=generator, device=device))
            finite = bool(torch.isfinite(x).all())  # reading it waits for the GPU
            result[f"s_for_{T}_steps_measured"] = round(time.perf_counter() - t1, 2)
            result["full_run_finite"] = finite
        return result

    # (priority, id, precision, cast weights, channels_last, compile, CUDA graph, profile,
    #  estimated seconds, note)
    plan = [
        (1, "eager-fp32", "fp32", False, False, False, False, True, 10.0,
         "the library's sample loop"),
        (1, "fp32-nocheck", "fp32", False, False, False, False, False, 5.0,
         "fast step, switches off (CPU)"),
        (1, "bf16", "bf16", False, False, False, False, False, 6.0, "autocast, eager"),
        (1, "bf16-weights", "bf16", True, False, False, False, False, 6.0,
         "the network in bf16, eager"),
        (1, "fast", "bf16", True, False, False, True, True, 15.0,
         "sample_fast's default: + CUDA graph; also end to end"),
        (2, "fast-compile", "bf16", True, True, True, True, True, 40.0,
         "+ channels-last, compile; also end to end"),
        (4, "bf16-cl", "bf16", False, True, False, False, False, 6.0, "autocast + channels-last"),
        (4, "bf16-compile", "bf16", False, False, True, False, False, 10.0,
         "autocast, compiled, no graph"),
    ]  # fmt: skip
    jobs = []
    for priority, vid, precision, cast, cl, compile, graph, profile, est_s, note in plan:
        if vid == "fp32-nocheck" and on_cuda:
            continue  # a check of exactness for the CPU test; on the GPU it only costs time
        skip = (compile_skip if compile else None) or (graph_skip if graph else None)
        switches = {
            "precision": precision, "cast_weights": cast, "channels_last": cl,
            "compile": compile, "cuda_graph": graph, "unchecked_forward": vid != "eager-fp32",
        }  # fmt: skip
        if vid == "eager-fp32":
            fn = eager_plain
        else:
            end_to_end = vid.startswith("fast")

            def fn(p=precision, w=cast, cl=cl, c=compile, g=graph, e2e=end_to_end, pr=profile):
                return fast_variant(p, w, cl, c, g, e2e, pr)

        jobs.append(dict(
            priority=priority, section="sample", vid=vid, fn=fn, skip=skip,
            essential=priority <= 2, est=lambda e=est_s: e,
            info=dict(images=N, image_size=config.image_size, num_timesteps=T,
                      steps_timed=iters, switches=switches, note=note),
        ))  # fmt: skip
    return jobs


def run_jobs(run: Run, jobs: list[dict], args, fallback: bool = False) -> None:
    """Run the jobs through run.variant, by priority (a stable sort keeps the plans' order);
    a job that fails runs its fallback job, if it has one."""
    for job in sorted(jobs, key=lambda j: j["priority"]):
        vid = job["vid"]
        chosen = not args.only or vid in args.only or f"{job['section']}-{vid}" in args.only
        if not fallback and (not chosen or (args.no_extras and job["priority"] > 3)):
            continue
        fn = job["fn"]
        if args.inject_failure in (vid, f"{job['section']}-{vid}"):

            def fn():
                raise RuntimeError("injected failure (--inject-failure), to test the recording")

        entry = run.variant(job["section"], vid, fn, job["est"](), job["skip"],
                            job.get("essential", False), **job["info"])  # fmt: skip
        if "done" in job:
            job["done"](entry)
        if entry["status"] == "error" and job.get("fallback"):
            run_jobs(run, [job["fallback"]], args, fallback=True)


# ---------------------------------------------------------------------------------------------


def summarize(results: dict) -> dict:
    """The two targets of the fast path, from the rows that ran."""
    train = {r["id"]: r for r in results["train"] if r.get("status") == "ok"}
    sample = {r["id"]: r for r in results["sample"] if r.get("status") == "ok"}
    summary = {}
    diffusers = [r for r in train.values() if r["model"] == "diffusers"]
    fast_ids = ("ours-fast", "ours-fast-graphs", "ours-fast-nchw", "ours-fast-foreach")
    ours_fast = [train[k] for k in fast_ids if k in train]
    if ours_fast and diffusers:
        ours = max(ours_fast, key=lambda r: r["images_per_s"])
        best = max(diffusers, key=lambda r: r["images_per_s"])
        ratio = ours["images_per_s"] / best["images_per_s"]
        # The target is against diffusers compiled: without that row, it is not decided.
        compiled = fast.diffusers_compiled_ran(diffusers)
        summary["train_fast_vs_best_diffusers"] = {
            "ratio": round(ratio, 2), "ours": ours["id"], "diffusers_best": best["id"],
            "target": 1.3, "met": compiled and ratio >= 1.3, "diffusers_compiled": compiled,
        }  # fmt: skip
    fast_rows = [r for k, r in sample.items() if k != "eager-fp32"]
    if "eager-fp32" in sample and fast_rows:
        best = min(fast_rows, key=lambda r: r["ms_per_step"])
        ratio = sample["eager-fp32"]["ms_per_step"] / best["ms_per_step"]
        summary["sample_fast_vs_eager_fp32"] = {
            "ratio": round(ratio, 2), "fastest": best["id"], "target": 3.0, "met": ratio >= 3.0,
        }  # fmt: skip
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON and the log")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: seconds on a CPU")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip variants that would end past this many seconds (0: no budget; "
                        "default 150 full, 0 tiny)")  # fmt: skip
    p.add_argument("--hard-limit-s", type=float, default=None,
                   help="the watchdog ends the run after this many seconds (default budget + 50; "
                        "0: never); the essential variants may run until then")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="run the compiled variants on a CPU")
    p.add_argument("--profile-cpu", action="store_true", help="profile on a CPU too (tests)")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="keep cuDNN's heuristic choice of convolution kernels (by default "
                        "they are timed: cudnn.benchmark, as in scripts/train.py)")  # fmt: skip
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers rows")
    p.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default=None,
        help="comma-separated variant ids to run (train ids, or sample-<id>)",
    )
    p.add_argument("--no-extras", action="store_true", help="skip the priority-4 variants")
    p.add_argument("--inject-failure", default=None, help=argparse.SUPPRESS)  # for the tests
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    size = SIZES["tiny" if args.tiny else "full"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        print("no CUDA device: the full benchmark needs a GPU (use --tiny on a CPU)")
        return 2
    budget_s = size["budget_s"] if args.budget_s is None else args.budget_s
    hard_limit_s = args.hard_limit_s
    if hard_limit_s is None:
        hard_limit_s = budget_s + 50 if budget_s > 0 else 0
    args.out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda" and not args.no_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # for every row alike, as scripts/train.py does
    for name in ("recompile_limit", "cache_size_limit"):  # one new model per compiled variant
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in card.lower()).strip("-")
    stem = f"bench_gpu_{slug}{'_tiny' if args.tiny else ''}"
    stop_tee = tee_output(args.out / f"{stem}.log")
    try:
        meta = environment(args, device)
        meta.update(budget_s=budget_s, hard_limit_s=hard_limit_s, sizes=size)
        print(json.dumps(meta, indent=1))
        run = Run(args.out, stem, budget_s, hard_limit_s, meta, start=PROCESS_START)
        run.start_watchdog()

        def peaks():
            out = {"matmul_n": size["peak_n"]}
            for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
                tflops = fast.matmul_tflops(device, dtype, size["peak_n"], size["peak_iters"])
                out[f"{name}_matmul_tflops"] = float(f"{tflops:.4g}")
            return out

        try:
            run.results["peak"] = peaks()
        except Exception as e:  # noqa: BLE001
            run.results["peak"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"peak: {run.results['peak']}", flush=True)
        jobs = train_jobs(run, args, size, device) + sample_jobs(run, args, size, device)
        run_jobs(run, jobs, args)
        run.results["summary"] = summarize(run.results)
        run.save()
        print("\n" + fast.bench_table(run.results))
        print(f"\nwrote {run.json_path} ({run.elapsed():.0f} s)", flush=True)
        errors = [r["id"] for s in ("train", "sample") for r in run.results[s]
                  if r["status"] == "error"]  # fmt: skip
        if errors:
            print(f"variants that failed: {errors}")
        return 0
    finally:
        stop_tee()


if __name__ == "__main__":
    sys.exit(main())
