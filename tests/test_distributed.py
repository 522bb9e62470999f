"""Training on several processes (DistributedDataParallel, CPU `gloo` backend, 2 processes).

The global batch stays the same whatever the number of processes, and every process draws the
whole batch (indices, t, eps) from the same seeded generator and keeps its slice; so the loss
curve of 2 processes matches 1 process with the same global batch and seed. Tolerance: 1e-4
relative (the only differences are the order of floating-point sums: two half-batch means
averaged by an all-reduce against one full-batch mean). Only rank 0 writes files.
"""

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT

pytestmark = pytest.mark.slow

STEPS, BATCH = 6, 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(out_dir) -> list[float]:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def files(out_dir) -> list[str]:
    return sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*"))


def test_train_script_under_torchrun_matches_one_process(tmp_path):
    """scripts/train.py, unchanged, under torchrun with 2 processes against a plain run."""
    args = [
        "--preset", "toy", "--data", "mini_mnist", "--steps", str(STEPS),
        "--batch-size", str(BATCH), "--log-every", "1", "--checkpoint-every", "3",
        "--sample-images", "2", "--sample-every", "0", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    script = str(ROOT / "scripts" / "train.py")
    one = subprocess.run([sys.executable, script, *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), script, *args,
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert len(losses(tmp_path / "two")) == STEPS  # one log line per step: only rank 0 logs
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(tmp_path / "one")),
        rtol=1e-4, atol=1e-6,
    )  # fmt: skip
    assert files(tmp_path / "two") == files(tmp_path / "one")  # the same files, written once
    assert two.stdout.count("preset toy:") == 1  # rank 0 alone prints
    assert "x 2 processes" in two.stdout and "x 2 processes" not in one.stdout
    assert len(set(losses(tmp_path / "one"))) == STEPS  # a real curve, not a constant


def _worker(rank: int, port: int, root: str, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    from pathlib import Path

    from ddpm_lib.distributed import init_distributed
    from ddpm_lib.training import TrainConfig, train

    info = init_distributed("gloo")
    model, schedule, data = _setup()
    config = replace(TrainConfig.toy(), num_steps=STEPS, batch_size=BATCH, log_every=2,
                     num_sample_images=0)  # fmt: skip
    out_dir = Path(root) / f"rank{rank}"  # each process is given its own folder
    history = train(model, schedule, data, config, out_dir=out_dir, progress=False)
    results[rank] = [r["loss"] for r in history.records]
    torch.distributed.destroy_process_group()
    assert info.world_size == 2


def _setup():
    from ddpm_lib.batches import fit_images
    from ddpm_lib.data import load_images
    from ddpm_lib.schedules import NoiseSchedule, linear_betas
    from ddpm_lib.unet import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig.toy()
    data = fit_images(load_images("mini_mnist", "train")[:256], config.image_size)
    return UNet(config), NoiseSchedule.from_betas(linear_betas(1000)), data


def test_train_function_in_two_processes_only_rank_0_writes(tmp_path):
    from ddpm_lib.training import TrainConfig, train

    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), str(tmp_path), results), nprocs=2, join=True)
    model, schedule, data = _setup()
    config = replace(TrainConfig.toy(), num_steps=STEPS, batch_size=BATCH, log_every=2,
                     num_sample_images=0)  # fmt: skip
    single = train(model, schedule, data, config, out_dir=tmp_path / "single", progress=False)
    expected = [r["loss"] for r in single.records]
    torch.testing.assert_close(torch.tensor(results[0]), torch.tensor(expected), rtol=1e-4,
                               atol=1e-6)  # fmt: skip
    torch.testing.assert_close(torch.tensor(results[1]), torch.tensor(expected), rtol=1e-4,
                               atol=1e-6)  # every rank logs the all-reduced loss  # fmt: skip
    assert (tmp_path / "rank0" / "log.jsonl").exists()
    assert not (tmp_path / "rank1").exists()  # rank 1 wrote nothing, not even its folder
    assert files(tmp_path / "rank0") == files(tmp_path / "single")
