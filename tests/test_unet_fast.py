"""The UNet's speed paths against the plain computation they replace.

- cross-attention to a single context token (SVD's image embedding) skips the queries and keys at
  inference: softmax over one key is 1 (`svd_core.nn.attention.reads_one_key`);
- the temporal transformers broadcast one context per clip instead of copying it per pixel;
- the feed-forward's GELU and product run in place at inference;
- temporal convolutions run as matrix products over shifted frames (`conv_over_frames`);
- residuals, embeddings and SiLU are added/applied in place in fresh outputs (autograd must agree);
- the spatial/temporal blend forms 1 - alpha in float32.

Each is checked against an independent computation (by hand, nn.Conv3d, the full path with
gradients recorded, or diffusers) on tiny random models, with a batch of 2 or more and frame
counts other than SVD's 14 and 25.
"""

from __future__ import annotations

import contextlib
import math

import diffusers
import pytest
import torch
from helpers import randomize, set_res_block_eps
from torch.nn import functional as F

from svd_core.config import SVDConfig
from svd_core.loading.unet_maps import diffusers_unet_config, diffusers_unet_map
from svd_core.nn import AlphaBlend, Attention, GEGLUFeedForward, embed_added
from svd_core.nn.resblock import conv_over_frames
from svd_core.nn.transformer import TemporalTransformerBlock
from svd_core.unet import UNet

torch.set_num_threads(1)

# One block in float32: a few units of round-off on outputs of order one.
BLOCK_ATOL = 2e-5
# Whole tiny UNet, fast path against the full path or diffusers, as max |a - b| / max |b|: float32
# round-off through the network (the same bound as the parity tests in test_unet.py).
UNET_RTOL = 1e-5
# Gradients through the whole tiny UNet, as max |a - b| / max |b| per tensor: round-off grows in
# the backward pass (products of two forward round-offs), still far below any real difference.
GRAD_RTOL = 1e-4
# The floor for gradients that are zero in exact arithmetic, as a fraction of the largest gradient.
GRAD_FLOOR = 1e-2


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@contextlib.contextmanager
def _count_calls(modules: list[torch.nn.Module]):
    """Yield a counter, [calls], of the forward calls of `modules` inside the block."""
    calls = [0]
    handles = [
        module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for module in modules
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _attention_by_hand(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Softmax attention written out: x (N, L, C), context (N, S, D)."""
    n, length, _ = x.shape
    heads = attn.heads
    q = attn.to_q(x).view(n, length, heads, -1).transpose(1, 2)
    k = attn.to_k(context).view(n, context.shape[1], heads, -1).transpose(1, 2)
    v = attn.to_v(context).view(n, context.shape[1], heads, -1).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attn.to_out((weights @ v).transpose(1, 2).reshape(n, length, -1))


# ---- attention -----------------------------------------------------------------------------------


def test_cross_attention_to_one_token_skips_queries_at_inference_with_the_same_result():
    torch.manual_seed(0)
    attn = Attention(32, heads=4, head_dim=8, context_dim=24)
    randomize(attn)
    x, context = torch.randn(3, 10, 32), torch.randn(3, 1, 24)
    expected = _attention_by_hand(attn, x, context).detach()
    with _count_calls([attn.to_q, attn.to_k]) as query_calls:
        full = attn(x, context)  # gradients recorded: the full computation
        assert query_calls[0] == 2
        with torch.no_grad():
            fast = attn(x, context)
        assert query_calls[0] == 2  # the fast path computed neither queries nor keys
    assert fast.shape == (3, 10, 32)
    assert (full.detach() - expected).abs().max() <= BLOCK_ATOL
    assert (fast - expected).abs().max() <= BLOCK_ATOL


def test_attention_to_several_tokens_runs_in_full_at_inference():
    torch.manual_seed(0)
    attn = Attention(32, heads=4, head_dim=8, context_dim=24)
    randomize(attn)
    x, context = torch.randn(3, 10, 32), torch.randn(3, 4, 24)
    with torch.no_grad(), _count_calls([attn.to_q]) as query_calls:
        got = attn(x, context)
        assert query_calls[0] == 1
    with torch.no_grad():
        expected = _attention_by_hand(attn, x, context)
    assert (got - expected).abs().max() <= BLOCK_ATOL


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("grad", [False, True])
def test_attention_broadcasts_a_shared_context_over_leading_dims(tokens, grad):
    torch.manual_seed(0)
    attn = Attention(32, heads=4, head_dim=8, context_dim=24)
    randomize(attn)
    batch, pixels, frames = 2, 6, 5
    x = torch.randn(batch, pixels, frames, 32)
    context = torch.randn(batch, 1, tokens, 24)  # one per clip
    with torch.set_grad_enabled(grad):
        got = attn(x, context)
        # The same, computed per pixel column with the context copied to each.
        copied = context.expand(batch, pixels, tokens, 24).reshape(-1, tokens, 24)
        expected = _attention_by_hand(attn, x.reshape(-1, frames, 32), copied)
    assert got.shape == x.shape
    assert (got.reshape(-1, frames, 32) - expected).abs().max() <= BLOCK_ATOL


def test_attention_rejects_a_context_that_does_not_fit():
    attn = Attention(32, heads=4, head_dim=8, context_dim=24)
    with pytest.raises(
        ValueError, match=r"context of shape \(3, 1, 24\).*x of shape \(2, 10, 32\)"
    ):
        attn(torch.zeros(2, 10, 32), torch.zeros(3, 1, 24))


def test_temporal_block_with_one_context_per_clip_equals_one_copy_per_pixel():
    torch.manual_seed(0)
    block = TemporalTransformerBlock(32, heads=2, head_dim=16, context_dim=24)
    randomize(block)
    batch, pixels, frames = 2, 6, 7
    x = torch.randn(batch, pixels, frames, 32)
    context = torch.randn(batch, 1, 1, 24)
    copied = context.expand(batch, pixels, 1, 24).contiguous()
    with torch.no_grad():
        shared = block(x, context)  # fast path: one value row per clip
    full = block(x, copied)  # gradients recorded: full attention over the copies
    assert (shared - full.detach()).abs().max() <= BLOCK_ATOL


# ---- feed-forward --------------------------------------------------------------------------------


def test_geglu_in_place_inference_equals_the_formula_and_the_autograd_path():
    torch.manual_seed(0)
    ff = GEGLUFeedForward(16, dim_out=24, mult=4)
    randomize(ff)
    x = torch.randn(2, 6, 16)
    value, gate = ff.proj_in(x).detach().chunk(2, dim=-1)
    expected = ff.proj_out(value * F.gelu(gate)).detach()
    with_grad = ff(x)
    with torch.no_grad():
        in_place = ff(x)
    assert (with_grad.detach() - expected).abs().max() <= BLOCK_ATOL
    assert (in_place - expected).abs().max() <= BLOCK_ATOL


# ---- temporal convolution ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("frames", [1, 2, 5])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_over_frames_equals_conv3d_and_its_gradients(layout, frames, kernel, bias):
    """Both layouts (the UNet's standard one, the VAE decoder's channels-last) give the Conv3d's
    output and gradients, and the output keeps the input's layout."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(6, 10, (kernel, 1, 1), padding=(kernel // 2, 0, 0), bias=bias)
    x = torch.randn(2, 6, frames, 3, 4).contiguous(memory_format=layout).requires_grad_()
    upstream = torch.randn(2, 10, frames, 3, 4)
    expected = conv(x)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [x, *conv.parameters()])
    got = conv_over_frames(conv, x)
    got_grads = torch.autograd.grad((got * upstream).sum(), [x, *conv.parameters()])
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=layout)
    assert (got - expected).abs().max() <= BLOCK_ATOL
    for g, e in zip(got_grads, expected_grads, strict=True):
        assert (g - e).abs().max() <= BLOCK_ATOL


