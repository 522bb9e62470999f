"""ddpm_lib.checkpoints: the folder format, atomic saves that never hold NaN or inf, mending a
save that was killed, loading, the float16 export, the pretrained registry, the PNG grids."""

import json
import shutil
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from training_setup import new_model, tiny_data, tiny_run, tiny_schedule

import ddpm_lib.checkpoints as checkpoints
from ddpm_lib.checkpoints import (
    PRETRAINED,
    export_checkpoint,
    init_weights,
    load_checkpoint,
    load_model,
    load_pretrained,
    load_training_state,
    pretrained_path,
    recover_checkpoint,
    save_checkpoint,
    save_image_grid,
)
from ddpm_lib.training import EMA, train
from ddpm_lib.unet import UNetConfig
from ddpm_lib.utils import count_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def schedule():
    return tiny_schedule()


@pytest.fixture
def data():
    return tiny_data()


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


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
    assert small_info["train"] == info["train"] and "resume" not in small_info
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


def test_init_weights_fine_tunes_and_a_conditional_model_starts_as_the_unconditional(
    tmp_path, schedule
):
    trained = new_model(seed=1)
    torch.nn.init.normal_(trained.conv_out.weight)  # not the zero start: eps depends on x
    save_checkpoint(tmp_path / "ckpt", trained, schedule)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 3, 7, 10])
    with torch.no_grad():
        expected = trained(x, t)
    same = new_model(seed=2)
    init_weights(same, tmp_path / "ckpt")
    conditional = new_model(seed=3, num_classes=3)
    torch.nn.init.normal_(conditional.class_emb.weight)  # init_weights must zero it
    init_weights(conditional, tmp_path / "ckpt")
    assert not conditional.class_emb.weight.any()
    with torch.no_grad():
        torch.testing.assert_close(same(x, t), expected, atol=0, rtol=0)
        for labels in [None, torch.tensor([0, 1, 2, 3])]:  # 3: the null label
            torch.testing.assert_close(conditional(x, t, labels), expected, atol=0, rtol=0)
    # Any other difference is refused, and a conditional checkpoint does not lose its classes.
    for other in [new_model(base_channels=16), new_model(num_timesteps=1000)]:
        with pytest.raises(ValueError, match="the architectures differ"):
            init_weights(other, tmp_path / "ckpt")
    save_checkpoint(tmp_path / "conditional", conditional, schedule)
    for other in [new_model(), new_model(num_classes=4)]:
        with pytest.raises(ValueError, match="the architectures differ"):
            init_weights(other, tmp_path / "conditional")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        init_weights(new_model(), tmp_path / "nowhere")


def test_load_model_takes_a_folder_or_a_shipped_name(monkeypatch, tmp_path, schedule):
    trained = new_model(seed=1)
    torch.nn.init.normal_(trained.conv_out.weight)
    save_checkpoint(tmp_path / "ckpt", trained, schedule)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    for source in [tmp_path / "ckpt", str(tmp_path / "ckpt")]:
        model, loaded_schedule = load_model(source)
        assert not model.training and loaded_schedule.num_timesteps == schedule.num_timesteps
        with torch.no_grad():
            torch.testing.assert_close(model(x, t), trained(x, t), atol=0, rtol=0)
    # A registered name is looked up in the package, not as a folder of that name.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tmp_path / "ckpt", tmp_path / "mnist")
    monkeypatch.setattr(checkpoints, "pretrained_path", lambda name: tmp_path / "shipped" / name)
    with pytest.raises(FileNotFoundError, match="scripts/train.py --preset mnist"):
        load_model("mnist")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_save_refuses_non_finite_weights_and_keeps_the_old_checkpoint(tmp_path, schedule, bad):
    model = new_model()
    save_checkpoint(tmp_path / "ckpt", model, schedule, step=1)
    before = folder_bytes(tmp_path / "ckpt")
    with torch.no_grad():
        model.conv_in.weight[0, 0, 0, 0] = bad
    with pytest.raises(FloatingPointError, match=r"1 tensor\(s\) hold NaN or inf.*conv_in"):
        save_checkpoint(tmp_path / "ckpt", model, schedule, step=2)
    assert folder_bytes(tmp_path / "ckpt") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half-written folder
    # The EMA is what gets saved: a finite average of a broken model is refused too, since
    # the training state (the raw weights) would be saved with it.
    ema = EMA(new_model(), decay=0.9)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(FloatingPointError, match="model.conv_in.weight"):
        save_checkpoint(tmp_path / "ckpt", model, schedule, ema=ema, optimizer=optimizer)
    assert folder_bytes(tmp_path / "ckpt") == before


