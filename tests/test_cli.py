"""The console scripts ddpm-train and ddpm-sample (ddpm_lib.cli), run through their command lines
as a user runs them: the scripts that `pip install` puts next to the Python interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def run(command: str, *args, timeout=600):
    return subprocess.run([str(BIN / command), *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("command", ["ddpm-train", "ddpm-sample"])
def test_help_explains_the_command_with_examples(command):
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: {command}" in result.stdout and "examples:" in result.stdout


def test_sample_writes_a_grid_from_a_shipped_model(tmp_path):
    out = tmp_path / "grid.png"
    result = run("ddpm-sample", "mnist", "--out", out, "--num", "6", "--steps", "3",
                 "--ncols", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "6 images, 3 steps of dpm_solver++" in result.stdout
    width, height = Image.open(out).size
    assert (width, height) == (2 * (3 * 30 + 2), 2 * (2 * 30 + 2))  # 3 x 2 digits, scale 2


def test_sample_draws_a_class_with_guidance_from_the_conditional_model(tmp_path):
    if not (ROOT / "ddpm_lib" / "pretrained" / "mnist_conditional" / "model.safetensors").exists():
        pytest.skip("no class-conditional checkpoint in this checkout")
    out = tmp_path / "sevens.png"
    result = run("ddpm-sample", "mnist_conditional", "--out", out, "--label", "7",
                 "--guidance", "2", "--num", "2", "--steps", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (2 * (2 * 30 + 2), 2 * (30 + 2))
    refused = run("ddpm-sample", "mnist_conditional", "--out", out, "--label", "10")
    assert refused.returncode != 0 and "--label must be 0..9 or 'all'" in refused.stderr


def test_sample_refuses_bad_requests(tmp_path):
    out = tmp_path / "grid.png"
    cases = [
        (["mnist", "--label", "3"], "unconditional: it takes no --label"),
        (["mnist", "--guidance", "2"], "--guidance needs --label"),
        (["mnist", "--eta", "0.5"], "--eta is DDIM's parameter"),
        (["mnist", "--steps", "0"], "num_steps must be an int in 1..T"),
        ([str(tmp_path / "nowhere")], "not a checkpoint folder"),
    ]
    for args, message in cases:
        result = run("ddpm-sample", *args, "--out", out, "--num", "2")
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    assert not out.exists()


@pytest.mark.slow
def test_train_then_sample_the_exported_checkpoint(tmp_path):
    out, shared = tmp_path / "run", tmp_path / "shared"
    trained = run("ddpm-train", "--preset", "toy", "--data", "mini_mnist", "--out", out,
                  "--steps", "3", "--batch-size", "4", "--sample-images", "4", "--no-progress",
                  "--export", shared)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert '"command": "ddpm-train --preset toy' in trained.stdout
    grid = tmp_path / "toy.png"
    sampled = run("ddpm-sample", shared, "--out", grid, "--num", "4", "--steps", "2")
    assert sampled.returncode == 0, sampled.stderr
    assert Image.open(grid).size == (2 * (4 * 16 + 2), 2 * (14 + 4))
    # Fine-tuning: a class-conditional run starts from the exported unconditional weights.
    tuned = run("ddpm-train", "--preset", "toy", "--conditional", "--init", shared, "--out",
                tmp_path / "tuned", "--steps", "1", "--batch-size", "4", "--sample-images", "0",
                "--no-progress")  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert f"starting from {shared}" in tuned.stdout and '"num_classes": 10' in tuned.stdout
    refused = run("ddpm-train", "--preset", "toy", "--init", "mnist", "--out", tmp_path / "no",
                  "--steps", "1", "--no-progress")  # fmt: skip
    assert refused.returncode != 0 and "the architectures differ" in refused.stderr
    assert not (tmp_path / "no" / "checkpoint").exists()


def test_train_explains_a_bad_folder_of_images_without_a_traceback(tmp_path):
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    for folder in (empty, broken):
        folder.mkdir()
    (broken / "c.png").write_bytes(b"not a picture")
    for folder, message in [(empty, "no images"), (broken, "c.png")]:
        result = run("ddpm-train", "--preset", "toy", "--data", folder, "--out",
                     tmp_path / "run", "--steps", "1", "--no-progress")  # fmt: skip
        assert result.returncode != 0 and f"ddpm-train: --data {folder}" in result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()
