"""Images in, videos out: the edges where pixels are uint8 and files live.

Inside svd_core images are float tensors in [-1, 1]; this module converts from paths, PIL images,
numpy arrays and tensors, resizes to the model's size, and writes videos atomically (a temporary
file renamed into place, so an interrupted run never leaves a broken file behind).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")
RESIZE_MODES = ("crop", "squash", "none")
FRAME_NAME = re.compile(r"\d{4,}\.png")  # the files of a frames folder: 0000.png, 0001.png, ...
VAE_MULTIPLE = 8  # every SVD-family VAE downsamples 8x: video sides are at least multiples of 8
MAX_SIDE = 4096  # the largest video height or width (SVD was trained at 576x1024)
MIN_CROP_KEPT = 0.5  # fit_image warns when its crop keeps less of the image than this
MAX_UPSCALE = 4.0  # ... and when it scales the image up more than this
METADATA_KEY = "svd_core"  # the PNG text chunk that holds a video's metadata (save_video)
EXIF_IMAGE_DESCRIPTION = 0x010E  # the EXIF tag that holds it in a WebP file


def load_image(image: str | os.PathLike | Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any supported image -> float32 tensor (1, 3, H, W) in [-1, 1].

    - path or PIL image: any mode PIL can convert to RGB (grey, bilevel, palette, CMYK, YCbCr, ...).
      16-bit greyscale (I;16*) maps 0..65535 to [0, 1]; 32-bit integer greyscale (I) is read as
      8-bit when its values fit in 0..255, as 16-bit otherwise, and must lie in 0..65535; 32-bit
      float greyscale (F) must lie in [0, 1]. PIL reads 16-bit RGB(A) PNGs as 8-bit.
    - numpy array: (H, W) or (H, W, 1) grey, (H, W, 2) grey + alpha, (H, W, 3) RGB, (H, W, 4) RGBA;
      uint8 (0..255), uint16 (0..65535) or float in [0, 1].
    - tensor: (3, H, W) or (1, 3, H, W) float in [-1, 1] (the library's own range), used as is.

    Photos are turned upright by their EXIF orientation tag, as viewers (and diffusers) show them.
    Transparency (an alpha band, premultiplied or not, or a palette / colour-key `transparency`) is
    composited on white: out = colour * alpha + (1 - alpha). The official script drops the alpha
    band instead (`convert("RGB")`), which shows whatever colours the file keeps under transparent
    pixels (often black, sometimes leftovers of an edit); its SV3D path composites on white, as a
    page does. For the official behaviour pass `image.convert("RGB")`.

    Images with more pixels than PIL's decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS,
    about 179 million) are refused before any conversion, as PIL refuses such files. Every refusal
    is a ValueError that says what was given and what is accepted (TypeError for a wrong type).
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            what = "is a folder, not an image file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"image file {str(path)!r} {what}")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = _upright(opened.copy())
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            # SyntaxError: what PIL raises for some damaged headers and EXIF blocks
            raise ValueError(f"cannot read {str(path)!r} as an image: {error}") from None
    if isinstance(image, Image.Image):
        return _pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        return _array_to_tensor(image)
    if isinstance(image, torch.Tensor):
        return _check_tensor(image)
    raise TypeError(
        f"image must be a path, PIL image, numpy array or tensor, got {type(image).__name__}"
    )


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (phone photos), as viewers show it.

    diffusers' load_image does the same; the official script does not (a portrait photo taken with
    a turned phone then comes out sideways).
    """
    orientation = image.getexif().get(0x0112, 1)  # 0x0112: the EXIF Orientation tag
    return ImageOps.exif_transpose(image) if orientation != 1 else image


