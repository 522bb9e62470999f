"""Tiny models, runs and data shared by the tests of training, batches and checkpoints."""

import torch

from ddpm_lib.schedules import NoiseSchedule, linear_betas
from ddpm_lib.training import TrainConfig
from ddpm_lib.unet import UNet, UNetConfig

T = 10  # a short chain keeps sampling (the end-of-run grids) cheap


def tiny_config(**overrides) -> UNetConfig:
    fields = dict(
        image_size=8,
        in_channels=1,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        dropout=0.0,
        num_groups=4,
        num_timesteps=T,
    )
    return UNetConfig(**(fields | overrides))


def tiny_run(**overrides) -> TrainConfig:
    fields = dict(
        num_steps=6,
        batch_size=8,
        lr=1e-3,
        warmup_steps=2,
        ema_decay=0.9,
        log_every=2,
        checkpoint_every=0,
        num_sample_images=4,
    )
    return TrainConfig(**(fields | overrides))


def tiny_schedule() -> NoiseSchedule:
    return NoiseSchedule.from_betas(linear_betas(T, 1e-3, 0.2))


def tiny_data(n: int = 32) -> torch.Tensor:
    """(n, 1, 8, 8) uniform noise in [-1, 1], always the same."""
    return torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1


def new_model(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    return UNet(tiny_config(**overrides))
