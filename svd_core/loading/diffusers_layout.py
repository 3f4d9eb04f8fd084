"""The diffusers folder layout: `unet/`, `vae/`, `image_encoder/`, each a config.json and weights.

Reading needs no diffusers: the configs are JSON and the weights safetensors. Writing produces a
folder that `diffusers.StableVideoDiffusionPipeline.from_pretrained` loads (with the scheduler and
feature-extractor configs of the official SVD repos).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import CLIP_MEAN, CLIP_STD, SVDConfig
from ..io import atomic_file
from .clip_maps import clip_config_from_transformers, diffusers_clip_map, transformers_clip_config
from .files import CheckpointError
from .keymap import KeyMap
from .unet_maps import diffusers_unet_config, diffusers_unet_map, unet_config_from_diffusers
from .vae_maps import diffusers_vae_config, diffusers_vae_map, vae_config_from_diffusers

# component -> weight file stem inside its folder
WEIGHT_STEMS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "image_encoder": "model",
}
DIFFUSERS_VERSION = "0.27.0"

SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

FEATURE_EXTRACTOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": list(CLIP_MEAN),
    "image_processor_type": "CLIPImageProcessor",
    "image_std": list(CLIP_STD),
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 224},
}


def diffusers_maps(config: SVDConfig) -> dict[str, KeyMap]:
    """Component name -> the key map between our submodule and that component's weight file."""
    return {
        "unet": diffusers_unet_map(config.unet),
        "vae": diffusers_vae_map(config.vae),
        "image_encoder": diffusers_clip_map(config.image_encoder),
    }


def is_diffusers_folder(path: Path) -> bool:
    """Whether `path` is a folder with at least one diffusers component subfolder."""
    return path.is_dir() and any((path / name / "config.json").is_file() for name in WEIGHT_STEMS)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(
            f"missing {path.parent.name}/{path.name} in {str(path.parent.parent)!r}"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {error}") from None


def read_config(folder: Path) -> tuple[SVDConfig, str]:
    """Build our SVDConfig from the three config.json files; say which preset's defaults it took."""
    missing = [name for name in WEIGHT_STEMS if not (folder / name).is_dir()]
    if missing:
        raise CheckpointError(
            f"{str(folder)!r} is not a complete diffusers SVD folder: missing subfolder(s) {missing} "
            f"(expected {sorted(WEIGHT_STEMS)})"
        )
    unet_json = _read_json(folder / "unet" / "config.json")
    vae_json = _read_json(folder / "vae" / "config.json")
    encoder_json = _read_json(folder / "image_encoder" / "config.json")
    for name, data in (("unet", unet_json), ("vae", vae_json), ("image_encoder", encoder_json)):
        if not isinstance(data, dict):
            raise CheckpointError(f"{str(folder / name / 'config.json')!r} is not a JSON object")
    # A folder of another model (Stable Diffusion, ...) says so in its class names.
    for name, data, key, expected in (
        ("unet", unet_json, "_class_name", ("UNetSpatioTemporalConditionModel",)),
        ("vae", vae_json, "_class_name", ("AutoencoderKLTemporalDecoder", "AutoencoderKL")),
    ):
        if data.get(key, expected[0]) not in expected:
            raise CheckpointError(
                f"{str(folder / name / 'config.json')!r} describes a {data[key]}, not SVD's "
                f"{' or '.join(expected)}: this is a folder of another model"
            )
    parts = []
    for name, read, data in (
        ("unet", unet_config_from_diffusers, unet_json),
        ("vae", vae_config_from_diffusers, vae_json),
        ("image_encoder", clip_config_from_transformers, encoder_json),
    ):
        try:
            parts.append(read(data))
        except (ValueError, TypeError, KeyError) as error:  # TypeError, KeyError: mistyped values
            raise CheckpointError(
                f"{str(folder / name / 'config.json')!r}: {type(error).__name__}: {error}"
            ) from None
    unet, vae, encoder = parts
    frames = unet_json.get("num_frames", 14)
    preset = SVDConfig.svd_xt() if frames >= 25 else SVDConfig.svd()
    name = preset.name if vae.temporal_decoder else preset.name + "_image_decoder"
    config = dataclasses.replace(preset, name=name, unet=unet, vae=vae, image_encoder=encoder)
    return config, f"unet/config.json num_frames={frames}: sampling defaults of {preset.name}"


def weight_file(folder: Path, component: str, variant: str | None) -> Path:
    """The safetensors weight file of a component, preferring the asked variant (e.g. "fp16")."""
    stem = WEIGHT_STEMS[component]
    names = [f"{stem}.{variant}.safetensors"] if variant else []
    names.append(f"{stem}.safetensors")
    if not variant:
        names.append(f"{stem}.fp16.safetensors")
    for name in names:
        if (folder / component / name).is_file():
            return folder / component / name
    present = (
        sorted(p.name for p in (folder / component).glob("*"))
        if (folder / component).is_dir()
        else []
    )
    raise CheckpointError(
        f"no weights for {component!r} in {str(folder)!r}: looked for {names}, found {present}"
        " (.bin weights are not supported: convert them to safetensors)"
    )


def component_configs(config: SVDConfig) -> dict[str, dict]:
    """The config.json contents of each component, for writing a diffusers folder."""
    unet = {
        "_class_name": "UNetSpatioTemporalConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
    }
    unet.update(diffusers_unet_config(config.unet))
    unet["num_frames"] = config.num_frames
    vae_class = "AutoencoderKLTemporalDecoder" if config.vae.temporal_decoder else "AutoencoderKL"
    vae = {"_class_name": vae_class, "_diffusers_version": DIFFUSERS_VERSION}
    vae.update(diffusers_vae_config(config.vae))
    encoder = {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
    }
    encoder.update(transformers_clip_config(config.image_encoder))
    return {"unet": unet, "vae": vae, "image_encoder": encoder}


def write_folder_configs(folder: Path, config: SVDConfig) -> None:
    """Write model_index.json, the component configs, the scheduler and feature extractor configs."""
    configs = component_configs(config)
    index = {
        "_class_name": "StableVideoDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", configs["vae"]["_class_name"]],
    }
    files = {
        "model_index.json": index,
        "scheduler/scheduler_config.json": SCHEDULER_CONFIG,
        "feature_extractor/preprocessor_config.json": FEATURE_EXTRACTOR_CONFIG,
    }
    files.update({f"{name}/config.json": data for name, data in configs.items()})
    for relative, data in files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as temporary:
            Path(temporary).write_text(json.dumps(data, indent=2) + "\n")
