"""The image encoder: parity with open_clip (official), transformers, diffusers; maps; errors.

References are built live at random weights and loaded through our key maps. The full ViT-H/14 is
built once (module fixture, ~2.5 GB float32 each for open_clip's and ours) and run at batch 1-2.
"""

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import open_clip  # noqa: E402
import pytest
import torch
import transformers  # noqa: E402
from helpers import OFFICIAL_KEYS
from PIL import Image

from svd_core.clip import ImageEncoder, resize_antialiased
from svd_core.config import ImageEncoderConfig, SVDConfig
from svd_core.loading.clip_maps import (
    OFFICIAL_CLIP_PREFIX,
    clip_config_from_transformers,
    diffusers_clip_map,
    official_clip_map,
    open_clip_visual_map,
    transformers_clip_config,
)

VIT_H_PARAMS = 632_076_800

# Float32 tolerances, relative to the largest magnitude of the reference output.
TOWER_RTOL = 1e-5  # the same normalized pixels through our ViT and a reference ViT
RESIZE_ATOL = 1e-6  # our antialiased resize vs kornia's / diffusers' on images in [-1, 1]
PIXELS_ATOL = 1e-5  # our normalized pixels (range about [-2, 2.2]) vs a reference chain
FLOAT64_RTOL = 1e-12  # the same tower in float64


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random, at scales that keep a deep pre-norm ViT's activations tame."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)  # LayerNorm gains
            elif p.ndim == 1 and name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim <= 1 or "positional" in name or "position_embedding" in name:
                p.copy_(0.1 * noise)  # class token, position embeddings
            else:
                fan_in = p.shape[0] if name.endswith("proj") else math.prod(p.shape[1:])
                p.copy_(noise / math.sqrt(fan_in))


def random_image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def official_resize_reference(image: torch.Tensor, size: int) -> torch.Tensor:
    """sgm's resize: kornia itself if installed, else diffusers' copy (measured identical below)."""
    try:
        import kornia
    except ImportError:
        return diffusers_resize(image, size)
    return kornia.geometry.resize(
        image, (size, size), interpolation="bicubic", align_corners=True, antialias=True
    )


def diffusers_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    from diffusers.pipelines.stable_video_diffusion import pipeline_stable_video_diffusion as svd

    return svd._resize_with_antialiasing(image, (size, size))


def official_preprocess_reference(image: torch.Tensor, config: ImageEncoderConfig) -> torch.Tensor:
    """sgm FrozenOpenCLIPImageEmbedder.preprocess: resize, (x + 1) / 2, CLIP mean/std."""
    x = (official_resize_reference(image, config.image_size) + 1.0) / 2.0
    mean, std = torch.tensor(config.mean), torch.tensor(config.std)
    try:
        import kornia
    except ImportError:
        return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return kornia.enhance.normalize(x, mean, std)


def open_clip_tower(config: ImageEncoderConfig) -> torch.nn.Module:
    """open_clip's VisionTransformer through its own builder, as create_model builds ViT-H-14's."""
    from open_clip.model import _build_vision_tower

    vision_cfg = {
        "image_size": config.image_size,
        "layers": config.layers,
        "width": config.width,
        "head_width": config.width // config.heads,
        "patch_size": config.patch_size,
        "mlp_ratio": config.mlp_dim / config.width,
    }
    return _build_vision_tower(config.embed_dim, vision_cfg).eval()


def tiny_config() -> ImageEncoderConfig:
    return SVDConfig.tiny().image_encoder


def ours_from_open_clip(reference: torch.nn.Module, config: ImageEncoderConfig) -> ImageEncoder:
    ours = ImageEncoder(config).eval()
    assert open_clip_visual_map(ours.config).load_into(ours, reference.state_dict()) == {}
    return ours


# ---- parity with open_clip (the official tower) ---------------------------------------------


def test_tiny_tower_and_full_path_match_open_clip():
    config = tiny_config()
    reference = open_clip_tower(config)
    randomize_(reference, seed=0)
    ours = ours_from_open_clip(reference, config)
    images = random_image((2, 3, 90, 70), seed=1)  # downscaled to 56, aspect ratio squashed
    pixels = official_preprocess_reference(images, config)
    with torch.no_grad():
        expected = reference(pixels)
        tower = ours.encode_pixels(pixels)
        full = ours(images)
    assert tower.shape == (2, config.embed_dim)
    assert relative_error(tower, expected) < TOWER_RTOL
    assert relative_error(full, expected) < TOWER_RTOL
    with torch.no_grad():  # in float64 the two differ only by round-off: same architecture
        expected64 = reference.double()(pixels.double())
        tower64 = ours.double().encode_pixels(pixels.double())
    assert relative_error(tower64, expected64) < FLOAT64_RTOL


