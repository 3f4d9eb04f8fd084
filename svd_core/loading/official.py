"""The official single-file layout (`svd.safetensors`, `svd_xt.safetensors`, ...): key map and presets.

Special cases, each decided in the component maps and listed here so a reader sees them in one place:
- The file holds two VAE encoders. `conditioner.embedders.3.encoder.*` (encoder + quant_conv) is
  what the official code encodes the conditioning frame with, so that is the one we load;
  `first_stage_model.encoder.*` is ignored (unused at inference), as are the conditioning
  autoencoder's decoder and post_quant_conv. On saving we write our encoder to both places.
- The OpenCLIP model in `conditioner.embedders.0.open_clip.model.*` keeps a few text-tower tensors
  (token and position embeddings, ln_final, text_projection, logit_scale): ignored by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import SVDConfig
from .clip_maps import official_clip_map
from .files import CheckpointError
from .keymap import KeyMap
from .unet_maps import OFFICIAL_PREFIX as UNET_PREFIX
from .unet_maps import official_unet_map
from .vae_maps import OFFICIAL_COND_AE, OFFICIAL_FIRST_STAGE, official_vae_map

TEMPORAL_DECODER_KEY = OFFICIAL_FIRST_STAGE + "decoder.mid.block_1.time_stack.in_layers.0.weight"
DUPLICATE_ENCODER = (OFFICIAL_COND_AE + "encoder.", OFFICIAL_FIRST_STAGE + "encoder.")


def official_map(config: SVDConfig) -> KeyMap:
    """Our SVDModel state dict <-> the official single file, for this configuration."""
    return KeyMap.merge(
        "official",
        official_unet_map(config.unet).with_prefix(ours="unet."),
        official_vae_map(config.vae).with_prefix(ours="vae."),
        official_clip_map(config.image_encoder).with_prefix(ours="image_encoder."),
    )


def looks_official(keys) -> bool:
    """Whether a key set is in the official layout (SVD or not)."""
    return any(key.startswith(UNET_PREFIX) for key in keys)


def infer_official_config(
    shapes: dict[str, tuple[int, ...]], filename: str | None = None
) -> tuple[SVDConfig, str]:
    """The preset an official-layout checkpoint was made with, and a sentence saying how we know.

    Shapes tell an SVD model from other models and the image-decoder variant from the video
    decoder; svd, svd_xt and svd_xt_1_1 share every shape, so the file name decides between them.
    """
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        sample = ", ".join(sorted(shapes)[:3])
        raise CheckpointError(
            f"not an SVD checkpoint: no '{UNET_PREFIX}input_blocks.0.0.weight' (keys start: {sample})"
        )
    temporal = [key for key in shapes if key.startswith(UNET_PREFIX) and ".time_stack." in key]
    if not temporal:
        channels = (
            ""
            if conv_in[1] == 8
            else f", and its input convolution takes {conv_in[1]} channels where SVD's takes 8"
        )
        raise CheckpointError(
            "not an SVD checkpoint: its UNet has no temporal layers (no 'time_stack' keys)"
            f"{channels}; it is an image model (Stable Diffusion or similar), not a video model"
        )
    name = Path(filename).name.lower() if filename else ""
    if "xt_1_1" in name or "xt-1-1" in name:
        config, how = SVDConfig.svd_xt_1_1(), f"file name {name!r}"
    elif "xt" in name:
        config, how = SVDConfig.svd_xt(), f"file name {name!r}"
    else:
        config = SVDConfig.svd()
        how = (
            f"file name {name!r} (svd and svd_xt have identical shapes; pass config= to choose)"
            if name
            else "no file name: assumed svd (pass config= for svd_xt)"
        )
    if TEMPORAL_DECODER_KEY not in shapes:
        config = dataclasses.replace(
            config,
            name=config.name + "_image_decoder",
            vae=dataclasses.replace(config.vae, temporal_decoder=False),
        )
        how += "; no temporal layers in the VAE decoder: the image-decoder variant"
    widths = {
        "model_channels": (conv_in[0], config.unet.model_channels),
        "UNet input channels": (conv_in[1], config.unet.in_channels),
    }
    for what, (found, expected) in widths.items():
        if found != expected:
            raise CheckpointError(
                f"this SVD checkpoint has {what} = {found}, the official presets {expected}; "
                "build its SVDConfig (e.g. svd_core.loading.read_sgm_yaml) and pass it as config="
            )
    return config, how


def duplicate_encoder_keys(tensors: dict) -> dict:
    """The copies the official file keeps of the conditioning encoder under first_stage_model.encoder."""
    source, target = DUPLICATE_ENCODER
    return {
        target + key[len(source) :]: tensor.clone()
        for key, tensor in tensors.items()
        if key.startswith(source)
    }
