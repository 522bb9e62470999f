"""ddpm_lib.training: configs and presets, the training step, EMA, the loop (logs, grids,
resuming, label dropout, stopping on NaN or inf without harm to the checkpoint), the command
line (a folder of images, class labels, kill -9 and resume)."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_setup import T, new_model, tiny_data, tiny_run, tiny_schedule

import ddpm_lib.training as training
from ddpm_lib.checkpoints import load_checkpoint
from ddpm_lib.cli import train_arguments
from ddpm_lib.losses import simple_loss
from ddpm_lib.profiling import DeviceReads
from ddpm_lib.restoration import denoise
from ddpm_lib.sampling import p_sample, sample
from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.solvers import ddim_invert
from ddpm_lib.training import EMA, TrainConfig, learning_rate, preset, train, train_step
from ddpm_lib.unet import UNetConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def schedule():
    return tiny_schedule()


@pytest.fixture
def data():
    return tiny_data()


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.num_steps, c.batch_size, c.lr, c.warmup_steps) == (800_000, 128, 2e-4, 5000)
    assert (c.grad_clip, c.ema_decay, c.weight_decay, c.precision) == (1.0, 0.9999, 0.0, "fp32")
    assert TrainConfig.ddpm_cifar10().random_flip
    assert preset("ddpm_cifar10") == (UNetConfig.ddpm_cifar10(), TrainConfig.ddpm_cifar10())


def test_presets_and_bad_configs():
    for name in ["toy", "mnist", "mnist_conditional", "ddpm_cifar10"]:
        unet_config, train_config = preset(name)
        assert isinstance(unet_config, UNetConfig) and isinstance(train_config, TrainConfig)
        assert (unet_config.num_classes is None) == (train_config.label_dropout == 0)
    unet_config, train_config = preset("mnist_conditional")
    assert unet_config == replace(UNetConfig.mnist(), num_classes=10)
    assert train_config == replace(TrainConfig.mnist(), label_dropout=0.1)
    with pytest.raises(ValueError, match="label_dropout"):
        TrainConfig(label_dropout=1.0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        TrainConfig(lr=-1e-4)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        TrainConfig(lr=float("nan"))
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
    with pytest.raises(TypeError):  # after the optimizer, arguments are named
        train_step(model, schedule, batch, opt, 3e-3)


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


def test_resume_after_a_save_killed_between_its_renames(tmp_path, schedule, data):
    """The run's folder as a save killed mid-swap leaves it (no checkpoint/, a whole
    checkpoint.tmp of step 6, checkpoint.old of step 4): train resumes from step 6, cleaned."""
    run = tmp_path / "run"
    train(new_model(), schedule, data, tiny_run(num_steps=4), run, progress=False)
    train(new_model(), schedule, data, tiny_run(num_steps=6), tmp_path / "later", progress=False)
    (run / "checkpoint").rename(run / "checkpoint.old")
    (tmp_path / "later" / "checkpoint").rename(run / "checkpoint.tmp")
    history = train(new_model(), schedule, data, tiny_run(num_steps=8), run, progress=False)
    assert history.steps == [8]  # resumed at step 6
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "log.jsonl", "samples"]
    assert load_checkpoint(run / "checkpoint")[2]["step"] == 8


def test_nan_in_the_data_of_a_resumed_run_is_refused_and_the_checkpoint_kept(
    tmp_path, schedule, data
):
    train(new_model(), schedule, data, tiny_run(num_steps=4), tmp_path, progress=False)
    before = folder_bytes(tmp_path / "checkpoint")
    broken = data.clone()
    broken[7, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="training data hold NaN or inf"):
        train(new_model(), schedule, broken, tiny_run(num_steps=8), tmp_path, progress=False)
    assert folder_bytes(tmp_path / "checkpoint") == before


def test_a_diverging_learning_rate_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, schedule, data
):
    """Resumed at a learning rate of 1e30, the weights blow up within a few steps; the loss
    read at the next log step stops the run, naming the first step whose loss was NaN or inf,
    and the checkpoint of step 4 is left as it was."""
    good = tiny_run(num_steps=4, checkpoint_every=2)
    train(new_model(), schedule, data, good, tmp_path, progress=False)
    before = folder_bytes(tmp_path / "checkpoint")
    diverging = tiny_run(num_steps=40, lr=1e30, log_every=10, checkpoint_every=10)
    with pytest.raises(FloatingPointError, match=r"NaN or inf at step (\d+).*step 4\. Lower"):
        train(new_model(), schedule, data, diverging, tmp_path, progress=False)
    assert folder_bytes(tmp_path / "checkpoint") == before
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]  # no record of the diverged steps


def test_a_save_never_writes_the_weights_of_a_diverged_run(tmp_path, schedule, data):
    """With a checkpoint every step and no log step before the end, the check before each save
    stops the run: every checkpoint that was written holds finite weights."""
    diverging = tiny_run(num_steps=40, lr=1e30, log_every=1000, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"at step (\d+), refusing to save") as err:
        train(new_model(), schedule, data, diverging, tmp_path, progress=False)
    model, _, info = load_checkpoint(tmp_path / "checkpoint")
    assert f"at step {info['step'] + 1}," in str(err.value)  # the one saved just before
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_training_reads_the_device_only_at_log_steps(schedule, data):
    """The data are checked once; then the loop reads nothing but each log record: 3 steps and
    9 steps with one record each make the same number of reads of device values."""
    reads = []
    for num_steps in (3, 9):
        with DeviceReads() as counter:
            config = tiny_run(num_steps=num_steps, log_every=100)
            train(new_model(), schedule, data, config, progress=False)
        reads.append(counter.count)
    assert reads[0] == reads[1], reads


def test_conditional_training_reads_the_device_only_at_log_steps(schedule):
    """With labels and label dropout too: the labels are checked once, at train's entry."""
    data, labels = conditional_data()
    reads = []
    for num_steps in (3, 9):
        with DeviceReads() as counter:
            config = tiny_run(num_steps=num_steps, log_every=100, label_dropout=0.2)
            train(new_model(num_classes=3), schedule, data, config, progress=False, labels=labels)
        reads.append(counter.count)
    assert reads[0] == reads[1], reads


