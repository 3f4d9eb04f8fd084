"""The shared blocks of svd_core.nn: unit behaviour, and parity with diffusers' blocks where it has them."""

import math

import pytest
import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention as DiffusersAttention
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from diffusers.models.resnet import AlphaBlender, ResnetBlock2D, TemporalResnetBlock

from svd_core import nn as blocks
from svd_core.nn import embed_added, timestep_embedding

# float32 tolerance for one block: a few units of round-off on outputs of order 1.
BLOCK_ATOL = 2e-5


def randomize(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> None:
    """Give every parameter random values (including those a reference initialises to zero or one)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def copy_renamed(source: torch.nn.Module, target: torch.nn.Module, renames: dict[str, str]) -> None:
    """Load `source`'s weights into `target`, mapping each source name prefix through `renames`."""
    state = {}
    for name, tensor in source.state_dict().items():
        for old, new in renames.items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        state[name] = tensor
    target.load_state_dict(state, strict=True)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float = BLOCK_ATOL) -> None:
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err <= atol, (
        f"max abs error {err:.3e} > {atol:.1e} (reference scale {ref.abs().max():.3e})"
    )


@pytest.mark.parametrize("context_dim", [None, 24])
def test_attention_matches_diffusers(context_dim):
    torch.manual_seed(0)
    ref = DiffusersAttention(
        query_dim=32, cross_attention_dim=context_dim, heads=4, dim_head=8, bias=False
    )
    ours = blocks.Attention(32, heads=4, head_dim=8, context_dim=context_dim)
    randomize(ref)
    copy_renamed(ref, ours, {"to_out.0.": "to_out."})
    x = torch.randn(3, 10, 32)
    context = None if context_dim is None else torch.randn(3, 7, context_dim)
    assert_close(ours(x, context), ref(x, encoder_hidden_states=context))


def test_attention_is_softmax_attention_by_hand():
    torch.manual_seed(0)
    attn = blocks.Attention(8, heads=2, head_dim=4, qkv_bias=True)
    x = torch.randn(2, 5, 8)
    q, k, v = (
        layer(x).view(2, 5, 2, 4).transpose(1, 2) for layer in (attn.to_q, attn.to_k, attn.to_v)
    )
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.to_out((weights @ v).transpose(1, 2).reshape(2, 5, 8))
    assert_close(attn(x), expected)


def test_geglu_feedforward_matches_diffusers():
    torch.manual_seed(0)
    ref = FeedForward(16, dim_out=24, mult=4, activation_fn="geglu")
    ours = blocks.GEGLUFeedForward(16, dim_out=24, mult=4)
    randomize(ref)
    copy_renamed(ref, ours, {"net.0.proj.": "proj_in.", "net.2.": "proj_out."})
    x = torch.randn(2, 6, 16)
    assert_close(ours(x), ref(x))


def test_groupnorm32_equals_groupnorm_in_float32_and_keeps_dtype():
    torch.manual_seed(0)
    ours = blocks.GroupNorm32(4, 16, eps=1e-5)
    ref = torch.nn.GroupNorm(4, 16, eps=1e-5)
    randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(ours(x), ref(x))
    # Half precision in, half precision out, but normalized in float32: equal to the float32 result
    # rounded once (whatever the device's half-precision group_norm kernel accumulates in).
    x_half = (x * 100 + 1000).bfloat16()
    ours = ours.bfloat16()
    out = ours(x_half)
    assert out.dtype == torch.bfloat16
    ref.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})  # the rounded weights
    expected = ref(x_half.float()).bfloat16()
    assert torch.equal(out, expected)


@pytest.mark.parametrize("in_channels,out_channels", [(32, 32), (32, 64)])
def test_resblock_matches_diffusers_resnet2d(in_channels, out_channels):
    torch.manual_seed(0)
    ref = ResnetBlock2D(
        in_channels=in_channels, out_channels=out_channels, temb_channels=20, eps=1e-5, groups=32
    )
    ours = blocks.ResBlock(in_channels, out_channels, emb_channels=20, eps=1e-5)
    randomize(ref)
    copy_renamed(ref, ours, {"time_emb_proj.": "emb_proj.", "conv_shortcut.": "skip."})
    x, emb = torch.randn(2, in_channels, 6, 5), torch.randn(2, 20)
    assert_close(ours(x, emb), ref(x, emb))


def test_resblock_without_embedding_matches_diffusers():
    torch.manual_seed(0)
    ref = ResnetBlock2D(in_channels=32, out_channels=64, temb_channels=None, eps=1e-6, groups=32)
    ours = blocks.ResBlock(32, 64, emb_channels=None, eps=1e-6)
    randomize(ref)
    copy_renamed(ref, ours, {"conv_shortcut.": "skip."})
    x = torch.randn(2, 32, 6, 5)
    assert_close(ours(x), ref(x, None))


