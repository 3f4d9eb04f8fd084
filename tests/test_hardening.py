"""Hardening (issue 12): what users throw at the public surface either works by a documented rule
or fails early with one clear error, and never leaves a partial file behind.

- Property-based tests (hypothesis, derandomized) over images of every PIL mode and size, numpy
  arrays and tensors of any shape, dtype and value, video sizes, every sampling argument, and
  corrupted or truncated checkpoint files. The rule each test checks is written out in the test,
  computed independently of the code under test.
- Numeric hazards: weights built to overflow float16, through the pipeline and the command line.
- Interrupts and failing disks: Ctrl-C during sampling and writing, read-only folders, ENOSPC.

tests/README.md lists the hazards and how many examples the property tests ran.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import re
import struct
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import random_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import svd_core.cli
import svd_core.io
import svd_core.loading.files
import svd_core.pipeline
from svd_core import (
    CheckpointError,
    ImageEncoderConfig,
    NumericalError,
    SVDConfig,
    UNetConfig,
    VAEConfig,
    load,
    save,
)
from svd_core import sampling as sampling_module
from svd_core.io import MAX_SIDE, fit_image, load_image, save_video
from svd_core.model import SVDModel
from svd_core.pipeline import SVDPipeline

SIZE = 64  # the tiny preset's video size; its multiple is 32 (VAE 8x, UNet 4x)
MULTIPLE = 32

# Deterministic property tests: the same examples on every run, no example database on disk,
# no per-example deadline on a shared 2-core machine.
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
EXAMPLES: Counter = Counter()  # examples run per property test, printed at the end (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_example_count():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    total = sum(EXAMPLES.values())
    lines = "\n".join(f"  {name}: {count}" for name, count in sorted(EXAMPLES.items()))
    print(f"\nhypothesis examples run: {total}\n{lines}")


def ramp_image(height: int = SIZE, width: int = SIZE) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    return Image.fromarray(
        np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)
    )


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def pipe(model):
    return SVDPipeline(model)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """The tiny model as an official single file (svd_core keeps its config in the metadata)."""
    return save(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A 1.6 MB model (every block kind, smaller than tiny) and its official file, for the tests
    that write a corrupted copy of a checkpoint per example."""
    config = SVDConfig(
        name="micro",
        unet=UNetConfig(
            model_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(0,),
            head_channels=16,
            context_dim=16,
            addition_embed_dim=8,
            num_groups=8,
        ),
        vae=VAEConfig(base_channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, num_groups=4),
        image_encoder=ImageEncoderConfig(
            image_size=28, patch_size=14, width=16, layers=1, heads=2, mlp_dim=32, embed_dim=16
        ),
    )
    torch.manual_seed(0)
    model = SVDModel(config).eval()
    return model, save(model, tmp_path_factory.mktemp("micro") / "micro.safetensors")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "image.png"
    ramp_image().save(path)
    return path


def one_line_error(capsys) -> str:
    """The CLI's stderr: exactly one line, 'svd-core: error: ...'."""
    err = capsys.readouterr().err
    assert err.startswith("svd-core: error:") and err.count("\n") == 1, err
    return err


def generate_args(image, output, checkpoint, *extra) -> list[str]:
    args = ["generate", str(image), "-o", str(output), "--model", str(checkpoint), "--quiet"]
    return args + ["--frames", "2", "--steps", "1", "--seed", "0", *extra]


class ReachedTheNetworks(Exception):
    """Raised by a spy in place of the first network call: validation was passed."""


@pytest.fixture
def no_networks(monkeypatch):
    """The pipeline's first heavy step (CLIP and VAE encoding) raises ReachedTheNetworks."""

    def spy(*args, **kwargs):
        raise ReachedTheNetworks

    monkeypatch.setattr(svd_core.pipeline, "encode_conditioning", spy)


# ---- images: every PIL mode and size -------------------------------------------------------------

PIL_MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"]
PIL_MODES += ["I;16", "I;16B", "I", "F"]
BYTES_PER_PIXEL = {"L": 1, "LA": 2, "La": 2, "P": 1, "PA": 2, "RGB": 3, "RGBA": 4, "RGBa": 4}
BYTES_PER_PIXEL.update({"RGBX": 4, "CMYK": 4, "YCbCr": 3})


