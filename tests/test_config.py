"""Configs: presets build, JSON round-trips, invalid sizes give clear errors."""

import dataclasses
import json
import subprocess
import sys

import pytest

from svd_core import ConfigError, ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig

PRESETS = [
    "svd",
    "svd_xt",
    "svd_xt_1_1",
    "svd_image_decoder",
    "svd_xt_image_decoder",
    "tiny",
    "tiny_demo",
]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_and_round_trip_through_json(name, tmp_path):
    cfg = getattr(SVDConfig, name)()
    assert cfg.name == name
    assert SVDConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert SVDConfig.from_json(path) == cfg


def test_official_sizes_and_sampling_defaults():
    svd, xt, xt11 = SVDConfig.svd(), SVDConfig.svd_xt(), SVDConfig.svd_xt_1_1()
    assert svd.unet.level_channels == (320, 640, 1280, 1280)
    assert svd.unet.time_embed_dim == 1280 and svd.unet.vector_dim == 768
    assert svd.unet.attention_levels == (0, 1, 2) and svd.unet.head_channels == 64
    assert svd.image_encoder.width == 1280 and svd.image_encoder.layers == 32
    assert svd.vae.downscale_factor == 8 and svd.vae.scaling_factor == 0.18215
    assert (svd.num_frames, svd.num_steps, svd.min_guidance, svd.max_guidance) == (14, 25, 1.0, 2.5)
    assert (xt.num_frames, xt.num_steps, xt.min_guidance, xt.max_guidance) == (25, 30, 1.5, 3.0)
    assert dataclasses.replace(xt11, name="svd_xt") == xt
    assert (svd.fps, svd.motion_bucket_id, svd.cond_aug, svd.decode_chunk_size) == (
        7,
        127,
        0.02,
        14,
    )
    assert not SVDConfig.svd_image_decoder().vae.temporal_decoder


def test_tiny_keeps_every_block_kind():
    unet = SVDConfig.tiny().unet
    assert len(unet.channel_mult) >= 2  # down- and upsampling
    assert (
        0 < len(unet.attention_levels) < len(unet.channel_mult)
    )  # levels with and without attention
    assert SVDConfig.tiny().vae.downscale_factor == 8


@pytest.mark.parametrize(
    "build,message",
    [
        (
            lambda: UNetConfig(model_channels=320, head_channels=48),
            "not divisible by head_channels",
        ),
        (lambda: UNetConfig(channel_mult=()), "channel_mult is empty"),
        (lambda: UNetConfig(attention_levels=(0, 4)), "has level 4"),
        (lambda: UNetConfig(merge_strategy="mean"), "merge_strategy"),
        (lambda: UNetConfig(num_res_blocks=0), "num_res_blocks"),
        (lambda: VAEConfig(channel_mult=()), "channel_mult is empty"),
        (lambda: VAEConfig(base_channels=100), "num_groups"),
        (lambda: ImageEncoderConfig(width=100, heads=16), "not divisible by heads"),
        (lambda: ImageEncoderConfig(image_size=225), "multiple of patch_size"),
        (lambda: SVDConfig(unet=UNetConfig(context_dim=512)), "embed_dim"),
        (lambda: SVDConfig(num_frames=0), "num_frames"),
    ],
)
def test_invalid_configs_raise_clear_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_from_json_names_unknown_fields():
    data = SVDConfig.tiny().to_dict()
    data["unet"]["num_heads"] = 8
    with pytest.raises(ConfigError, match="unknown fields \\['num_heads'\\]"):
        SVDConfig.from_json(json.dumps(data))


def test_from_json_rejects_missing_file_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        SVDConfig.from_json(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SVDConfig.from_json("{ not json")


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SVDConfig.svd().num_frames = 3


def test_config_is_the_bottom_layer():
    """Importing the configs imports no other svd_core module (the loaders build on them)."""
    code = (
        "import sys, svd_core.config; "
        "print(sorted(m for m in sys.modules if m.startswith('svd_core.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # svd_core.version: the package's own __init__ names its version (a module of one constant)
    assert out.stdout.strip() == "['svd_core.config', 'svd_core.version']"