def test_float16_export_refuses_weights_that_overflow(tmp_path, schedule):
    model = new_model()
    with torch.no_grad():
        model.conv_in.weight[0, 0, 0, 0] = 1e5  # finite in float32, inf in float16
    save_checkpoint(tmp_path / "ckpt", model, schedule)
    with pytest.raises(FloatingPointError, match="unet.conv_in.weight"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def interrupted(tmp_path, schedule, moment: str):
    """A checkpoint folder as a save killed at `moment` leaves it: the save of step 2 over the
    checkpoint of step 1. Returns the path."""
    path = tmp_path / "ckpt"
    save_checkpoint(path, new_model(), schedule, step=1)
    save_checkpoint(tmp_path / "newer", new_model(), schedule, step=2)
    tmp, old = tmp_path / "ckpt.tmp", tmp_path / "ckpt.old"
    if moment == "writing":  # part of the new weights written, no config.json yet
        tmp.mkdir()
        data = (tmp_path / "newer" / "model.safetensors").read_bytes()
        (tmp / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif moment == "between renames":  # path renamed to .old, .tmp not yet renamed to path
        path.rename(old)
        (tmp_path / "newer").rename(tmp)
    elif moment == "deleting old":  # the new one in place, the old one not yet deleted
        path.rename(old)
        (tmp_path / "newer").rename(path)
        (old / "model.safetensors").unlink()  # part way through rmtree
    shutil.rmtree(tmp_path / "newer", ignore_errors=True)
    return path


@pytest.mark.parametrize(
    ("moment", "step"), [("writing", 1), ("between renames", 2), ("deleting old", 2)]
)
def test_recover_checkpoint_mends_a_save_killed_at_any_moment(tmp_path, schedule, moment, step):
    path = interrupted(tmp_path, schedule, moment)
    assert load_checkpoint(path)[2]["step"] == step  # loading reads the whole copy as it is
    assert recover_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_checkpoint(path)[2]["step"] == step
    assert recover_checkpoint(path)  # nothing left to mend
    assert not recover_checkpoint(tmp_path / "nothing")


def test_load_training_state_needs_one(tmp_path, schedule):
    model = new_model()
    save_checkpoint(tmp_path / "ckpt", model, schedule)  # no optimizer: no training state
    with pytest.raises(FileNotFoundError, match="no training state"):
        load_training_state(
            tmp_path / "ckpt",
            model,
            schedule,
            ema=EMA(model, 0.9),
            optimizer=torch.optim.AdamW(model.parameters()),
            generator=torch.Generator(),
        )


def test_save_image_grid(tmp_path):
    images = torch.linspace(-1, 1, 10 * 3 * 4 * 5).reshape(10, 3, 4, 5)
    path = save_image_grid(images, tmp_path / "grid.png", ncols=4, scale=2)
    with Image.open(path) as im:
        assert im.size == (2 * (4 * 7 + 2), 2 * (3 * 6 + 2)) and im.mode == "RGB"
    with pytest.raises(ValueError, match="1 or 3"):
        save_image_grid(torch.zeros(2, 2, 4, 4), tmp_path / "bad.png")


@pytest.mark.parametrize("name", ["mnist", "mnist_conditional"])
def test_load_pretrained_explains_how_to_make_it(monkeypatch, tmp_path, name):
    monkeypatch.setattr(checkpoints, "pretrained_path", lambda name: tmp_path / name)
    with pytest.raises(FileNotFoundError, match=f"scripts/train.py --preset {name} --data mnist"):
        load_pretrained(name)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown pretrained"):
        load_pretrained("imagenet")


def test_every_pretrained_model_ships_with_the_package():
    """pyproject's package data takes the folder of each registered pretrained model."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = package_data["package-data"]["ddpm_lib"]
    for name in PRETRAINED:
        assert f"pretrained/{name}/*" in patterns
        assert pretrained_path(name) == ROOT / "ddpm_lib" / "pretrained" / name


@pytest.mark.parametrize("name, num_classes", [("mnist", None), ("mnist_conditional", 10)])
def test_pretrained_checkpoint_if_shipped(name, num_classes):
    folder = pretrained_path(name)
    if not (folder / "model.safetensors").exists():
        pytest.skip(f"no pretrained {name} checkpoint in this checkout yet")
    assert (folder / "model.safetensors").stat().st_size <= 15 * 2**20
    assert (folder / "README.md").exists() and (folder / "log.jsonl").exists()
    model, schedule = load_pretrained(name)
    assert model.config == replace(UNetConfig.mnist(), num_classes=num_classes)
    assert schedule.num_timesteps == 1000 and 6e6 < count_parameters(model) < 7e6
    x, t = torch.zeros(2, 1, 28, 28), torch.tensor([10, 900])
    with torch.no_grad():
        eps = model(x, t)
        assert eps.shape == (2, 1, 28, 28) and eps.abs().max() > 0  # trained: not all zeros
        if num_classes is not None:  # the classes were learnt: each label predicts its own eps
            by_label = torch.stack([model(x, t, torch.full((2,), k)) for k in range(10)])
            assert (by_label[:, 0] - by_label[:, 0].mean(0)).abs().amax() > 0.05  # 0.20 at t=10
