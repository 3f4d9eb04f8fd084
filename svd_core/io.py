"""Images in, videos out: the edges where pixels are uint8 and files live.

Inside svd_core images are float tensors in [-1, 1]; this module converts from paths, PIL images,
numpy arrays and tensors, resizes to the model's size, and writes videos atomically (a temporary
file renamed into place, so an interrupted run never leaves a broken file behind).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")
RESIZE_MODES = ("crop", "squash", "none")


def load_image(image: str | os.PathLike | Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any supported image -> float32 tensor (1, 3, H, W) in [-1, 1].

    - path or PIL image: any mode PIL can convert; transparency is composited on white, grey and
      palette images become RGB.
    - numpy array: (H, W, 3) or (H, W) uint8 in [0, 255], or float in [0, 1].
    - tensor: (3, H, W) or (1, 3, H, W) float in [-1, 1] (the library's own range), used as is.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (OSError, Image.DecompressionBombError) as error:
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


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image is empty ({image.width}x{image.height})")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the full integer range to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return _array_to_tensor((array / peak).astype(np.float32))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return _array_to_tensor(np.asarray(image.convert("RGB")))


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(
            f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}"
        )
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError("image array contains NaN or infinite values")
        if values.min() < 0.0 or values.max() > 1.0:
            raise ValueError(
                f"float image arrays must be in [0, 1], got values in [{values.min():.3g}, {values.max():.3g}]"
            )
    else:
        raise TypeError(f"image array must be uint8 or float, got {array.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1)[None]
    return tensor * 2.0 - 1.0


def _check_tensor(image: torch.Tensor) -> torch.Tensor:
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(
            f"image tensor must be (3, H, W) or (B, 3, H, W) in [-1, 1], got shape {tuple(image.shape)}"
        )
    if not image.is_floating_point():
        raise TypeError(f"image tensor must be floating point in [-1, 1], got {image.dtype}")
    if image.shape[0] == 0:
        raise ValueError("image tensor has a batch of 0 images")
    if not torch.isfinite(image).all():
        raise ValueError("image tensor contains NaN or infinite values")
    low, high = image.min().item(), image.max().item()
    if low < -1.001 or high > 1.001:
        raise ValueError(
            f"image tensors must be in [-1, 1], got values in [{low:.3g}, {high:.3g}]"
            " (for [0, 1] data use image * 2 - 1)"
        )
    return image.float()


def fit_image(image: torch.Tensor, height: int, width: int, mode: str = "crop") -> torch.Tensor:
    """Resize (B, 3, H, W) images to (B, 3, height, width).

    mode "crop": scale to cover the target with the aspect ratio kept, then center-crop (default);
    "squash": scale each axis independently; "none": the image must already have the size.
    Resizing is antialiased bicubic, clamped back to [-1, 1].
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    for name, value in (("height", height), ("width", width)):
        if value < 64 or value % 64:
            raise ValueError(f"{name} must be a positive multiple of 64, got {value}")
    _, _, in_h, in_w = image.shape
    if (in_h, in_w) == (height, width):
        return image
    if mode == "none":
        raise ValueError(
            f"image is {in_h}x{in_w} (HxW) but the model runs at {height}x{width}; "
            "resize it, or pass resize='crop' or 'squash'"
        )
    if mode == "crop":
        scale = max(height / in_h, width / in_w)
        new_h, new_w = max(height, round(in_h * scale)), max(width, round(in_w * scale))
    else:
        new_h, new_w = height, width
    resized = torch.nn.functional.interpolate(
        image, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True
    )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[:, :, top : top + height, left : left + width].clamp(-1.0, 1.0)


def to_uint8(frames: torch.Tensor, rounding: bool = False) -> np.ndarray:
    """Frames (F, 3, H, W) in [0, 1] -> uint8 array (F, H, W, 3).

    Scales by 255 and truncates, as the official sampling script does; `rounding=True` rounds to
    the nearest level as diffusers does. The two differ by at most one level.
    """
    scaled = (frames.clamp(0, 1) * 255).permute(0, 2, 3, 1).to(torch.float32).cpu()
    return (scaled.round() if rounding else scaled).numpy().astype(np.uint8)


def output_folder(path: Path) -> Path:
    """The folder `path` will be written into, checked to exist and be writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {str(parent)!r} is not writable")
    return parent


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary file name beside `path`; it replaces `path` if the block succeeds.

    On any error or interrupt the temporary file is removed, so `path` is either the old file or
    the complete new one, never a partial one. `suffix` lets writers that pick a format from the
    name (imageio, PIL) see the right extension.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}-", suffix=suffix, dir=output_folder(path)
    )
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_video(frames: np.ndarray, path: str | os.PathLike, fps: float) -> Path:
    """Write uint8 frames (F, H, W, 3) to `path`, atomically; the format follows the suffix.

    .mp4 (H.264 through imageio-ffmpeg), .gif, .webp (animated), or no suffix: a folder of PNGs
    named 0000.png, 0001.png, ... Returns the path written.
    """
    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    suffix = path.suffix.lower()
    if suffix and suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"cannot write {path.name!r}: use one of {', '.join(VIDEO_SUFFIXES)}, or a folder name for PNG frames"
        )
    if not suffix:
        return _save_png_folder(frames, path)
    with atomic_file(path, suffix) as temporary:
        if suffix == ".mp4":
            _write_mp4(frames, temporary, fps)
        else:
            images = [Image.fromarray(frame) for frame in frames]
            duration = 1000.0 / fps
            options = {
                "loop": 0,
                "duration": duration,
                "save_all": True,
                "append_images": images[1:],
            }
            if suffix == ".webp":
                options["lossless"] = True
            images[0].save(temporary, **options)
    return path


def _write_mp4(frames: np.ndarray, target: str, fps: float) -> None:
    import imageio.v2 as imageio

    # H.264 with yuv420p needs even sides; pad by one pixel where needed (repeat the edge).
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with imageio.get_writer(
        target, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1
    ) as writer:
        for frame in frames:
            writer.append_data(frame)


def _save_png_folder(frames: np.ndarray, path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a folder")
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=output_folder(path)))
    try:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(temporary / f"{index:04d}.png")
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path