def make_pil_image(mode: str, height: int, width: int, seed: int, variant: str) -> Image.Image:
    """A random image of `mode`. variant: "plain", "transparent" (a transparency key for modes
    without an alpha band) or "out_of_range" (values outside what the I and F modes accept)."""
    rng = np.random.default_rng(seed)
    size = (width, height)
    if mode == "1":
        return Image.frombytes("1", size, rng.bytes((width + 7) // 8 * height))
    if mode.startswith("I;16"):
        order = ">u2" if mode == "I;16B" else "<u2"
        return Image.frombytes(
            mode, size, rng.integers(0, 65536, (height, width)).astype(order).tobytes()
        )
    if mode == "I":
        high = {"plain": 256, "transparent": 65536, "out_of_range": 70000}[variant]
        values = rng.integers(-3 if variant == "out_of_range" else 0, high, (height, width))
        return Image.frombytes("I", size, values.astype(np.int32).tobytes())
    if mode == "F":
        values = rng.random((height, width)) * (1.5 if variant == "out_of_range" else 1.0)
        if variant == "transparent":
            values[0, 0] = np.nan  # no alpha for F: the variant tests NaN instead
        return Image.frombytes("F", size, values.astype(np.float32).tobytes())
    image = Image.frombytes(mode, size, rng.bytes(BYTES_PER_PIXEL[mode] * height * width))
    if mode in ("P", "PA"):
        image.putpalette(list(rng.integers(0, 256, 768)))
    if variant == "transparent" and mode in ("P", "L", "RGB"):
        image.info["transparency"] = image.getpixel((0, 0))
    return image


def expected_pixels(image: Image.Image) -> np.ndarray | type[Exception]:
    """The documented rule (load_image's docstring), in float64: (H, W, 3) in [0, 1], or the error."""
    mode = image.mode
    if mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.float64) / 65535
    elif mode == "I":
        raw = np.asarray(image).astype(np.float64)
        if raw.min() < 0 or raw.max() > 65535:
            return ValueError
        grey = raw / (255 if raw.max() <= 255 else 65535)
    elif mode == "F":
        raw = np.asarray(image).astype(np.float64)
        if not np.isfinite(raw).all() or raw.min() < 0 or raw.max() > 1:
            return ValueError
        grey = raw
    elif "A" in mode or "a" in mode or "transparency" in image.info:
        straight = image.convert("LA") if mode == "La" else image  # PIL has no La -> RGBA
        rgba = np.asarray(straight.convert("RGBA")).astype(np.float64) / 255
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + 1.0 * (1 - alpha)  # composited on white
    else:
        return np.asarray(image.convert("RGB")).astype(np.float64) / 255
    return np.repeat(grey[..., None], 3, axis=2)


@given(
    mode=st.sampled_from(PIL_MODES),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    variant=st.sampled_from(["plain", "transparent", "out_of_range"]),
)
@example(mode="RGBA", height=1, width=1, seed=0, variant="plain")
@example(mode="La", height=1, width=300, seed=1, variant="plain")
@example(mode="I", height=3, width=2, seed=2, variant="out_of_range")
@example(mode="F", height=2, width=2, seed=3, variant="transparent")
@settings(PROPERTY, max_examples=150)
def test_pil_images_of_any_mode_and_size_load_by_the_documented_rule(
    mode, height, width, seed, variant
):
    EXAMPLES["pil images"] += 1
    image = make_pil_image(mode, height, width, seed, variant)
    expected = expected_pixels(image)
    if expected is ValueError:
        with pytest.raises(ValueError, match=f"mode '{mode}'"):
            load_image(image)
        return
    tensor = load_image(image)
    assert tensor.shape == (1, 3, height, width) and tensor.dtype == torch.float32
    assert tensor.is_contiguous() and torch.isfinite(tensor).all()
    assert tensor.min() >= -1 and tensor.max() <= 1
    got = (tensor[0].permute(1, 2, 0).double().numpy() + 1) / 2
    assert np.abs(got - expected).max() < 1e-6, mode


def test_transparency_is_composited_on_white_and_opaque_pixels_are_kept():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 10, 30, 255)  # opaque: the colour
    rgba[0, 1] = (200, 10, 30, 0)  # transparent: white, whatever colour hides under it
    rgba[1, 0] = (0, 0, 0, 51)  # 20 % black over white: 0.8
    pixels = (load_image(Image.fromarray(rgba))[0].permute(1, 2, 0) + 1) / 2
    assert torch.allclose(pixels[0, 0], torch.tensor([200, 10, 30]) / 255.0)
    assert torch.equal(pixels[0, 1], torch.ones(3))
    assert torch.allclose(pixels[1, 0], torch.full((3,), 0.8))
    # the same rule for numpy RGBA arrays (uint8 and float) and PIL images
    assert torch.equal(load_image(rgba), load_image(Image.fromarray(rgba)))
    assert torch.allclose(load_image(rgba / 255.0), load_image(rgba), atol=1e-6)


