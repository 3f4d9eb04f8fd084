"""Configuration: frozen dataclasses for every network, and the presets.

A config is plain data. ``SVDConfig.svd()``, ``.svd_xt()`` and ``.svd_xt_1_1()`` reproduce the official
`scripts/sampling/configs/svd*.yaml` sizes and sampling defaults; ``SVDConfig.tiny()`` keeps every kind
of block at a few MB so that tests run in seconds on a CPU. ``to_json`` / ``from_json`` round-trip.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot describe a working model."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# How a spatial path and its temporal twin are blended (official AlphaBlender; nn.blend.AlphaBlend).
MERGE_STRATEGIES = ("fixed", "learned", "learned_with_images")


@dataclass(frozen=True)
class UNetConfig:
    """The spatio-temporal UNet (official `VideoUNet`, diffusers `UNetSpatioTemporalConditionModel`)."""

    in_channels: int = 8  # noisy latent (4) + conditioning image latent (4), concatenated
    out_channels: int = 4
    model_channels: int = 320  # first level's width; level i has model_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # res blocks per encoder level (the decoder has one more per level)
    # levels with transformers (official attention_resolutions [4, 2, 1])
    attention_levels: tuple[int, ...] = (0, 1, 2)
    head_channels: int = 64  # channels per attention head (official num_head_channels)
    transformer_depth: int = 1
    context_dim: int = 1024  # width of the image embedding the cross-attention reads
    addition_embed_dim: int = 256  # sinusoidal width of each of fps_id, motion_bucket_id, cond_aug
    num_groups: int = 32  # GroupNorm groups
    # the official value in every res block (diffusers uses 1e-6 in some, see DESIGN.md)
    norm_eps: float = 1e-5
    # frames seen by the temporal convolutions (official video_kernel_size [3, 1, 1])
    temporal_kernel_size: int = 3
    merge_strategy: str = "learned_with_images"  # how spatial and temporal paths are blended
    merge_factor: float = 0.5  # initial blend logit (the blend is sigmoid(mix_factor))
    max_time_embed_period: int = 10000  # period of the temporal transformers' frame embedding

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding: 4 x model_channels, as in both references."""
        return 4 * self.model_channels

    @property
    def vector_dim(self) -> int:
        """Width of the added conditioning vector: 3 sinusoidal embeddings (fps_id, motion, cond_aug)."""
        return 3 * self.addition_embed_dim

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Output channels of every encoder level."""
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def downscale_factor(self) -> int:
        """How many latent cells the deepest level's one cell covers along each side: the UNet
        halves the latent between levels, 2 ** (number of levels - 1)."""
        return 2 ** (len(self.channel_mult) - 1)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError if the sizes cannot build a UNet."""
        _require(
            len(self.channel_mult) > 0, "UNetConfig.channel_mult is empty; give one entry per level"
        )
        _require(
            self.num_res_blocks >= 1,
            f"UNetConfig.num_res_blocks must be >= 1, got {self.num_res_blocks}",
        )
        _require(self.transformer_depth >= 1, "UNetConfig.transformer_depth must be >= 1")
        for level in self.attention_levels:
            _require(
                0 <= level < len(self.channel_mult),
                f"UNetConfig.attention_levels has level {level}, but channel_mult has only "
                f"{len(self.channel_mult)} levels (0..{len(self.channel_mult) - 1})",
            )
        for channels in self.level_channels:
            _require(
                channels % self.head_channels == 0,
                f"UNet level width {channels} is not divisible by head_channels={self.head_channels}",
            )
            _require(
                channels % self.num_groups == 0 and (2 * channels) % self.num_groups == 0,
                f"UNet level width {channels} is not divisible by num_groups={self.num_groups}",
            )
        _require(self.addition_embed_dim % 2 == 0, "UNetConfig.addition_embed_dim must be even")
        _require(self.model_channels % 2 == 0, "UNetConfig.model_channels must be even")
        _require(
            self.temporal_kernel_size % 2 == 1,
            f"UNetConfig.temporal_kernel_size must be odd, got {self.temporal_kernel_size}",
        )
        _require(
            self.merge_strategy in MERGE_STRATEGIES,
            f"UNetConfig.merge_strategy {self.merge_strategy!r} is not one of {MERGE_STRATEGIES}",
        )