def _check_pixel_count(height: int, width: int) -> None:
    """Refuse empty images, and images PIL would call decompression bombs, before converting them."""
    if height == 0 or width == 0:
        raise ValueError(f"image is empty ({height}x{width} pixels, HxW)")
    limit = Image.MAX_IMAGE_PIXELS  # read now: users may raise it, as for PIL itself
    if limit is not None and height * width > 2 * limit:
        raise ValueError(
            f"image is {height}x{width} (HxW) = {height * width:,} pixels, more than "
            f"{2 * limit:,} (PIL's decompression-bomb limit, 2 x PIL.Image.MAX_IMAGE_PIXELS); "
            "downscale it first"
        )


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError as error:
        raise ValueError(
            f"cannot convert a mode {image.mode!r} image to {mode}: {error}; convert it yourself"
        ) from None


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    _check_pixel_count(image.height, image.width)
    image = _upright(image)
    if image.mode.startswith("I;16"):  # 16-bit greyscale
        return _array_to_tensor(np.asarray(image).astype(np.uint16))
    if image.mode == "I":  # 32-bit integers: 8-bit or 16-bit data, anything else is ambiguous
        array = np.asarray(image)
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"mode 'I' (32-bit integer) image has values in [{low}, {high}]; expected 0..255 "
                "(8-bit) or 0..65535 (16-bit data); rescale it to 8-bit first"
            )
        return _array_to_tensor(array.astype(np.uint8 if high <= 255 else np.uint16))
    if image.mode == "F":  # 32-bit float greyscale: the [0, 1] rule of float arrays
        array = np.asarray(image, dtype=np.float32)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if not np.isfinite(array).all() or low < 0.0 or high > 1.0:
            raise ValueError(
                f"mode 'F' (32-bit float) image must have finite values in [0, 1], got values in "
                f"[{low:.3g}, {high:.3g}]{'' if np.isfinite(array).all() else ' and NaN or inf'}"
            )
        return _array_to_tensor(array)
    if image.mode in ("La", "RGBa"):  # premultiplied alpha: undo it first
        image = _convert(image, image.mode.upper())
    if "A" in image.getbands() or "transparency" in image.info:
        return _array_to_tensor(np.asarray(_convert(image, "RGBA")))
    return _array_to_tensor(np.asarray(_convert(image, "RGB")))


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            "image array must be (H, W) or (H, W, C) with C = 1 (grey), 2 (grey + alpha), "
            f"3 (RGB) or 4 (RGBA), got shape {array.shape}"
        )
    _check_pixel_count(array.shape[0], array.shape[1])
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("image array contains NaN or infinite values")
        if values.min() < 0.0 or values.max() > 1.0:
            raise ValueError(
                f"float image arrays must be in [0, 1], got values in [{values.min():.3g}, {values.max():.3g}]"
            )
    else:
        raise TypeError(f"image array must be uint8, uint16 or float in [0, 1], got {array.dtype}")
    if values.shape[2] in (2, 4):  # composite on white (see load_image)
        colour, alpha = values[:, :, :-1], values[:, :, -1:]
        values = colour * alpha + (1.0 - alpha)
    if values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    # (H, W, 3) -> contiguous (1, 3, H, W): every input kind gives the same memory layout, so
    # the same convolution kernels and bit-identical videos.
    tensor = torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))[None]
    return (tensor * 2.0 - 1.0).clamp(-1.0, 1.0)


def _check_tensor(image: torch.Tensor) -> torch.Tensor:
    shape = tuple(image.shape)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(
            f"image tensor must be (3, H, W) or (B, 3, H, W) in [-1, 1], got shape {shape}"
        )
    if not image.is_floating_point():
        raise TypeError(f"image tensor must be floating point in [-1, 1], got {image.dtype}")
    if image.shape[0] == 0:
        raise ValueError("image tensor has a batch of 0 images")
    if image.shape[2] == 0 or image.shape[3] == 0:
        raise ValueError(f"image tensor is empty: shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("image tensor contains NaN or infinite values")
    low, high = image.min().item(), image.max().item()
    if low < -1.001 or high > 1.001:
        raise ValueError(
            f"image tensors must be in [-1, 1], got values in [{low:.3g}, {high:.3g}]"
            " (for [0, 1] data use image * 2 - 1)"
        )
    return image.float().contiguous()


def check_video_size(
    height: int | None, width: int | None, multiple: int = 64, why: str = ""
) -> None:
    """Raise ValueError unless height and width are multiples of `multiple` in [multiple, MAX_SIDE].

    `multiple` is what the model needs (its VAE's times its UNet's downsampling; 64 for SVD); `why`
    is appended to it in the message. MAX_SIDE bounds the work and memory of one run (SVD was
    trained at 576x1024): a larger side is refused before anything is allocated. None is not
    checked (the command line checks the sides it is given before it knows the model).
    """
    for name, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not multiple <= value <= MAX_SIDE
            or value % multiple
        ):
            raise ValueError(
                f"{name} must be a positive multiple of {multiple}{why} and at most {MAX_SIDE}, "
                f"got {value!r}"
            )


