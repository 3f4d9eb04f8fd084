"""Key maps for the VAE (`svd_core.vae.VAE`): official single-file and diffusers layouts; configs.

Our names are relative to the VAE module. A `_Layout` table says how one layout spells each building
block; `_encoder` and `_decoder` walk the config once and spell every block in that layout.

Official file (`svd*.safetensors`, Stability-AI/generative-models `svd.yaml`):
  - encoder + quant_conv come from `conditioner.embedders.3.encoder.` (sgm `AutoencoderKLModeOnly`,
    the autoencoder that encodes the conditioning frame);
  - the decoder comes from `first_stage_model.decoder.` (sgm `VideoDecoder`);
  - ignored: `first_stage_model.encoder.` (a second copy of the encoder, never called when
    sampling) and the decoder half of the conditioning autoencoder.
Image-decoder files (`svd*_image_decoder.safetensors`, `svd_image_decoder.yaml`):
`first_stage_model` is an sgm `AutoencoderKL` (encoder, decoder, quant_conv, post_quant_conv); we
load its 2D decoder and its post_quant_conv, and still take encoder + quant_conv from
`conditioner.embedders.3.encoder.`. This layout is derived from the yaml and sgm's classes; no key
list of those files was at hand to check it against.

diffusers: `AutoencoderKLTemporalDecoder` for the video decoder (no post_quant_conv),
`AutoencoderKL` for the image decoder (with quant_conv and post_quant_conv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import VAEConfig
from .keymap import Conv1x1, KeyMap, Source

OFFICIAL_COND_AE = "conditioner.embedders.3.encoder."  # the conditioning autoencoder
OFFICIAL_FIRST_STAGE = "first_stage_model."


@dataclass(frozen=True)
class _Layout:
    """How one layout spells the VAE's blocks.

    `{i}` is our level index, `{up}` the level counted from the lowest resolution (diffusers orders
    decoder blocks by execution), `{j}` the block within a level.
    """

    encoder_block: str
    downsample: str
    decoder_block: str
    upsample: str
    mid: tuple[str, str, str]  # res_1, attention, res_2
    norm_out: str
    res: dict[str, str]  # our 2D res block part -> theirs (skip: the 1x1 conv when widths change)
    spatial: str  # where a video res block keeps its 2D half
    temporal: str  # ... its temporal half
    temporal_res: dict[str, str]  # our temporal res block part -> theirs
    mix_factor: str  # ... its blend logit
    attention: dict[str, str]  # our attention block part -> theirs
    attention_as_conv: bool  # q, k, v, out stored as 1x1 convs
    temporal_conv_out: str


_OFFICIAL = _Layout(
    encoder_block="down.{i}.block.{j}",
    downsample="down.{i}.downsample.conv",
    decoder_block="up.{i}.block.{j}",
    upsample="up.{i}.upsample.conv",
    mid=("mid.block_1", "mid.attn_1", "mid.block_2"),
    norm_out="norm_out",
    res={
        "norm1": "norm1",
        "conv1": "conv1",
        "norm2": "norm2",
        "conv2": "conv2",
        "skip": "nin_shortcut",
    },
    spatial="",  # sgm VideoResBlock subclasses ResnetBlock: the 2D parameters sit at its top level
    temporal="time_stack",
    temporal_res={
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
    },
    mix_factor="mix_factor",
    attention={
        "norm": "norm",
        "attn.to_q": "q",
        "attn.to_k": "k",
        "attn.to_v": "v",
        "attn.to_out": "proj_out",
    },
    attention_as_conv=True,
    temporal_conv_out="conv_out.time_mix_conv",
)

_DIFFUSERS = _Layout(
    encoder_block="down_blocks.{i}.resnets.{j}",
    downsample="down_blocks.{i}.downsamplers.0.conv",
    decoder_block="up_blocks.{up}.resnets.{j}",
    upsample="up_blocks.{up}.upsamplers.0.conv",
    mid=("mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"),
    norm_out="conv_norm_out",
    res={
        "norm1": "norm1",
        "conv1": "conv1",
        "norm2": "norm2",
        "conv2": "conv2",
        "skip": "conv_shortcut",
    },
    spatial="spatial_res_block",
    temporal="temporal_res_block",
    temporal_res={"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2"},
    mix_factor="time_mixer.mix_factor",
    attention={
        "norm": "group_norm",
        "attn.to_q": "to_q",
        "attn.to_k": "to_k",
        "attn.to_v": "to_v",
        "attn.to_out": "to_out.0",
    },
    attention_as_conv=False,
    temporal_conv_out="time_conv_out",
)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _weight_and_bias(entries: dict[str, Source], ours: str, theirs: str) -> None:
    entries[f"{ours}.weight"] = f"{theirs}.weight"
    entries[f"{ours}.bias"] = f"{theirs}.bias"


def _res_block(
    entries: dict, ours: str, theirs: str, parts: dict[str, str], has_skip: bool
) -> None:
    for our_part, their_part in parts.items():
        if our_part != "skip" or has_skip:
            _weight_and_bias(entries, f"{ours}.{our_part}", _join(theirs, their_part))


def _video_res_block(
    entries: dict, ours: str, theirs: str, layout: _Layout, has_skip: bool
) -> None:
    _res_block(entries, f"{ours}.spatial", _join(theirs, layout.spatial), layout.res, has_skip)
    _res_block(
        entries, f"{ours}.temporal", _join(theirs, layout.temporal), layout.temporal_res, False
    )
    entries[f"{ours}.blend.mix_factor"] = _join(theirs, layout.mix_factor)


def _attention(entries: dict, ours: str, theirs: str, layout: _Layout) -> None:
    for our_part, their_part in layout.attention.items():
        weight = f"{theirs}.{their_part}.weight"
        linear = our_part != "norm"
        entries[f"{ours}.{our_part}.weight"] = (
            Conv1x1(weight) if linear and layout.attention_as_conv else weight
        )
        entries[f"{ours}.{our_part}.bias"] = f"{theirs}.{their_part}.bias"


def _encoder(cfg: VAEConfig, layout: _Layout) -> dict[str, Source]:
    """Encoder entries, ours relative to `encoder.`, theirs relative to their encoder."""
    e: dict[str, Source] = {}
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    _weight_and_bias(e, "conv_in", "conv_in")
    for i, width in enumerate(widths):
        for j in range(cfg.num_res_blocks):
            c_in = widths[max(i - 1, 0)] if j == 0 else width
            block = layout.encoder_block.format(i=i, j=j)
            _res_block(e, f"levels.{i}.blocks.{j}", block, layout.res, has_skip=c_in != width)
        if i != len(widths) - 1:
            _weight_and_bias(e, f"levels.{i}.downsample.conv", layout.downsample.format(i=i))
    _mid(e, layout, video=False)
    _weight_and_bias(e, "norm_out", layout.norm_out)
    _weight_and_bias(e, "conv_out", "conv_out")
    return e


def _mid(e: dict, layout: _Layout, video: bool) -> None:
    res_1, attention, res_2 = layout.mid
    for ours, theirs in (("mid.res_1", res_1), ("mid.res_2", res_2)):
        if video:
            _video_res_block(e, ours, theirs, layout, has_skip=False)
        else:
            _res_block(e, ours, theirs, layout.res, has_skip=False)
    _attention(e, "mid.attention", attention, layout)


def _decoder(cfg: VAEConfig, layout: _Layout) -> dict[str, Source]:
    """Decoder entries, ours relative to `decoder.`, theirs relative to their decoder."""
    e: dict[str, Source] = {}
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    last = len(widths) - 1
    _weight_and_bias(e, "conv_in", "conv_in")
    _mid(e, layout, video=cfg.temporal_decoder)
    # The image decoder's plain res blocks sit at the same paths as the video decoder's blocks.
    for i, width in enumerate(widths):
        for j in range(cfg.num_res_blocks + 1):
            c_in = widths[min(i + 1, last)] if j == 0 else width
            block = layout.decoder_block.format(i=i, up=last - i, j=j)
            ours = f"levels.{i}.blocks.{j}"
            if cfg.temporal_decoder:
                _video_res_block(e, ours, block, layout, has_skip=c_in != width)
            else:
                _res_block(e, ours, block, layout.res, has_skip=c_in != width)
        if i != 0:
            _weight_and_bias(
                e, f"levels.{i}.upsample.conv", layout.upsample.format(i=i, up=last - i)
            )
    _weight_and_bias(e, "norm_out", layout.norm_out)
    _weight_and_bias(e, "conv_out", "conv_out")
    if cfg.temporal_decoder:
        _weight_and_bias(e, "temporal_conv_out", layout.temporal_conv_out)
    return e


def _convs(names: list[str], prefix: str) -> dict[str, Source]:
    """The 1x1 convs between encoder and latent (quant_conv) or latent and decoder (post_quant_conv)."""
    return {f"{name}.{p}": f"{prefix}{name}.{p}" for name in names for p in ("weight", "bias")}


def official_vae_map(cfg: VAEConfig) -> KeyMap:
    """Our VAE state-dict names -> full official single-file names, and the VAE keys we ignore."""
    cond, first = OFFICIAL_COND_AE, OFFICIAL_FIRST_STAGE
    encoder = KeyMap("official", _encoder(cfg, _OFFICIAL)).with_prefix(
        "encoder.", cond + "encoder."
    )
    decoder = KeyMap("official", _decoder(cfg, _OFFICIAL)).with_prefix(
        "decoder.", first + "decoder."
    )
    convs = _convs(["quant_conv"], cond)
    unused_half = "decoder half of the conditioning autoencoder; sgm never decodes with it"
    ignored = {
        f"{first}encoder.": "second copy of the VAE encoder; SVD encodes the conditioning frame "
        "with conditioner.embedders.3 (encoder + quant_conv + posterior mode), as sgm does",
        f"{cond}decoder.": unused_half,
        f"{cond}post_quant_conv.": unused_half,
    }
    if not cfg.temporal_decoder:  # first_stage_model is a complete sgm AutoencoderKL
        convs.update(_convs(["post_quant_conv"], first))
        ignored[f"{first}quant_conv."] = (
            "encoding half of the first-stage autoencoder; SVD encodes with conditioner.embedders.3"
        )
    return KeyMap("official", {**encoder.entries, **decoder.entries, **convs}, ignored)


def diffusers_vae_map(cfg: VAEConfig) -> KeyMap:
    """Our VAE state-dict names -> diffusers state-dict names.

    `AutoencoderKLTemporalDecoder` for the video decoder (no post_quant_conv), `AutoencoderKL` for
    the image decoder.
    """
    encoder = KeyMap("diffusers", _encoder(cfg, _DIFFUSERS)).with_prefix("encoder.", "encoder.")
    decoder = KeyMap("diffusers", _decoder(cfg, _DIFFUSERS)).with_prefix("decoder.", "decoder.")
    convs = _convs(
        ["quant_conv"] if cfg.temporal_decoder else ["quant_conv", "post_quant_conv"], ""
    )
    return KeyMap("diffusers", {**encoder.entries, **decoder.entries, **convs})


# ---- configs -------------------------------------------------------------------------------------

_DIFFUSERS_HARD_CODED = "diffusers hard-codes it in AutoencoderKLTemporalDecoder"


def diffusers_vae_config(cfg: VAEConfig) -> dict[str, Any]:
    """Keyword arguments that build the diffusers model of the same size as `cfg`.

    `AutoencoderKLTemporalDecoder(**kwargs)` for the video decoder, `AutoencoderKL(**kwargs)` for
    the image decoder (the class name is in `"_class_name"`; drop it before calling the
    constructor). Raises ValueError for sizes the diffusers class cannot express.
    """
    problems = []
    if cfg.norm_eps != 1e-6:
        problems.append(f"norm_eps={cfg.norm_eps} (diffusers uses 1e-6 in every VAE norm)")
    if cfg.temporal_decoder:
        if cfg.num_groups != 32:
            problems.append(f"num_groups={cfg.num_groups} ({_DIFFUSERS_HARD_CODED} as 32)")
        if cfg.temporal_kernel_size != 3:
            problems.append(
                f"temporal_kernel_size={cfg.temporal_kernel_size} ({_DIFFUSERS_HARD_CODED} as 3)"
            )
        if cfg.num_res_blocks != 2:
            # diffusers builds the temporal decoder's mid block with `layers_per_block` res blocks
            # and runs its attention only between the first two: only layers_per_block=2 gives
            # res-attn-res.
            problems.append(
                f"num_res_blocks={cfg.num_res_blocks} (diffusers' temporal decoder mid block has "
                "num_res_blocks res blocks; only 2 gives the official res, attention, res)"
            )
    if problems:
        raise ValueError("diffusers cannot build this VAE config: " + "; ".join(problems))
    n = len(cfg.channel_mult)
    kwargs: dict[str, Any] = {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "block_out_channels": [cfg.base_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "latent_channels": cfg.latent_channels,
        "scaling_factor": cfg.scaling_factor,
    }
    if cfg.temporal_decoder:
        return {"_class_name": "AutoencoderKLTemporalDecoder", **kwargs}
    return {
        "_class_name": "AutoencoderKL",
        **kwargs,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "norm_num_groups": cfg.num_groups,
        "act_fn": "silu",
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }


# Config keys that do not change the network (or that diffusers adds itself).
_IGNORED_DIFFUSERS_KEYS = {
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "_use_default_values",
    "sample_size",
    "force_upcast",
}
# Keys whose only supported value is the one given (the official architecture).
_REQUIRED_DIFFUSERS_VALUES = {
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
}


def vae_config_from_diffusers(config: dict[str, Any], class_name: str | None = None) -> VAEConfig:
    """A diffusers VAE config -> our VAEConfig.

    config: a `config.json` dict or a model's `.config`; class_name: "AutoencoderKLTemporalDecoder"
    (SVD's video decoder) or "AutoencoderKL" (the image decoder); when None, the config's
    `_class_name` (present in `config.json` files, absent from a live model's `.config`).
    """
    config = dict(config)
    class_name = config.get("_class_name") if class_name is None else class_name
    if class_name not in ("AutoencoderKLTemporalDecoder", "AutoencoderKL"):
        raise ValueError(
            f"diffusers VAE class {class_name!r} is not supported; expected "
            "'AutoencoderKLTemporalDecoder' (SVD's video decoder) or 'AutoencoderKL' (image "
            "decoder); pass class_name= when the config has no _class_name"
        )
    temporal = class_name == "AutoencoderKLTemporalDecoder"
    known = {
        "in_channels",
        "out_channels",
        "down_block_types",
        "block_out_channels",
        "layers_per_block",
        "latent_channels",
        "scaling_factor",
    }
    if not temporal:
        known |= {"up_block_types", "norm_num_groups"} | set(_REQUIRED_DIFFUSERS_VALUES)
    unknown = set(config) - known - _IGNORED_DIFFUSERS_KEYS
    if unknown:
        raise ValueError(
            f"diffusers {class_name} config has keys svd_core does not support: {sorted(unknown)}"
        )
    problems = []
    for key, value in _REQUIRED_DIFFUSERS_VALUES.items():
        if (
            key in config
            and config[key] != value
            and not (value is None and config[key] in ((), []))
        ):
            problems.append(f"{key}={config[key]!r} (supported: {value!r})")
    widths = [int(w) for w in config.get("block_out_channels", (64,))]
    n = len(widths)
    for key, block in (
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ):
        if key == "up_block_types" and temporal:
            continue
        types = list(config.get(key, [block]))
        if types != [block] * n:
            problems.append(f"{key}={types} (supported: {n} x {block!r})")
    base = widths[0]
    if any(w % base for w in widths):
        problems.append(f"block_out_channels={widths} are not multiples of the first width {base}")
    layers = int(config.get("layers_per_block", 1))
    if temporal and layers != 2:
        problems.append(
            f"layers_per_block={layers} (diffusers' temporal decoder mid block then differs from "
            "the official res, attention, res; only 2 is supported)"
        )
    if problems:
        raise ValueError(f"unsupported diffusers {class_name} config: " + "; ".join(problems))
    return VAEConfig(
        in_channels=int(config.get("in_channels", 3)),
        out_channels=int(config.get("out_channels", 3)),
        base_channels=base,
        channel_mult=tuple(w // base for w in widths),
        num_res_blocks=layers,
        latent_channels=int(config.get("latent_channels", 4)),
        num_groups=32 if temporal else int(config.get("norm_num_groups", 32)),
        temporal_decoder=temporal,
        scaling_factor=float(config.get("scaling_factor", 0.18215)),
    )


__all__ = [
    "diffusers_vae_config",
    "diffusers_vae_map",
    "official_vae_map",
    "vae_config_from_diffusers",
]