@pytest.mark.parametrize(("orientation", "turn"), [(3, 2), (6, -1), (8, 1)])
def test_photos_are_turned_upright_by_their_exif_orientation(orientation, turn, tmp_path):
    """EXIF 3: upside down, 6: turn 90 degrees clockwise to view, 8: counterclockwise."""
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "photo.png", exif=exif)
    upright = np.rot90(pixels, k=turn)  # numpy: k > 0 turns counterclockwise
    expected = torch.from_numpy(upright.copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    assert torch.equal(load_image(tmp_path / "photo.png"), expected)
    with Image.open(tmp_path / "photo.png") as opened:
        assert torch.equal(load_image(opened), expected)


def test_a_folder_or_a_damaged_file_given_as_the_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a folder, not an image file"):
        load_image(tmp_path)
    ramp_image().save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read .*cut.png.* as an image"):
        load_image(tmp_path / "cut.png")


# ---- images: numpy arrays and tensors of any shape, dtype and value ------------------------------

ARRAY_DTYPES = [
    np.uint8,
    np.uint16,
    np.float16,
    np.float32,
    np.float64,
    np.int32,
    np.int64,
    np.bool_,
]
SPECIALS = [None, np.nan, np.inf, -np.inf, -0.25, 1.25]


@given(
    dtype=st.sampled_from(ARRAY_DTYPES),
    ndim=st.sampled_from([1, 2, 3, 3, 3, 4]),
    height=st.integers(0, 12),
    width=st.integers(0, 12),
    channels=st.integers(0, 5),
    special=st.sampled_from(SPECIALS),
    seed=st.integers(0, 2**32 - 1),
)
@settings(PROPERTY, max_examples=150)
def test_arrays_of_any_shape_dtype_and_value_load_or_raise_one_clear_error(
    dtype, ndim, height, width, channels, special, seed
):
    EXAMPLES["numpy arrays"] += 1
    rng = np.random.default_rng(seed)
    shape = {1: (height,), 2: (height, width), 3: (height, width, channels)}.get(
        ndim, (1, height, width, channels)
    )
    if np.issubdtype(dtype, np.floating):
        array = rng.random(shape).astype(dtype)
        if special is not None and array.size:
            array.flat[rng.integers(array.size)] = special
    elif dtype == np.bool_:
        array = rng.integers(0, 2, shape).astype(bool)
    else:
        array = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)

    # The rule, checked in this order: shape, emptiness, dtype, values.
    if ndim not in (2, 3) or (ndim == 3 and channels not in (1, 2, 3, 4)):
        with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
            load_image(array)
        return
    if height == 0 or width == 0:
        with pytest.raises(ValueError, match="image is empty"):
            load_image(array)
        return
    if dtype not in (np.uint8, np.uint16) and not np.issubdtype(dtype, np.floating):
        with pytest.raises(
            TypeError, match=f"uint8, uint16 or float in \\[0, 1\\], got {np.dtype(dtype)}"
        ):
            load_image(array)
        return
    values = array.astype(np.float64)
    if np.issubdtype(dtype, np.floating) and not np.isfinite(values).all():
        with pytest.raises(ValueError, match="NaN or infinite"):
            load_image(array)
        return
    if np.issubdtype(dtype, np.floating) and (values.min() < 0 or values.max() > 1):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\], got values in"):
            load_image(array)
        return
    if dtype == np.uint8:
        values /= 255
    elif dtype == np.uint16:
        values /= 65535
    values = values.reshape(height, width, -1)
    if values.shape[2] in (2, 4):
        values = values[..., :-1] * values[..., -1:] + (1 - values[..., -1:])
    expected = np.broadcast_to(values, (height, width, 3))
    got = (load_image(array)[0].permute(1, 2, 0).double().numpy() + 1) / 2
    assert np.abs(got - expected).max() < 1e-6