def test_temporal_resblock_matches_diffusers():
    torch.manual_seed(0)
    ref = TemporalResnetBlock(32, 32, temb_channels=20, eps=1e-5)
    ours = blocks.ResBlock(32, 32, emb_channels=20, eps=1e-5, temporal=True)
    randomize(ref)
    copy_renamed(ref, ours, {"time_emb_proj.": "emb_proj."})
    x, emb = torch.randn(2, 32, 4, 3, 3), torch.randn(2, 4, 20)  # (B, C, F, H, W), (B, F, E)
    assert_close(ours(x, emb), ref(x, emb))


def test_temporal_resblock_mixes_frames_not_pixels():
    torch.manual_seed(0)
    block = blocks.ResBlock(32, 32, temporal=True)
    randomize(block)
    block.norm1 = block.norm2 = torch.nn.Identity()  # GroupNorm statistics couple all positions
    x = torch.randn(1, 32, 5, 4, 4)
    base = block(x)
    bumped = x.clone()
    bumped[:, :, 2, 1, 1] += 1.0  # one pixel of frame 2
    touched = (block(bumped) - base).abs().sum(dim=1)[0] > 0  # (F, H, W)
    assert touched[:, 1, 1].all()  # kernel 3, two convs: frames 0..4 all reached from frame 2
    assert touched.sum() == 5  # and no other pixel


def test_resblock_requires_embedding_when_built_with_one():
    block = blocks.ResBlock(32, 32, emb_channels=8)
    with pytest.raises(ValueError, match="needs an embedding"):
        block(torch.randn(1, 32, 4, 4))


@pytest.mark.parametrize("strategy", ["fixed", "learned", "learned_with_images"])
def test_alpha_blend_matches_diffusers(strategy):
    ref = AlphaBlender(alpha=0.3, merge_strategy=strategy)
    ours = blocks.AlphaBlend(mix_factor=0.3, strategy=strategy)
    ours.load_state_dict(ref.state_dict())
    batch, frames = 2, 3
    spatial, temporal = torch.randn(batch * frames, 7, 4), torch.randn(batch * frames, 7, 4)
    indicator = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = ref(spatial, temporal, image_only_indicator=indicator)
    assert_close(ours(spatial, temporal, image_only_indicator=indicator), expected, atol=1e-7)


def test_alpha_blend_learned_with_images_takes_first_path_for_images():
    blend = blocks.AlphaBlend(mix_factor=0.5, strategy="learned_with_images")
    a, b = torch.ones(4, 3), torch.zeros(4, 3)
    indicator = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (B=2, F=2)
    out = blend(a, b, image_only_indicator=indicator)
    sigmoid = torch.sigmoid(torch.tensor(0.5))
    assert torch.allclose(
        out[:, 0], torch.stack([torch.tensor(1.0), sigmoid, sigmoid, torch.tensor(1.0)])
    )


def test_alpha_blend_rejects_unknown_strategy():
    with pytest.raises(ValueError, match="unknown blend strategy"):
        blocks.AlphaBlend(strategy="average")


@pytest.mark.parametrize("dim", [16, 256, 320, 7])
def test_timestep_embedding_matches_diffusers_and_official_order(dim):
    values = torch.tensor([0.0, 1.0, 6.0, 127.0, 0.25 * math.log(700.0)])
    ours = timestep_embedding(values, dim)
    ref = get_timestep_embedding(values, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert torch.equal(ours, ref)
    # Official order: cosines of all frequencies first; frequency 0 is exp(0) = 1.
    assert torch.allclose(ours[:, 0], torch.cos(values))
    assert torch.allclose(ours[:, dim // 2], torch.sin(values))


def test_timestep_embedding_rejects_non_vector():
    with pytest.raises(ValueError, match="1-D tensor"):
        timestep_embedding(torch.zeros(2, 2), 8)


def test_embed_added_concatenates_in_official_order_and_broadcasts():
    vector = embed_added(6, torch.tensor([127.0, 30.0]), 0.02, dim=8)
    assert vector.shape == (2, 24)
    assert torch.equal(vector[:, :8], timestep_embedding(torch.tensor([6.0, 6.0]), 8))
    assert torch.equal(vector[:, 8:16], timestep_embedding(torch.tensor([127.0, 30.0]), 8))
    assert torch.equal(vector[:, 16:], timestep_embedding(torch.tensor([0.02, 0.02]), 8))


def test_embed_added_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="batch sizes"):
        embed_added(torch.tensor([6.0, 6.0]), torch.tensor([1.0, 2.0, 3.0]), 0.02)


def test_embedding_mlp_matches_diffusers_timestep_embedding():
    torch.manual_seed(0)
    ref = TimestepEmbedding(16, 48)
    ours = blocks.EmbeddingMLP(16, 48)
    randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16)
    assert_close(ours(x), ref(x))


def test_embedding_mlp_hidden_width_matches_diffusers_frame_position_mlp():
    torch.manual_seed(0)
    ref = TimestepEmbedding(16, 64, out_dim=16)  # diffusers' temporal pos MLP: C -> 4C -> C
    ours = blocks.EmbeddingMLP(16, 16, hidden_dim=64)
    randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16)
    assert_close(ours(x), ref(x))