def fit_image(
    image: torch.Tensor, height: int, width: int, mode: str = "crop", multiple: int = 64
) -> torch.Tensor:
    """Resize (B, 3, H, W) images to (B, 3, height, width), multiples of `multiple`.

    mode "crop": cut the largest centered box of the target's aspect ratio, then scale it to the
    target (default); "squash": scale each axis independently; "none": the image must already have
    the size. A warning says when the crop keeps less than half the image (MIN_CROP_KEPT) or the
    image is upscaled more than 4x (MAX_UPSCALE): the video then shows little of it, or a blur. Cropping before scaling keeps the work bounded for any aspect ratio (a 1x100000 image
    is cut to 1x1, not scaled to 64x6400000 first). Resizing is antialiased bicubic, clamped back
    to [-1, 1]; a 1x1 image becomes a flat frame of its colour.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    check_video_size(height, width, multiple)
    _, _, in_h, in_w = image.shape
    if (in_h, in_w) == (height, width):
        return image
    if mode == "none":
        raise ValueError(
            f"image is {in_h}x{in_w} (HxW) but the model runs at {height}x{width}; "
            "resize it, or pass resize='crop' or 'squash'"
        )
    crop_h, crop_w = in_h, in_w
    if mode == "crop":
        if in_w * height > in_h * width:  # wider than the target: keep the full height
            crop_h, crop_w = in_h, max(1, min(in_w, round(in_h * width / height)))
        else:
            crop_h, crop_w = max(1, min(in_h, round(in_w * height / width))), in_w
        if crop_h * crop_w < in_h * in_w * MIN_CROP_KEPT:
            warnings.warn(
                f"the {in_h}x{in_w} (HxW) image is cropped to its centred {crop_h}x{crop_w} box for "
                f"the {height}x{width} video: {100 * crop_h * crop_w / (in_h * in_w):.2g}% of it "
                "is kept; crop or pad it yourself to the video's aspect ratio to keep more",
                stacklevel=2,
            )
        top, left = (in_h - crop_h) // 2, (in_w - crop_w) // 2
        image = image[:, :, top : top + crop_h, left : left + crop_w]
        if (crop_h, crop_w) == (height, width):
            return image
    upscale = max(height / crop_h, width / crop_w)
    if upscale > MAX_UPSCALE:
        warnings.warn(
            f"the image ({crop_h}x{crop_w} after cropping) is upscaled {upscale:.3g}x to "
            f"{height}x{width}: the video will be blurry; use an image of at least "
            f"{math.ceil(height / MAX_UPSCALE)}x{math.ceil(width / MAX_UPSCALE)} pixels",
            stacklevel=2,
        )
    resized = torch.nn.functional.interpolate(
        image, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )
    return resized.clamp(-1.0, 1.0)


def to_uint8(frames: torch.Tensor, rounding: bool = False) -> np.ndarray:
    """Frames (F, 3, H, W) in [0, 1] -> uint8 array (F, H, W, 3).

    Scales by 255 and truncates, as the official sampling script does; `rounding=True` rounds to
    the nearest level as diffusers does. The two differ by at most one level.
    """
    scaled = (frames.clamp(0, 1) * 255).permute(0, 2, 3, 1).to(torch.float32).cpu()
    return (scaled.round() if rounding else scaled).numpy().astype(np.uint8)


def output_folder(path: Path) -> Path:
    """The folder `path` will be written into, checked to exist, be a folder and be writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        # Name the part of the path that is wrong: the nearest existing part is a file where a
        # folder should be, or the folders below it do not exist.
        existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise NotADirectoryError(
                f"cannot write {str(path)!r}: {str(existing)!r} is a file, not a folder"
            )
        raise FileNotFoundError(
            f"output folder {str(parent)!r} does not exist; create it first (mkdir -p {parent})"
        )
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {str(parent)!r} is not writable")
    return parent


