"""The image encoder: OpenCLIP ViT-H/14 vision tower and the preprocessing SVD puts in front of it.

image (B, 3, H, W) in [-1, 1], any size
  -> resize to image_size x image_size (antialiased bicubic, the aspect ratio is not kept)
  -> [0, 1] -> CLIP mean/std normalization            ("pixels", what the ViT reads)
  -> ViT: patches + class token + positions, pre-norm transformer blocks
  -> LayerNorm of the class token -> linear projection  (B, embed_dim), not L2-normalized

The official conditioner (sgm `FrozenOpenCLIPImageEmbedder`, used as is by `svd.yaml`) returns the
projected class token of `open_clip`'s `VisionTransformer` (pool type "tok") unchanged: no L2
normalization, no dropout of the conditioning (ucg_rate 0), no extra tokens (output_tokens False).
The unconditional branch of the sampler zeroes this embedding; that happens in conditioning.py.

Two preprocessing recipes, chosen with `ImageEncoder(config, preprocess=...)`:

- "official" (default): sgm calls `kornia.geometry.resize(x, (224, 224), "bicubic",
  align_corners=True, antialias=True)`. Kornia smooths with a Gaussian (sigma from the scale factor)
  only when some side shrinks, then interpolates. `torch`'s own `antialias=True` is a different
  filter (a widened bicubic kernel) and gives a visibly different image; we reimplement kornia's.
- "diffusers": diffusers' `StableVideoDiffusionPipeline` copies that recipe but always smooths,
  also when every side grows. Its kernel for a growing side has sigma 0.001: the outer taps are
  exp(-1 / (2 * 0.001^2)), which is 0 in float32 and float64, so the smoothing is an exact identity
  and the two recipes give the same pixels (measured in tests/test_clip.py). Then (x + 1) / 2, then
  its `CLIPImageProcessor` with resizing, cropping and rescaling off: (x - mean) / std in float32.
  A torch tensor given to diffusers' pipeline skips its resize altogether; this mode reproduces its
  path for PIL / numpy images.

Module names are ours; `svd_core/loading/clip_maps.py` maps them to the official (open_clip) and the
diffusers (transformers `CLIPVisionModelWithProjection`) layouts.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import ImageEncoderConfig
from .nn.layout import rearrange  # einops.rearrange, cheap for torch.compile to trace

PREPROCESS_MODES = ("official", "diffusers")

# ---- preprocessing ---------------------------------------------------------------------------


def antialias_sigma(scale: float) -> float:
    """Gaussian sigma kornia uses before resampling a side by `scale` = input / output length.

    (scale - 1) / 2, the rule of scikit-image's `rescale`, floored at 0.001 (a side that grows).
    """
    return max((scale - 1.0) / 2.0, 0.001)


def antialias_kernel_size(sigma: float) -> int:
    """Taps of that Gaussian: 2 sigma each side, at least 3, rounded up to odd (kornia's rule)."""
    size = int(max(4.0 * sigma, 3))
    return size if size % 2 == 1 else size + 1


def gaussian_kernel1d(
    size: int, sigma: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Normalized Gaussian taps centred on the middle one: (size,), odd size."""
    offsets = torch.arange(size, dtype=dtype, device=device) - size // 2
    taps = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    return taps / taps.sum()


def _blur_along(image: torch.Tensor, size: int, sigma: float, dim: int) -> torch.Tensor:
    """1-D Gaussian smoothing of (B, C, H, W) along dim -1 (width) or -2 (height), reflect pad."""
    if size == 1:  # a side of length 1 cannot be reflect-padded and has nothing to smooth
        return image
    channels = image.shape[1]
    taps = gaussian_kernel1d(size, sigma, image.dtype, image.device)
    pad = size // 2
    if dim == -1:
        weight = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)  # depthwise (C, 1, 1, k)
        padding = (pad, pad, 0, 0)
    else:
        weight = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)  # depthwise (C, 1, k, 1)
        padding = (0, 0, pad, pad)
    return F.conv2d(F.pad(image, padding, mode="reflect"), weight, groups=channels)


def resize_antialiased(image: torch.Tensor, size: int, always_blur: bool = False) -> torch.Tensor:
    """Kornia's antialiased bicubic resize to a square: (B, C, H, W) -> (B, C, size, size).

    When some side shrinks (max(H, W) > size), both sides are first smoothed with a separable
    Gaussian, sigma = antialias_sigma(side / size) per side (0.001 for a side that does not
    shrink), reflect padding; then bicubic interpolation with align_corners=True. Values keep their
    range (bicubic may overshoot slightly). `always_blur=True` smooths also when nothing shrinks,
    as diffusers' copy of the recipe does; that smoothing is an exact identity (module docstring).
    """
    height, width = image.shape[-2:]
    scales = (height / size, width / size)
    if always_blur or max(scales) > 1:
        sigmas = [antialias_sigma(s) for s in scales]
        sizes = [antialias_kernel_size(s) for s in sigmas]
        sizes = [1 if side == 1 else k for side, k in zip((height, width), sizes, strict=True)]
        image = _blur_along(image, sizes[1], sigmas[1], dim=-1)  # width first, as kornia
        image = _blur_along(image, sizes[0], sigmas[0], dim=-2)
    return F.interpolate(image, size=(size, size), mode="bicubic", align_corners=True)


def check_image(image: torch.Tensor, name: str = "image") -> None:
    """Raise a clear error unless `image` is a non-empty float (B, 3, H, W) tensor."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (B, 3, H, W) in [-1, 1], got {type(image).__name__}"
        )
    if not image.is_floating_point():
        raise TypeError(
            f"{name} must be a float tensor in [-1, 1], got dtype {image.dtype}; "
            "convert uint8 images with image.float() / 127.5 - 1"
        )
    if image.ndim != 4:
        raise ValueError(
            f"{name} must have 4 dimensions (B, 3, H, W), got shape {tuple(image.shape)}; "
            "for a single image use image[None]"
        )
    if image.shape[1] != 3:
        raise ValueError(
            f"{name} must have 3 (RGB) channels in dim 1, got shape {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[2] == 0 or image.shape[3] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(image.shape)}; need B, H, W >= 1")


# ---- the vision transformer ------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (with bias), via torch SDPA.

    x (B, L, width) -> (B, L, width). The fused weight stacks q, k, v rows in that order, each
    split into heads as (heads, head_dim): the layout of `nn.MultiheadAttention.in_proj_weight`.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, L, 3 * width) -> 3 x (B, heads, L, head_dim)
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1 / sqrt(head_dim), no mask
        return self.out(rearrange(out, "b h l d -> b l (h d)"))


