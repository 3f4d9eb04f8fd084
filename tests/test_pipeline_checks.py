"""SVDPipeline's checks: every size and sampling argument either runs or is refused with one clear
error before any network runs (the first network replaced by a spy), accepted arguments give a
finite video, and NaN or float16 overflow anywhere in a run stops it with a NumericalError that
names the network, the step, the dtype and the remedy.

- Property-based tests (hypothesis, derandomized) over every sampling argument; the accepted ranges
  are restated in tests/helpers.py (`RANGES`), independently of svd_core/pipeline.py.
- Numeric hazards: weights built to overflow float16 (`helpers.spiked`); the same through the
  command line is in test_cli.py.

tests/README.md lists the hazards and how many examples the property tests ran.
"""

from __future__ import annotations

import copy
import math
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import (
    EXAMPLES,
    MULTIPLE,
    PROPERTY,
    SIZE,
    UNET_BLOCK,
    ReachedTheNetworks,
    accepted,
    ramp_image,
    random_model,
    spiked,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

import svd_core.pipeline
from svd_core import NumericalError, SVDConfig
from svd_core.io import MAX_SIDE
from svd_core.model import SVDModel
from svd_core.pipeline import SVDPipeline

pytestmark = pytest.mark.usefixtures("one_thread", "example_count")


@pytest.fixture(scope="module")
def pipe(model):
    return SVDPipeline(model)


@pytest.fixture
def no_networks(monkeypatch):
    """The pipeline's first heavy step (CLIP and VAE encoding) raises ReachedTheNetworks."""

    def spy(*args, **kwargs):
        raise ReachedTheNetworks

    monkeypatch.setattr(svd_core.pipeline, "encode_conditioning", spy)


# ---- video sizes ---------------------------------------------------------------------------------


def test_pipeline_refuses_sizes_not_fit_for_this_model_before_any_network(pipe, no_networks):
    assert pipe.size_multiple == MULTIPLE  # tiny: VAE 8x, UNet 3 levels = 4x
    official = SVDConfig.svd()
    assert official.vae.downscale_factor * 2 ** (len(official.unet.channel_mult) - 1) == 64
    for height in (48, 0, MAX_SIDE + MULTIPLE):
        with pytest.raises(
            ValueError, match=f"multiple of 32 .*VAE downsamples 8x, then its UNet 4x.*got {height}"
        ):
            pipe(ramp_image(), height=height, progress=False)
    with pytest.raises(ReachedTheNetworks):  # 96 is a multiple of 32: accepted
        pipe(ramp_image(), height=96, width=32, progress=False)


# ---- sampling arguments --------------------------------------------------------------------------

INTS = st.one_of(st.none(), st.integers(-3, 1100), st.sampled_from([10**12, True, 2.0, "3"]))
NUMBERS = st.one_of(
    st.none(),
    st.floats(-50, 1200),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, True, "7", 0, 255, 256, 1023]),
)
SEEDS = st.one_of(
    st.none(), st.integers(-(2**64), 2**65), st.sampled_from([[1], "seed", 1.5, 2**64 - 1])
)


@given(
    num_frames=INTS,
    num_steps=INTS,
    decode_chunk_size=INTS,
    fps=NUMBERS,
    motion_bucket_id=NUMBERS,
    cond_aug=NUMBERS,
    min_guidance=NUMBERS,
    max_guidance=NUMBERS,
    seed=SEEDS,
)
@settings(PROPERTY, max_examples=250)
def test_sampling_arguments_run_or_are_refused_before_any_network(pipe, no_networks, **options):
    EXAMPLES["sampling arguments"] += 1
    given_options = {k: v for k, v in options.items() if v is not None}
    bad = {k: v for k, v in given_options.items() if not accepted(k, v)}
    if given_options.get("seed") == [1]:  # one image, a list of one seed: accepted
        bad.pop("seed")
    image = ramp_image()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if bad:
            with pytest.raises(ValueError) as info:
                pipe(image, progress=False, **given_options)
            message = str(info.value)
            named = [k for k in bad if message.startswith(f"{k} must be")]
            assert named, message
            assert repr(bad[named[0]]) in message, message
            return
        with pytest.raises(ReachedTheNetworks):
            pipe(image, progress=False, **given_options)
    fps = given_options.get("fps", pipe.config.fps)
    motion = given_options.get("motion_bucket_id", pipe.config.motion_bucket_id)
    expect_warnings = int(not 5 <= fps - 1 <= 30) + int(motion > 255)
    assert len([w for w in caught if "official script warns" in str(w.message)]) == expect_warnings


@given(
    num_frames=st.integers(1, 3),
    num_steps=st.integers(1, 2),
    decode_chunk_size=st.integers(1, 5),
    fps=st.floats(1, 240),
    motion_bucket_id=st.floats(0, 1023),
    cond_aug=st.floats(0, 10),
    max_guidance=st.floats(0, 100),
    sampler=st.sampled_from(["euler", "heun", "dpmpp_2m"]),
)
@example(
    num_frames=1,
    num_steps=1,
    decode_chunk_size=1,
    fps=1.0,
    motion_bucket_id=0.0,
    cond_aug=0.0,
    max_guidance=0.0,
    sampler="euler",
)
@example(
    num_frames=3,
    num_steps=2,
    decode_chunk_size=5,
    fps=240.0,
    motion_bucket_id=1023.0,
    cond_aug=10.0,
    max_guidance=100.0,
    sampler="heun",
)
@settings(PROPERTY, max_examples=8)
def test_accepted_arguments_give_a_finite_video_of_the_asked_length(pipe, **options):
    EXAMPLES["end-to-end runs"] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fps and motion outside the official script's ranges
        video = pipe(ramp_image(31, 200), seed=0, progress=False, **options)
    assert video.frames.shape == (options["num_frames"], SIZE, SIZE, 3)
    assert video.frames.dtype == np.uint8
    assert torch.isfinite(video.float_frames).all() and torch.isfinite(video.latents).all()


