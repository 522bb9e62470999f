"""scripts/bench_gpu.py and its parts (bench_run, bench_train, bench_sample, bench_profile,
bench_report): the GPU benchmark keeps working (run at --tiny size on a CPU), records a failing
or skipped row instead of stopping, writes its JSON and prints its tables; the report reads the
committed runs as chapter 20 shows them."""

import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, load_script

bench = load_script("bench_gpu")  # puts scripts/ on sys.path, for its parts
import bench_profile  # noqa: E402
import bench_report  # noqa: E402
import bench_run  # noqa: E402
import bench_train  # noqa: E402


def test_run_records_errors_and_budget_skips(tmp_path):
    run = bench_run.Run(tmp_path, "bench_gpu_x", budget_s=30.0, hard_limit_s=0, meta={})

    def boom():
        raise RuntimeError("boom")

    assert run.variant("train", "a", lambda: {"ms_per_step": 1.0}, est_s=1.0)["status"] == "ok"
    entry = run.variant("train", "b", boom, est_s=1.0)
    assert entry["status"] == "error" and "RuntimeError: boom" in entry["error"]
    entry = run.variant("sample", "c", lambda: {}, est_s=60.0)  # would overrun the budget
    assert entry["status"] == "skipped" and entry["reason"].startswith("time budget")
    entry = run.variant("sample", "d", lambda: {}, est_s=1.0, skip="needs a GPU")
    assert entry == {"id": "d", "status": "skipped", "reason": "needs a GPU"}
    run.hard_limit_s = 100.0  # essential variants may run up to the watchdog's limit
    assert run.variant("sample", "e", lambda: {}, est_s=60.0, essential=True)["status"] == "ok"
    saved = json.loads((tmp_path / "bench_gpu_x.json").read_text())
    assert [r["status"] for r in saved["train"]] == ["ok", "error"]
    assert [r["status"] for r in saved["sample"]] == ["skipped", "skipped", "ok"]


def test_a_failed_job_runs_its_fallback(tmp_path):
    run = bench_run.Run(tmp_path, "bench_gpu_x", budget_s=0, hard_limit_s=0, meta={})

    def boom():
        raise RuntimeError("fused and compile disagree")

    fallback = bench_run.Job("train", "first-fallback", lambda: {"x": 1}, priority=2)
    jobs = [
        bench_run.Job("train", "first", boom, priority=2, info={"note": "n"}, fallback=fallback),
        bench_run.Job("train", "other", lambda: {}, priority=1),
    ]
    bench_run.run_jobs(run, jobs, only={"first"})
    assert [(r["id"], r["status"]) for r in run.results["train"]] == [
        ("first", "error"),
        ("first-fallback", "ok"),
    ]
    run = bench_run.Run(tmp_path, "bench_gpu_y", budget_s=0, hard_limit_s=0, meta={})
    bench_run.run_jobs(run, jobs, inject_failure="other")  # by priority: "other" first
    assert [(r["id"], r["status"]) for r in run.results["train"]] == [
        ("other", "error"),
        ("first", "error"),
        ("first-fallback", "ok"),
    ]
    assert "injected failure" in run.results["train"][0]["error"]