def output_kind(path: str | os.PathLike) -> str:
    """What `save_video` writes at `path`: "mp4", "gif", "webp", or "frames" (a folder of PNGs).

    The suffix decides: .mp4, .gif or .webp (any case) is a video file; no suffix, or a suffix that
    is not a word (`v1.5`, `run.2`), an existing folder, or a name ending in "/" is a frames folder.
    Any other suffix (`clip.avi`, `out.png`) is refused: it names a format we do not write.
    Checks what can be known before writing: the folder it goes into (exists, is a folder,
    writable), that a video file does not replace a folder, and that a frames folder replaces only
    an earlier frames folder. Raises ValueError or OSError with a one-line message.
    """
    text = os.fspath(path)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        if path.is_dir():
            raise IsADirectoryError(
                f"output {text!r} is an existing folder; a {suffix} video cannot replace it: "
                "give another file name, or remove the folder"
            )
        kind = suffix[1:]
    elif path.is_dir() or text.endswith(("/", os.sep)) or not suffix[1:].isalpha():
        kind = "frames"
        _check_frames_target(path)
    else:
        raise ValueError(
            f"output {text!r}: {suffix!r} is not a format svd_core writes; use .mp4, .gif, "
            f".webp, or a folder for PNG frames (a folder name with a dot: end it with /)"
        )
    output_folder(path)
    return kind


def _check_frames_target(path: Path) -> None:
    """A frames folder may replace only a folder of nothing but frames (NNNN.png), never a file
    and never somebody's folder of other files."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(
            f"{str(path)!r} exists and is a file; a folder of PNG frames cannot replace it"
        )
    if path.is_dir():
        others = sorted(
            p.name for p in path.iterdir() if p.name != ".old" and not FRAME_NAME.fullmatch(p.name)
        )
        if others:
            raise FileExistsError(
                f"{str(path)!r} is a folder with other files than frames (e.g. {others[:3]}); "
                "give a new folder name, or a file name ending in .mp4, .gif or .webp"
            )


def _write_error(error: OSError, path: Path, what: str) -> OSError:
    """`error` told about `path`: same errno (so the same subclass: PermissionError, ...)."""
    reason = error.strerror or str(error)
    message = f"{what} {str(path)!r}: {reason}"
    return OSError(message) if error.errno is None else OSError(error.errno, message)


def _temporary_beside(path: Path, folder: bool = False, suffix: str = "") -> str:
    """A new temporary file (or folder) in the folder of `path`, with a clear error if it fails.

    mkstemp and mkdtemp make private entries (0600, 0700); they get the mode a plain open() or
    mkdir() would give (0666 or 0777 less the umask), since they become the user's output.
    """
    parent = output_folder(path)
    try:
        if folder:
            temporary, mode = tempfile.mkdtemp(prefix=f".{path.name}-", dir=parent), 0o777
        else:
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=suffix, dir=parent)
            os.close(handle)
            mode = 0o666
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, mode & ~umask)
    except OSError as error:
        raise _write_error(error, parent, "cannot write into the output folder") from None
    return temporary


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary file name beside `path`; it replaces `path` if the block succeeds.

    On any error or interrupt the temporary file is removed, so `path` is either the old file or
    the complete new one, never a partial one. `suffix` lets writers that pick a format from the
    name (imageio, PIL) see the right extension. An OSError (a read-only folder, a full disk) is
    raised again with its errno and a message that names `path`.
    """
    path = Path(path)
    temporary = _temporary_beside(path, suffix=suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_error(error, path, "could not write (nothing was left behind)") from None
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside `path`, renamed to `path` (which must not exist yet) if
    the block succeeds, and removed with everything in it on any error or interrupt."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{str(path)!r} already exists")
    temporary = Path(_temporary_beside(path, folder=True))
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError):
            raise _write_error(error, path, "could not write (nothing was left behind)") from None
        raise