def test_bad_noise_and_seed_ranges_are_refused_before_any_network(pipe, no_networks):
    noise = torch.zeros(1, 5, 4, 8, 8)
    noise[0, 0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="noise contains NaN"):
        pipe(ramp_image(), noise=noise, progress=False)
    with pytest.raises(ValueError, match="noise must be a float tensor.*int64"):
        pipe(ramp_image(), noise=torch.zeros(1, 5, 4, 8, 8, dtype=torch.long), progress=False)
    # seed + i of a batch must stay a valid torch seed
    with pytest.raises(ValueError, match=f"seed must be an integer from .* got {2**64}"):
        pipe([ramp_image(), ramp_image()], seed=2**64 - 1, progress=False)


# ---- numeric hazards: float16 overflow -----------------------------------------------------------

FLOAT16_MAX = torch.finfo(torch.float16).max  # 65504


def watched_run(model: SVDModel, block: str, dtype: torch.dtype | None = None):
    """A pipeline run; the video, the largest |output| of `block` and `block`'s first input."""
    peaks, inputs = [], []

    def watch(module, args, output):
        peaks.append(output.detach().abs().float().max().item())
        inputs.append(args[0].detach())

    hook = model.get_submodule(block).register_forward_hook(watch)
    try:
        video = SVDPipeline(model, dtype=dtype)(ramp_image(), **OPTIONS)
    finally:
        hook.remove()
    return video, max(peaks), inputs[0]


VAE_BLOCK = "vae.decoder.mid.res_1.spatial"
OPTIONS = dict(num_frames=2, num_steps=2, seed=0, progress=False)


def test_float16_policy_keeps_the_video_finite_where_a_float16_vae_overflows():
    model = spiked(VAE_BLOCK, 1e5)
    reference, peak, block_input = watched_run(model, VAE_BLOCK)
    assert FLOAT16_MAX < peak < 1e30  # the premise: finite in float32, beyond float16
    assert torch.isfinite(reference.float_frames).all()
    # Naive float16: the same block on the same input overflows. (The whole decoder in float16
    # takes 8 s a frame on a CPU; the block is where it breaks.)
    with torch.no_grad():
        naive = copy.deepcopy(model.get_submodule(VAE_BLOCK)).half()(block_input.half())
    assert torch.isinf(naive).any()

    # Our float16 policy: UNet and image encoder in float16, the VAE in float32.
    video, _, _ = watched_run(copy.deepcopy(model), VAE_BLOCK, dtype=torch.float16)
    assert torch.isfinite(video.float_frames).all()
    difference = (video.float_frames - reference.float_frames).abs().mean().item()
    unrelated = SVDPipeline(random_model(1))(ramp_image(), **OPTIONS).float_frames
    assert difference < 0.1 * (unrelated - reference.float_frames).abs().mean().item()


def test_float16_unet_overflow_stops_with_the_remedy_and_bfloat16_runs():
    model = spiked(UNET_BLOCK, 1e6)
    reference, peak, _ = watched_run(model, UNET_BLOCK)
    assert FLOAT16_MAX < peak < 1e30
    half = SVDPipeline(copy.deepcopy(model), dtype=torch.float16)
    assert next(half.model.unet.parameters()).dtype == torch.float16
    with pytest.raises(NumericalError) as info:
        half(ramp_image(), **OPTIONS)
    message = str(info.value)
    assert "UNet" in message and "float16" in message and "65504" in message
    assert "dtype=torch.bfloat16" in message and "--dtype bfloat16" in message
    bf16 = SVDPipeline(copy.deepcopy(model), dtype=torch.bfloat16)(ramp_image(), **OPTIONS)
    assert torch.isfinite(bf16.float_frames).all()
    difference = (bf16.float_frames - reference.float_frames).abs().mean().item()
    assert difference < 0.05, difference


@pytest.mark.parametrize(
    ("parameter", "named"),
    [
        ("image_encoder.patch_embed.weight", "the image encoder's embedding"),
        ("vae.encoder.conv_in.weight", "the VAE encoder's latent"),
        ("unet.conv_in.weight", "the UNet's denoised latent at step 0"),
        ("vae.decoder.conv_out.weight", "the VAE decoder's frames"),
    ],
)
def test_nan_anywhere_stops_the_run_naming_the_network_and_the_remedy(parameter, named):
    model = random_model()
    with torch.no_grad():
        dict(model.named_parameters())[parameter].view(-1)[0] = math.nan
    with pytest.raises(NumericalError, match=re.escape(named) + r".*float32.*svd-core info"):
        SVDPipeline(model)(ramp_image(), **OPTIONS)


def test_a_float16_vae_gets_the_keep_it_in_float32_remedy():
    """A model loaded in float16 and passed without a dtype runs its VAE in float16 (the whole VAE
    in float16 is too slow on a CPU to run here: the message is checked on its own)."""
    overflow = torch.tensor([1.0, math.inf])
    with pytest.raises(
        NumericalError, match=r"VAE decoder's frames.*float16.*keep the VAE in float32"
    ):
        svd_core.pipeline._check_finite(overflow, "the VAE decoder's frames", torch.float16)
    svd_core.pipeline._check_finite(torch.ones(3), "the VAE decoder's frames", torch.float16)