@dataclass(frozen=True)
class VAEConfig:
    """The KL-f8 autoencoder: 2D encoder, temporal (video) or plain 2D decoder."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128  # official `ch`
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # the image is downsampled 2^(len-1) times
    num_res_blocks: int = 2  # per encoder level (the decoder has one more per level)
    latent_channels: int = 4  # official z_channels; the encoder emits 2x (mean, logvar)
    num_groups: int = 32
    norm_eps: float = 1e-6
    temporal_decoder: bool = True  # False: the plain 2D decoder of `*_image_decoder` checkpoints
    temporal_kernel_size: int = 3  # official video_kernel_size [3, 1, 1]
    merge_factor: float = 0.0  # initial blend logit of the decoder's temporal res blocks
    scaling_factor: float = 0.18215  # latents are multiplied by this for the diffusion

    @property
    def downscale_factor(self) -> int:
        """How many pixels one latent cell covers along each side."""
        return 2 ** (len(self.channel_mult) - 1)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError if the sizes cannot build a VAE."""
        _require(
            len(self.channel_mult) > 0, "VAEConfig.channel_mult is empty; give one entry per level"
        )
        _require(
            self.num_res_blocks >= 1,
            f"VAEConfig.num_res_blocks must be >= 1, got {self.num_res_blocks}",
        )
        for mult in self.channel_mult:
            channels = self.base_channels * mult
            _require(
                channels % self.num_groups == 0,
                f"VAE level width {channels} is not divisible by num_groups={self.num_groups}",
            )
        _require(
            self.temporal_kernel_size % 2 == 1,
            f"VAEConfig.temporal_kernel_size must be odd, got {self.temporal_kernel_size}",
        )