class MLP(nn.Module):
    """Linear -> exact (erf) GELU -> linear: (..., width) -> (..., width)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(width, hidden)
        self.proj_out = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.gelu(self.proj_in(x)))


class VisionBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). (B, L, W) -> (B, L, W)."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config.width, config.heads)
        self.mlp_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = MLP(config.width, config.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class ImageEncoder(nn.Module):
    """CLIP ViT image encoder with its preprocessing: (B, 3, H, W) in [-1, 1] -> (B, embed_dim).

    preprocess: "official" (sgm / kornia resize, the default) or "diffusers" (diffusers' copy of it,
    which always smooths; see the module docstring). It is fixed at construction and can be changed
    by assigning `encoder.preprocess`. `forward` = `encode_pixels(preprocess_image(image))`.

    The CLIP mean and std are buffers outside the state dict (neither checkpoint stores them).
    """

    def __init__(self, config: ImageEncoderConfig, preprocess: str = "official") -> None:
        super().__init__()
        self.config = config
        self.preprocess = preprocess
        grid = config.image_size // config.patch_size
        self.num_tokens = 1 + grid * grid  # class token + one per patch
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

        width = config.width
        self.patch_embed = nn.Conv2d(
            3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )
        # In place: an out-of-place op on the meta device (svd_core.load) imports torch._dynamo, ~2 s.
        self.class_token = nn.Parameter(torch.randn(width).mul_(width**-0.5))
        self.position_embedding = nn.Parameter(
            torch.randn(self.num_tokens, width).mul_(width**-0.5)
        )
        self.norm_pre = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.layers))
        self.norm_post = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.projection = nn.Linear(width, config.embed_dim, bias=False)

    @property
    def preprocess(self) -> str:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, mode: str) -> None:
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {mode!r}")
        self._preprocess = mode

    def preprocess_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> normalized pixels (B, 3, S, S), S = image_size, same dtype."""
        check_image(image)
        size = self.config.image_size
        x = resize_antialiased(image, size, always_blur=self.preprocess == "diffusers")
        x = (x + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The ViT alone: normalized pixels (B, 3, S, S) -> embedding (B, embed_dim)."""
        check_image(pixels, "pixels")
        size = self.config.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(
                f"pixels must be {size}x{size} (the encoder's image_size), got shape "
                f"{tuple(pixels.shape)}; call the encoder itself to resize any image"
            )
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (B, W, grid, grid)
        x = rearrange(x, "b w gh gw -> b (gh gw) w")  # one token per patch, row-major
        class_token = self.class_token.expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([class_token, x], dim=1) + self.position_embedding  # (B, 1 + grid^2, W)
        x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.projection(self.norm_post(x[:, 0]))  # class token (B, W) -> (B, embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1], any size -> embedding (B, embed_dim), not normalized."""
        return self.encode_pixels(self.preprocess_image(image))