def test_upsample_matches_diffusers_upsample2d():
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    ref = Upsample2D(32, use_conv=True, out_channels=32)
    ours = blocks.Upsample(32)
    randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 32, 5, 7)
    assert_close(ours(x), ref(x))
    assert ours(x).shape == (2, 32, 10, 14)


# ---- fast paths and their plain twins ----------------------------------------------------------


def _fast_and_plain(module: torch.nn.Module, *inputs, grad: bool = False):
    """module(*inputs) with every fast path on, then with every one off (svd_core.nn.use_fast_paths)."""
    with torch.set_grad_enabled(grad):
        fast = blocks.use_fast_paths(module, True)(*inputs)
        plain = blocks.use_fast_paths(module, False)(*inputs)
    blocks.use_fast_paths(module, True)
    return fast, plain


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_the_unet_gives_the_same_numbers_with_its_fast_paths_off(grad):
    from helpers import random_model

    unet = random_model().unet.double()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, 8, generator=generator, dtype=torch.float64)
    c_noise = torch.tensor([0.3, -1.2], dtype=torch.float64)
    context = torch.randn(2, 1, unet.cfg.context_dim, generator=generator, dtype=torch.float64)
    vector = torch.randn(2, unet.cfg.vector_dim, generator=generator, dtype=torch.float64)
    fast, plain = _fast_and_plain(unet, x, c_noise, context, vector, grad=grad)
    assert fast.abs().max() > 0.1  # random weights: a real output
    assert torch.allclose(fast, plain, rtol=1e-10, atol=1e-12)
    flags = [m.fast_path for m in unet.modules() if hasattr(m, "fast_path")]
    kinds = {type(m).__name__ for m in unet.modules() if hasattr(m, "fast_path")}
    assert all(flags) and kinds == {"Attention", "GEGLUFeedForward", "ResBlock"}


def test_the_video_decoder_gives_the_same_frames_with_conv_over_frames_off():
    from helpers import random_model

    vae = random_model().vae.double()
    z = torch.randn(1, 3, vae.cfg.latent_channels, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        fast = blocks.use_fast_paths(vae, True).decode(z)
        plain = blocks.use_fast_paths(vae, False).decode(z)
    blocks.use_fast_paths(vae, True)
    assert torch.allclose(fast, plain, rtol=1e-10, atol=1e-12)


def test_a_masked_attention_takes_the_plain_path(monkeypatch):
    attention = blocks.Attention(16, heads=2, head_dim=8, context_dim=12)
    randomize(attention)
    x, context = torch.randn(3, 5, 16), torch.randn(3, 2, 12)
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    with torch.no_grad():
        attention(x, context[:, :1])  # one key, no mask: the shortcut, no SDPA
        assert calls == []
        # A mask that hides the second key equals attention to the first key alone.
        only_first = torch.tensor([[True, False]])  # (L, S), broadcast over L
        masked = attention(x, context, mask=only_first)
        assert len(calls) == 1 and calls[0] is only_first
        assert_close(masked, attention(x, context[:, :1]))
        attention(x, context[:, :1], mask=torch.tensor([[True]]))  # one key and a mask: plain
        assert len(calls) == 2
        attention.fast_path = False
        attention(x, context[:, :1])  # the switch: plain SDPA
        assert len(calls) == 3


def test_with_the_fast_path_off_a_hook_sees_the_projection_unmodified():
    feed_forward = blocks.GEGLUFeedForward(8)
    randomize(feed_forward)
    seen = []
    feed_forward.proj_in.register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.randn(4, 8)
    expected = feed_forward.proj_in(x).detach().clone()
    seen.clear()
    with torch.no_grad():
        feed_forward(x)  # the in-place product writes into proj_in's output
        assert not torch.equal(seen[-1], expected)
        feed_forward.fast_path = False
        feed_forward(x)
        assert torch.equal(seen[-1], expected)


def test_use_fast_paths_takes_a_bool():
    with pytest.raises(TypeError, match="True or False"):
        blocks.use_fast_paths(blocks.GEGLUFeedForward(8), "off")