def test_official_config_of_vit_h_14_is_our_preset():
    model_config = open_clip.get_model_config("ViT-H-14")
    vision = model_config["vision_cfg"]
    ours = SVDConfig.svd().image_encoder
    assert model_config["embed_dim"] == ours.embed_dim
    assert (vision["image_size"], vision["patch_size"]) == (ours.image_size, ours.patch_size)
    assert (vision["width"], vision["layers"]) == (ours.width, ours.layers)
    assert vision["width"] // vision["head_width"] == ours.heads
    assert vision.get("mlp_ratio", 4.0) * vision["width"] == ours.mlp_dim
    assert not model_config.get("quick_gelu", False)  # exact GELU
    assert vision.get("pool_type", "tok") == "tok"  # class token, not the mean of the patches


@pytest.fixture(scope="module")
def vit_h_outputs():
    """One batch-2 forward of our ViT-H/14 and one batch-1 forward of open_clip's, same weights."""
    config = SVDConfig.svd().image_encoder
    with torch.device("meta"):
        reference = open_clip_tower(config)
        ours = ImageEncoder(config).eval()
    reference.to_empty(device="cpu")
    randomize_(reference, seed=2)
    ours.to_empty(device="cpu")  # parameters come from the map; the buffers are refilled here
    ours.mean.copy_(torch.tensor(config.mean).view(1, 3, 1, 1))
    ours.std.copy_(torch.tensor(config.std).view(1, 3, 1, 1))
    assert open_clip_visual_map(ours.config).load_into(ours, reference.state_dict()) == {}
    image = random_image((1, 3, 300, 400), seed=3)
    reference_pixels = official_preprocess_reference(image, config)
    with torch.no_grad():
        expected = reference(reference_pixels)
        del reference
        ours_pixels = ours.preprocess_image(image)
        both = ours.encode_pixels(torch.cat([reference_pixels, ours_pixels]))
    return {"expected": expected, "tower": both[:1], "full": both[1:]}


def test_vit_h_14_tower_matches_open_clip(vit_h_outputs):
    assert vit_h_outputs["tower"].shape == (1, 1024)
    assert relative_error(vit_h_outputs["tower"], vit_h_outputs["expected"]) < TOWER_RTOL


def test_vit_h_14_full_path_matches_kornia_then_open_clip(vit_h_outputs):
    assert relative_error(vit_h_outputs["full"], vit_h_outputs["expected"]) < TOWER_RTOL


# ---- parity with transformers and diffusers --------------------------------------------------


def transformers_model(config: ImageEncoderConfig, seed: int) -> torch.nn.Module:
    hf_config = transformers.CLIPVisionConfig(**transformers_clip_config(config))
    model = transformers.CLIPVisionModelWithProjection(hf_config).eval()
    randomize_(model, seed=seed)
    return model


def ours_from_transformers(
    model: torch.nn.Module, config: ImageEncoderConfig, **kwargs
) -> ImageEncoder:
    ours = ImageEncoder(config, **kwargs).eval()
    diffusers_clip_map(config).load_into(ours, model.state_dict())
    return ours


def test_tiny_tower_matches_transformers_clip_vision_model():
    config = tiny_config()
    model = transformers_model(config, seed=4)
    ours = ours_from_transformers(model, config)
    pixels = torch.randn(
        2, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(5)
    )
    with torch.no_grad():
        expected = model(pixel_values=pixels).image_embeds
        got = ours.encode_pixels(pixels)
    assert relative_error(got, expected) < TOWER_RTOL


def svd_feature_extractor(config: ImageEncoderConfig) -> torch.nn.Module:
    """diffusers' SVD feature_extractor/preprocessor_config.json, built locally."""
    return transformers.CLIPImageProcessor(
        crop_size=224,
        do_center_crop=True,
        do_normalize=True,
        do_rescale=True,
        do_resize=True,
        image_mean=list(config.mean),
        image_std=list(config.std),
        resample=3,
        rescale_factor=1 / 255,
        size=224,
    )


