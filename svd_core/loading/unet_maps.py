"""Key maps of the UNet: our names <-> the official single file and the diffusers folder.

Both tables are generated from a `UNetConfig` by walking the network in the order in which
`svd_core.unet.UNet` builds it. Where each part sits (ours: official, after `model.diffusion_model.`;
diffusers):

    time_embed.linear_1/2         time_embed.0/2;             time_embedding.linear_1/2
    vector_embed.linear_1/2       label_emb.0.0/0.2;          add_embedding.linear_1/2
    conv_in                       input_blocks.0.0;           conv_in
    encoder.L.res_blocks.i        input_blocks.K.0;           down_blocks.L.resnets.i
    encoder.L.transformers.i      input_blocks.K.1;           down_blocks.L.attentions.i
    encoder.L.downsample.conv     input_blocks.K.0.op;        down_blocks.L.downsamplers.0.conv
    middle.res_in                 middle_block.0;             mid_block.resnets.0
    middle.transformer            middle_block.1;             mid_block.attentions.0
    middle.res_out                middle_block.2;             mid_block.resnets.1
    decoder.L.res_blocks.i        output_blocks.K.0;          up_blocks.U.resnets.i
    decoder.L.transformers.i      output_blocks.K.1;          up_blocks.U.attentions.i
    decoder.L.upsample.conv       output_blocks.K.(1|2).conv; up_blocks.U.upsamplers.0.conv
    norm_out, conv_out            out.0, out.2;               conv_norm_out, conv_out

K numbers the official blocks in running order (input_blocks from 1, output_blocks from 0, deepest
level first); U = levels - 1 - L, as diffusers' up blocks also run deepest first. Every tensor keeps
its shape in all three layouts (the transformers' proj_in/proj_out are linear layers in SVD,
`use_linear_in_transformer: True`), so every entry is a plain rename.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, UNetConfig
from ..unet import skip_channels
from .keymap import KeyMap

OFFICIAL_PREFIX = "model.diffusion_model."

# Within-block names: ours -> official, ours -> diffusers.
_ATTENTION = {
    "to_q.weight": "to_q.weight",
    "to_k.weight": "to_k.weight",
    "to_v.weight": "to_v.weight",
    "to_out.weight": "to_out.0.weight",
    "to_out.bias": "to_out.0.bias",
}
_FEED_FORWARD = {
    "proj_in.weight": "net.0.proj.weight",
    "proj_in.bias": "net.0.proj.bias",
    "proj_out.weight": "net.2.weight",
    "proj_out.bias": "net.2.bias",
}
_SUBLAYERS = {  # ours -> name in both references (official and diffusers agree inside the blocks)
    "ff_in_norm": "norm_in",
    "ff_in": "ff_in",
    "self_attn_norm": "norm1",
    "self_attn": "attn1",
    "cross_attn_norm": "norm2",
    "cross_attn": "attn2",
    "ff_norm": "norm3",
    "ff": "ff",
}


@dataclass(frozen=True)
class _Layout:
    """How one layout spells the UNet's blocks (the table in the module docstring).

    In the patterns, `{level}` is our level index, `{up}` the level counted from the deepest
    (diffusers orders its up blocks by execution), `{i}` the block within a level, and `{k}` the
    official running block number; `{after}` is where the official file keeps a decoder level's
    upsampler inside its last block (1, or 2 after a transformer).
    """

    time_embed: tuple[str, str]  # linear_1, linear_2
    vector_embed: tuple[str, str]
    conv_in: str
    encoder_res: str
    encoder_transformer: str
    downsample: str
    middle: tuple[str, str, str]  # res_in, transformer, res_out
    decoder_res: str
    decoder_transformer: str
    upsample: str
    norm_out: str
    conv_out: str
    res_halves: tuple[str, str]  # where a res block keeps its spatial and its temporal half
    res_parts: dict[str, str]  # our res block part -> theirs (skip: the 1x1 conv of a width change)
    temporal_blocks: str  # a transformer's list of temporal blocks
    frame_mlp: tuple[str, str]  # the frame-position embedding's two linear layers


_OFFICIAL = _Layout(
    time_embed=("time_embed.0", "time_embed.2"),
    vector_embed=("label_emb.0.0", "label_emb.0.2"),
    conv_in="input_blocks.0.0",
    encoder_res="input_blocks.{k}.0",
    encoder_transformer="input_blocks.{k}.1",
    downsample="input_blocks.{k}.0.op",
    middle=("middle_block.0", "middle_block.1", "middle_block.2"),
    decoder_res="output_blocks.{k}.0",
    decoder_transformer="output_blocks.{k}.1",
    upsample="output_blocks.{k}.{after}.conv",
    norm_out="out.0",
    conv_out="out.2",
    res_halves=("", ".time_stack"),  # sgm's VideoResBlock subclasses ResBlock: 2D at its top
    res_parts={
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "skip": "skip_connection",
    },
    temporal_blocks="time_stack",
    frame_mlp=("0", "2"),
)

_DIFFUSERS = _Layout(
    time_embed=("time_embedding.linear_1", "time_embedding.linear_2"),
    vector_embed=("add_embedding.linear_1", "add_embedding.linear_2"),
    conv_in="conv_in",
    encoder_res="down_blocks.{level}.resnets.{i}",
    encoder_transformer="down_blocks.{level}.attentions.{i}",
    downsample="down_blocks.{level}.downsamplers.0.conv",
    middle=("mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"),
    decoder_res="up_blocks.{up}.resnets.{i}",
    decoder_transformer="up_blocks.{up}.attentions.{i}",
    upsample="up_blocks.{up}.upsamplers.0.conv",
    norm_out="conv_norm_out",
    conv_out="conv_out",
    res_halves=(".spatial_res_block", ".temporal_res_block"),
    res_parts={
        "norm1": "norm1",
        "conv1": "conv1",
        "emb_proj": "time_emb_proj",
        "norm2": "norm2",
        "conv2": "conv2",
        "skip": "conv_shortcut",
    },
    temporal_blocks="temporal_transformer_blocks",
    frame_mlp=("linear_1", "linear_2"),
)


def _affine(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.weight": f"{theirs}.weight", f"{ours}.bias": f"{theirs}.bias"}


def _transformer_block(ours: str, theirs: str, temporal: bool) -> dict[str, str]:
    entries = {}
    for name, their_name in _SUBLAYERS.items():
        if name.startswith("ff_in") and not temporal:
            continue
        if name.endswith("attn"):
            inner = _ATTENTION
        elif name.startswith("ff") and not name.endswith("norm"):
            inner = _FEED_FORWARD
        else:
            inner = {"weight": "weight", "bias": "bias"}
        for ours_key, their_key in inner.items():
            entries[f"{ours}.{name}.{ours_key}"] = f"{theirs}.{their_name}.{their_key}"
    return entries


def _transformer(ours: str, theirs: str, cfg: UNetConfig, layout: _Layout) -> dict[str, str]:
    """A SpatioTemporalTransformer; `theirs` is its prefix in the reference layout."""
    entries = {}
    for name in ("norm", "proj_in", "proj_out"):
        entries |= _affine(f"{ours}.{name}", f"{theirs}.{name}")
    for d in range(cfg.transformer_depth):
        spatial, temporal = (
            f"{theirs}.transformer_blocks.{d}",
            f"{theirs}.{layout.temporal_blocks}.{d}",
        )
        entries |= _transformer_block(f"{ours}.spatial_blocks.{d}", spatial, temporal=False)
        entries |= _transformer_block(f"{ours}.temporal_blocks.{d}", temporal, temporal=True)
    for index, theirs_linear in enumerate(layout.frame_mlp, 1):
        entries |= _affine(
            f"{ours}.frame_embed.linear_{index}", f"{theirs}.time_pos_embed.{theirs_linear}"
        )
    entries[f"{ours}.blend.mix_factor"] = f"{theirs}.time_mixer.mix_factor"
    return entries


def _res_block(ours: str, theirs: str, has_skip: bool, layout: _Layout) -> dict[str, str]:
    """A SpatioTemporalResBlock; `theirs` is its prefix in the reference layout. Only a spatial
    half whose width changes has a skip conv."""
    entries = {}
    for half, their_half in zip(("spatial", "temporal"), layout.res_halves, strict=True):
        for name, their_name in layout.res_parts.items():
            if name == "skip" and (half == "temporal" or not has_skip):
                continue
            entries |= _affine(f"{ours}.{half}.{name}", f"{theirs}{their_half}.{their_name}")
    entries[f"{ours}.blend.mix_factor"] = f"{theirs}.time_mixer.mix_factor"
    return entries


def _unet_entries(cfg: UNetConfig, layout: _Layout) -> dict[str, str]:
    """Our name -> reference name (without the official prefix), for every UNet tensor, walking
    the levels as `svd_core.unet.UNet` builds them."""
    levels = cfg.level_channels
    last = len(levels) - 1
    entries = {}
    for index, ours in enumerate(("linear_1", "linear_2")):
        entries |= _affine(f"time_embed.{ours}", layout.time_embed[index])
        entries |= _affine(f"vector_embed.{ours}", layout.vector_embed[index])
    entries |= _affine("conv_in", layout.conv_in)

    # Encoder. The official file numbers its blocks 1, 2, ... across levels (0 is conv_in).
    k = 1
    for level, level_channels in enumerate(levels):
        widens = level_channels != (levels[level - 1] if level else cfg.model_channels)
        for i in range(cfg.num_res_blocks):
            at = {"level": level, "i": i, "k": k}
            ours = f"encoder.{level}"
            has_skip = widens and i == 0  # only the level's first block changes the width
            entries |= _res_block(
                f"{ours}.res_blocks.{i}", layout.encoder_res.format(**at), has_skip, layout
            )
            if level in cfg.attention_levels:
                theirs = layout.encoder_transformer.format(**at)
                entries |= _transformer(f"{ours}.transformers.{i}", theirs, cfg, layout)
            k += 1
        if level != last:
            entries |= _affine(
                f"encoder.{level}.downsample.conv", layout.downsample.format(level=level, k=k)
            )
            k += 1

    res_in, transformer, res_out = layout.middle
    entries |= _res_block("middle.res_in", res_in, False, layout)
    entries |= _transformer("middle.transformer", transformer, cfg, layout)
    entries |= _res_block("middle.res_out", res_out, False, layout)

    # Decoder, deepest level first; the official file numbers its blocks 0, 1, ... in that order.
    k = 0
    skips = skip_channels(cfg)  # by level: what each decoder block concatenates from the encoder
    for up, level in enumerate(reversed(range(len(levels)))):
        attention = level in cfg.attention_levels
        consumed = skips[level]
        channels = levels[level + 1] if level < last else levels[last]
        for i, skip in enumerate(consumed):
            at = {"level": level, "up": up, "i": i, "k": k}
            ours = f"decoder.{level}"
            has_skip = channels + skip != levels[level]
            entries |= _res_block(
                f"{ours}.res_blocks.{i}", layout.decoder_res.format(**at), has_skip, layout
            )
            if attention:
                theirs = layout.decoder_transformer.format(**at)
                entries |= _transformer(f"{ours}.transformers.{i}", theirs, cfg, layout)
            channels = levels[level]
            if i == cfg.num_res_blocks and level > 0:
                theirs = layout.upsample.format(**at, after=2 if attention else 1)
                entries |= _affine(f"decoder.{level}.upsample.conv", theirs)
            k += 1

    entries |= _affine("norm_out", layout.norm_out) | _affine("conv_out", layout.conv_out)
    return entries


def official_unet_map(cfg: UNetConfig) -> KeyMap:
    """Our UNet state-dict names -> full official names (`model.diffusion_model.` included)."""
    entries = _unet_entries(cfg, _OFFICIAL)
    return KeyMap(
        "official UNet", {ours: OFFICIAL_PREFIX + theirs for ours, theirs in entries.items()}
    )


def diffusers_unet_map(cfg: UNetConfig) -> KeyMap:
    """Our UNet state-dict names -> diffusers `UNetSpatioTemporalConditionModel` names."""
    return KeyMap("diffusers UNet", _unet_entries(cfg, _DIFFUSERS))


# ---- configs ---------------------------------------------------------------------------------

_DOWN, _CROSS_DOWN = "DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"
_UP, _CROSS_UP = "UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"


def diffusers_unet_config(cfg: UNetConfig) -> dict[str, Any]:
    """Keyword arguments for diffusers' `UNetSpatioTemporalConditionModel` of the same size.

    diffusers hard-codes some of what our config makes a choice; a config that differs there has
    no diffusers equivalent and raises ConfigError. diffusers also hard-codes its own GroupNorm eps
    (1e-6 in some res blocks, see DESIGN.md), so `norm_eps` is not carried over; `merge_factor`
    only sets the initial blend and is carried over by the weights.
    """
    fixed = {
        "num_groups": (cfg.num_groups, 32),
        "temporal_kernel_size": (cfg.temporal_kernel_size, 3),
        "merge_strategy": (cfg.merge_strategy, "learned_with_images"),
        "max_time_embed_period": (cfg.max_time_embed_period, 10000),
    }
    for name, (value, required) in fixed.items():
        if value != required:
            raise ConfigError(
                f"UNetConfig.{name}={value!r} has no diffusers equivalent "
                f"(diffusers fixes it to {required!r})"
            )
    levels = range(len(cfg.channel_mult))
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": tuple(
            _CROSS_DOWN if i in cfg.attention_levels else _DOWN for i in levels
        ),
        "up_block_types": tuple(
            _CROSS_UP if i in cfg.attention_levels else _UP for i in reversed(levels)
        ),
        "block_out_channels": cfg.level_channels,
        "addition_time_embed_dim": cfg.addition_embed_dim,
        "projection_class_embeddings_input_dim": cfg.vector_dim,
        "layers_per_block": cfg.num_res_blocks,
        "cross_attention_dim": cfg.context_dim,
        "transformer_layers_per_block": cfg.transformer_depth,
        "num_attention_heads": tuple(c // cfg.head_channels for c in cfg.level_channels),
    }


# diffusers config.json entries that describe no weights and no numerics.
_DIFFUSERS_IGNORED = ("sample_size", "num_frames")


def _one_value(config: dict[str, Any], key: str, count: int) -> Any:
    """A diffusers field that may be one value or one per level; we support only equal values."""
    value = config[key]
    if isinstance(value, (list, tuple)):
        if len(value) != count or len(set(map(str, value))) != 1:
            raise ConfigError(
                f"diffusers UNet config: {key}={value!r}; svd_core supports one value for all "
                f"{count} levels"
            )
        return value[0]
    return value


def unet_config_from_diffusers(config: dict[str, Any]) -> UNetConfig:
    """A `UNetConfig` from a diffusers `unet/config.json` dict.

    Values svd_core cannot build (other block types, per-level widths of heads, depth or context)
    raise ConfigError, as do fields it does not know.
    """
    defaults = {
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": (_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, _DOWN),
        "up_block_types": (_UP, _CROSS_UP, _CROSS_UP, _CROSS_UP),
        "block_out_channels": (320, 640, 1280, 1280),
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 768,
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "transformer_layers_per_block": 1,
        "num_attention_heads": (5, 10, 20, 20),
    }
    unknown = sorted(
        k
        for k in config
        if k not in defaults and k not in _DIFFUSERS_IGNORED and not k.startswith("_")
    )
    if unknown:
        raise ConfigError(f"diffusers UNet config has fields svd_core does not know: {unknown}")
    c = {**defaults, **{k: v for k, v in config.items() if k in defaults}}

    channels = tuple(c["block_out_channels"])
    count = len(channels)
    down, up = tuple(c["down_block_types"]), tuple(c["up_block_types"])
    if len(down) != count or len(up) != count:
        raise ConfigError(
            f"diffusers UNet config: {len(channels)} block_out_channels but {len(down)} "
            f"down_block_types and {len(up)} up_block_types"
        )
    unsupported = sorted(set(down) - {_DOWN, _CROSS_DOWN}) + sorted(set(up) - {_UP, _CROSS_UP})
    if unsupported:
        raise ConfigError(f"diffusers UNet config: unsupported block types {unsupported}")
    attention_levels = tuple(i for i, kind in enumerate(down) if kind == _CROSS_DOWN)
    up_attention = tuple(count - 1 - i for i, kind in enumerate(up) if kind == _CROSS_UP)
    if tuple(sorted(up_attention)) != attention_levels:
        raise ConfigError(
            f"diffusers UNet config: down_block_types {down} and up_block_types {up} put "
            "attention at different levels; svd_core mirrors the encoder's attention in the decoder"
        )

    model_channels = channels[0]
    if any(ch % model_channels for ch in channels):
        raise ConfigError(
            f"diffusers UNet config: block_out_channels {channels} are not multiples of the first"
        )
    heads = c["num_attention_heads"]
    heads = (heads,) * count if isinstance(heads, int) else tuple(heads)
    widths = {ch / h for ch, h in zip(channels, heads, strict=False)}
    if len(heads) != count or len(widths) != 1 or not float(next(iter(widths))).is_integer():
        raise ConfigError(
            f"diffusers UNet config: num_attention_heads {heads} for block_out_channels "
            f"{channels} do not give one integer head width for all levels (svd_core's "
            "head_channels)"
        )
    head_channels = int(widths.pop())
    vector_dim = c["projection_class_embeddings_input_dim"]
    if vector_dim != 3 * c["addition_time_embed_dim"]:
        raise ConfigError(
            f"diffusers UNet config: projection_class_embeddings_input_dim={vector_dim} is not 3 x "
            f"addition_time_embed_dim={c['addition_time_embed_dim']} "
            "(fps_id, motion_bucket_id, cond_aug)"
        )
    return UNetConfig(
        in_channels=c["in_channels"],
        out_channels=c["out_channels"],
        model_channels=model_channels,
        channel_mult=tuple(ch // model_channels for ch in channels),
        num_res_blocks=_one_value(c, "layers_per_block", count),
        attention_levels=attention_levels,
        head_channels=head_channels,
        transformer_depth=_one_value(c, "transformer_layers_per_block", count),
        context_dim=_one_value(c, "cross_attention_dim", count),
        addition_embed_dim=c["addition_time_embed_dim"],
    )
