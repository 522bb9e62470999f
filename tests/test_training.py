"""ddpm_lib.training: configs, the training step, EMA, checkpoints, resuming, the command line."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image

from ddpm_lib.losses import simple_loss
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.training import (
    EMA,
    TrainConfig,
    export_checkpoint,
    fit_images,
    learning_rate,
    load_checkpoint,
    load_pretrained,
    preset,
    save_checkpoint,
    save_image_grid,
    train,
    train_step,
)
from ddpm_lib.unet import UNet, UNetConfig
from ddpm_lib.utils import count_parameters

ROOT = Path(__file__).resolve().parents[1]
T = 10  # a short chain keeps sampling (the end-of-run grids) cheap


def tiny_config(**overrides) -> UNetConfig:
    fields = dict(
        image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(), dropout=0.0, num_groups=4, num_timesteps=T,
    )  # fmt: skip
    return UNetConfig(**(fields | overrides))


def tiny_run(**overrides) -> TrainConfig:
    fields = dict(
        num_steps=6, batch_size=8, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=2,
        checkpoint_every=0, num_sample_images=4,
    )  # fmt: skip
    return TrainConfig(**(fields | overrides))


@pytest.fixture
def schedule():
    return NoiseSchedule.from_betas(linear_betas(T, 1e-3, 0.2))


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.rand((32, 1, 8, 8), generator=gen) * 2 - 1


def new_model(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    return UNet(tiny_config(**overrides))


def test_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.num_steps, c.batch_size, c.lr, c.warmup_steps) == (800_000, 128, 2e-4, 5000)
    assert (c.grad_clip, c.ema_decay, c.weight_decay, c.precision) == (1.0, 0.9999, 0.0, "fp32")
    assert TrainConfig.ddpm_cifar10().random_flip
    assert preset("ddpm_cifar10") == (UNetConfig.ddpm_cifar10(), TrainConfig.ddpm_cifar10())


def test_presets_and_bad_configs():
    for name in ["toy", "mnist", "ddpm_cifar10"]:
        unet_config, train_config = preset(name)
        assert isinstance(unet_config, UNetConfig) and isinstance(train_config, TrainConfig)
    assert not TrainConfig.mnist().random_flip and not TrainConfig.toy().random_flip
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_learning_rate_warm_up():
    c = TrainConfig(lr=1e-3, warmup_steps=100)
    assert learning_rate(1, c) == pytest.approx(1e-5)
    assert learning_rate(50, c) == pytest.approx(5e-4)
    assert learning_rate(100, c) == learning_rate(10_000, c) == pytest.approx(1e-3)
    assert learning_rate(1, replace(c, warmup_steps=0)) == 1e-3


def test_ema_update_and_warm_up():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.9)
    start = ema.model.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.model.weight, 0.9 * start + 0.1 * net.weight)
    assert not any(p.requires_grad for p in ema.model.parameters())
    warm = EMA(net, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.num_updates = 10**6
    assert warm.current_decay() == 0.999


def test_train_step_overfits_one_batch(schedule, data):
    """Steps of Algorithm 1 on one fixed batch bring the loss (at fixed t and eps) far down."""
    model = new_model()
    x0 = data[:4]
    gen = torch.Generator().manual_seed(1)
    t_fixed = torch.randint(1, T + 1, (32,), generator=gen)
    eps_fixed = torch.randn((32, 1, 8, 8), generator=gen)
    batch = x0.repeat(8, 1, 1, 1)

    def fixed_loss():
        with torch.no_grad():
            return simple_loss(model, schedule, batch, t_fixed, eps_fixed).item()

    before = fixed_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(80):
        loss = train_step(model, schedule, batch, opt, lr=3e-3, generator=gen)
        assert loss.shape == () and not loss.requires_grad
    assert before == pytest.approx(1.0, abs=0.2)  # the untrained net predicts zero noise
    assert fixed_loss() < 0.3 * before


def test_checkpoint_round_trip_and_float16_export(tmp_path, schedule, data):
    model = new_model()
    history = train(model, schedule, data, tiny_run(), out_dir=tmp_path / "run", progress=False)
    loaded, loaded_schedule, info = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert info["step"] == 6 and info["weights"] == "ema" and info["dtype"] == "float32"
    assert loaded.config == model.config and not loaded.training
    for name in ["betas", "alpha_bars", "posterior_variance"]:
        assert torch.equal(getattr(loaded_schedule, name), getattr(schedule, name))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 5), history.ema.model(x, 5), atol=0, rtol=0)
    # Into a model of the same config.
    same, _, _ = load_checkpoint(tmp_path / "run" / "checkpoint", model=new_model(seed=5))
    with torch.no_grad():
        torch.testing.assert_close(same(x, 5), loaded(x, 5), atol=0, rtol=0)
    # The float16 export: half the size, the same network up to float16 rounding.
    dest = export_checkpoint(tmp_path / "run" / "checkpoint", tmp_path / "export", extra={"a": 1})
    small, _, small_info = load_checkpoint(dest)
    assert small_info["dtype"] == "float16" and small_info["extra"]["a"] == 1
    assert small_info["weights"] == "ema" and small_info["step"] == 6
    assert not (dest / "train_state.safetensors").exists()
    big = (tmp_path / "run" / "checkpoint" / "model.safetensors").stat().st_size
    assert (dest / "model.safetensors").stat().st_size < 0.6 * big
    assert next(small.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(small(x, 5), loaded(x, 5), atol=2e-3, rtol=2e-2)


def test_save_checkpoint_without_training(tmp_path, schedule):
    model = new_model()
    save_checkpoint(tmp_path / "ckpt", model, schedule, step=3, extra={"note": "hi"})
    loaded, _, info = load_checkpoint(tmp_path / "ckpt")
    assert info["weights"] == "model" and info["extra"] == {"note": "hi"} and info["step"] == 3
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert names == {"model.safetensors", "config.json"}
    # Saving again replaces the folder atomically, leaving no temporary folder behind.
    save_checkpoint(tmp_path / "ckpt", model, schedule, step=4)
    assert load_checkpoint(tmp_path / "ckpt")[2]["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_load_checkpoint_refuses_a_mismatch(tmp_path, schedule):
    save_checkpoint(tmp_path / "ckpt", new_model(), schedule)
    with pytest.raises(
        ValueError, match=r"different U-Net: base_channels \(checkpoint 8, model 16"
    ):
        load_checkpoint(tmp_path / "ckpt", model=new_model(base_channels=16))
    with pytest.raises(ValueError, match="num_timesteps"):
        load_checkpoint(tmp_path / "ckpt", model=new_model(num_timesteps=1000))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path / "nowhere")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config | {"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(tmp_path / "ckpt")
    config["unet"]["colour"] = "blue"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(tmp_path / "ckpt")


def test_interrupted_run_resumes_exactly(tmp_path, schedule, data):
    """4 steps, stop, resume to 8 steps: the same weights as 8 steps in one go."""
    straight = new_model()
    h_straight = train(
        straight, schedule, data, tiny_run(num_steps=8), tmp_path / "a", progress=False
    )
    interrupted = new_model()
    h1 = train(interrupted, schedule, data, tiny_run(num_steps=4), tmp_path / "b", progress=False)
    assert h1.step == 4
    resumed = new_model(seed=123)  # a fresh process: other initial weights, same config
    h2 = train(resumed, schedule, data, tiny_run(num_steps=8), tmp_path / "b", progress=False)
    assert h2.steps == [6, 8] and h2.step == 8
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    for p, q in zip(h_straight.ema.model.parameters(), h2.ema.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6, 8]
    assert h_straight.losses[-1] == pytest.approx(h2.losses[-1])
    # Without resume it starts again from step 0.
    h3 = train(new_model(), schedule, data, tiny_run(num_steps=2), tmp_path / "b", resume=False,
               progress=False)  # fmt: skip
    assert h3.steps == [2]


def test_resume_refuses_another_model(tmp_path, schedule, data):
    train(new_model(), schedule, data, tiny_run(num_steps=2), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="different U-Net"):
        train(new_model(base_channels=16), schedule, data, tiny_run(), tmp_path / "run")
    other = NoiseSchedule.from_betas(linear_betas(T, 1e-4, 0.02))
    with pytest.raises(ValueError, match="noise schedule"):
        train(new_model(), other, data, tiny_run(), tmp_path / "run")


def test_train_writes_log_and_sample_grids(tmp_path, schedule, data):
    config = tiny_run(num_steps=4, sample_every=2, log_every=1)
    history = train(new_model(), schedule, data, config, out_dir=tmp_path, progress=False)
    assert history.steps == [1, 2, 3, 4] and history.stopped == "num_steps"
    record = history.records[-1]
    assert set(record) == {"step", "loss", "lr", "images_per_s", "elapsed_s"}
    assert record["lr"] == pytest.approx(1e-3) and record["images_per_s"] > 0
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step_0000002.png", "step_0000004.png"]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_time_budget_stops_training(schedule, data):
    history = train(new_model(), schedule, data, tiny_run(max_minutes=0.0), progress=False)
    assert history.stopped == "max_minutes" and history.step == 0 and history.records == []


def test_train_rejects_bad_data(schedule, data):
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        train(new_model(), schedule, data.repeat(1, 3, 1, 1), tiny_run(), progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train(new_model(), schedule, data * 255, tiny_run(), progress=False)


def test_random_flips_and_fit_images(schedule, data):
    history = train(new_model(), schedule, data, tiny_run(random_flip=True), progress=False)
    assert history.step == 6
    images = torch.rand(5, 1, 28, 28) * 2 - 1
    small = fit_images(images, 14)
    assert small.shape == (5, 1, 14, 14)
    torch.testing.assert_close(small, torch.nn.functional.avg_pool2d(images, 2))
    assert fit_images(images, 28) is images
    assert fit_images(small, 28).shape == (5, 1, 28, 28)


def test_save_image_grid(tmp_path):
    images = torch.linspace(-1, 1, 10 * 3 * 4 * 5).reshape(10, 3, 4, 5)
    path = save_image_grid(images, tmp_path / "grid.png", ncols=4, scale=2)
    with Image.open(path) as im:
        assert im.size == (2 * (4 * 7 + 2), 2 * (3 * 6 + 2)) and im.mode == "RGB"
    with pytest.raises(ValueError, match="1 or 3"):
        save_image_grid(torch.zeros(2, 2, 4, 4), tmp_path / "bad.png")


def test_load_pretrained_explains_how_to_make_it(monkeypatch, tmp_path):
    import ddpm_lib.training as training

    monkeypatch.setattr(training, "pretrained_path", lambda name: tmp_path / name)
    with pytest.raises(FileNotFoundError, match="scripts/train.py --preset mnist"):
        load_pretrained("mnist")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown pretrained"):
        load_pretrained("imagenet")


def test_pretrained_checkpoint_if_shipped():
    from ddpm_lib.training import pretrained_path

    folder = pretrained_path("mnist")
    if not (folder / "model.safetensors").exists():
        pytest.skip("no pretrained checkpoint in this checkout yet")
    assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20
    model, schedule = load_pretrained("mnist")
    assert model.config == UNetConfig.mnist() and schedule.num_timesteps == 1000
    assert 6e6 < count_parameters(model) < 7e6
    with torch.no_grad():
        eps = model(torch.zeros(2, 1, 28, 28), torch.tensor([10, 900]))
    assert eps.shape == (2, 1, 28, 28) and eps.abs().max() > 0  # trained: no longer all zeros


@pytest.mark.slow
def test_command_line_toy_run_and_resume(tmp_path):
    """scripts/train.py trains, exports and resumes, run from elsewhere without PYTHONPATH."""
    out, export = tmp_path / "run", tmp_path / "export"
    script = str(ROOT / "scripts" / "train.py")
    cmd = [sys.executable, script, "--preset", "toy", "--out", str(out), "--log-every", "2",
           "--sample-images", "2", "--no-progress"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    first = subprocess.run([*cmd, "--steps", "4"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert "163,985 parameters" in first.stdout
    second = subprocess.run([*cmd, "--steps", "6", "--export", str(export)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # the second command resumed at step 4
    names = {p.name for p in export.iterdir()}
    assert names == {"model.safetensors", "config.json", "log.jsonl", "samples.png", "run.json"}
    run = json.loads((export / "run.json").read_text())
    assert run["steps"] == 6 and run["command"].startswith("python scripts/train.py --preset toy")
    model, _, info = load_checkpoint(export)
    assert info["dtype"] == "float16" and info["extra"]["hardware"]
    assert model.config == UNetConfig.toy()


def test_command_line_trains_on_a_folder_of_images(tmp_path, capsys):
    """--data DIR: colour images of mixed sizes, read at the toy preset's 14x14 grey."""
    folder = tmp_path / "my_images"
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate([(20, 16), (16, 20), (14, 14), (30, 24)] * 2):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"class{i % 2}" / f"{i}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--preset", "toy", "--data",
           str(folder), "--out", str(out), "--steps", "3", "--batch-size", "4", "--log-every",
           "1", "--sample-images", "0", "--no-progress"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"data {folder} (8, 1, 14, 14)" in run.stdout
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    train_script = load_script("train")
    with pytest.raises(SystemExit):
        train_script.parse_args(["--data", str(tmp_path / "missing"), "--out", str(out)])
    assert "missing' is neither a data set (mini_mnist, mnist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, 1 / 10),
        (1, 2 / 11),
        (2, 3 / 12),
        (5, 6 / 15),
        (10, 11 / 20),
        (50, 51 / 60),
        (79, 80 / 89),
        (80, 0.9),
        (81, 0.9),
        (10**6, 0.9),
    ],
)
def test_ema_warm_up_decay_at_update_n(n, expected):
    """d_n = min(decay, (1 + n) / (10 + n)): n = 80 is where (1 + n) / (10 + n) reaches 0.9."""
    warm = EMA(torch.nn.Linear(2, 1), decay=0.9, warmup=True)
    warm.num_updates = n
    assert warm.current_decay() == pytest.approx(expected, rel=1e-12)
    cold = EMA(torch.nn.Linear(2, 1), decay=0.9)
    cold.num_updates = n
    assert cold.current_decay() == 0.9


def test_ema_with_warm_up_averages_as_computed_by_hand():
    """Twelve updates towards changing weights, against the recursion in float64:
    ema_0 = theta_0;  ema_{n+1} = d_n ema_n + (1 - d_n) theta_{n+1},  d_n = min(0.5, (1+n)/(10+n))
    (12 updates cross n = 8, where (1 + n) / (10 + n) reaches 0.5). Buffers are copied."""
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(net, decay=0.5, warmup=True)
    by_hand = [p.detach().double().clone() for p in net.parameters()]
    for n in range(12):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            net[1].running_mean.copy_(torch.randn(2, generator=gen))
        d = min(0.5, (1 + n) / (10 + n))
        thetas = [p.detach().double() for p in net.parameters()]
        by_hand = [d * e + (1 - d) * p for e, p in zip(by_hand, thetas, strict=True)]
        ema.update(net)
    assert ema.num_updates == 12
    for got, want in zip(ema.model.parameters(), by_hand, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ema.model[1].running_mean, net[1].running_mean, rtol=0, atol=0)
