"""The spatio-temporal UNet: live parity with diffusers, image-only frames, precision, full-size
structure on the meta device, key-map round trips, gradient checkpointing and input errors."""

from __future__ import annotations

import json

import diffusers  # noqa: E402
import pytest
import torch
from helpers import OFFICIAL_KEYS, randomize, set_res_block_eps

from svd_core.config import ConfigError, SVDConfig, UNetConfig
from svd_core.loading.unet_maps import (
    OFFICIAL_PREFIX,
    diffusers_unet_config,
    diffusers_unet_map,
    official_unet_map,
    unet_config_from_diffusers,
)
from svd_core.nn import GroupNorm32, embed_added
from svd_core.unet import UNet

SVD_UNET_PARAMS = 1524623082  # official svd.safetensors, model.diffusion_model.*

# float32 parity with diffusers (res-block eps set to the official 1e-5), as max |ours - ref| over
# max |ref|: float32 round-off through the whole network.
PARITY_RTOL = 1e-5
# diffusers as shipped (eps 1e-6 in the res blocks of its cross-attention down blocks and all up
# blocks) differs from the official numerics by a small, non-zero amount.
STOCK_DIFFUSERS_MAX_RTOL = 1e-3
# bfloat16 model (GroupNorm in float32 inside) against the float32 model.
BF16_RTOL = 5e-2

BATCH = 2
HEIGHT = WIDTH = 8


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    err = (ours.float() - ref.float()).abs().max().item()
    return err, err / ref.float().abs().max().item()


def _diffusers_forward(reference, x, c_noise, context, added_time_ids, image_only_indicator):
    """diffusers' UNet forward, step for step, but with an image_only_indicator of our choice
    (its own forward always passes zeros)."""
    batch, num_frames = x.shape[:2]
    emb = reference.time_embedding(reference.time_proj(c_noise))
    added = reference.add_time_proj(added_time_ids.flatten()).reshape(batch, -1)
    emb = (emb + reference.add_embedding(added)).repeat_interleave(num_frames, dim=0)
    context = context.repeat_interleave(num_frames, dim=0)
    h = reference.conv_in(x.flatten(0, 1))
    skips = (h,)
    for block in reference.down_blocks:
        cross = getattr(block, "has_cross_attention", False)
        kwargs = {"encoder_hidden_states": context} if cross else {}
        h, block_skips = block(
            hidden_states=h, temb=emb, image_only_indicator=image_only_indicator, **kwargs
        )
        skips += block_skips
    h = reference.mid_block(
        hidden_states=h,
        temb=emb,
        encoder_hidden_states=context,
        image_only_indicator=image_only_indicator,
    )
    for block in reference.up_blocks:
        block_skips, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        cross = getattr(block, "has_cross_attention", False)
        kwargs = {"encoder_hidden_states": context} if cross else {}
        h = block(
            hidden_states=h,
            res_hidden_states_tuple=block_skips,
            temb=emb,
            image_only_indicator=image_only_indicator,
            **kwargs,
        )
    h = reference.conv_out(reference.conv_act(reference.conv_norm_out(h)))
    return h.reshape(batch, num_frames, *h.shape[1:])


@pytest.fixture(scope="module")
def tiny_pair():
    """A random diffusers UNet at the tiny size (official res-block eps), ours with its weights."""
    cfg = SVDConfig.tiny().unet
    torch.manual_seed(0)
    reference = diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg)).eval()
    randomize(reference, seed=0)
    ours = UNet(cfg).eval()
    ignored = diffusers_unet_map(cfg).load_into(ours, reference.state_dict())
    assert ignored == {}
    set_res_block_eps(reference, 1e-5)
    return cfg, reference, ours


def _inputs(cfg: UNetConfig, num_frames: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, num_frames, cfg.in_channels, HEIGHT, WIDTH, generator=generator)
    c_noise = 0.25 * torch.log(torch.tensor([700.0, 0.5]))
    context = torch.randn(BATCH, 1, cfg.context_dim, generator=generator)
    added_time_ids = torch.tensor(
        [[6.0, 127.0, 0.02], [3.0, 40.0, 0.1]]
    )  # fps_id, motion, cond_aug
    return x, c_noise, context, added_time_ids


@pytest.mark.parametrize("num_frames", [3, 5])
def test_matches_diffusers_with_official_norm_eps(tiny_pair, num_frames):
    cfg, reference, ours = tiny_pair
    x, c_noise, context, ids = _inputs(cfg, num_frames)
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    with torch.no_grad():
        expected = reference(x, c_noise, context, ids).sample
        got = ours(x, c_noise, context, vector)
    err, rel = _relative_error(got, expected)
    print(
        f"\nF={num_frames}: max|ref|={expected.abs().max():.4f} max abs err={err:.3e} rel={rel:.3e}"
    )
    assert got.shape == (BATCH, num_frames, cfg.out_channels, HEIGHT, WIDTH)
    assert rel < PARITY_RTOL