def conditional_data(n: int = 30):
    """Images that say which they are (image i is filled with -1 + 2 i / (n - 1)), and labels."""
    data = torch.linspace(-1, 1, n).view(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous()
    return data, torch.arange(n) % 3


def image_index(x0: torch.Tensor, n: int = 30) -> torch.Tensor:
    return ((x0[:, 0, 0, 0] + 1) * (n - 1) / 2).round().long()


def test_train_drops_labels_at_the_configured_rate(monkeypatch, schedule):
    """train hands each step's labels to its loss: a fraction label_dropout of them (within 4
    binomial standard deviations over 100 steps of 32) is the null label, the rest are the
    images' own; the same seed draws the same labels."""
    data, labels = conditional_data()
    config = tiny_run(num_steps=100, batch_size=32, label_dropout=0.2, log_every=50)

    def labels_seen():
        seen = []

        def fake_loss(net, schedule, x0, t, eps, generator, labels=None):
            seen.append((image_index(x0), labels.clone()))
            return torch.zeros((), requires_grad=True)

        monkeypatch.setattr(training, "noise_loss", fake_loss)
        train(new_model(num_classes=3), schedule, data, config, progress=False, labels=labels)
        return seen

    seen = labels_seen()
    dropped = sum(int((y == 3).sum()) for _, y in seen)
    n, p = 100 * 32, 0.2
    assert abs(dropped - n * p) < 4 * (n * p * (1 - p)) ** 0.5, dropped
    for index, y in seen:
        kept = y != 3
        assert torch.equal(y[kept], labels[index[kept]])
    again = labels_seen()
    assert all(torch.equal(a[1], b[1]) for a, b in zip(seen, again, strict=True))


def test_class_conditional_training(tmp_path, schedule):
    data, labels = conditional_data()
    config = tiny_run(num_steps=4, label_dropout=0.1, num_sample_images=6)
    model = new_model(num_classes=3)
    history = train(model, schedule, data, config, tmp_path, progress=False, labels=labels)
    assert history.steps == [2, 4]
    loaded, _, info = load_checkpoint(tmp_path / "checkpoint")
    assert loaded.config.num_classes == 3 and info["train"]["label_dropout"] == 0.1
    assert (tmp_path / "samples" / "step_0000004.png").exists()  # classes 0, 1, 2, 0, 1, 2
    # The class embedding learnt something: it starts at zero.
    assert history.ema.model.class_emb.weight.abs().max() > 0
    with pytest.raises(ValueError, match="unconditional model"):
        train(new_model(), schedule, data, tiny_run(), progress=False, labels=labels)
    with pytest.raises(ValueError, match="class-conditional"):
        train(new_model(num_classes=3), schedule, data, tiny_run(), progress=False)
    with pytest.raises(ValueError, match="label_dropout"):
        train(new_model(), schedule, data, config, progress=False)
    with pytest.raises(ValueError, match="null label"):
        train(model, schedule, data, config, progress=False, labels=labels * 0 + 3)


def test_class_lr_scale_multiplies_the_class_embeddings_step_alone(schedule):
    """Adam's step is lr * m_hat / (sqrt(v_hat) + eps), where m_hat and v_hat depend on the
    gradients alone: the class embedding moves class_lr_scale times as far, the rest the same."""
    data, labels = conditional_data()
    moved = {}
    for scale in [1.0, 10.0]:
        model = new_model(num_classes=3)
        with torch.no_grad():  # no zero-initialised layer, so that every weight gets a gradient
            for weight in model.parameters():
                weight.normal_(0, 0.05)
        start = {n: w.detach().clone() for n, w in model.named_parameters()}
        config = tiny_run(num_steps=1, warmup_steps=0, class_lr_scale=scale, ema_decay=0.0)
        train(model, schedule, data, config, progress=False, labels=labels)
        moved[scale] = {n: (w - start[n]).detach() for n, w in model.named_parameters()}
    step_1, step_10 = moved[1.0].pop("class_emb.weight"), moved[10.0].pop("class_emb.weight")
    assert step_1.abs().max() > 0
    torch.testing.assert_close(step_10, 10 * step_1, rtol=1e-5, atol=0)
    for name, step in moved[1.0].items():
        torch.testing.assert_close(moved[10.0][name], step, rtol=0, atol=0)
    for bad in [0.0, -1.0, float("inf")]:
        with pytest.raises(ValueError, match="class_lr_scale must be a positive number"):
            tiny_run(class_lr_scale=bad)


def test_time_budget_stops_training(schedule, data):
    history = train(new_model(), schedule, data, tiny_run(max_minutes=0.0), progress=False)
    assert history.stopped == "max_minutes" and history.step == 0 and history.records == []


def test_train_rejects_bad_data(schedule, data):
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        train(new_model(), schedule, data.repeat(1, 3, 1, 1), tiny_run(), progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train(new_model(), schedule, data * 255, tiny_run(), progress=False)
    for bad in (float("nan"), float("inf")):
        broken = data.clone()
        broken[5, 0, 1, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf: 1 of 32 images, the first at index 5"):
            train(new_model(), schedule, broken, tiny_run(), progress=False)


def test_random_flips(schedule, data):
    history = train(new_model(), schedule, data, tiny_run(random_flip=True), progress=False)
    assert history.step == 6


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
    with pytest.raises(SystemExit):
        train_arguments(["--data", str(tmp_path / "missing"), "--out", str(out)])
    assert "missing' is neither a data set (mini_mnist, mnist" in capsys.readouterr().err


def train_command(out: Path, *args: str) -> list[str]:
    """scripts/train.py at toy size on mini_mnist, writing into `out`, without a progress bar."""
    script = str(ROOT / "scripts" / "train.py")
    return [sys.executable, script, "--preset", "toy", "--data", "mini_mnist", "--out", str(out),
            "--no-progress", *args]  # fmt: skip


ENV = os.environ | {"OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_command_line_trains_a_class_conditional_model(tmp_path):
    """--conditional: the toy U-Net with a class embedding for mini_mnist's ten digits, trained
    on their labels with the default label dropout; the exported grid draws digits 0..9."""
    out, export = tmp_path / "run", tmp_path / "export"
    options = ["--steps", "3", "--batch-size", "8", "--log-every", "1", "--sample-images", "10"]
    cmd = train_command(out, "--conditional", *options, "--export", str(export))
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "class-conditional on 10 classes, label dropout 0.1" in run.stdout
    model, _, info = load_checkpoint(out / "checkpoint")
    assert model.config == replace(UNetConfig.toy(), num_classes=10)
    assert info["train"]["label_dropout"] == 0.1 and info["step"] == 3
    assert load_checkpoint(export)[0].config.num_classes == 10
    assert json.loads((export / "run.json").read_text())["num_classes"] == 10
    args = train_arguments(["--preset", "mnist_conditional", "--out", str(out)])
    assert args.preset == "mnist_conditional" and not args.conditional


@pytest.mark.slow
def test_command_line_survives_kill_9_and_resumes(tmp_path):
    """A run killed with SIGKILL (a checkpoint every step, so the kill often lands in a save)
    resumes from its checkpoint's step, mends the folder, and ends with a loadable checkpoint."""
    out = tmp_path / "run"
    cmd = train_command(out, "--batch-size", "8", "--log-every", "1", "--checkpoint-every", "1",
                        "--sample-images", "0")  # fmt: skip
    log = out / "log.jsonl"
    with open(tmp_path / "first.err", "w") as errors:
        first = subprocess.Popen([*cmd, "--steps", "100000"], env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=errors)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not log.exists() or len(log.read_text().splitlines()) < 3:
                assert first.poll() is None, (tmp_path / "first.err").read_text()[-2000:]
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.05)
            time.sleep(0.37)  # into the run, at no particular point of a step or a save
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    assert first.returncode == -signal.SIGKILL
    saved = load_checkpoint(out / "checkpoint")[2]["step"]  # reads a half-swapped folder too
    logged = len(log.read_text().splitlines())
    assert saved >= 2
    second = subprocess.run([*cmd, "--steps", str(saved + 3)], env=ENV, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records[logged:]] == [saved + 1, saved + 2, saved + 3]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "log.jsonl"]  # no .tmp, .old
    model, _, info = load_checkpoint(out / "checkpoint")
    assert info["step"] == saved + 3 and (out / "checkpoint" / "train_state.safetensors").exists()
    assert all(torch.isfinite(p).all() for p in model.parameters())


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


@pytest.mark.parametrize(
    "entry",
    [
        "train",
        "train on the fast path",
        "simple_loss",
        "sample",
        "p_sample",
        "ddim_invert",
        "denoise",
    ],
)
def test_every_entry_point_refuses_a_schedule_of_another_T(tmp_path, entry):
    """The U-Net is built for t in 1..10; a schedule of T = 20 would index its tables wrongly."""
    model, data = new_model(), tiny_data(8)
    longer = NoiseSchedule.from_betas(linear_betas(2 * T, 1e-3, 0.2))
    calls = {
        "train": lambda: train(model, longer, data, tiny_run(), tmp_path, progress=False),
        "train on the fast path": lambda: train(
            model, longer, data, tiny_run(channels_last=True), tmp_path, progress=False
        ),
        "simple_loss": lambda: simple_loss(model, longer, data),
        "sample": lambda: sample(model, longer, (2, 1, 8, 8), torch.Generator(), num_steps=3),
        "p_sample": lambda: p_sample(model, longer, data[:2], 5),  # t = 5 is in both ranges
        "ddim_invert": lambda: ddim_invert(model, longer, data[:2], num_steps=3),
        "denoise": lambda: denoise(model, longer, data[:2].clamp(-1, 1), 0.5, num_steps=2),
    }
    with pytest.raises(
        ValueError, match=f"T = {2 * T} steps but the U-Net was built for t in 1..{T}"
    ):
        calls[entry]()
    assert not (tmp_path / "checkpoint").exists()
