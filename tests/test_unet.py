"""ddpm_lib.unet: shapes, the paper's parameter count, dependence on t, bad input, learning."""

import math

import pytest
import torch
from conftest import tiny_unet_config

from ddpm_lib.profiling import randomize_zero_layers
from ddpm_lib.unet import Attention, ResBlock, UNet, UNetConfig, timestep_embedding
from ddpm_lib.utils import count_parameters


def tiny(**overrides) -> UNetConfig:
    return tiny_unet_config(**({"num_timesteps": 100} | overrides))


@pytest.mark.parametrize(
    ("channels", "size", "mults"),
    [
        (1, 28, (1, 2, 2)),
        (3, 32, (1, 2, 2, 2)),
        (1, 14, (1, 2)),
        (3, 15, (1, 2)),
        (2, 9, (1, 2, 2)),
    ],
)
def test_output_has_the_input_shape(channels, size, mults):
    config = tiny(in_channels=channels, image_size=size, channel_mults=mults)
    model = UNet(config)
    x = torch.randn(3, channels, size, size)
    out = model(x, torch.tensor([1, 50, 100]))
    assert out.shape == x.shape and out.dtype == x.dtype


def test_non_square_and_other_sizes_than_configured():
    model = UNet(tiny())
    for h, w in [(16, 12), (7, 20), (32, 32)]:
        assert model(torch.randn(2, 1, h, w), 5).shape == (2, 1, h, w)


def test_paper_parameter_count():
    n = count_parameters(UNet(UNetConfig.ddpm_cifar10()))
    assert abs(n - 35.7e6) / 35.7e6 < 0.01
    assert n == 35_746_307  # the PyTorch port of the paper's TensorFlow model


def test_presets():
    assert UNetConfig() == UNetConfig.ddpm_cifar10()
    paper = UNetConfig.ddpm_cifar10()
    assert (paper.base_channels, paper.channel_mults, paper.num_res_blocks) == (
        128,
        (1, 2, 2, 2),
        2,
    )
    assert paper.attention_resolutions == (16,) and paper.dropout == 0.1
    assert paper.num_timesteps == 1000
    mnist = UNetConfig.mnist()
    assert (mnist.image_size, mnist.in_channels) == (28, 1)
    assert 5e6 < count_parameters(UNet(mnist)) < 12.5e6  # fits 25 MB in float16
    assert count_parameters(UNet(UNetConfig.toy())) < 300_000


def test_untrained_network_outputs_zero():
    model = UNet(tiny())
    assert model(torch.randn(2, 1, 16, 16), 7).abs().max() == 0


def test_output_depends_on_t():
    model = UNet(tiny()).eval()
    randomize_zero_layers(model)
    x = torch.randn(1, 1, 16, 16).expand(4, -1, -1, -1)
    out = model(x, torch.tensor([1, 2, 50, 100]))
    for i in range(3):
        assert (out[i] - out[i + 1]).abs().mean() > 1e-5
    torch.testing.assert_close(model(x, torch.tensor([1, 2, 50, 100])), out)


def test_output_depends_on_x_and_items_are_independent():
    model = UNet(tiny()).eval()
    randomize_zero_layers(model)
    x = torch.randn(2, 1, 16, 16)
    out = model(x, torch.tensor([10, 10]))
    assert (out[0] - out[1]).abs().mean() > 1e-5
    torch.testing.assert_close(model(x[:1], torch.tensor([10])), out[:1], atol=1e-5, rtol=1e-4)


def test_bad_input_is_refused():
    model = UNet(tiny())
    with pytest.raises(ValueError, match="in_channels=1"):
        model(torch.randn(2, 3, 16, 16), 5)
    with pytest.raises(ValueError, match="in_channels=1"):
        model(torch.randn(1, 16, 16), 5)
    with pytest.raises(ValueError, match="1..T = 1..100"):
        model(torch.randn(2, 1, 16, 16), 0)
    with pytest.raises(ValueError, match="1..T = 1..100"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 101]))
    with pytest.raises(ValueError, match="one per image"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(2, 1, 16, 16, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        tiny(num_groups=3)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 1000]), 16)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    torch.testing.assert_close(emb[:, :8] ** 2 + emb[:, 8:] ** 2, torch.ones(3, 8))
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(torch.tensor([1]), 9)


