"""svd_core.io at the edges a new user hits: which output a path names, the metadata a video
carries, and the warnings for images that the crop or the upscale would ruin.

Images (`load_image`) and video sizes (`fit_image`) are property-tested (hypothesis, derandomized):
images of every PIL mode and size, numpy arrays and tensors of any shape, dtype and value, any
requested size; the rule each test checks is written out in the test, computed independently of
the code under test. Frames folders are never half-replaced, even by a full disk or Ctrl-C, and
written files get the usual permissions. tests/README.md lists the hazards and the example counts.
"""

from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import EXAMPLES, MULTIPLE, PROPERTY, SIZE, disk_full, ramp_image
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from svd_core.io import MAX_SIDE, fit_image, load_image, output_kind, read_metadata, save_video

pytestmark = pytest.mark.usefixtures("one_thread", "example_count")

FRAMES = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
METADATA = {"seed": 123456789012345, "num_steps": 4, "sampler": "euler", "note": "a=b; #c\\d"}


@pytest.mark.parametrize(
    "name, kind",
    [
        ("clip.mp4", "mp4"),
        ("clip.GIF", "gif"),
        ("clip.webp", "webp"),
        ("frames", "frames"),
        ("v1.5", "frames"),  # a folder name with a dot: its "suffix" is not a word
        ("run.2b", "frames"),
        ("clip.avi/", "frames"),  # a trailing slash says folder
    ],
)
def test_the_output_path_names_a_video_file_or_a_frames_folder(name, kind, tmp_path):
    assert output_kind(f"{tmp_path}/{name}") == kind
    written = save_video(FRAMES, f"{tmp_path}/{name}", 7)
    assert written.is_dir() == (kind == "frames")


@pytest.mark.parametrize("name", ["clip.avi", "out.png", "clip.mov"])
def test_a_suffix_we_do_not_write_is_refused_naming_the_choices(name, tmp_path):
    with pytest.raises(
        ValueError, match=r"is not a format svd_core writes; use \.mp4, \.gif, \.webp"
    ):
        output_kind(tmp_path / name)


def test_a_video_name_that_is_an_existing_folder_is_refused_before_writing(tmp_path):
    (tmp_path / "vid.mp4").mkdir()
    with pytest.raises(IsADirectoryError, match="'.*vid.mp4' is an existing folder"):
        output_kind(tmp_path / "vid.mp4")
    with pytest.raises(IsADirectoryError):
        save_video(FRAMES, tmp_path / "vid.mp4", 7)
    assert os.listdir(tmp_path) == ["vid.mp4"] and os.listdir(tmp_path / "vid.mp4") == []


def test_an_output_below_a_file_names_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for name in ("notes.txt/clip.mp4", "notes.txt/deeper/clip.gif"):
        with pytest.raises(NotADirectoryError, match="'.*notes.txt' is a file, not a folder"):
            output_kind(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="'.*missing' does not exist; create it first"):
        output_kind(tmp_path / "missing" / "clip.mp4")


def test_frames_never_replace_a_file_or_a_folder_of_other_files(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        output_kind(tmp_path / "taken")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_text("x")
    with pytest.raises(FileExistsError, match="other files than frames"):
        output_kind(tmp_path / "photos")


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "clip.webp", "frames"])
def test_a_video_carries_its_metadata_and_read_metadata_returns_it(name, tmp_path):
    save_video(FRAMES, tmp_path / name, 7, METADATA)
    assert read_metadata(tmp_path / name) == METADATA
    save_video(FRAMES, tmp_path / f"plain-{name}", 7)
    assert read_metadata(tmp_path / f"plain-{name}") == {}


def _warnings_of(image: torch.Tensor, height: int, width: int, mode: str = "crop") -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit_image(image, height, width, mode)
    assert tuple(fitted.shape[-2:]) == (height, width)
    return [str(w.message) for w in caught]


def test_a_crop_that_keeps_less_than_half_or_a_large_upscale_warns():
    tall = torch.zeros(1, 3, 4000, 10)  # 4000x10 to 64x64: the crop keeps 10x10, 0.25%
    messages = _warnings_of(tall, 64, 64)
    assert any("cropped to its centred 10x10 box" in m and "0.25%" in m for m in messages)
    assert any("upscaled 6.4x" in m for m in messages)
    dot = torch.zeros(1, 3, 1, 1)  # 1x1: a flat frame, upscaled 64x
    assert [m for m in _warnings_of(dot, 64, 64) if "upscaled 64x" in m]
    assert [m for m in _warnings_of(dot, 64, 64, "squash") if "upscaled 64x" in m]


@pytest.mark.parametrize(
    "size, mode",
    [
        ((64, 64), "crop"),  # the size already
        ((90, 64), "crop"),  # the crop keeps 71%
        ((16, 16), "crop"),  # upscaled 4x: the limit, not above it
        ((200, 300), "squash"),  # squash keeps all of it
    ],
)
def test_ordinary_images_fit_without_a_warning(size, mode):
    assert _warnings_of(torch.zeros(1, 3, *size), 64, 64, mode) == []


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


# ---- frames folders, full disks, permissions ------------------------------------------------------


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