@pytest.mark.parametrize("width_height", [(150, 100), (400, 300)], ids=["upscale", "downscale"])
def test_diffusers_preprocess_matches_pipeline_encode_image(width_height):
    """preprocess="diffusers" vs StableVideoDiffusionPipeline._encode_image on PIL images, live."""
    from diffusers import StableVideoDiffusionPipeline
    from diffusers.video_processor import VideoProcessor

    config = dataclasses.replace(tiny_config(), image_size=224)  # diffusers resizes to 224 always
    model = transformers_model(config, seed=6)
    ours = ours_from_transformers(model, config, preprocess="diffusers")
    rng = np.random.default_rng(7)
    arrays = [rng.integers(0, 256, (*width_height[::-1], 3), dtype=np.uint8) for _ in range(2)]
    pil_images = [Image.fromarray(a) for a in arrays]
    pipeline_self = SimpleNamespace(
        image_encoder=model,
        feature_extractor=svd_feature_extractor(config),
        video_processor=VideoProcessor(do_resize=True, vae_scale_factor=8),
    )
    with torch.no_grad():
        expected = StableVideoDiffusionPipeline._encode_image(
            pipeline_self, pil_images, "cpu", 1, False
        )
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255 * 2 - 1
        got = ours(images)
    assert expected.shape == (2, 1, config.embed_dim)
    assert relative_error(got, expected[:, 0]) < TOWER_RTOL

    # The pixels themselves, against the pipeline's steps run with diffusers' / transformers' code.
    resized = (diffusers_resize(images, 224) + 1.0) / 2.0
    reference_pixels = pipeline_self.feature_extractor(
        images=resized,
        do_normalize=True,
        do_center_crop=False,
        do_resize=False,
        do_rescale=False,
        return_tensors="pt",
    ).pixel_values
    assert (ours.preprocess_image(images) - reference_pixels).abs().max() < PIXELS_ATOL


# ---- preprocessing ----------------------------------------------------------------------------

RESIZE_CASES = [(576, 1024), (100, 150), (300, 150), (224, 224), (225, 223), (1000, 700), (2, 3)]