@given(
    shape=st.sampled_from(
        [
            (3, 5, 7),
            (1, 3, 5, 7),
            (2, 3, 4, 4),
            (0, 3, 4, 4),
            (3, 0, 4),
            (4, 5, 5),
            (5, 5),
            (1, 1, 3, 4, 4),
        ]
    ),
    dtype=st.sampled_from(
        [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64]
    ),
    special=st.sampled_from([None, math.nan, math.inf, -math.inf, 1.0005, -1.5, 255.0]),
    seed=st.integers(0, 2**32 - 1),
)
@settings(PROPERTY, max_examples=120)
def test_tensors_of_any_shape_dtype_and_value_load_or_raise_one_clear_error(
    shape, dtype, special, seed
):
    EXAMPLES["tensors"] += 1
    generator = torch.Generator().manual_seed(seed)
    tensor = (torch.rand(shape, generator=generator) * 2 - 1).to(dtype)
    if special is not None and tensor.numel() and dtype.is_floating_point:
        tensor.view(-1)[0] = special
    batched = tensor[None] if tensor.ndim == 3 else tensor
    if tensor.ndim not in (3, 4) or batched.shape[1] != 3:
        with pytest.raises(ValueError, match=re.escape(f"got shape {tuple(shape)}")):
            load_image(tensor)
        return
    if not dtype.is_floating_point:
        with pytest.raises(TypeError, match="floating point"):
            load_image(tensor)
        return
    if batched.shape[0] == 0 or tensor.numel() == 0:
        with pytest.raises(ValueError, match="batch of 0 images|empty"):
            load_image(tensor)
        return
    if special is not None and not math.isfinite(special):
        with pytest.raises(ValueError, match="NaN or infinite"):
            load_image(tensor)
        return
    if special is not None and abs(special) > 1.001:
        with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
            load_image(tensor)
        return
    loaded = load_image(tensor)
    assert loaded.dtype == torch.float32 and torch.equal(loaded, batched.float())


def test_huge_images_are_refused_before_conversion(monkeypatch, tmp_path):
    # A 20000 x 10000 RGB array as a zero-copy view: converting it would take 2.4 GB of floats.
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 10000, 3))
    with pytest.raises(
        ValueError, match=r"20000x10000 \(HxW\) = 200,000,000 pixels.*decompression"
    ):
        load_image(huge)
    # PIL images and files follow PIL.Image.MAX_IMAGE_PIXELS, read at call time.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="more than 200"):
        load_image(Image.new("RGB", (15, 15)))
    assert load_image(Image.new("RGB", (10, 20))).shape == (1, 3, 20, 10)
    path = tmp_path / "bomb.png"
    Image.new("L", (30, 30)).save(path)
    with pytest.raises(ValueError, match="cannot read .*bomb.png.* as an image"):
        load_image(path)


# ---- video sizes ---------------------------------------------------------------------------------

SIDES = st.one_of(
    st.integers(-64, 400),
    st.sampled_from([MULTIPLE, 4 * MULTIPLE, MAX_SIDE + MULTIPLE, 10**6, True, 64.0, "64"]),
)


@given(
    in_height=st.integers(1, 120),
    in_width=st.integers(1, 120),
    height=SIDES,
    width=SIDES,
    mode=st.sampled_from(["crop", "squash"]),
)
@example(in_height=1, in_width=120, height=64, width=64, mode="crop")
@example(in_height=120, in_width=1, height=32, width=96, mode="crop")
@settings(PROPERTY, max_examples=120)
def test_fit_image_gives_exactly_the_size_or_names_the_multiple(
    in_height, in_width, height, width, mode
):
    EXAMPLES["video sizes"] += 1
    colour = torch.tensor([0.25, -0.5, 0.75]).view(1, 3, 1, 1)
    image = colour.expand(1, 3, in_height, in_width)
    valid = [
        type(side) is int and MULTIPLE <= side <= MAX_SIDE and side % MULTIPLE == 0
        for side in (height, width)
    ]
    if not all(valid):
        name, value = ("height", height) if not valid[0] else ("width", width)
        message = f"{name} must be a positive multiple of {MULTIPLE} and at most {MAX_SIDE}, got {value!r}"
        with pytest.raises(ValueError, match=re.escape(message)):
            fit_image(image, height, width, mode, multiple=MULTIPLE)
        return
    fitted = fit_image(image, height, width, mode, multiple=MULTIPLE)
    assert fitted.shape == (1, 3, height, width)
    # A flat colour stays that colour through any crop and antialiased resize.
    assert (fitted - colour).abs().max() < 1e-5