def save_video(
    frames: np.ndarray, path: str | os.PathLike, fps: float, metadata: dict | None = None
) -> Path:
    """Write uint8 frames (F, H, W, 3) to `path`, atomically; the format follows `output_kind`.

    .mp4 (H.264 through imageio-ffmpeg), .gif, .webp (animated, lossless), or a folder of PNGs
    named 0000.png, 0001.png, ... `metadata` (a JSON-serialisable dict: the seed and the settings
    of the run, say) is stored in the file, where `read_metadata` finds it: the mp4 `comment` tag,
    the GIF comment, the WebP EXIF ImageDescription, a text chunk of every PNG. Returns the path.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be positive and finite, got {fps}")
    kind = output_kind(path)  # before Path(): a trailing "/" (a frames folder) counts
    path = Path(path)
    comment = json.dumps(metadata, sort_keys=True) if metadata else None
    if kind == "frames":
        return _save_png_folder(frames, path, comment)
    with atomic_file(path, "." + kind) as temporary:
        if kind == "mp4":
            _write_mp4(frames, temporary, fps, comment)
        else:
            images = [Image.fromarray(frame) for frame in frames]
            duration = 1000.0 / fps
            options = {
                "loop": 0,
                "duration": duration,
                "save_all": True,
                "append_images": images[1:],
            }
            if kind == "webp":
                options["lossless"] = True
                if comment:
                    exif = Image.Exif()
                    exif[EXIF_IMAGE_DESCRIPTION] = comment
                    options["exif"] = exif.tobytes()
            elif comment:
                options["comment"] = comment
            images[0].save(temporary, **options)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata dict `save_video` stored in a video file or frames folder ({} if none)."""
    path = Path(path)
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if FRAME_NAME.fullmatch(p.name))
        if not frames:
            return {}
        with Image.open(frames[0]) as image:
            text = image.info.get(METADATA_KEY)
    elif path.suffix.lower() == ".mp4":
        text = _mp4_comment(path)
    else:
        with Image.open(path) as image:
            if path.suffix.lower() == ".webp":
                text = image.getexif().get(EXIF_IMAGE_DESCRIPTION)
            else:
                text = image.info.get("comment")
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return json.loads(text) if text else {}


def _mp4_comment(path: Path) -> str | None:
    """The `comment` tag of an mp4 file, read with the ffmpeg that imageio-ffmpeg ships."""
    import subprocess

    import imageio_ffmpeg

    listing = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in listing.splitlines():
        if line.startswith("comment="):
            # ffmetadata escapes '=', ';', '#', '\\' and newlines with a backslash
            return re.sub(r"\\(.)", r"\1", line[len("comment=") :])
    return None


def _write_mp4(frames: np.ndarray, target: str, fps: float, comment: str | None = None) -> None:
    import imageio.v2 as imageio

    # H.264 with yuv420p needs even sides; pad by one pixel where needed (repeat the edge).
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with imageio.get_writer(
        target,
        format="FFMPEG",
        fps=fps,
        codec="libx264",
        quality=8,
        macro_block_size=1,
        output_params=["-metadata", f"comment={comment}"] if comment else None,
    ) as writer:
        for frame in frames:
            writer.append_data(frame)


def _save_png_folder(frames: np.ndarray, path: Path, comment: str | None = None) -> Path:
    """Write the frames into a new folder, then put it in place of `path`.

    An existing `path` is replaced only if it holds nothing but frames (NNNN.png): a folder with
    other files is somebody's folder, not an earlier output, and is never deleted.
    """
    _check_frames_target(path)
    info = None
    if comment:
        info = PngImagePlugin.PngInfo()
        info.add_text(METADATA_KEY, comment)
    temporary = Path(_temporary_beside(path, folder=True))
    old_frames = temporary / ".old"  # the frames being replaced wait here until the swap is done
    try:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(temporary / f"{index:04d}.png", pnginfo=info)
        if path.exists():
            os.replace(path, old_frames)
        os.replace(temporary, path)
    except BaseException as error:
        if old_frames.exists() and not path.exists():
            os.replace(old_frames, path)
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError):
            raise _write_error(error, path, "could not write (nothing was left behind)") from None
        raise
    shutil.rmtree(path / ".old", ignore_errors=True)
    return path