# OpenAI CLIP normalization constants, used by OpenCLIP ViT-H/14 and by diffusers' feature extractor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """The OpenCLIP ViT vision tower (ViT-H/14 for SVD) and its preprocessing."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    heads: int = 16
    mlp_dim: int = 5120
    embed_dim: int = 1024  # output of the final projection = the UNet's context_dim
    layer_norm_eps: float = 1e-5
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError if the sizes cannot build a ViT."""
        _require(self.layers >= 1, f"ImageEncoderConfig.layers must be >= 1, got {self.layers}")
        _require(
            self.width % self.heads == 0,
            f"ImageEncoderConfig.width {self.width} is not divisible by heads={self.heads}",
        )
        _require(
            self.image_size % self.patch_size == 0,
            f"ImageEncoderConfig.image_size {self.image_size} is not a multiple of patch_size={self.patch_size}",
        )


@dataclass(frozen=True)
class SVDConfig:
    """A whole SVD model: its three networks and its sampling defaults."""

    name: str = "svd"
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    # Sampling defaults (official scripts/sampling/simple_video_sample.py and svd*.yaml).
    num_frames: int = 14
    num_steps: int = 25
    min_guidance: float = 1.0  # guidance scale of the first frame
    max_guidance: float = 2.5  # guidance scale of the last frame
    fps: int = 7  # the model is conditioned on fps_id = fps - 1
    motion_bucket_id: int = 127
    cond_aug: float = 0.02
    decode_chunk_size: int = 14
    height: int = 576
    width: int = 1024
    sigma_min: float = 0.002
    sigma_max: float = 700.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError if the parts do not fit together."""
        self.unet.validate()
        self.vae.validate()
        self.image_encoder.validate()
        _require(
            self.unet.in_channels == 2 * self.vae.latent_channels,
            f"UNet in_channels={self.unet.in_channels} must be 2 x VAE latent_channels="
            f"{self.vae.latent_channels} (noisy latent + image latent)",
        )
        _require(
            self.unet.out_channels == self.vae.latent_channels,
            f"UNet out_channels={self.unet.out_channels} must equal VAE latent_channels={self.vae.latent_channels}",
        )
        _require(
            self.image_encoder.embed_dim == self.unet.context_dim,
            f"image encoder embed_dim={self.image_encoder.embed_dim} must equal UNet context_dim="
            f"{self.unet.context_dim}",
        )
        _require(self.num_frames >= 1, f"num_frames must be >= 1, got {self.num_frames}")
        _require(self.num_steps >= 1, f"num_steps must be >= 1, got {self.num_steps}")
        _require(
            self.decode_chunk_size >= 1,
            f"decode_chunk_size must be >= 1, got {self.decode_chunk_size}",
        )
        _require(0 < self.sigma_min < self.sigma_max, "need 0 < sigma_min < sigma_max")

    @property
    def size_multiple(self) -> int:
        """Video height and width must be multiples of this: the VAE's downsampling times the
        UNet's (8 x 8 = 64 for SVD; 8 x 4 = 32 for the tiny presets, whose UNet has 3 levels)."""
        return self.vae.downscale_factor * self.unet.downscale_factor

    # ---- presets -----------------------------------------------------------------------------

    @classmethod
    def svd(cls) -> SVDConfig:
        """`svd.safetensors`: 14 frames, 25 steps, guidance 1.0 -> 2.5."""
        return cls(name="svd", num_frames=14, num_steps=25, min_guidance=1.0, max_guidance=2.5)

    @classmethod
    def svd_xt(cls) -> SVDConfig:
        """`svd_xt.safetensors`: 25 frames, 30 steps, guidance 1.5 -> 3.0."""
        return cls(name="svd_xt", num_frames=25, num_steps=30, min_guidance=1.5, max_guidance=3.0)

    @classmethod
    def svd_xt_1_1(cls) -> SVDConfig:
        """`svd_xt_1_1.safetensors`: the svd_xt architecture and defaults, retrained weights."""
        return dataclasses.replace(cls.svd_xt(), name="svd_xt_1_1")

    @classmethod
    def svd_image_decoder(cls) -> SVDConfig:
        """`svd_image_decoder.safetensors`: svd with the plain per-frame 2D VAE decoder."""
        return dataclasses.replace(
            cls.svd(), name="svd_image_decoder", vae=VAEConfig(temporal_decoder=False)
        )

    @classmethod
    def svd_xt_image_decoder(cls) -> SVDConfig:
        """`svd_xt_image_decoder.safetensors`: svd_xt with the plain per-frame 2D VAE decoder."""
        return dataclasses.replace(
            cls.svd_xt(), name="svd_xt_image_decoder", vae=VAEConfig(temporal_decoder=False)
        )

    @classmethod
    def tiny(cls) -> SVDConfig:
        """Every block kind of the real model at a few MB: for tests and quick experiments.

        UNet: 3 levels (32, 64, 64 channels), transformers at the first two, none at the last, as the
        official model has none at its last level. VAE: 4 levels so the latent is still 1/8 of the image.
        """
        return cls(
            name="tiny",
            unet=UNetConfig(
                model_channels=32,
                channel_mult=(1, 2, 2),
                num_res_blocks=2,
                attention_levels=(0, 1),
                head_channels=16,
                context_dim=32,
                addition_embed_dim=16,
            ),
            # 2 res blocks per level: diffusers' temporal decoder builds its mid block with
            # num_res_blocks res blocks, and only 2 is the official res, attention, res.
            vae=VAEConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2),
            image_encoder=ImageEncoderConfig(
                image_size=56, patch_size=14, width=64, layers=2, heads=4, mlp_dim=256, embed_dim=32
            ),
            num_frames=5,
            num_steps=4,
            decode_chunk_size=5,
            height=64,
            width=64,
        )

    @classmethod
    def tiny_demo(cls) -> SVDConfig:
        """The shipped demo model (weights/): SVD's architecture at 64x64, 8 frames, trained here.

        Small enough to train on 2 CPU cores in under an hour and to sample in seconds; see
        weights/README.md for its data, training command and evaluation.
        """
        return cls(
            name="tiny_demo",
            unet=UNetConfig(
                model_channels=64,
                channel_mult=(1, 1, 2),
                num_res_blocks=1,
                attention_levels=(0, 1),
                head_channels=32,
                context_dim=32,
                addition_embed_dim=16,
            ),
            # 8 groups, not SVD's 32: at 32 channels, 32 groups normalize every channel of a frame
            # on its own, so the decoder's last GroupNorm removes each channel's mean and a plain
            # background's colour cannot reach the output (training stalls at a grey image; the
            # official 128 channels have 4 per group). diffusers' temporal VAE hard-codes 32 groups,
            # so this VAE has no diffusers layout; the UNet and the image encoder do.
            vae=VAEConfig(
                base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2, num_groups=8
            ),
            image_encoder=ImageEncoderConfig(
                image_size=56, patch_size=14, width=64, layers=2, heads=4, mlp_dim=256, embed_dim=32
            ),
            num_frames=8,
            num_steps=12,
            min_guidance=1.0,
            max_guidance=2.0,
            decode_chunk_size=8,
            height=64,
            width=64,
            sigma_max=80.0,
        )

    # ---- JSON --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SVDConfig:
        """Build from `to_dict` output; unknown or mistyped fields are errors that name them."""
        data = dict(data)
        parts = {"unet": UNetConfig, "vae": VAEConfig, "image_encoder": ImageEncoderConfig}
        for key, part_cls in parts.items():
            if key in data:
                data[key] = _dataclass_from_dict(part_cls, data[key], key)
        return _dataclass_from_dict(cls, data, "SVDConfig")

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialize to JSON text; also write it to `path` when one is given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> SVDConfig:
        """Read a config from a JSON file path or from JSON text."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            path = Path(path_or_text)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    # ---- official sgm YAML -------------------------------------------------------------------

    @classmethod
    def from_sgm_yaml(cls, path: str | Path, name: str | None = None) -> SVDConfig:
        """Read an official sgm inference config (`scripts/sampling/configs/svd*.yaml`) or a
        variant of it with other sizes: `svd_core.loading.read_sgm_yaml`, which documents it.

        Kept here for compatibility (the command line and earlier code call it), this is the one
        place where the config layer reaches up to a loader, and only when called: config.py
        imports nothing from svd_core.
        """
        from .loading.sgm_yaml import read_sgm_yaml

        return read_sgm_yaml(path, name)


def _dataclass_from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown}; known fields are {sorted(fields)}")
    values = {}
    for name, value in data.items():
        if isinstance(value, list):
            value = tuple(value)  # JSON has no tuples; our sequence fields are tuples
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None