def test_sigterm_records_where_the_run_stopped(tmp_path):
    """`timeout` ends the run with SIGTERM: the JSON says so, with the row that was running."""
    code = f"""
import os, signal, sys, time
sys.path.insert(0, {str(ROOT / "scripts")!r})
from bench_run import Run
run = Run(__import__("pathlib").Path({str(tmp_path)!r}), "bench_gpu_x", 0, 0, {{}})
run.stop_on_sigterm()
run.variant("train", "hangs", lambda: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(30), 1)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    saved = json.loads((tmp_path / "bench_gpu_x.json").read_text())
    assert "stopped by SIGTERM" in saved["meta"]["aborted"]
    assert "'train hangs'" in saved["meta"]["aborted"]
    assert "ABORTED" in bench_report.bench_table(
        dict(saved, meta=dict(saved["meta"], torch="2", date="d", size="tiny", command="c"))
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("sm90_xmma_wgrad_implicit_gemm_indexed_bf16bf16", "convolution"),
        ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, float>", "layout and copies"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<256>>", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "attention"),
        ("triton_red_fused_native_group_norm_silu_3", "normalization"),
        ("triton_poi_fused_add_convolution_mul_7", "fused (compiled)"),
        ("void at::native::RowwiseMomentsCUDAKernel<float>", "normalization"),
        ("multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer and clipping"),
        ("void at::native::vectorized_elementwise_kernel<4, silu_kernel<float>>", "element-wise"),
        ("Memcpy DtoD (Device -> Device)", "layout and copies"),
        ("some_new_kernel", "other"),
    ],
)
def test_kernel_kinds(name, kind):
    assert bench_profile.kernel_kind(name) == kind


def test_host_side_times_a_step_and_records_its_failure():
    calls = []
    side = bench_profile.host_side(lambda: calls.append(1), torch.device("cpu"))
    assert side["host_ms_per_step"] >= 0 and side["syncs_per_step"] is None and len(calls) == 3

    def broken():
        raise RuntimeError("no sync debug mode here")

    side = bench_profile.host_side(broken, torch.device("cpu"))
    assert "host_ms_per_step" not in side and "no sync debug mode" in side["host_side_error"]


def test_kernel_breakdown_on_a_cpu_lists_kernels_and_cpu_operators():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.SiLU())
    x = torch.randn(2, 1, 8, 8)
    prof = bench_profile.kernel_breakdown(
        lambda: model(x).sum().backward(), 2, torch.device("cpu")
    )
    assert "error" not in prof, prof
    assert prof["steps_profiled"] == 2 and prof["kernel_ms_per_step"] > 0
    assert prof["by_kind_ms"]["convolution"] > 0
    assert 0 < prof["cpu_ops_ms_per_step"]
    ops = {row[0]: row for row in prof["top_cpu_ops"]}
    assert any("convolution" in name for name in ops), list(ops)
    name, own_ms, calls, device_ms = prof["top_cpu_ops"][0]
    assert own_ms > 0 and calls > 0 and device_ms == 0


def test_summary_compares_with_the_best_diffusers_row():
    results = {
        "train": [
            {"id": "ours-fast", "model": "ours", "status": "ok", "images_per_s": 1200.0},
            {"id": "ours-fast-graphs", "model": "ours", "status": "ok", "images_per_s": 1300.0},
            {
                "id": "diffusers-bf16",
                "model": "diffusers",
                "status": "ok",
                "images_per_s": 500,
                "switches": {"compile": False},
            },
            {
                "id": "diffusers-bf16-compile",
                "model": "diffusers",
                "status": "ok",
                "images_per_s": 1000.0,
                "switches": {"compile": True},
            },
            {"id": "diffusers-fast", "model": "diffusers", "status": "error"},
        ],
        "sample": [
            {"id": "eager-fp32", "status": "ok", "ms_per_step": 30.0},
            {"id": "fast", "status": "ok", "ms_per_step": 12.0},
            {"id": "fast-compile", "status": "skipped"},
        ],
    }
    summary = bench_report.summarize(results)
    assert summary["train_fast_vs_best_diffusers"] == {
        "ratio": 1.3,
        "ours": "ours-fast-graphs",
        "diffusers_best": "diffusers-bf16-compile",
        "target": 1.3,
        "met": True,
        "diffusers_compiled": True,
    }
    assert summary["sample_fast_vs_eager_fp32"] == {
        "ratio": 2.5,
        "fastest": "fast",
        "target": 3.0,
        "met": False,
    }
    assert bench_report.summarize({"train": [], "sample": []}) == {}
    # Without diffusers' compiled row the target is not decided, however large the ratio.
    results["train"] = [r for r in results["train"] if r["id"] != "diffusers-bf16-compile"]
    summary = bench_report.summarize(results)["train_fast_vs_best_diffusers"]
    assert summary["ratio"] == 2.6 and not summary["met"] and not summary["diffusers_compiled"]
    meta = {"torch": "2", "date": "today", "size": "full", "command": "bench", "device": "cuda"}
    name = "train_fast_vs_best_diffusers"
    table = bench_report.bench_table({"meta": meta, "summary": {name: summary}})
    assert f"{name}: 2.60x (target 1.3x: not decided" in table


def test_the_diffusers_network_is_the_papers():
    pytest.importorskip("diffusers")
    from ddpm_lib.unet import UNet, UNetConfig
    from ddpm_lib.utils import count_parameters

    theirs = bench_train.DiffusersEps(bench_train.diffusers_unet(tiny=False))
    assert count_parameters(theirs) == count_parameters(UNet(UNetConfig.ddpm_cifar10()))
    assert count_parameters(theirs) == 35_746_307
    tiny = bench_train.DiffusersEps(bench_train.diffusers_unet(tiny=True))
    xt = torch.randn(2, 3, 16, 16)
    assert tiny(xt, torch.tensor([1, 1000])).shape == xt.shape


@pytest.mark.slow
def test_tiny_run_on_cpu(tmp_path):
    """The whole script at --tiny size, with one variant made to fail: about 15 s on a CPU."""
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_gpu.py"),
            "--tiny",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--inject-failure",
            "ours-bf16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "bench_gpu_cpu_tiny.json").read_text())
    meta = results["meta"]
    for key in ("date", "command", "torch", "device", "python", "git_commit", "elapsed_s"):
        assert key in meta
    assert "--tiny" in meta["command"] and meta["size"] == "tiny"
    assert results["peak"]["bf16_matmul_tflops"] > 0
    train = {r["id"]: r for r in results["train"]}
    assert train["ours-bf16"]["status"] == "error" and "injected" in train["ours-bf16"]["error"]
    has_diffusers = importlib.util.find_spec("diffusers") is not None
    for vid in ("diffusers-fp32", "diffusers-bf16"):
        if not has_diffusers:  # a benchmark-only dependency: its rows record the ImportError
            assert train[vid]["status"] == "error" and "diffusers" in train[vid]["error"]
    rows = ["ours-fp32", "ours-bf16-fused", "ours-fast-nocompile"]
    rows += ["diffusers-fp32", "diffusers-bf16"] if has_diffusers else []
    for vid in rows:
        row = train[vid]
        assert row["status"] == "ok", row
        assert row["ms_per_step"] > 0 and row["images_per_s"] > 0 and row["loss_finite"]
        assert row["flops_per_step"] > 0 and row["tflops"] > 0 and row["frac_bf16_peak"] > 0
        assert row["host_ms_per_step"] > 0 and row["syncs_per_step"] is None  # CUDA only
    compiled = ["ours-fast", "ours-fast-graphs", "ours-fast-nchw", "diffusers-bf16-compile"]
    compiled.append("ours-bf16-compile")
    for vid in compiled + ["diffusers-fast", "diffusers-graphs"]:
        assert train[vid]["status"] == "skipped" and "torch.compile" in train[vid]["reason"]
    sample = {r["id"]: r for r in results["sample"]}
    assert sample["eager-fp32"]["status"] == "ok" and sample["eager-fp32"]["ms_per_step"] > 0
    assert sample["eager-fp32"]["host_ms_per_step"] > 0
    assert sample["fp32-nocheck"]["check_max_abs_diff"] == 0.0  # exactly the plain step
    for vid in ("bf16", "bf16-weights", "bf16-cl"):
        assert 0 < sample[vid]["check_eps_rel_rms_diff"] < 0.02, sample[vid]
    assert sample["fast"]["status"] == "skipped" and "CUDA" in sample["fast"]["reason"]
    assert "sample_fast_vs_eager_fp32" in results["summary"]
    out = proc.stdout  # everything the run printed (gpu_session.sh keeps it as its log)
    assert "| training |" in out and "| sampling |" in out and "injected failure" in out
    assert "| ours-fp32 (the library's default path) |" in proc.stdout
    assert time.perf_counter() - start < 120


def results(**summary):
    meta = dict(
        torch="2.x",
        date="today",
        command="python scripts/bench_gpu.py",
        size="full",
        gpu="Some GPU",
        device="cuda",
    )
    ok = dict(
        status="ok",
        batch=128,
        ms_per_step=20.0,
        images_per_s=6400.0,
        tflops=239.0,
        frac_bf16_peak=0.34,
        first_call_s=40.0,
        host_ms_per_step=12.5,
        syncs_per_step=0,
    )
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
        ],
        "summary": summary,
    }


def test_profiler_annotations_are_not_counted_as_kernels():
    assert bench_report.is_profiler_annotation("Optimizer.step#AdamW.step")
    assert bench_report.is_profiler_annotation("ProfilerStep#3")
    assert bench_report.is_profiler_annotation("## Call CompiledFxGraph fabc ##")
    for kernel in [
        "void at::native::vectorized_elementwise_kernel<4, silu_kernel<float>>",
        "triton_red_fused_native_group_norm_22",
        "Memcpy DtoD (Device -> Device)",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwc",
        "void at::native::elementwise_kernel<128, 4, [lambda()#1]>",
    ]:
        assert not bench_report.is_profiler_annotation(kernel)
    # As in the committed runs before the fix: the optimizer's range counted once more.
    profile = {
        "kernel_ms_per_step": 31.5,
        "wall_ms_per_step_profiled": 63.0,
        "by_kind_ms": {"convolution": 20.0, "optimizer and clipping": 5.5, "other": 6.0},
        "top_kernels": [
            ["sm90_conv", 20.0, 3.0],
            ["Optimizer.step#AdamW.step", 4.5, 1.0],
            ["multi_tensor_apply_kernel<FusedAdamMathFunctor>", 1.0, 2.0],
        ],
    }
    fixed = bench_report.kernel_profile(profile)
    assert fixed["kernel_ms_per_step"] == 27.0 and fixed["gpu_busy_fraction"] == round(27 / 63, 3)
    assert fixed["by_kind_ms"] == {
        "convolution": 20.0,
        "optimizer and clipping": 1.0,
        "other": 6.0,
    }
    assert [k[0] for k in fixed["top_kernels"]] == ["sm90_conv", profile["top_kernels"][2][0]]
    assert profile["kernel_ms_per_step"] == 31.5  # the input is left as it was
    assert bench_report.kernel_profile(fixed) == fixed  # nothing left to remove


def test_bench_table_shows_every_row_and_the_verdicts():
    table = bench_report.bench_table(
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


def test_the_report_reads_every_committed_run():
    """Chapter 20 shows book/perf/'s runs with this code: every row and verdict in its tables."""
    runs = sorted((ROOT / "book" / "perf").glob("*/bench_gpu_*.json"))
    assert runs, "no committed GPU run"
    for path in runs:
        results = json.loads(path.read_text())
        table = bench_report.bench_table(results)
        for section in ("train", "sample"):
            for row in results[section]:
                assert f"| {row['id']}" in table, (path, row["id"])
        for name in results.get("summary", {}):
            assert f"{name}: " in table
        # Those runs measured no compiled diffusers row beside ours: the target stays undecided.
        if "train_fast_vs_best_diffusers" in results.get("summary", {}):
            verdict = bench_report.target_verdict(results, "train_fast_vs_best_diffusers")
            assert verdict.startswith("not decided"), (path, verdict)