def test_timestep_embedding_is_ho_et_al_s_not_the_transformer_s():
    # Ho et al.'s get_timestep_embedding (diffusion_tf/nn.py), transcribed in float64:
    # w_k = exp(-k log(10000) / (d/2 - 1)), then [sin(t w), cos(t w)] (Book Eq. eq-time-embedding)
    t, d = torch.tensor([1, 2, 37, 500, 1000]), 32
    k = torch.arange(d // 2, dtype=torch.float64)
    angles = t.double()[:, None] * torch.exp(-math.log(10000) * k / (d // 2 - 1))[None, :]
    hos = torch.cat([angles.sin(), angles.cos()], dim=1)
    got = timestep_embedding(t, d)
    torch.testing.assert_close(got.double(), hos, atol=2e-4, rtol=0)  # float32 angles to 1000
    # The Transformer's encoding interleaves, with frequencies 10000^(-2i/d): another function.
    i = torch.arange(d // 2, dtype=torch.float64)
    pos_angles = t.double()[:, None] / 10000 ** (2 * i / d)[None, :]
    transformer = torch.stack([pos_angles.sin(), pos_angles.cos()], dim=2).flatten(1)
    assert (got.double() - transformer).abs().max() > 0.5


def test_blocks_start_as_identity():
    block = ResBlock(8, 16, 32, dropout=0.0, groups=4)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(x, torch.randn(2, 32)), block.skip(x))
    attn = Attention(16, groups=4)
    y = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(attn(y), y)


def test_tiny_model_overfits_one_batch():
    """A few hundred Adam steps drive the noise-prediction error on one fixed batch far down."""
    torch.manual_seed(0)
    model = UNet(tiny(attention_resolutions=()))
    x = torch.randn(4, 1, 16, 16)
    t = torch.tensor([5, 20, 60, 90])
    target = torch.randn(4, 1, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = (model(x, t) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.9  # zero output at the start: the loss is the target's mean square
    assert loss.item() < 0.1 * first


def test_config_takes_lists_from_json():
    config = UNetConfig(channel_mults=[1, 2], attention_resolutions=[16])
    assert config.channel_mults == (1, 2) and config.attention_resolutions == (16,)
    assert hash(config) == hash(UNetConfig(channel_mults=(1, 2), attention_resolutions=(16,)))


def hand_written_resblock(block: ResBlock, x, temb, groups: int, dropout: float, training: bool):
    """Ho et al.'s resnet_block (diffusion_tf/models/unet.py), op by op, with block's weights:
    GroupNorm, SiLU, 3x3 conv; + dense(SiLU(temb)); GroupNorm, SiLU, dropout, 3x3 conv; + skip
    (a 1x1 conv, "nin", when the channel count changes)."""

    def group_norm(h, norm):  # statistics over each group of channels and all positions
        B, C, H, W = h.shape
        g = h.reshape(B, groups, C // groups, H, W)
        mean = g.mean(dim=(2, 3, 4), keepdim=True)
        var = ((g - mean) ** 2).mean(dim=(2, 3, 4), keepdim=True)  # biased, as GroupNorm's
        g = (g - mean) / torch.sqrt(var + 1e-6)
        return g.reshape(B, C, H, W) * norm.weight[:, None, None] + norm.bias[:, None, None]

    def silu(h):
        return h * torch.sigmoid(h)

    def conv(h, layer, padding):
        return torch.nn.functional.conv2d(h, layer.weight, layer.bias, padding=padding)

    h = conv(silu(group_norm(x, block.norm1)), block.conv1, 1)
    h = h + (silu(temb) @ block.time_proj.weight.T + block.time_proj.bias)[:, :, None, None]
    h = silu(group_norm(h, block.norm2))
    h = torch.nn.functional.dropout(h, dropout, training)
    h = conv(h, block.conv2, 1)
    skip = x if isinstance(block.skip, torch.nn.Identity) else conv(x, block.skip, 0)
    return skip + h


@pytest.mark.parametrize(("in_ch", "out_ch"), [(8, 16), (16, 16)])
@pytest.mark.parametrize("training", [False, True])
def test_resblock_order_of_operations_matches_a_hand_written_pass(in_ch, out_ch, training):
    groups, dropout = 4, 0.3
    with torch.random.fork_rng():
        torch.manual_seed(0)
        block = ResBlock(in_ch, out_ch, time_dim=12, dropout=dropout, groups=groups)
        with torch.no_grad():  # every weight random, GroupNorm's affine and conv2's zeros too,
            for p in block.parameters():  # so that every step of the order shows in the output
                p.normal_(std=0.5)
        x = torch.randn(3, in_ch, 6, 5)
        temb = torch.randn(3, 12)
        block.train(training)
        torch.manual_seed(1)  # the same dropout mask in both passes
        out = block(x, temb)
        torch.manual_seed(1)
        expected = hand_written_resblock(block, x, temb, groups, dropout, training)
    assert out.shape == (3, out_ch, 6, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