def test_extreme_aspect_ratios_are_cropped_before_resizing():
    line = torch.linspace(-1, 1, 200_000).expand(1, 3, 1, -1)  # 1 x 200000: crop to 1 x 1 first
    fitted = fit_image(line, SIZE, SIZE, "crop", multiple=MULTIPLE)
    assert fitted.shape == (1, 3, SIZE, SIZE)
    centre = line[0, 0, 0, 100_000 - 1 : 100_000 + 1].mean()
    assert (fitted - centre).abs().max() < 1e-4


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
RANGES = {  # the documented accepted ranges (svd_core.pipeline), restated
    "num_frames": (1, 1024),
    "num_steps": (1, 1000),
    "decode_chunk_size": (1, math.inf),
    "fps": (1, 240),
    "motion_bucket_id": (0, 1023),
    "cond_aug": (0, 10),
    "min_guidance": (0, 100),
    "max_guidance": (0, 100),
    "seed": (-(2**63), 2**64 - 1),
}


def accepted(name: str, value) -> bool:
    low, high = RANGES[name]
    if name in ("num_frames", "num_steps", "decode_chunk_size", "seed"):
        return type(value) is int and low <= value <= high
    return type(value) in (int, float) and math.isfinite(value) and low <= value <= high


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


CLI_OPTIONS = {  # flag -> (pipeline name, strategy of command-line text)
    "--frames": ("num_frames", st.integers(-2, 1100).map(str)),
    "--steps": ("num_steps", st.integers(-2, 1100).map(str)),
    "--decode-chunk": ("decode_chunk_size", st.integers(-2, 30).map(str)),
    "--fps": ("fps", st.sampled_from(["nan", "inf", "-1", "0.5", "1", "7", "240", "241"])),
    "--motion-bucket": (
        "motion_bucket_id",
        st.sampled_from(["-1", "0", "127", "1023", "1024", "1e9"]),
    ),
    "--cond-aug": ("cond_aug", st.sampled_from(["-0.01", "0", "0.02", "10", "11", "nan"])),
    "--max-guidance": ("max_guidance", st.sampled_from(["-1", "0", "3", "100", "101", "inf"])),
    "--seed": ("seed", st.sampled_from(["-1", "0", str(2**64 - 1), str(2**64), str(-(2**63) - 1)])),
}


@given(data=st.data())
@settings(PROPERTY, max_examples=80)
def test_cli_refuses_bad_values_in_one_line_before_loading_the_model(
    data, image_file, checkpoint, tmp_path, monkeypatch, capsys
):
    EXAMPLES["command-line values"] += 1
    flags = data.draw(st.lists(st.sampled_from(sorted(CLI_OPTIONS)), unique=True, max_size=3))
    args = []
    bad = []
    for flag in flags:
        name, strategy = CLI_OPTIONS[flag]
        text = data.draw(strategy)
        args += [flag, text]
        number = (
            int(text)
            if name in ("num_frames", "num_steps", "decode_chunk_size", "seed")
            else float(text)
        )
        if not accepted(name, number):
            bad.append((flag, text))

    def no_loading(*args, **kwargs):
        raise ReachedTheNetworks

    monkeypatch.setattr(svd_core.loading, "load", no_loading)
    argv = ["generate", str(image_file), "-o", str(tmp_path / "out.mp4"), "--quiet", *args]
    argv += ["--model", str(checkpoint)]  # not loaded: load is replaced
    capsys.readouterr()
    if not bad:
        with pytest.raises(ReachedTheNetworks):
            svd_core.cli.main(argv)
        return
    assert svd_core.cli.main(argv) == 2
    err = one_line_error(capsys)
    assert any(f"error: {flag}: " in err for flag, _ in bad), err
    assert not any(p.name.startswith(".out") or p.name == "out.mp4" for p in tmp_path.iterdir())


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