@pytest.mark.parametrize(
    "kernel, padding, stride",
    [
        ((3, 1, 1), (0, 0, 0), 1),
        ((3, 1, 1), (1, 0, 0), 2),
        ((2, 1, 1), (1, 0, 0), 1),
        ((3, 3, 3), 1, 1),
    ],
)
def test_conv_over_frames_rejects_a_conv_of_another_geometry(kernel, padding, stride):
    """Only a conv over frames with 'same' zero padding is a sum of shifted matrix products."""
    conv = torch.nn.Conv3d(6, 10, kernel, padding=padding, stride=stride)
    with pytest.raises(ValueError, match=r"needs a Conv3d of odd kernel \(k, 1, 1\).*got kernel"):
        conv_over_frames(conv, torch.randn(2, 6, 5, 3, 4))


def test_vae_decoder_runs_channels_last_and_returns_the_standard_layout():
    """The decoder converts to channels-last after conv_in (faster oneDNN convs on CPU); every
    spatial conv after it sees that layout, and the frames come back contiguous."""
    from svd_core import SVDConfig, SVDModel

    vae = SVDModel(SVDConfig.tiny()).vae.eval()
    seen = []
    for module in vae.decoder.modules():
        if isinstance(module, torch.nn.Conv2d) and module is not vae.decoder.conv_in:
            module.register_forward_pre_hook(
                lambda m, args: seen.append(
                    args[0].is_contiguous(memory_format=torch.channels_last)
                )
            )
    with torch.no_grad():
        frames = vae.decode(torch.randn(1, 3, 4, 4, 4))
    assert seen and all(seen)
    assert frames.is_contiguous()


# ---- blend ---------------------------------------------------------------------------------------


def test_blend_forms_one_minus_alpha_in_float32_before_rounding():
    blend = AlphaBlend(mix_factor=-2.89, strategy="learned")  # float32 parameter
    alpha = torch.sigmoid(torch.tensor([-2.89]))
    # The value is chosen so that the two roundings differ (the test means something).
    assert (1 - alpha).bfloat16() != 1 - alpha.bfloat16()
    first, second = torch.randn(4, 3).bfloat16(), torch.randn(4, 3).bfloat16()
    expected = alpha.bfloat16() * first + (1 - alpha).bfloat16() * second
    assert torch.equal(blend(first, second), expected)


