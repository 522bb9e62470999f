"""ddpm_lib.utils and ddpm_lib.config."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_lib.config import size_profile
from ddpm_lib.utils import (
    autocast_dtype,
    check_same_shape,
    check_timesteps,
    count_parameters,
    default_precision,
    extract,
    get_device,
    precision_dtype,
    seed_everything,
)


def test_extract_gathers_per_item_and_broadcasts():
    table = torch.arange(11.0)  # table[t] = t
    t = torch.tensor([3, 10, 1])
    out = extract(table, t, (3, 2, 4, 4))
    assert out.shape == (3, 1, 1, 1)
    assert out.flatten().tolist() == [3.0, 10.0, 1.0]
    assert extract(table, t, (3, 5)).shape == (3, 1)


def test_extract_rejects_bad_input():
    table = torch.arange(11.0)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        extract(table, torch.tensor([1, 2, 3]), (2, 1, 4, 4))
    with pytest.raises(TypeError, match="integer"):
        extract(table, torch.tensor([1.0, 2.0]), (2, 1))
    with pytest.raises(IndexError):  # t is checked before extract; on a CPU indexing still fails
        extract(table, torch.tensor([1, 11]), (2, 1))
    with pytest.raises(ValueError, match="1-D"):
        extract(table[None], torch.tensor([1]), (1, 1))


def test_check_timesteps_paper_indexing():
    x = torch.zeros(4, 1, 2, 2)
    assert check_timesteps(5, 10, x).tolist() == [5, 5, 5, 5]
    assert check_timesteps(torch.tensor(10), 10, x).dtype == torch.int64
    with pytest.raises(ValueError, match="1..T = 1..10"):
        check_timesteps(0, 10, x)
    with pytest.raises(ValueError, match="1..T = 1..10"):
        check_timesteps(torch.tensor([1, 2, 3, 11]), 10, x)
    with pytest.raises(ValueError, match="one per image"):
        check_timesteps(torch.tensor([1, 2]), 10, x)
    with pytest.raises(TypeError, match="integer"):
        check_timesteps(torch.tensor([1.0, 2, 3, 4]), 10, x)
    with pytest.raises(TypeError, match="int or an integer tensor"):
        check_timesteps([1, 2, 3, 4], 10, x)


def test_an_int_t_is_checked_without_a_tensor_and_extract_broadcasts_it():
    x = torch.zeros(3, 1, 2, 2)
    with pytest.raises(ValueError, match="got 12"):
        check_timesteps(12, 10, x)  # an int out of range never becomes a tensor
    assert check_timesteps(torch.tensor([1, 5, 10], dtype=torch.int32), 10, x).dtype == torch.int64
    empty = torch.zeros(0, 1)
    assert check_timesteps(torch.zeros(0, dtype=torch.int64), 10, empty).shape == (0,)
    one = extract(torch.arange(11.0), 7, x.shape)
    assert one.shape == (1, 1, 1, 1) and one.item() == 7.0


def test_lowest_timestep_and_the_hint_for_the_bound():
    x = torch.zeros(2, 1)
    check_timesteps(torch.tensor([2, 10]), 10, x, lowest=2)
    with pytest.raises(ValueError, match="2..T = 2..10.*L_0"):
        check_timesteps(torch.tensor([1, 10]), 10, x, lowest=2)
    with pytest.raises(ValueError, match="2..T = 2..10.*L_0"):
        check_timesteps(1, 10, x, lowest=2)


def test_checks_read_a_tensor_once_and_ints_never():
    from ddpm_lib.profiling import DeviceReads

    x = torch.zeros(3, 1)
    with DeviceReads() as reads:
        check_timesteps(7, 10, x)
        extract(torch.arange(11.0), check_timesteps(7, 10, x), x.shape)
    assert reads.count == 0, reads.where
    with DeviceReads() as reads:
        extract(torch.arange(11.0), check_timesteps(torch.tensor([1, 2, 3]), 10, x), x.shape)
    assert reads.count == 1, reads.where


def test_precision_names_in_one_place():
    assert precision_dtype("fp32") is None
    assert precision_dtype("bf16") is torch.bfloat16 and precision_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="precision"):
        precision_dtype("fp8")
    assert autocast_dtype("bf16", torch.device("cpu")) is None  # a CPU runs float32
    assert default_precision(torch.device("cpu")) == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_device_mismatch_is_reported():
    x = torch.zeros(2, 3, device="cuda")
    with pytest.raises(ValueError, match="on cpu but x is on cuda"):
        check_timesteps(torch.tensor([1, 2]), 10, x)
    with pytest.raises(ValueError, match="schedule.to"):
        extract(torch.arange(11.0), torch.tensor([1, 2], device="cuda"), (2, 3))


def test_check_same_shape_names_the_culprit():
    check_same_shape(x=torch.zeros(2, 3), eps=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eps has shape \\(2, 4\\) but x has \\(2, 3\\)"):
        check_same_shape(x=torch.zeros(2, 3), eps=torch.zeros(2, 4))


def test_seed_everything_makes_draws_repeat():
    seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(123)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == 4 + 8
    assert count_parameters(model, trainable_only=False) == 24


def test_get_device_is_cpu_here_or_an_accelerator():
    assert get_device().type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        assert get_device().type in {"cpu", "mps"}


def test_size_profile(monkeypatch):
    monkeypatch.setenv("DDPM_SIZE", "full")
    assert size_profile() == "full"
    monkeypatch.setenv("DDPM_SIZE", " Toy ")
    assert size_profile() == "toy"
    monkeypatch.setenv("DDPM_SIZE", "huge")
    with pytest.raises(ValueError, match="'huge' is not a size profile"):
        size_profile()
    monkeypatch.delenv("DDPM_SIZE")
    assert size_profile() == ("full" if torch.cuda.is_available() else "toy")


def test_check_timesteps_refuses_float_and_bool_scalars():
    x = torch.zeros(2, 1)
    with pytest.raises(TypeError, match="integer tensor"):
        check_timesteps(torch.tensor(2.7), 10, x)  # not silently truncated to 2
    with pytest.raises(TypeError, match="int or an integer tensor"):
        check_timesteps(True, 10, x)