def spiked(name: str, factor: float, seed: int = 0) -> SVDModel:
    """The random tiny model with one res block's second conv scaled up by `factor`."""
    model = random_model(seed)
    with torch.no_grad():
        dict(model.named_parameters())[name + ".conv2.weight"].mul_(factor)
    return model


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
UNET_BLOCK = "unet.middle.res_in.spatial"
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


def test_float16_overflow_through_the_cli_exits_2_and_writes_nothing(tmp_path, image_file, capsys):
    checkpoint = save(spiked(UNET_BLOCK, 1e6), tmp_path / "spiked.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    args = generate_args(image_file, out / "clip.gif", checkpoint, "--steps", "2", "--frames", "1")
    assert svd_core.cli.main([*args, "--dtype", "float16"]) == 2
    assert "--dtype bfloat16" in one_line_error(capsys)
    assert os.listdir(out) == []  # (bfloat16 runs this model: the test above)


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


# ---- interrupts ----------------------------------------------------------------------------------


def test_ctrl_c_during_sampling_exits_130_and_leaves_no_file(
    checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    euler = sampling_module.SAMPLERS["euler"]
    steps_seen = []

    def interrupted_at_step_2(denoiser, x, sigmas, callback=None, progress=False):
        def report(info):
            callback(info)
            steps_seen.append(info["step"])
            if info["step"] == 2:
                raise KeyboardInterrupt

        return euler(denoiser, x, sigmas, callback=report, progress=progress)

    monkeypatch.setitem(sampling_module.SAMPLERS, "euler", interrupted_at_step_2)
    out = tmp_path / "out"
    out.mkdir()
    args = generate_args(image_file, out / "clip.mp4", checkpoint, "--steps", "4")
    assert svd_core.cli.main(args) == 130
    assert steps_seen == [0, 1, 2]
    assert "interrupted; no output was written" in capsys.readouterr().err
    assert os.listdir(out) == []


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_ctrl_c_while_writing_leaves_no_file_and_keeps_an_older_one(
    name, checkpoint, image_file, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    out.mkdir()
    args = generate_args(image_file, out / name, checkpoint)
    assert svd_core.cli.main(args) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_save = Image.Image.save

    def save_then_interrupt(self, target, *args, **kwargs):
        real_save(self, target, *args, **kwargs)  # a whole frame file or a partial GIF ...
        raise KeyboardInterrupt  # ... then Ctrl-C

    def mp4_then_interrupt(frames, target, fps, comment=None):
        with open(target, "wb") as handle:
            handle.write(b"\x00" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    monkeypatch.setattr(svd_core.io, "_write_mp4", mp4_then_interrupt)
    assert svd_core.cli.main([*args, "--seed", "1"]) == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier output, untouched; no temporary files


# ---- read-only folders and full disks ------------------------------------------------------------


def test_read_only_output_folder_is_refused_before_loading(
    checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root ignores permissions: make the check see what a user sees
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if str(p) == str(out) else real_access(p, mode)
        )

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded although the output folder is read-only")

    monkeypatch.setattr(svd_core.loading, "load", no_loading)
    assert svd_core.cli.main(generate_args(image_file, out / "clip.mp4", checkpoint)) == 2
    assert "not writable" in one_line_error(capsys)
    out.chmod(0o755)
    assert os.listdir(out) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_folder_that_refuses_the_write_gives_one_line_and_no_file(
    code, checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    """os.access can say yes and the write still fail (ACLs, read-only mounts, network shares)."""

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(svd_core.io.tempfile, "mkstemp", refuse)
    out = tmp_path / "out"
    out.mkdir()
    assert svd_core.cli.main(generate_args(image_file, out / "clip.gif", checkpoint)) == 2
    err = one_line_error(capsys)
    assert "cannot write into the output folder" in err and os.strerror(code) in err
    assert str(out) in err and os.listdir(out) == []


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_the_video_gives_one_line_and_no_file(
    checkpoint, image_file, tmp_path, monkeypatch, capsys
):
    def partial_mp4(frames, target, fps, comment=None):
        with open(target, "wb") as handle:
            handle.write(b"\x00" * 4096)
        disk_full()

    monkeypatch.setattr(svd_core.io, "_write_mp4", partial_mp4)
    out = tmp_path / "out"
    out.mkdir()
    assert svd_core.cli.main(generate_args(image_file, out / "clip.mp4", checkpoint)) == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and "clip.mp4" in err
    assert os.listdir(out) == []


def test_full_disk_while_saving_a_checkpoint_leaves_nothing(model, tmp_path, monkeypatch):
    real_save_file = svd_core.loading.files.save_file
    calls = []

    def save_file_then_full(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) >= 2:  # the first file fits, the second fills the disk halfway
            with open(filename, "wb") as handle:
                handle.write(b"\x00" * 1000)
            disk_full()
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(svd_core.loading.files, "save_file", save_file_then_full)
    with pytest.raises(OSError) as info:
        save(model, tmp_path / "folder", layout="diffusers")  # a new folder: all or nothing
    assert info.value.errno == errno.ENOSPC and "diffusion_pytorch_model" in str(info.value)
    assert os.listdir(tmp_path) == []
    calls.append("the next call fails")
    with pytest.raises(OSError, match=r"could not write.*tiny.safetensors.*No space left"):
        save(model, tmp_path / "tiny.safetensors")
    assert os.listdir(tmp_path) == []


def test_full_disk_or_interrupt_keeps_an_existing_frames_folder(tmp_path, monkeypatch):
    frames = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    save_video(frames, tmp_path / "frames", 7)
    before = {p.name: p.read_bytes() for p in (tmp_path / "frames").iterdir()}
    real_save = Image.Image.save
    count = []

    def third_frame_fills_the_disk(self, target, *args, **kwargs):
        count.append(target)
        if len(count) == 3:
            disk_full()
        return real_save(self, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", third_frame_fills_the_disk)
    with pytest.raises(OSError, match="No space left"):
        save_video(frames[::-1].copy(), tmp_path / "frames", 7)
    assert os.listdir(tmp_path) == ["frames"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "frames").iterdir()} == before


def test_png_output_never_deletes_a_folder_that_holds_other_files(tmp_path, capsys):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    (photos / "0000.png").write_bytes(b"also precious")
    with pytest.raises(FileExistsError, match="other files than frames.*holiday.jpg"):
        save_video(frames, photos, 7)
    assert sorted(os.listdir(photos)) == ["0000.png", "holiday.jpg"]
    assert (photos / "0000.png").read_bytes() == b"also precious"
    save_video(frames, tmp_path / "new", 7)  # a new folder, and a folder of frames, are fine
    save_video(frames, tmp_path / "new", 7)
    assert sorted(os.listdir(tmp_path / "new")) == ["0000.png", "0001.png"]


def test_written_files_get_the_usual_permissions_not_private_temporary_ones(tmp_path):
    umask = os.umask(0o022)
    try:
        save_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "clip.gif", 7)
        save_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "frames", 7)
    finally:
        os.umask(umask)
    assert (tmp_path / "clip.gif").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "frames").stat().st_mode & 0o777 == 0o755


# ---- checkpoint faults ---------------------------------------------------------------------------


def header_span(data: bytes) -> int:
    (length,) = struct.unpack("<Q", data[:8])
    return 8 + length


def rewrite_header(data: bytes, change) -> bytes:
    """The file with its JSON header passed through `change(header) -> header`."""
    end = header_span(data)
    header = change(json.loads(data[8:end]))
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[end:]


def assert_clear_checkpoint_error(path, capsys, match: str = "") -> str:
    """load raises a CheckpointError naming the file; `svd-core info` says it in one line, exit 2."""
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert path.name in message and re.search(match, message), message
    capsys.readouterr()
    assert svd_core.cli.main(["info", str(path)]) == 2
    assert path.name in one_line_error(capsys)
    return message


@given(position=st.integers(0, 10**9), byte=st.integers(0, 255))
@settings(PROPERTY, max_examples=60)
def test_any_corrupted_header_byte_loads_or_raises_a_checkpoint_error(
    position, byte, micro, tmp_path
):
    EXAMPLES["corrupted header bytes"] += 1
    model, checkpoint = micro
    data = bytearray(checkpoint.read_bytes())
    position %= header_span(bytes(data))  # the length prefix or the JSON header
    data[position] = byte
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    try:
        loaded = load(path)
    except CheckpointError as error:  # every failure: a CheckpointError that names the file
        assert "corrupt.safetensors" in str(error), error
        return
    # A change the format allows (a letter of the saved metadata, a space): the same weights.
    EXAMPLES["corrupted header bytes that still load"] += 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@given(length=st.integers(0, 10**9))
@example(length=0)
@example(length=7)
@example(length=8)
@settings(PROPERTY, max_examples=40)
def test_a_checkpoint_truncated_anywhere_raises_a_checkpoint_error(length, micro, tmp_path):
    EXAMPLES["truncated files"] += 1
    data = micro[1].read_bytes()
    length %= len(data)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:length])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*(truncated|only \d+ bytes)"):
        load(path)


