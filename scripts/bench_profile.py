"""Where a step's time goes, for scripts/bench_gpu.py: a profile of a few steps with its GPU
kernels sorted into kinds, and the CPU's side of a step (its time to issue, its waits)."""

import time
import warnings
from collections import defaultdict

import torch
from bench_report import is_profiler_annotation

from ddpm_lib.profiling import host_time_per_call, synchronize

KERNEL_KINDS = [  # (kind, pieces of lower-case kernel names); the first kind that matches wins
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("layout and copies", ("nchwtonhwc", "nhwctonchw", "transpose", "permute")),
    ("convolution", ("conv", "implicit_gemm", "fprop", "dgrad", "wgrad", "winograd", "cudnn")),
    ("matmul", ("gemm", "cutlass", "cublas", "matmul", "splitk")),
    ("optimizer and clipping", ("adam", "multi_tensor", "foreach")),
    ("normalization", ("group_norm", "groupnorm", "rowwisemoments", "welford", "norm")),
    ("layout and copies", ("copy", "cat", "memcpy", "memset")),
    ("element-wise", tuple("elementwise vectorized unrolled silu add mul dropout".split())),
    ("element-wise", tuple("fill philox rand where pow div sub".split())),
    ("reduction", ("reduce", "sum", "mean")),
]


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
        [
            avg.key[:120],
            round(avg.self_cpu_time_total / 1e3 / steps, 3),
            round(avg.count / steps, 1),
            round(own_device_us(avg) / 1e3 / steps, 3),
        ]
        for avg in ranked[:top]
    ]
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
        synchronize(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
            synchronize(device)
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
        kinds: dict[str, float] = defaultdict(float)
        kernels: dict[str, list] = defaultdict(lambda: [0.0, 0])
        target = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
        for event in prof.events():
            if event.device_type != target or (target == DeviceType.CPU and event.cpu_parent):
                continue  # on a CPU (tests): top-level operators stand in for kernels
            if target == DeviceType.CUDA and (
                getattr(event, "is_user_annotation", False) or is_profiler_annotation(event.name)
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
                operator = avg.key.startswith(("aten::", "autograd::"))
                if us > 0 and not operator and not is_profiler_annotation(avg.key):
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
            "top_kernels": [
                [name[:160], round(ms, 3), round(n / steps, 1)] for name, (ms, n) in top
            ],
            "cpu_ops_ms_per_step": cpu_ms,
            "top_cpu_ops": cpu_top,
        }
    except Exception as e:  # noqa: BLE001 - a profile is extra information, never a failure
        return {"error": f"{type(e).__name__}: {e}"[:500]}


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
        side["host_ms_per_step"] = round(host_time_per_call(fn, 3, device) * 1e3, 3)
        side["syncs_per_step"] = cuda_syncs(fn, device)
    except Exception as err:  # noqa: BLE001 -- recorded, and the timed row is kept
        side["host_side_error"] = f"{type(err).__name__}: {err}"[:300]
    return side