@pytest.mark.parametrize("height_width", RESIZE_CASES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_official_resize_matches_kornia(height_width):
    image = random_image((2, 3, *height_width), seed=8)
    got = resize_antialiased(image, 224)
    assert got.shape == (2, 3, 224, 224)
    assert (got - official_resize_reference(image, 224)).abs().max() < RESIZE_ATOL


@pytest.mark.parametrize("height_width", RESIZE_CASES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_diffusers_resize_matches_ours_and_equals_official_exactly(height_width):
    """diffusers' copy always blurs; for a growing side the kernel is [0, 1, 0] (exp underflows)."""
    image = random_image((2, 3, *height_width), seed=9)
    reference = diffusers_resize(image, 224)
    assert (resize_antialiased(image, 224, always_blur=True) - reference).abs().max() < RESIZE_ATOL
    assert torch.equal(
        resize_antialiased(image, 224, always_blur=True), resize_antialiased(image, 224)
    )
    assert torch.equal(reference, official_resize_reference(image, 224))  # measured: 0 difference


def test_resize_handles_a_one_pixel_side():
    image = random_image((1, 3, 1, 500), seed=10)
    got = resize_antialiased(image, 224)
    assert got.shape == (1, 3, 224, 224) and torch.isfinite(got).all()
    if _has_kornia():  # kornia >= 0.8 does not smooth a side of length 1 either
        assert (got - official_resize_reference(image, 224)).abs().max() < RESIZE_ATOL


def _has_kornia() -> bool:
    try:
        import kornia  # noqa: F401
    except ImportError:
        return False
    return True


def test_torch_antialias_is_not_the_official_resize():
    """Why we reimplement kornia's resize: torch's antialias=True filters differently (by ~0.6)."""
    image = random_image((1, 3, 576, 1024), seed=11)
    torch_resized = torch.nn.functional.interpolate(
        image, size=(224, 224), mode="bicubic", align_corners=True, antialias=True
    )
    assert (torch_resized - resize_antialiased(image, 224)).abs().max() > 0.1


def test_preprocess_modes_and_buffers():
    config = tiny_config()
    encoder = ImageEncoder(config)
    assert "mean" not in encoder.state_dict() and "std" not in encoder.state_dict()
    pixels = encoder.preprocess_image(torch.zeros(1, 3, 80, 60))  # mid-grey
    expected = (0.5 - torch.tensor(config.mean)) / torch.tensor(config.std)
    assert torch.allclose(pixels[0, :, 0, 0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        ImageEncoder(config, preprocess="kornia")
    encoder.preprocess = "diffusers"
    assert encoder.preprocess == "diffusers"


# ---- key maps ----------------------------------------------------------------------------------


def official_shapes() -> dict[str, tuple[int, ...]]:
    tensors = json.loads(OFFICIAL_KEYS.read_text())["tensors"]
    return {k: tuple(v) for k, v in tensors.items() if k.startswith("conditioner.embedders.0.")}


def meta_shapes(config: ImageEncoderConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        encoder = ImageEncoder(config)
    return {k: tuple(v.shape) for k, v in encoder.state_dict().items()}


def test_full_size_matches_official_key_set_shapes_and_parameter_count():
    config = SVDConfig.svd().image_encoder
    with torch.device("meta"):
        encoder = ImageEncoder(config)
    assert sum(p.numel() for p in encoder.parameters()) == VIT_H_PARAMS
    theirs = official_clip_map(config).to_theirs(encoder.state_dict())
    visual = {k: v for k, v in official_shapes().items() if ".visual." in k}
    assert len(visual) == 392
    assert {k: tuple(v.shape) for k, v in theirs.items()} == visual


def test_official_map_ignores_the_text_leftovers_by_name():
    config = SVDConfig.svd().image_encoder
    ignored = official_clip_map(config).check(official_shapes(), meta_shapes(config))
    names = {
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
        "text_projection",
        "logit_scale",
    }
    assert set(ignored) == {OFFICIAL_CLIP_PREFIX + n for n in names}
    assert all(reason for reason in ignored.values())


def test_diffusers_map_covers_transformers_state_dict_at_full_size():
    config = SVDConfig.svd().image_encoder
    hf_config = transformers.CLIPVisionConfig(**transformers_clip_config(config))
    with torch.device("meta"):
        model = transformers.CLIPVisionModelWithProjection(hf_config)
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs["vision_model.embeddings.position_ids"] = (1, 257)  # older transformers saved it
    ignored = diffusers_clip_map(config).check(theirs, meta_shapes(config))
    assert set(ignored) == {"vision_model.embeddings.position_ids"}


@pytest.mark.parametrize(
    "make_map", [official_clip_map, diffusers_clip_map], ids=["official", "diffusers"]
)
def test_round_trip_through_each_layout_is_bit_exact(make_map):
    config = tiny_config()
    encoder = ImageEncoder(config)
    randomize_(encoder, seed=12)
    key_map = make_map(config)
    state = encoder.state_dict()
    theirs = key_map.to_theirs(state)
    back = key_map.to_ours(theirs.__getitem__)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_transformers_config_round_trip():
    for config in (SVDConfig.svd().image_encoder, tiny_config()):
        hf_config = transformers.CLIPVisionConfig(**transformers_clip_config(config))
        assert clip_config_from_transformers(hf_config.to_dict()) == config


def test_diffusers_image_encoder_config_json():
    """The keys of stabilityai/stable-video-diffusion-img2vid's image_encoder/config.json."""
    config_json = {
        "_name_or_path": "",
        "architectures": ["CLIPVisionModelWithProjection"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": 1280,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_channels": 3,
        "num_hidden_layers": 32,
        "patch_size": 14,
        "projection_dim": 1024,
        "torch_dtype": "float16",
        "transformers_version": "4.34.0.dev0",
    }
    assert clip_config_from_transformers(config_json) == SVDConfig.svd().image_encoder


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "quick_gelu"}, "hidden_act 'quick_gelu' is not supported"),
        ({"num_channels": 1}, "num_channels must be 3"),
        ({"use_rope": True}, "does not understand: \\['use_rope'\\]"),
        ({"model_type": "clip"}, "expected a CLIPVisionConfig"),
    ],
)
def test_transformers_config_errors(change, message):
    config_dict = {**transformers_clip_config(tiny_config()), **change}
    with pytest.raises(ValueError, match=message):
        clip_config_from_transformers(config_dict)


def test_missing_hidden_act_means_quick_gelu_and_is_refused():
    config_dict = transformers_clip_config(tiny_config())
    del config_dict["hidden_act"]
    with pytest.raises(ValueError, match="quick_gelu"):
        clip_config_from_transformers(config_dict)


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, error, message",
    [
        (torch.zeros(1, 4, 32, 32), ValueError, "3 \\(RGB\\) channels"),
        (torch.zeros(0, 3, 32, 32), ValueError, "empty"),
        (torch.zeros(1, 3, 0, 32), ValueError, "empty"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "float tensor"),
        (torch.zeros(3, 32, 32), ValueError, "4 dimensions"),
        (np.zeros((1, 3, 32, 32), dtype=np.float32), TypeError, "torch.Tensor"),
    ],
    ids=["channels", "batch0", "height0", "uint8", "ndim3", "numpy"],
)
def test_bad_images_raise_clear_errors(image, error, message):
    encoder = ImageEncoder(tiny_config())
    with pytest.raises(error, match=message):
        encoder(image)


def test_pixels_of_the_wrong_size_raise():
    encoder = ImageEncoder(tiny_config())
    with pytest.raises(ValueError, match="must be 56x56"):
        encoder.encode_pixels(torch.zeros(1, 3, 64, 64))
