"""scripts/bench_gpu.py: the GPU benchmark keeps working (run at --tiny size on a CPU), records
a failing or skipped variant instead of stopping, and writes its JSON, its log and a table."""

import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, load_script

bench = load_script("bench_gpu")


def test_run_records_errors_and_budget_skips(tmp_path):
    run = bench.Run(tmp_path, "bench_gpu_x", budget_s=30.0, hard_limit_s=0, meta={})

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
    run = bench.Run(tmp_path, "bench_gpu_x", budget_s=0, hard_limit_s=0, meta={})
    args = bench.parse_args(["--out", str(tmp_path), "--only", "first"])

    def boom():
        raise RuntimeError("fused and compile disagree")

    fallback = dict(priority=2, section="train", vid="first-fallback", fn=lambda: {"x": 1},
                    skip=None, est=lambda: 1.0, info={})  # fmt: skip
    jobs = [
        dict(priority=2, section="train", vid="first", fn=boom, skip=None, est=lambda: 1.0,
             info={"note": "n"}, fallback=fallback),
        dict(priority=1, section="train", vid="other", fn=lambda: {}, skip=None,
             est=lambda: 1.0, info={}),
    ]  # fmt: skip
    bench.run_jobs(run, jobs, args)
    assert [(r["id"], r["status"]) for r in run.results["train"]] == [
        ("first", "error"), ("first-fallback", "ok"),
    ]  # fmt: skip


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
)  # fmt: skip
def test_kernel_kinds(name, kind):
    assert bench.kernel_kind(name) == kind


def test_host_side_times_a_step_and_records_its_failure():
    calls = []
    side = bench.host_side(lambda: calls.append(1), torch.device("cpu"))
    assert side["host_ms_per_step"] >= 0 and side["syncs_per_step"] is None and len(calls) == 3

    def broken():
        raise RuntimeError("no sync debug mode here")

    side = bench.host_side(broken, torch.device("cpu"))
    assert "host_ms_per_step" not in side and "no sync debug mode" in side["host_side_error"]


def test_kernel_breakdown_on_a_cpu_lists_kernels_and_cpu_operators():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.SiLU())
    x = torch.randn(2, 1, 8, 8)
    prof = bench.kernel_breakdown(lambda: model(x).sum().backward(), 2, torch.device("cpu"))
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
        ],  # fmt: skip
        "sample": [
            {"id": "eager-fp32", "status": "ok", "ms_per_step": 30.0},
            {"id": "fast", "status": "ok", "ms_per_step": 12.0},
            {"id": "fast-compile", "status": "skipped"},
        ],
    }
    summary = bench.summarize(results)
    assert summary["train_fast_vs_best_diffusers"] == {
        "ratio": 1.3, "ours": "ours-fast-graphs", "diffusers_best": "diffusers-bf16-compile",
        "target": 1.3, "met": True, "diffusers_compiled": True,
    }  # fmt: skip
    assert summary["sample_fast_vs_eager_fp32"] == {
        "ratio": 2.5, "fastest": "fast", "target": 3.0, "met": False,
    }  # fmt: skip
    assert bench.summarize({"train": [], "sample": []}) == {}
    # Without diffusers' compiled row the target is not decided, however large the ratio.
    results["train"] = [r for r in results["train"] if r["id"] != "diffusers-bf16-compile"]
    summary = bench.summarize(results)["train_fast_vs_best_diffusers"]
    assert summary["ratio"] == 2.6 and not summary["met"] and not summary["diffusers_compiled"]
    meta = {"torch": "2", "date": "today", "size": "full", "command": "bench", "device": "cuda"}
    name = "train_fast_vs_best_diffusers"
    table = bench.fast.bench_table({"meta": meta, "summary": {name: summary}})
    assert f"{name}: 2.60x (target 1.3x: not decided" in table


def test_the_diffusers_network_is_the_papers():
    pytest.importorskip("diffusers")
    from ddpm_lib.unet import UNet, UNetConfig
    from ddpm_lib.utils import count_parameters

    theirs = bench.DiffusersEps(bench.diffusers_unet(tiny=False))
    assert count_parameters(theirs) == count_parameters(UNet(UNetConfig.ddpm_cifar10()))
    assert count_parameters(theirs) == 35_746_307
    tiny = bench.DiffusersEps(bench.diffusers_unet(tiny=True))
    xt = torch.randn(2, 3, 16, 16)
    assert tiny(xt, torch.tensor([1, 1000])).shape == xt.shape


@pytest.mark.slow
def test_tiny_run_on_cpu(tmp_path):
    """The whole script at --tiny size, with one variant made to fail: about 15 s on a CPU."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--tiny", "--device", "cpu",
         "--out", str(tmp_path), "--inject-failure", "ours-bf16"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
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
    log = (tmp_path / "bench_gpu_cpu_tiny.log").read_text()
    assert "| training |" in log and "| sampling |" in log and "injected failure" in log
    assert "| ours-fp32 (the library's default path) |" in proc.stdout
    assert time.perf_counter() - start < 120