# ---- the whole UNet ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_unet():
    cfg = SVDConfig.tiny().unet
    unet = UNet(cfg).eval()
    randomize(unet, seed=5)
    return unet


def _unet_inputs(cfg, batch: int, frames: int, tokens: int = 1, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg.in_channels, 8, 8, generator=generator)
    c_noise = torch.linspace(-1.0, 1.5, batch)
    context = torch.randn(batch, tokens, cfg.context_dim, generator=generator)
    ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(batch, 1) + torch.arange(batch)[:, None]
    vector = embed_added(ids[:, 0], ids[:, 1], ids[:, 2], cfg.addition_embed_dim)
    return x, c_noise, context, vector, ids


@pytest.mark.parametrize("batch, frames", [(2, 5), (3, 3), (2, 1)])
def test_unet_inference_paths_match_the_full_computation(tiny_unet, batch, frames):
    x, c_noise, context, vector, _ = _unet_inputs(tiny_unet.cfg, batch, frames)
    cross_attentions = [m.cross_attn.to_q for m in tiny_unet.modules() if hasattr(m, "cross_attn")]
    indicator = torch.zeros(batch, frames)
    indicator[0, 0] = 1.0  # one image-only frame
    with _count_calls(cross_attentions) as query_calls:
        full = tiny_unet(x, c_noise, context, vector)  # gradients recorded: no inference shortcut
        full_images = tiny_unet(x, c_noise, context, vector, indicator)
        assert query_calls[0] == 2 * len(cross_attentions)
        with torch.no_grad():
            fast = tiny_unet(x, c_noise, context, vector)
            fast_images = tiny_unet(x, c_noise, context, vector, indicator)
        assert query_calls[0] == 2 * len(cross_attentions)  # no query computed at inference
    rel = _relative(fast, full.detach())
    print(f"\nB={batch} F={frames}: inference vs full path rel={rel:.2e}")
    assert rel < UNET_RTOL
    assert _relative(fast_images, full_images.detach()) < UNET_RTOL


@pytest.fixture(scope="module")
def tiny_pair():
    """A random diffusers UNet at the tiny size with the official res-block eps, ours with its
    weights (as in test_unet.py)."""
    cfg = SVDConfig.tiny().unet
    torch.manual_seed(0)
    reference = diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg))
    randomize(reference, seed=6)
    ours = UNet(cfg)
    assert diffusers_unet_map(cfg).load_into(ours, reference.state_dict()) == {}
    set_res_block_eps(reference, 1e-5)
    return cfg, reference.eval(), ours.eval()


def test_unet_with_several_context_tokens_matches_diffusers(tiny_pair):
    cfg, reference, ours = tiny_pair
    x, c_noise, context, vector, ids = _unet_inputs(cfg, batch=2, frames=4, tokens=3)
    with torch.no_grad():
        expected = reference(x, c_noise, context, ids).sample
        got = ours(x, c_noise, context, vector)
    rel = _relative(got, expected)
    print(f"\n3 context tokens: rel={rel:.2e}")
    assert rel < UNET_RTOL


def test_unet_gradients_match_diffusers(tiny_pair):
    """The in-place additions and activations leave autograd's results as diffusers' (out-of-place)
    code computes them, for the input and for every parameter."""
    cfg, reference, ours = tiny_pair
    x, c_noise, context, vector, ids = _unet_inputs(cfg, batch=2, frames=3)
    upstream = torch.randn(2, 3, cfg.out_channels, 8, 8, generator=torch.Generator().manual_seed(2))
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    (ours(x_ours, c_noise, context, vector) * upstream).sum().backward()
    (reference(x_ref, c_noise, context, ids).sample * upstream).sum().backward()
    assert _relative(x_ours.grad, x_ref.grad) < GRAD_RTOL
    theirs = dict(reference.named_parameters())
    key_map = diffusers_unet_map(cfg)
    largest = max(q.grad.abs().max() for q in theirs.values())
    worst = 0.0
    for name, p in ours.named_parameters():
        (key,) = key_map.entries[name].keys
        q = theirs[key]
        # Some gradients are zero in exact arithmetic and hold only round-off (a per-channel bias
        # in front of a GroupNorm of one channel per group, the time embedding's projection there,
        # the queries and keys of attention to one token): they are measured on the scale of a
        # floor, a fraction of the largest gradient, rather than on their own.
        scale = max(q.grad.abs().max(), GRAD_FLOOR * largest)
        rel = ((p.grad - q.grad).abs().max() / scale).item()
        worst = max(worst, rel)
        assert rel < GRAD_RTOL, f"{name}: {rel:.2e} (max |grad| {q.grad.abs().max():.2e})"
    print(f"\ngradients: worst relative difference {worst:.2e}")