def test_embed_added_matches_diffusers_add_time_proj(tiny_pair):
    cfg, reference, _ = tiny_pair
    _, _, _, ids = _inputs(cfg, 3)
    theirs = reference.add_time_proj(ids.flatten()).reshape(BATCH, -1)
    ours = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    err = (ours - theirs).abs().max().item()
    print(f"\nembed_added vs add_time_proj: max abs err={err:.3e}")
    assert err < 1e-6


def test_stock_diffusers_differs_slightly_from_official_eps(tiny_pair):
    cfg, reference, ours = tiny_pair
    x, c_noise, context, ids = _inputs(cfg, 5)
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    with torch.no_grad():
        got = ours(x, c_noise, context, vector)
        official_eps = reference(x, c_noise, context, ids).sample
        try:
            set_res_block_eps(reference, 1e-6)  # undo the test's override: diffusers as shipped
            stock = reference(x, c_noise, context, ids).sample
        finally:
            set_res_block_eps(reference, 1e-5)
    _, round_off = _relative_error(got, official_eps)
    err, rel = _relative_error(got, stock)
    print(f"\nstock diffusers (eps 1e-6) vs ours: max abs err={err:.3e} rel={rel:.3e}")
    print(f"diffusers with eps 1e-5 vs ours: rel={round_off:.3e}")
    # Well above float32 round-off, yet small.
    assert 5 * round_off < rel < STOCK_DIFFUSERS_MAX_RTOL


def test_image_only_frames_bypass_the_temporal_paths(tiny_pair):
    cfg, _, ours = tiny_pair
    x, c_noise, context, ids = _inputs(cfg, 3)
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    with torch.no_grad():
        images = ours(x, c_noise, context, vector, torch.ones(BATCH, 3))
        video = ours(x, c_noise, context, vector)
        for frame in range(3):
            alone = ours(x[:, frame : frame + 1], c_noise, context, vector, torch.ones(BATCH, 1))
            err, rel = _relative_error(images[:, frame], alone[:, 0])
            print(f"\nimage-only frame {frame} vs alone: max abs err={err:.3e} rel={rel:.3e}")
            assert rel < PARITY_RTOL, f"frame {frame}: {err:.3e} ({rel:.3e} relative)"
    # The temporal paths matter when the frames are a video.
    assert _relative_error(video, images)[1] > 1e-2


def test_image_only_indicator_matches_diffusers(tiny_pair):
    cfg, reference, ours = tiny_pair
    x, c_noise, context, ids = _inputs(cfg, 3)
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    zeros = torch.zeros(BATCH, 3)
    indicator = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    with torch.no_grad():
        # The driver reproduces diffusers' own forward exactly when the indicator is zeros.
        driver = _diffusers_forward(reference, x, c_noise, context, ids, zeros)
        assert torch.equal(driver, reference(x, c_noise, context, ids).sample)
        expected = _diffusers_forward(reference, x, c_noise, context, ids, indicator)
        got = ours(x, c_noise, context, vector, indicator)
    err, rel = _relative_error(got, expected)
    print(f"\nwith image_only_indicator: max abs err={err:.3e} rel={rel:.3e}")
    assert rel < PARITY_RTOL


def test_bfloat16_close_to_float32_with_float32_group_norms(tiny_pair):
    cfg, _, ours = tiny_pair
    norms = [m for m in ours.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(isinstance(m, GroupNorm32) for m in norms)
    x, c_noise, context, ids = _inputs(cfg, 3)
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    half = UNet(cfg).eval()
    half.load_state_dict(ours.state_dict())
    half.to(torch.bfloat16)
    with torch.no_grad():
        full = ours(x, c_noise, context, vector)
        got = half(x.bfloat16(), c_noise, context.bfloat16(), vector.bfloat16())
    assert got.dtype == torch.bfloat16
    err, rel = _relative_error(got, full)
    print(f"\nbfloat16 vs float32: max abs err={err:.3e} rel={rel:.3e}")
    assert rel < BF16_RTOL


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_full_size_matches_the_official_checkpoint_layout():
    cfg = SVDConfig.svd().unet
    with torch.device("meta"):
        unet = UNet(cfg)
    assert sum(p.numel() for p in unet.parameters()) == SVD_UNET_PARAMS
    tensors = json.loads(OFFICIAL_KEYS.read_text())["tensors"]
    official = {k: tuple(v) for k, v in tensors.items() if k.startswith(OFFICIAL_PREFIX)}
    assert len(official) == 1428
    assert official_unet_map(cfg).check(official, _meta_shapes(unet)) == {}


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_full_size_matches_the_diffusers_layout():
    cfg = SVDConfig.svd().unet
    with torch.device("meta"):
        unet = UNet(cfg)
        reference = diffusers.UNetSpatioTemporalConditionModel()  # diffusers' defaults: SVD's size
    assert diffusers_unet_map(cfg).check(_meta_shapes(reference), _meta_shapes(unet)) == {}
    assert unet_config_from_diffusers(dict(reference.config)) == cfg
    # diffusers_unet_config(svd) builds exactly diffusers' default (SVD) configuration.
    with torch.device("meta"):
        built = diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg))
    assert _public(built.config) == _public(reference.config)