def test_corrupted_headers_name_the_file_and_the_fault(micro, tmp_path, capsys):
    data = micro[1].read_bytes()
    first = next(k for k in json.loads(data[8 : header_span(data)]) if k != "__metadata__")

    def entry(change):
        return lambda header: {**header, first: change(dict(header[first]))}

    cases = {
        "trailing bytes": (data + b"extra", r"5 bytes after the last tensor"),
        "gap": (
            rewrite_header(
                data,
                entry(
                    lambda e: {
                        **e,
                        "data_offsets": [e["data_offsets"][0] + 4, e["data_offsets"][1] + 4],
                    }
                ),
            ),
            rf"{re.escape(first)}",
        ),
        "unknown dtype": (
            rewrite_header(data, entry(lambda e: {**e, "dtype": "F7"})),
            r"dtype 'F7'",
        ),
        "offsets of text": (
            rewrite_header(data, entry(lambda e: {**e, "data_offsets": ["0", "8"]})),
            r"non-negative integers",
        ),
        "negative shape": (
            rewrite_header(data, entry(lambda e: {**e, "shape": [-1]})),
            r"non-negative",
        ),
        "metadata not strings": (
            rewrite_header(data, lambda h: {**h, "__metadata__": {"svd_core_config": 3}}),
            r"__metadata__",
        ),
        "damaged saved config": (
            rewrite_header(data, lambda h: {**h, "__metadata__": {"svd_core_config": "{oops"}}),
            r"svd_core config saved in the file is damaged.*--config",
        ),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(content)
        assert_clear_checkpoint_error(path, capsys, match)


def test_integer_weights_are_refused_and_float_formats_are_converted(micro, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    original, checkpoint = micro
    tensors = load_file(checkpoint)
    metadata = {"svd_core_config": original.config.to_json()}
    key = next(k for k in tensors if k.endswith("proj_in.weight"))
    quantized = dict(tensors, **{key: (tensors[key] * 127).round().to(torch.int8)})
    path = tmp_path / "int8.safetensors"
    save_file(quantized, path, metadata=metadata)
    message = assert_clear_checkpoint_error(path, capsys, "not floating point")
    assert f"{key} (I8)" in message
    # float16, bfloat16 and float8 files are converted to the dtype asked for, tensor by tensor
    for dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn):
        stored = {k: v.to(dtype) for k, v in tensors.items()}
        path = tmp_path / f"{str(dtype)[6:]}.safetensors"
        save_file(stored, path, metadata=metadata)
        loaded = dict(load(path).named_parameters())
        for name, parameter in original.named_parameters():
            assert loaded[name].dtype == torch.float32
            assert torch.equal(loaded[name], parameter.to(dtype).float()), name


def test_key_map_errors_of_an_official_file_name_the_file(micro, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    tensors = load_file(micro[1])
    victim = sorted(k for k in tensors if k.startswith("model.diffusion_model."))[0]
    tensors["model.diffusion_model.renamed"] = tensors.pop(victim)
    path = tmp_path / "renamed.safetensors"
    save_file(tensors, path, metadata={"svd_core_config": micro[0].config.to_json()})
    message = assert_clear_checkpoint_error(path, capsys, "missing from the checkpoint")
    assert victim in message


def test_a_diffusers_folder_of_another_model_says_so(tmp_path, model, capsys):
    folder = save(model, tmp_path / "sd", layout="diffusers")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["_class_name"] = "UNet2DConditionModel"
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"unet/config.json.*UNet2DConditionModel.*another model"
    ):
        load(folder)
    assert svd_core.cli.main(["info", str(folder)]) == 2
    assert "another model" in one_line_error(capsys)
    config["_class_name"] = "UNetSpatioTemporalConditionModel"
    config["block_out_channels"] = 5  # a mistyped value
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unet/config.json.*TypeError"):
        load(folder)
