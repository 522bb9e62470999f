"""Benchmark ddpm_lib on one GPU: training throughput and sampling speed, beside diffusers.

    python scripts/bench_gpu.py --out DIR           # the full benchmark on one CUDA card
    python scripts/bench_gpu.py --tiny --out DIR    # tiny sizes, seconds on a CPU (a smoke test)
    timeout -k 10 400 python scripts/bench_gpu.py --out DIR --budget-s 360 --hard-limit-s 390 \
        2>&1 | tee DIR/bench_gpu.log                # as scripts/gpu_session.sh runs it

Training (bench_train.py): images/s, ms/step and achieved TFLOP/s of one AdamW step (batch 128
of 32x32 images) for the paper's CIFAR-10 U-Net and for diffusers' UNet2DModel configured as
google/ddpm-cifar10-32, in fp32, bf16 autocast and bf16 autocast + torch.compile, and on the
library's fast path (ddpm_lib.fast: channels-last, fused AdamW, compile, CUDA graphs).
Sampling (bench_sample.py): one step of the library's 1000-step sampling loop for 1000 digits,
with the plain network (eager fp32) and with the fast path's (ddpm_lib.fast.sampling_net: bf16,
channels-last, compile, a CUDA graph of the forward pass). Each row also tells the CPU's side of
a step (bench_profile.py): its time to return when the GPU has nothing queued
(host_ms_per_step) and its waits for the GPU (syncs_per_step, torch.cuda's sync debug mode; CUDA
only); chosen rows profile a few steps (GPU kernel time by kind).

Inputs are random (the timings do not depend on the values; the networks' zero-initialised
layers get random weights so that no product is trivially zero). Each row is caught on its own:
a failure is recorded in the JSON and the run goes on (bench_run.py). A time budget skips the
rows that would not fit (they are listed as skipped); the run does not stop itself, the caller's
`timeout` does, and its SIGTERM is recorded in the JSON ("aborted").

On the H100s of book/perf the eager rows took under a minute in all; the first call of a
compiled training row took 65 to 90 s (its compilation) and of a compiled sampling row about
20 s: every essential row needs about six minutes, so give --budget-s 360 (the default budget,
150 s, skips the last compiled ones). --only runs chosen rows.

Writes DIR/bench_gpu_<card>.json (all results, with the card, torch version, date and command;
saved after every row) and prints the tables of bench_report.py.
"""

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

PROCESS_START = time.perf_counter()  # the budget counts the imports too
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # this working tree's ddpm_lib, and bench_*

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from bench_report import bench_table, summarize  # noqa: E402
from bench_run import Run, run_jobs  # noqa: E402
from bench_sample import SampleBench  # noqa: E402
from bench_train import TrainBench  # noqa: E402

from ddpm_lib.profiling import matmul_tflops  # noqa: E402
from ddpm_lib.utils import precision_dtype  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Size:
    """The sizes of one run: batch and images, timed steps, the peak's product, the budget."""

    train_batch: int
    train_iters: int
    train_warmup: int
    sample_images: int
    sample_iters: int
    sample_warmup: int
    peak_n: int
    peak_iters: int
    budget_s: float


SIZES = {
    "full": Size(128, 15, 2, 1000, 20, 3, peak_n=8192, peak_iters=20, budget_s=150.0),
    "tiny": Size(2, 2, 1, 4, 3, 1, peak_n=256, peak_iters=3, budget_s=0.0),
}


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
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
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


def peaks(size: Size, device: torch.device) -> dict:
    """The speed of one large bf16 and fp32 matrix product: the card's practical peak."""
    out = {"matmul_n": size.peak_n}
    for name in ("bf16", "fp32"):
        dtype = precision_dtype(name) or torch.float32
        tflops = matmul_tflops(device, dtype, size.peak_n, size.peak_iters)
        out[f"{name}_matmul_tflops"] = float(f"{tflops:.4g}")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON results")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: seconds on a CPU")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip rows that would end past this many seconds (0: no budget; "
        "default 150 full, 0 tiny)",
    )
    p.add_argument(
        "--hard-limit-s",
        type=float,
        default=None,
        help="the seconds the caller's timeout allows the run (default budget + 50; 0: none): "
        "the essential rows may run until 5 s before it",
    )
    p.add_argument("--compile", action="store_true", help="run the compiled rows on a CPU")
    p.add_argument("--profile-cpu", action="store_true", help="profile on a CPU too (tests)")
    p.add_argument(
        "--no-cudnn-benchmark",
        action="store_true",
        help="keep cuDNN's heuristic choice of convolution kernels (by default they are "
        "timed: cudnn.benchmark, as in scripts/train.py)",
    )
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers rows")
    p.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default=None,
        help="comma-separated row ids to run (train ids, or sample-<id>)",
    )
    p.add_argument("--no-extras", action="store_true", help="skip the priority-4 rows")
    p.add_argument("--inject-failure", default=None, help=argparse.SUPPRESS)  # for the tests
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    size = SIZES["tiny" if args.tiny else "full"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        print("no CUDA device: the full benchmark needs a GPU (use --tiny on a CPU)")
        return 2
    budget_s = size.budget_s if args.budget_s is None else args.budget_s
    hard_limit_s = args.hard_limit_s
    if hard_limit_s is None:
        hard_limit_s = budget_s + 50 if budget_s > 0 else 0
    args.out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda" and not args.no_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # for every row alike, as scripts/train.py does
    for name in ("recompile_limit", "cache_size_limit"):  # one new model per compiled row
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in card.lower()).strip("-")
    stem = f"bench_gpu_{slug}{'_tiny' if args.tiny else ''}"
    meta = environment(args, device)
    meta.update(budget_s=budget_s, hard_limit_s=hard_limit_s, sizes=dataclasses.asdict(size))
    print(json.dumps(meta, indent=1), flush=True)
    run = Run(args.out, stem, budget_s, hard_limit_s, meta, start=PROCESS_START)
    run.stop_on_sigterm()
    try:
        run.results["peak"] = peaks(size, device)
    except Exception as e:  # noqa: BLE001 - the rows still run; their fraction of peak is None
        run.results["peak"] = {"error": f"{type(e).__name__}: {e}"}
    print(f"peak: {run.results['peak']}", flush=True)
    jobs = TrainBench(run, args, size, device).jobs() + SampleBench(run, args, size, device).jobs()
    run_jobs(run, jobs, args.only, args.no_extras, args.inject_failure)
    run.results["summary"] = summarize(run.results)
    run.save()
    print("\n" + bench_table(run.results))
    print(f"\nwrote {run.json_path} ({run.elapsed():.0f} s)", flush=True)
    errors = [
        r["id"] for s in ("train", "sample") for r in run.results[s] if r["status"] == "error"
    ]
    if errors:
        print(f"rows that failed: {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