@pytest.mark.parametrize("make_map", [official_unet_map, diffusers_unet_map])
def test_key_map_round_trip_is_bit_exact(make_map):
    cfg = SVDConfig.tiny().unet
    unet = UNet(cfg)
    randomize(unet, seed=3)
    state = unet.state_dict()
    key_map = make_map(cfg)
    theirs = key_map.to_theirs(state)
    assert len(theirs) == len(state)
    back = key_map.to_ours(theirs.__getitem__)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_config_round_trips_through_diffusers():
    cfg = SVDConfig.tiny().unet
    assert unet_config_from_diffusers(diffusers_unet_config(cfg)) == cfg
    with pytest.raises(ConfigError, match="does not know"):
        unet_config_from_diffusers({**diffusers_unet_config(cfg), "resnet_eps": 1e-6})
    with pytest.raises(ConfigError, match="num_groups"):
        diffusers_unet_config(UNetConfig(num_groups=16))


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    cfg = SVDConfig.tiny().unet
    plain = UNet(cfg)
    randomize(plain, seed=4)
    checkpointed = UNet(cfg, gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(BATCH, 3, cfg.in_channels, HEIGHT, WIDTH)
    c_noise = torch.tensor([0.3, -1.0])
    context = torch.randn(BATCH, 1, cfg.context_dim)
    vector = embed_added(6, 127, 0.02, cfg.addition_embed_dim).expand(BATCH, -1)
    calls = []
    # A sub-module's hook: torch stops a recomputation once it has the tensors it needs, so the
    # checkpointed block's own forward does not finish a second time, but its first layers run again.
    checkpointed.middle.res_in.spatial.register_forward_hook(lambda *_: calls.append(1))
    outputs = []
    for unet in (plain, checkpointed):
        out = unet(x, c_noise, context, vector)
        out.square().mean().backward()
        outputs.append(out.detach())
    assert len(calls) == 2  # the checkpointed block was recomputed in the backward pass
    assert torch.allclose(outputs[0], outputs[1], rtol=0, atol=1e-6)
    worst = max(
        (p.grad - q.grad).abs().max().item() / p.grad.abs().max().item()
        for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True)
    )
    print(f"\ncheckpointing: worst relative gradient difference {worst:.3e}")
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name


@pytest.fixture(scope="module")
def small_unet():
    return UNet(SVDConfig.tiny().unet)


def _good(cfg: UNetConfig):
    return dict(
        x=torch.zeros(2, 3, cfg.in_channels, 8, 8),
        c_noise=torch.zeros(2),
        context=torch.zeros(2, 1, cfg.context_dim),
        vector=torch.zeros(2, cfg.vector_dim),
    )


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("x", torch.zeros(3, 8, 8, 8), r"\(B, F, C, h, w\).*\(3, 8, 8, 8\)"),
        ("x", torch.zeros(2, 3, 4, 8, 8), r"4 channels.*\(2, 3, 4, 8, 8\).*expected 8"),
        ("x", torch.zeros(2, 3, 8, 8, 6), r"multiples of 4, got 8x6"),
        ("c_noise", torch.zeros(3), r"c_noise must be \(B,\) = \(2,\).*\(3,\)"),
        (
            "context",
            torch.zeros(1, 1, 32),
            r"context must be \(B, N, 32\) with B = 2.*\(1, 1, 32\)",
        ),
        ("context", torch.zeros(2, 1, 16), r"context must be \(B, N, 32\).*\(2, 1, 16\)"),
        ("vector", torch.zeros(2, 47), r"vector must be \(B, 48\) with B = 2.*\(2, 47\)"),
        ("vector", torch.zeros(1, 48), r"vector must be \(B, 48\).*\(1, 48\)"),
        ("image_only_indicator", torch.zeros(2, 4), r"\(B, F\) = \(2, 3\).*\(2, 4\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(small_unet, name, value, message):
    inputs = _good(small_unet.cfg) | {name: value}
    with pytest.raises(ValueError, match=message):
        small_unet(**inputs)
