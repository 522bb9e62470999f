"""The report of scripts/bench_gpu.py: its targets, and its JSON results as Markdown tables.

    from bench_report import bench_table   # with scripts/ on sys.path, as chapter 20 does
    print(bench_table(json.loads(Path("bench_gpu_<card>.json").read_text())))

bench_gpu.py calls `summarize` at the end of a run (the "summary" of its JSON) and prints
`bench_table`; chapter 20 shows the committed runs of book/perf/ with the same functions.
"""

import copy

TRAIN_TARGET, SAMPLE_TARGET = 1.3, 3.0  # the fast path against diffusers, and against eager fp32
FAST_TRAIN_IDS = ("ours-fast", "ours-fast-graphs", "ours-fast-nchw", "ours-fast-foreach")
PROFILE_KINDS = [
    "convolution",
    "matmul",
    "attention",
    "normalization",
    "fused (compiled)",
    "element-wise",
    "layout and copies",
    "optimizer and clipping",
]


def _cell(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def is_profiler_annotation(name: str) -> bool:
    """Whether a GPU event of PyTorch's profiler is a range that code marked, not a kernel.

    The profiler copies such ranges (an optimizer's step, say) onto the GPU's timeline, where
    they span the kernels launched inside them: counted as kernels, that time counts twice.
    Their names: Optimizer.step#AdamW.step, ProfilerStep#3, ## Call CompiledFxGraph ... ##
    (a kernel's name can hold "#" too: C++ lambdas, "[lambda()#1]").
    """
    return name.startswith(("Optimizer.", "ProfilerStep#", "## "))


def kernel_profile(profile: dict) -> dict:
    """A profile of bench_gpu.py with the annotation ranges among its top kernels taken out.

    The runs before the script skipped them counted an optimizer's step range as a kernel, in the
    total and in "optimizer and clipping"; this takes it out again (a later run has none).
    """
    fixed = copy.deepcopy(profile)
    for name, ms, _ in profile.get("top_kernels", []):
        if is_profiler_annotation(name):
            kind = "optimizer and clipping" if name.startswith("Optimizer.") else "other"
            if kind in fixed["by_kind_ms"]:
                fixed["by_kind_ms"][kind] = round(fixed["by_kind_ms"][kind] - ms, 3)
            fixed["kernel_ms_per_step"] = round(fixed["kernel_ms_per_step"] - ms, 3)
    kernels = profile.get("top_kernels", [])
    fixed["top_kernels"] = [k for k in kernels if not is_profiler_annotation(k[0])]
    if fixed.get("wall_ms_per_step_profiled"):
        busy = fixed["kernel_ms_per_step"] / fixed["wall_ms_per_step_profiled"]
        fixed["gpu_busy_fraction"] = round(min(busy, 1.0), 3)
    return fixed


def diffusers_compiled_ran(train_rows: list[dict]) -> bool:
    """Whether a compiled diffusers row ran: the base of the training target."""
    return any(
        r.get("model") == "diffusers"
        and r.get("status") == "ok"
        and r.get("switches", {}).get("compile")
        for r in train_rows
    )


def summarize(results: dict) -> dict:
    """The two targets of the fast path, from the rows that ran (the JSON's "summary")."""
    train = {r["id"]: r for r in results["train"] if r.get("status") == "ok"}
    sample = {r["id"]: r for r in results["sample"] if r.get("status") == "ok"}
    summary = {}
    diffusers = [r for r in train.values() if r["model"] == "diffusers"]
    ours_fast = [train[k] for k in FAST_TRAIN_IDS if k in train]
    if ours_fast and diffusers:
        ours = max(ours_fast, key=lambda r: r["images_per_s"])
        best = max(diffusers, key=lambda r: r["images_per_s"])
        ratio = ours["images_per_s"] / best["images_per_s"]
        compiled = diffusers_compiled_ran(diffusers)  # without it, the target is not decided
        summary["train_fast_vs_best_diffusers"] = {
            "ratio": round(ratio, 2),
            "ours": ours["id"],
            "diffusers_best": best["id"],
            "target": TRAIN_TARGET,
            "met": compiled and ratio >= TRAIN_TARGET,
            "diffusers_compiled": compiled,
        }
    fast_rows = [r for k, r in sample.items() if k != "eager-fp32"]
    if "eager-fp32" in sample and fast_rows:
        best = min(fast_rows, key=lambda r: r["ms_per_step"])
        ratio = sample["eager-fp32"]["ms_per_step"] / best["ms_per_step"]
        summary["sample_fast_vs_eager_fp32"] = {
            "ratio": round(ratio, 2),
            "fastest": best["id"],
            "target": SAMPLE_TARGET,
            "met": ratio >= SAMPLE_TARGET,
        }
    return summary


def target_verdict(results: dict, name: str) -> str:
    """The verdict on a target of the fast path: "met", "NOT met", or why this run cannot say.

    The training target compares with diffusers' best *compiled* row: a run without one (its
    budget skipped it, say) cannot decide it, whatever its summary says.
    """
    summary = results.get("summary", {}).get(name)
    if summary is None:
        return "not measured in this run"
    compiled = diffusers_compiled_ran(results.get("train", []))
    if name == "train_fast_vs_best_diffusers" and not compiled:
        return "not decided: diffusers' compiled row did not run"
    return "met" if summary["met"] else "NOT met"


def _status(row: dict) -> str | None:
    """None for a row that ran; else why not ("skipped: ...", "error: ...")."""
    if row.get("status") == "ok":
        return None
    return f"{row.get('status')}: {row.get('reason') or row.get('error', '')}"[:120]


def _name(row: dict) -> str:
    return f"{row['id']} ({row['note']})" if row.get("note") else row["id"]


def _train_lines(rows: list[dict]) -> list[str]:
    lines = [
        "| training | batch | ms/step | images/s | TFLOP/s | of bf16 peak | first call s "
        "| CPU ms to issue a step | host syncs per step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if _status(r):
            lines.append(f"| {_name(r)} | {r.get('batch')} | {_status(r)} | | | | | | |")
            continue
        frac = r.get("frac_bf16_peak")
        lines.append(
            f"| {_name(r)} | {r['batch']} | {r['ms_per_step']:.1f} | {r['images_per_s']:.0f} "
            f"| {r['tflops']:.1f} | {_cell(frac and 100 * frac, '{:.0f}%')} "
            f"| {r['first_call_s']:.1f} | {_cell(r.get('host_ms_per_step'))} "
            f"| {_cell(r.get('syncs_per_step'), '{}')} |"
        )
    return lines


def _sample_lines(rows: list[dict]) -> list[str]:
    lines = [
        "| sampling | images | ms/step | s for T steps | measured end to end | speed-up "
        "| eps rel. error | CPU ms to issue a step | host syncs per step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if _status(r):
            lines.append(f"| {_name(r)} | {r.get('images')} | {_status(r)} | | | | | | |")
            continue
        T = r["num_timesteps"]
        lines.append(
            f"| {_name(r)} | {r['images']} | {r['ms_per_step']:.2f} "
            f"| {r[f's_for_{T}_steps']:.1f} "
            f"| {_cell(r.get(f's_for_{T}_steps_measured'))} "
            f"| {_cell(r.get('speedup_vs_eager_fp32'), '{:.2f}x')} "
            f"| {_cell(r.get('check_eps_rel_rms_diff'), '{:.1e}')} "
            f"| {_cell(r.get('host_ms_per_step'), '{:.2f}')} "
            f"| {_cell(r.get('syncs_per_step'), '{}')} |"
        )
    return lines


def _profile_lines(results: dict) -> list[str]:
    profiled = [
        (section, r)
        for section in ("train", "sample")
        for r in results.get(section, [])
        if isinstance(r.get("profile"), dict) and "by_kind_ms" in r["profile"]
    ]
    if not profiled:
        return []
    lines = [
        "",
        "| GPU time per step, ms | kernels | wall (profiled) | "
        + " | ".join(PROFILE_KINDS)
        + " | other |",
        "|---|" + "---:|" * (len(PROFILE_KINDS) + 3),
    ]
    for section, r in profiled:
        prof = kernel_profile(r["profile"])
        by_kind = prof["by_kind_ms"]
        other = sum(v for k, v in by_kind.items() if k not in PROFILE_KINDS)
        cells = [_cell(by_kind.get(k), "{:.1f}") for k in PROFILE_KINDS] + [f"{other:.1f}"]
        lines.append(
            f"| {section} {r['id']} | {prof['kernel_ms_per_step']:.1f} "
            f"| {prof['wall_ms_per_step_profiled']:.1f} | " + " | ".join(cells) + " |"
        )
    return lines


def bench_table(results: dict) -> str:
    """The results of bench_gpu.py (its JSON, as a dict) as Markdown tables."""
    meta, peak = results["meta"], results.get("peak", {})
    card = meta.get("gpu") or meta.get("device")
    lines = [
        f"**{card}**, torch {meta['torch']}, CUDA {meta.get('cuda')}, "
        f"diffusers {meta.get('diffusers')}, {meta['date']}; size: {meta['size']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Measured peak of one {peak.get('matmul_n')}^3 matrix product: "
        f"bf16 {_cell(peak.get('bf16_matmul_tflops'))} TFLOP/s, "
        f"fp32 {_cell(peak.get('fp32_matmul_tflops'))} TFLOP/s.",
        "",
        *_train_lines(results.get("train", [])),
        "",
        *_sample_lines(results.get("sample", [])),
        *_profile_lines(results),
    ]
    for name, s in results.get("summary", {}).items():
        verdict = target_verdict(results, name)
        lines += ["", f"{name}: {s['ratio']:.2f}x (target {s['target']}x: {verdict})"]
    if meta.get("aborted"):
        lines += ["", f"ABORTED: {meta['aborted']}"]
    return "\n".join(lines)
