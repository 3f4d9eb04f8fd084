"""Reading official sgm YAML configs into an SVDConfig: the machinery behind SVDConfig.from_sgm_yaml.

The tables below name every sgm class (Stability-AI/generative-models) an SVD yaml may hold and, for
each, the `params` we read, the ones that have no effect on what svd_core builds, and the values we
cannot build. See SVDConfig.from_sgm_yaml for the behaviour.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .config import (
    MERGE_STRATEGIES,
    ConfigError,
    ImageEncoderConfig,
    SVDConfig,
    UNetConfig,
    VAEConfig,
    _dataclass_from_dict,
)


def read_sgm_yaml(path: str | Path, name: str | None = None) -> SVDConfig:
    """The SVDConfig an sgm yaml file describes; ConfigError naming the file and the field if not."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sgm yaml config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{str(path)!r} is not valid YAML: {error}") from None
    try:
        return _config_from_sgm(data, name or path.stem, version=path.stem)
    except ConfigError as error:
        raise ConfigError(f"sgm yaml {str(path)!r}: {error}") from None


# ---- reading sgm YAML configs --------------------------------------------------------------------
#
# The sgm classes (Stability-AI/generative-models) an SVD yaml names, and for each the `params` that
# from_sgm_yaml reads: each sets an SVDConfig field or must hold the one value svd_core builds. The
# params in SGM_NO_EFFECT are accepted and change nothing. Any other field is unknown.

DIFFUSION_ENGINE = "sgm.models.diffusion.DiffusionEngine"
VIDEO_UNET = "sgm.modules.diffusionmodules.video_model.VideoUNet"
DENOISER = "sgm.modules.diffusionmodules.denoiser.Denoiser"
V_SCALING_EDM = "sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise"
CONDITIONER = "sgm.modules.GeneralConditioner"
CONDITIONER_FULL_NAME = "sgm.modules.encoders.modules.GeneralConditioner"  # the same class
CLIP_PREDICTION_EMBEDDER = "sgm.modules.encoders.modules.FrozenOpenCLIPImagePredictionEmbedder"
CLIP_IMAGE_EMBEDDER = "sgm.modules.encoders.modules.FrozenOpenCLIPImageEmbedder"
TIMESTEP_EMBEDDER = "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"
LATENT_EMBEDDER = "sgm.modules.encoders.modules.VideoPredictionEmbedderWithEncoder"
AUTOENCODER_MODE_ONLY = "sgm.models.autoencoder.AutoencoderKLModeOnly"
AUTOENCODER_KL = "sgm.models.autoencoder.AutoencoderKL"
AUTOENCODING_ENGINE = "sgm.models.autoencoder.AutoencodingEngine"
ENCODER = "sgm.modules.diffusionmodules.model.Encoder"
DECODER = "sgm.modules.diffusionmodules.model.Decoder"
VIDEO_DECODER = "sgm.modules.autoencoding.temporal_ae.VideoDecoder"
EULER_EDM_SAMPLER = "sgm.modules.diffusionmodules.sampling.EulerEDMSampler"
EDM_DISCRETIZATION = "sgm.modules.diffusionmodules.discretizer.EDMDiscretization"
LINEAR_GUIDER = "sgm.modules.diffusionmodules.guiders.LinearPredictionGuider"
OPENAI_WRAPPER = "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper"  # DiffusionEngine's default

# The autoencoders' `ddconfig`, shared by sgm's Encoder and Decoder (each ignores the other's extras).
_DDCONFIG = dict.fromkeys(
    (
        "ch",
        "out_ch",
        "ch_mult",
        "num_res_blocks",
        "attn_resolutions",
        "resamp_with_conv",
        "in_channels",
        "resolution",
        "z_channels",
        "double_z",
        "use_linear_attn",
        "attn_type",
        "give_pre_end",
        "tanh_out",
    )
)
# sgm class -> {param read: None, or for a nested {target, params} config the classes it may name}
_SGM_READS: dict[str, dict[str, tuple[str, ...] | None]] = {
    DIFFUSION_ENGINE: {
        "network_config": (VIDEO_UNET,),
        "denoiser_config": (DENOISER,),
        "first_stage_config": (AUTOENCODING_ENGINE, AUTOENCODER_KL),
        "conditioner_config": (CONDITIONER, CONDITIONER_FULL_NAME),
        "sampler_config": (EULER_EDM_SAMPLER,),
        "scale_factor": None,
        "network_wrapper": None,
    },
    VIDEO_UNET: dict.fromkeys(
        (
            "in_channels",
            "out_channels",
            "model_channels",
            "channel_mult",
            "num_res_blocks",
            "attention_resolutions",
            "num_head_channels",
            "num_heads",
            "transformer_depth",
            "transformer_depth_middle",
            "context_dim",
            "num_classes",
            "adm_in_channels",
            "video_kernel_size",
            "merge_strategy",
            "merge_factor",
            "max_ddpm_temb_period",
            "use_linear_in_transformer",
            "use_spatial_context",
            "extra_ff_mix_layer",
            "disable_temporal_crossattention",
            "spatial_transformer_attn_type",
            "conv_resample",
            "dims",
            "use_scale_shift_norm",
            "resblock_updown",
            "time_downup",
        )
    ),
    DENOISER: {"scaling_config": (V_SCALING_EDM,)},
    V_SCALING_EDM: {},
    CONDITIONER: {"emb_models": None},
    CONDITIONER_FULL_NAME: {"emb_models": None},
    CLIP_PREDICTION_EMBEDDER: {
        "open_clip_embedding_config": (CLIP_IMAGE_EMBEDDER,),
        "n_cond_frames": None,
    },
    CLIP_IMAGE_EMBEDDER: dict.fromkeys(
        (
            "arch",
            "antialias",
            "unsqueeze_dim",
            "repeat_to_max_len",
            "num_image_crops",
            "output_tokens",
        )
    ),
    TIMESTEP_EMBEDDER: {"outdim": None},
    LATENT_EMBEDDER: {
        "encoder_config": (AUTOENCODER_MODE_ONLY,),
        **dict.fromkeys(
            ("n_cond_frames", "is_ae", "scale_factor", "sigma_sampler_config", "sigma_cond_config")
        ),
    },
    AUTOENCODER_MODE_ONLY: {"embed_dim": None, "ddconfig": None},
    AUTOENCODER_KL: {"embed_dim": None, "ddconfig": None},
    AUTOENCODING_ENGINE: {"encoder_config": (ENCODER,), "decoder_config": (VIDEO_DECODER,)},
    ENCODER: _DDCONFIG,
    VIDEO_DECODER: {
        **_DDCONFIG,
        **dict.fromkeys(("video_kernel_size", "alpha", "merge_strategy", "time_mode")),
    },
    EULER_EDM_SAMPLER: {
        "discretization_config": (EDM_DISCRETIZATION,),
        "guider_config": (LINEAR_GUIDER,),
        "num_steps": None,
        "s_churn": None,
    },
    EDM_DISCRETIZATION: dict.fromkeys(("sigma_min", "sigma_max", "rho")),
    LINEAR_GUIDER: dict.fromkeys(("max_scale", "min_scale", "num_frames")),
}
TOP_LEVEL = "(top level)"
EMBEDDER_ENTRY = "(each conditioner_config.params.emb_models entry)"
_EMBEDDER_ENTRY_READS = ("input_key", "input_keys")  # besides target and params
_EMBEDDERS = (CLIP_PREDICTION_EMBEDDER, TIMESTEP_EMBEDDER, LATENT_EMBEDDER)

_TRAINING = "training only"
_WEIGHTS = "where sgm loads weights from; svd_core.load takes the checkpoint"
_PLACEMENT = "device placement"
_BATCHING = "runs the network on batches of this size; same result"
_REPEATS = (
    "repeats the condition over a batch of frames; svd_core repeats it over the frames itself"
)
_AUTOENCODER_NO_EFFECT = {
    **dict.fromkeys(
        (
            "lossconfig",
            "loss_config",
            "optimizer_config",
            "lr_g_factor",
            "trainable_ae_params",
            "ae_optimizer_args",
            "trainable_disc_params",
            "disc_optimizer_args",
            "disc_start_iter",
            "diff_boost_factor",
            "ema_decay",
            "monitor",
            "input_key",
            "additional_decode_keys",
        ),
        _TRAINING,
    ),
    "ckpt_path": _WEIGHTS,
    "ckpt_engine": _WEIGHTS,
    "max_batch_size": _BATCHING,
}

# The fields of an sgm yaml that change nothing svd_core builds or samples: class -> {param: why}.
# A field listed here is accepted with any value (and anything below it).
SGM_NO_EFFECT: dict[str, dict[str, str]] = {
    TOP_LEVEL: {
        "data": "sgm main.py's training data section",
        "lightning": "sgm main.py's trainer section",
    },
    DIFFUSION_ENGINE: {
        "ckpt_path": _WEIGHTS,
        **dict.fromkeys(
            (
                "optimizer_config",
                "scheduler_config",
                "loss_fn_config",
                "use_ema",
                "ema_decay_rate",
                "input_key",
                "log_keys",
                "no_cond_log",
            ),
            _TRAINING,
        ),
        "disable_first_stage_autocast": "autocast switch; dtypes are chosen when loading and sampling",
        "compile_model": "torch.compile switch",
        "en_and_decode_n_samples_a_time": "the sampling script overrides it with decoding_t, "
        "SVDConfig.decode_chunk_size",
    },
    VIDEO_UNET: {
        "dropout": _TRAINING,
        "use_checkpoint": "activation checkpointing, a memory option (UNet gradient_checkpointing)",
        "num_heads_upsample": "stored but never used by VideoUNet",
        "time_context_dim": "replaced by context_dim, as use_spatial_context is True",
    },
    EMBEDDER_ENTRY: {
        "is_trainable": _TRAINING,
        "ucg_rate": "training-time dropout of the condition",
        "legacy_ucg_value": _TRAINING,
    },
    CLIP_PREDICTION_EMBEDDER: {"n_copies": _REPEATS},
    CLIP_IMAGE_EMBEDDER: {
        "version": "the pretrained weights' tag; svd_core.load takes the checkpoint",
        "device": _PLACEMENT,
        "init_device": _PLACEMENT,
        "freeze": _TRAINING,
        "ucg_rate": "training-time dropout of the embedding",
        "max_length": "used only with repeat_to_max_len or num_image_crops, which must be off",
    },
    LATENT_EMBEDDER: {
        "n_copies": _REPEATS,
        "disable_encoder_autocast": "autocast switch; dtypes are chosen when loading and sampling",
        "en_and_decode_n_samples_a_time": _BATCHING,
    },
    AUTOENCODER_MODE_ONLY: _AUTOENCODER_NO_EFFECT,
    AUTOENCODER_KL: _AUTOENCODER_NO_EFFECT,
    AUTOENCODING_ENGINE: {
        **_AUTOENCODER_NO_EFFECT,
        "regularizer_config": "acts in encode(); the first stage's encoder never runs when sampling",
    },
    ENCODER: {"dropout": _TRAINING},
    VIDEO_DECODER: {"dropout": _TRAINING},
    EULER_EDM_SAMPLER: {
        "s_tmin": "acts only with s_churn > 0",
        "s_tmax": "acts only with s_churn > 0",
        "s_noise": "acts only with s_churn > 0",
        "verbose": "progress printing",
        "device": _PLACEMENT,
    },
    LINEAR_GUIDER: {
        "additional_cond_keys": "SVD's conditions are vector, crossattn and concat, always guided",
    },
}

# sgm classes we recognise but SVDConfig cannot hold, with what to do instead.
_SAMPLING_CHOICE = (
    "SVDConfig holds no sampler: svd_core samples with Euler (EulerEDMSampler, as the official "
    "configs do); choose another when sampling: SVDPipeline(...)(sampler=...) or svd-core "
    "generate --sampler"
)
_GUIDANCE_CHOICE = (
    "SVDConfig holds the linear guidance of LinearPredictionGuider; choose another schedule when "
    "sampling: SVDPipeline(...)(guidance='triangle' or 'constant')"
)
_SGM_NOT_REPRESENTABLE = {
    DECODER: "a plain Decoder under AutoencodingEngine has no post_quant_conv, unlike svd_core's "
    "image decoder, which is sgm's AutoencoderKL of svd_image_decoder.yaml",
    **{
        f"sgm.modules.diffusionmodules.sampling.{name}": _SAMPLING_CHOICE
        for name in (
            "HeunEDMSampler",
            "EulerAncestralSampler",
            "DPMPP2SAncestralSampler",
            "DPMPP2MSampler",
            "LinearMultistepSampler",
        )
    },
    **{
        f"sgm.modules.diffusionmodules.guiders.{name}": _GUIDANCE_CHOICE
        for name in (
            "TrianglePredictionGuider",
            "TrapezoidPredictionGuider",
            "SpatiotemporalPredictionGuider",
            "VanillaCFG",
            "IdentityGuider",
        )
    },
}

# scripts/sampling/simple_video_sample.py picks frames and steps by version (the yaml holds neither);
# svd_xt_1_1.yaml is svd_xt.yaml with other weights, and the scripts that run it use svd_xt's.
SGM_VERSION_DEFAULTS: dict[str, tuple[int, int]] = {  # file stem -> (num_frames, num_steps)
    "svd": (14, 25),
    "svd_image_decoder": (14, 25),
    "svd_xt": (25, 30),
    "svd_xt_1_1": (25, 30),
    "svd_xt_image_decoder": (25, 30),
}
VIT_H_14 = "ViT-H-14"  # open_clip's name for SVD's image encoder, ImageEncoderConfig's defaults

# The conditioner of every SVD config, in order: the order fixes the layout of the added-condition
# vector (fps_id, motion_bucket_id, cond_aug) and the checkpoint's conditioner.embedders.N prefixes.
_SVD_EMBEDDERS = (
    ("cond_frames_without_noise", CLIP_PREDICTION_EMBEDDER),
    ("fps_id", TIMESTEP_EMBEDDER),
    ("motion_bucket_id", TIMESTEP_EMBEDDER),
    ("cond_frames", LATENT_EMBEDDER),
    ("cond_aug", TIMESTEP_EMBEDDER),
)
# sgm ddconfig name -> VAEConfig field
_DDCONFIG_TO_VAE = {
    "ch": "base_channels",
    "ch_mult": "channel_mult",
    "num_res_blocks": "num_res_blocks",
    "z_channels": "latent_channels",
    "in_channels": "in_channels",
    "out_ch": "out_channels",
}
_REQUIRED = object()  # marks an sgm parameter without a default


def _class_name(target: str) -> str:
    return str(target).rsplit(".", 1)[-1]


def _shown(paths: list[str], limit: int = 5) -> str:
    """The first few of a list of names, and how many there are."""
    text = ", ".join(paths[:limit])
    return text if len(paths) <= limit else f"{text}, ... ({len(paths)} in all)"


def _is_int(value: Any) -> bool:
    """An int that is not a bool (YAML has both)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _same_value(value: Any, allowed: Any) -> bool:
    """Equality that does not take True for 1 (YAML has both)."""
    return value == allowed and isinstance(value, bool) == isinstance(allowed, bool)


class _SgmParams:
    """The `params` of one sgm class in the yaml, read with the defaults of sgm's constructor."""

    def __init__(self, values: Any, path: str, target: str) -> None:
        if values is None:
            values = {}  # `params:` may be absent or empty
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must be a mapping, got {values!r}")
        self.values, self.path, self.target = values, path, target

    @classmethod
    def of(cls, node: Any, path: str, targets: tuple[str, ...]) -> _SgmParams:
        """The params of the {target, params} config at `path`, whose target must be one of these."""
        target = _check_target(node, path, targets)
        return cls(node.get("params"), f"{path}.params", target)

    def where(self, key: str) -> str:
        """The dotted path of one parameter."""
        return f"{self.path}.{key}"

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        """The value, or sgm's default when the yaml leaves it out."""
        if key in self.values:
            return self.values[key]
        if default is _REQUIRED:
            raise ConfigError(
                f"{self.where(key)} is missing; sgm's {_class_name(self.target)} requires it"
            )
        return default

    def sub(self, key: str) -> _SgmParams:
        """The params of the nested {target, params} config in parameter `key`."""
        return _SgmParams.of(self.get(key), self.where(key), _SGM_READS[self.target][key])

    def integer(self, key: str, default: Any = _REQUIRED) -> Any:
        """An integer parameter (or the default, which may be None)."""
        value = self.get(key, default)
        if value is None and default is None:
            return None
        if not _is_int(value):
            raise ConfigError(f"{self.where(key)} must be an integer, got {value!r}")
        return value

    def number(self, key: str, default: Any = _REQUIRED) -> float:
        """A real-number parameter, as a float."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.where(key)} must be a number, got {value!r}")
        return float(value)

    def integers(self, key: str, default: Any = _REQUIRED) -> tuple[int, ...]:
        """A list of integers, as a tuple."""
        value = self.get(key, default)
        if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
            raise ConfigError(f"{self.where(key)} must be a list of integers, got {value!r}")
        return tuple(value)

    def expect(self, key: str, default: Any, allowed: tuple, why: str) -> Any:
        """A parameter svd_core builds with one of `allowed` values only; `why` says why."""
        value = self.get(key, default)
        if not any(_same_value(value, a) for a in allowed):
            given = "" if key in self.values else " (not given: sgm's default)"
            raise ConfigError(
                f"{self.where(key)} is {value!r}{given}; svd_core builds only "
                f"{' or '.join(repr(a) for a in allowed)}: {why}"
            )
        return value


def _check_target(node: Any, path: str, targets: tuple[str, ...]) -> str:
    """The target of the {target, params} config at `path`; ConfigError unless one of `targets`."""
    if not isinstance(node, dict):
        raise ConfigError(f"{path} must be a mapping with a target, got {node!r}")
    target = node.get("target")
    if target in targets:
        return target
    if target in _SGM_NOT_REPRESENTABLE:
        raise ConfigError(f"{path}.target is {target}: {_SGM_NOT_REPRESENTABLE[target]}")
    if target in _SGM_READS:
        raise ConfigError(f"{path}.target is {target}; here svd_core reads {' or '.join(targets)}")
    raise ConfigError(
        f"{path}.target is {target!r}, a class svd_core does not read; here it reads "
        f"{' or '.join(targets)}"
    )


def _unknown_sgm_fields(data: dict) -> list[str]:
    """The dotted paths of the fields of an sgm yaml tree that from_sgm_yaml does not know.

    Raises ConfigError for a `target:` it does not read where it stands.
    """
    unknown = [
        key
        for key in data
        if key not in ("model", "svd_core") and key not in SGM_NO_EFFECT[TOP_LEVEL]
    ]
    _walk_sgm(data["model"], "model", (DIFFUSION_ENGINE,), (), unknown)
    extension = data.get("svd_core")
    if isinstance(extension, dict):
        unknown += [f"svd_core.{key}" for key in extension if key != "image_encoder"]
        image_encoder = extension.get("image_encoder")
        if isinstance(image_encoder, dict):
            fields = {f.name for f in dataclasses.fields(ImageEncoderConfig)}
            unknown += [f"svd_core.image_encoder.{k}" for k in image_encoder if k not in fields]
    return unknown


def _walk_sgm(
    node: Any,
    path: str,
    targets: tuple[str, ...],
    entry_keys: tuple[str, ...],
    unknown: list[str],
) -> None:
    """Collect the unknown fields of one {target, params} config and of the configs inside it."""
    target = _check_target(node, path, targets)
    unknown += [f"{path}.{key}" for key in node if key not in ("target", "params") + entry_keys]
    params = node.get("params")
    if not isinstance(params, dict):
        return  # the reading pass says what is wrong with it
    reads, no_effect = _SGM_READS[target], SGM_NO_EFFECT.get(target, {})
    for key, value in params.items():
        where = f"{path}.params.{key}"
        if key not in reads and key not in no_effect:
            unknown.append(where)
        elif reads.get(key) is not None and value is not None:  # a nested config
            _walk_sgm(value, where, reads[key], (), unknown)
        elif key == "ddconfig" and isinstance(value, dict):
            known = set(_DDCONFIG) | set(SGM_NO_EFFECT[ENCODER])
            unknown += [f"{where}.{k}" for k in value if k not in known]
        elif key == "emb_models" and isinstance(value, list):
            entry = _EMBEDDER_ENTRY_READS + tuple(SGM_NO_EFFECT[EMBEDDER_ENTRY])
            for i, embedder in enumerate(value):
                _walk_sgm(embedder, f"{where}[{i}]", _EMBEDDERS, entry, unknown)


def _config_from_sgm(data: Any, name: str, version: str) -> SVDConfig:
    """SVDConfig from a parsed sgm yaml tree; see SVDConfig.from_sgm_yaml."""
    if not isinstance(data, dict) or "model" not in data:
        raise ConfigError("the top level must be a mapping with a `model:` entry (sgm's layout)")
    unknown = _unknown_sgm_fields(data)
    if unknown:
        raise ConfigError(
            f"unknown fields {_shown(unknown)}; svd_core reads the fields of the sgm classes of "
            "SVD (see SVDConfig.from_sgm_yaml and SGM_NO_EFFECT)"
        )
    engine = _SgmParams.of(data["model"], "model", (DIFFUSION_ENGINE,))
    engine.expect(
        "network_wrapper", None, (None, OPENAI_WRAPPER), "svd_core calls its UNet as sgm's does"
    )
    denoiser = engine.sub("denoiser_config")
    denoiser.sub("scaling_config")  # v-prediction, c_noise = 0.25 ln(sigma)

    unet_params = engine.sub("network_config")
    unet, adm_in_channels = _sgm_unet(unet_params)
    if engine.get("conditioner_config", None) is None:
        raise ConfigError(
            f"{engine.where('conditioner_config')} is missing: SVD is conditioned on an image, "
            "its fps, motion bucket and noise augmentation"
        )
    addition_dim, (arch, arch_where), cond_autoencoder = _sgm_conditioner(
        engine.sub("conditioner_config")
    )
    if adm_in_channels != 3 * addition_dim:
        raise ConfigError(
            f"{unet_params.where('adm_in_channels')} is {adm_in_channels}, but the fps_id, "
            f"motion_bucket_id and cond_aug embedders give 3 x {addition_dim} = {3 * addition_dim}"
        )
    vae, ddconfigs = _sgm_vae(engine.sub("first_stage_config"))
    vae.update(_vae_sizes(cond_autoencoder + ddconfigs))
    image_encoder = _sgm_image_encoder(arch, data.get("svd_core"), arch_where)
    if image_encoder.embed_dim != unet["context_dim"]:
        raise ConfigError(
            f"{unet_params.where('context_dim')} is {unet['context_dim']}, but the image encoder "
            f"({arch}) embeds to {image_encoder.embed_dim}"
        )
    return SVDConfig(
        name=name,
        unet=UNetConfig(**unet, addition_embed_dim=addition_dim),
        vae=VAEConfig(**vae, scaling_factor=engine.number("scale_factor", 1.0)),
        image_encoder=image_encoder,
        **_sgm_sampling(engine, version),
    )


def _temporal_kernel(params: _SgmParams, default: Any) -> int:
    """The frames a temporal convolution spans, from sgm's `video_kernel_size`."""
    value, where = params.get("video_kernel_size", default), params.where("video_kernel_size")
    if isinstance(value, list) and len(value) == 3 and _is_int(value[0]) and value[1:] == [1, 1]:
        return value[0]
    if _is_int(value) and value == 1:
        return 1
    if _is_int(value):  # sgm passes an integer k to Conv3d: a k x k x k kernel
        raise ConfigError(
            f"{where} is {value}, which makes sgm build {value}x{value}x{value} convolutions "
            f"over (frames, height, width); svd_core's temporal ones are k x 1 x 1, as [{value}, 1, 1]"
        )
    raise ConfigError(f"{where} must be [k, 1, 1], got {value!r}")


# VideoUNet params svd_core builds one way: (param, sgm's default, what svd_core builds, why).
_VIDEO_UNET_ONE_WAY = (
    ("num_classes", None, ("sequential",), "the added-condition vector goes through label_emb"),
    ("use_linear_in_transformer", False, (True,), "the transformers project with Linear layers"),
    ("use_spatial_context", False, (True,), "the temporal transformers cross-attend to the image"),
    ("extra_ff_mix_layer", False, (True,), "the temporal transformers start with a feed-forward"),
    ("disable_temporal_crossattention", False, (False,), "the temporal transformers cross-attend"),
    ("spatial_transformer_attn_type", "softmax", ("softmax", "softmax-xformers"), "the same math"),
    ("merge_strategy", "fixed", MERGE_STRATEGIES, "the strategies of sgm's AlphaBlender"),
    ("dims", 2, (2,), "the UNet is 2D per frame"),
    ("conv_resample", True, (True,), "the levels resample with convolutions"),
    ("use_scale_shift_norm", False, (False,), "the res blocks add the embedding"),
    ("resblock_updown", False, (False,), "the levels resample with their own convolutions"),
    ("time_downup", False, (False,), "the frame count stays the same through the UNet"),
)


def _sgm_unet(p: _SgmParams) -> tuple[dict[str, Any], int]:
    """UNetConfig fields (less addition_embed_dim) and adm_in_channels from VideoUNet's params."""
    for key, default, allowed, why in _VIDEO_UNET_ONE_WAY:
        p.expect(key, default, allowed, why)

    model_channels = p.integer("model_channels")
    channel_mult = p.integers("channel_mult", (1, 2, 4, 8))
    last = len(channel_mult) - 1
    # sgm puts transformers where the downsampling factor 2**level is in attention_resolutions.
    resolutions = p.integers("attention_resolutions")
    attention_levels = tuple(level for level in range(last + 1) if 2**level in resolutions)
    # The middle block always has a transformer, at the last level's width.
    widths = [model_channels * channel_mult[level] for level in attention_levels + (last,)]

    head_channels = p.integer("num_head_channels", -1)
    num_heads = p.integer("num_heads", -1)
    if head_channels == -1:
        if num_heads == -1:
            raise ConfigError(f"{p.path}: give num_head_channels or num_heads, as sgm requires")
        # A fixed head count: one head width only if every transformer is as wide.
        if len(set(widths)) != 1 or widths[0] % num_heads:
            raise ConfigError(
                f"{p.where('num_heads')} is {num_heads} at transformer widths {sorted(set(widths))}"
                "; svd_core's UNetConfig fixes the head width (num_head_channels) instead"
            )
        head_channels = widths[0] // num_heads

    # transformer_depth: one for all levels or one per level; the middle's defaults to the last.
    depth = p.get("transformer_depth", 1)
    if isinstance(depth, list):
        per_level = p.integers("transformer_depth")
    else:
        per_level = [p.integer("transformer_depth", 1)] * (last + 1)
    if len(per_level) != last + 1:
        raise ConfigError(
            f"{p.where('transformer_depth')} has {len(per_level)} entries for {last + 1} levels"
        )
    used = {f"level {level}": per_level[level] for level in attention_levels}
    used["middle"] = p.integer("transformer_depth_middle", per_level[-1])
    if len(set(used.values())) != 1:
        raise ConfigError(
            f"{p.where('transformer_depth')}: the transformers have depths {used}; svd_core's "
            "UNetConfig has one transformer_depth for all"
        )

    unet = dict(
        in_channels=p.integer("in_channels"),
        out_channels=p.integer("out_channels"),
        model_channels=model_channels,
        channel_mult=channel_mult,
        num_res_blocks=p.integer("num_res_blocks"),
        attention_levels=attention_levels,
        head_channels=head_channels,
        transformer_depth=used["middle"],
        context_dim=p.integer("context_dim"),
        temporal_kernel_size=_temporal_kernel(p, 3),
        merge_strategy=p.get("merge_strategy", "fixed"),
        merge_factor=p.number("merge_factor", 0.5),
        max_time_embed_period=p.integer("max_ddpm_temb_period", 10000),
    )
    adm_in_channels = p.integer("adm_in_channels", None)
    if adm_in_channels is None:
        raise ConfigError(
            f"{p.where('adm_in_channels')} is missing; num_classes 'sequential' needs it"
        )
    return unet, adm_in_channels


def _sgm_conditioner(
    p: _SgmParams,
) -> tuple[int, tuple[Any, str], list[tuple[str, dict, str]]]:
    """From GeneralConditioner's params: the added-condition width, the open_clip architecture
    (and its path), and the ddconfig of the autoencoder that encodes the conditioning image."""
    entries = p.get("emb_models")
    where = p.where("emb_models")
    found = tuple(
        (e.get("input_key"), e.get("target")) if isinstance(e, dict) else (None, None)
        for e in (entries if isinstance(entries, list) else [])
    )
    if found != _SVD_EMBEDDERS:
        shown = [f"{key} ({_class_name(target)})" for key, target in found]
        expected = [f"{key} ({_class_name(target)})" for key, target in _SVD_EMBEDDERS]
        raise ConfigError(
            f"{where} has the embedders {shown}; svd_core's model takes exactly {expected}, in this "
            "order (it fixes the added-condition vector and the checkpoint's embedder prefixes)"
        )
    clip, fps, motion, latent, augmentation = (
        _SgmParams.of(entry, f"{where}[{i}]", (target,))
        for i, (entry, (_, target)) in enumerate(zip(entries, _SVD_EMBEDDERS, strict=True))
    )
    one_image = "one conditioning image"
    clip.expect("n_cond_frames", _REQUIRED, (1,), one_image)
    tower = clip.sub("open_clip_embedding_config")
    tower.expect(
        "antialias", True, (True,), "the CLIP resize blurs before it shrinks, as sgm's does"
    )
    for key in ("unsqueeze_dim", "repeat_to_max_len", "output_tokens"):
        tower.expect(key, False, (False,), "the image embedding is one vector")
    tower.expect("num_image_crops", 0, (0,), one_image)
    arch = (tower.get("arch", VIT_H_14), tower.where("arch"))

    widths = {e.where("outdim"): e.integer("outdim") for e in (fps, motion, augmentation)}
    if len(set(widths.values())) != 1:
        raise ConfigError(
            f"the added conditions have different widths {widths}; svd_core embeds fps_id, "
            "motion_bucket_id and cond_aug at one width (UNetConfig.addition_embed_dim)"
        )

    latent.expect("n_cond_frames", _REQUIRED, (1,), one_image)
    latent.expect("is_ae", False, (True,), "the image is encoded by encoder, quant_conv, mode")
    latent.expect("scale_factor", 1.0, (1.0,), "the conditioning latent is not scaled")
    latent.expect(
        "sigma_sampler_config",
        None,
        (None,),
        "svd_core adds the cond_aug noise to the image itself",
    )
    latent.expect("sigma_cond_config", None, (None,), "the embedder returns the latent alone")
    autoencoder = latent.sub("encoder_config")
    ddconfig = _sgm_autoencoder_ddconfig(autoencoder)
    sizes = _sgm_ddconfig(ddconfig, encoder=True, decoder=False)
    return next(iter(widths.values())), arch, [(ddconfig.path, sizes, "encoder")]


def _sgm_autoencoder_ddconfig(p: _SgmParams) -> _SgmParams:
    """The ddconfig of an sgm AutoencoderKL(ModeOnly), whose quant convs must keep the latent width."""
    ddconfig = _SgmParams(p.get("ddconfig"), p.where("ddconfig"), ENCODER)
    embed_dim, z_channels = p.integer("embed_dim"), ddconfig.integer("z_channels")
    if embed_dim != z_channels:
        raise ConfigError(
            f"{p.where('embed_dim')} is {embed_dim} but z_channels is {z_channels}; svd_core's "
            "quant_conv and post_quant_conv keep the latent width"
        )
    return ddconfig


def _sgm_ddconfig(p: _SgmParams, encoder: bool, decoder: bool) -> dict[str, Any]:
    """The sizes of one sgm ddconfig (Encoder and/or Decoder params), by sgm name."""
    sizes = {
        "ch": p.integer("ch"),
        "ch_mult": p.integers("ch_mult", (1, 2, 4, 8)),
        "num_res_blocks": p.integer("num_res_blocks"),
        "z_channels": p.integer("z_channels"),
        "in_channels": p.integer("in_channels"),
        "out_ch": p.integer("out_ch"),
    }
    p.expect("resamp_with_conv", True, (True,), "the levels resample with convolutions")
    p.expect("use_linear_attn", False, (False,), "the middle block's attention is softmax")
    p.expect("attn_type", "vanilla", ("vanilla", "vanilla-xformers"), "both are the same attention")
    # sgm adds attention to a level whose resolution (from `resolution`) is in attn_resolutions.
    levels, resolution = len(sizes["ch_mult"]), p.integer("resolution")
    level_resolutions = set()
    if encoder:
        p.expect(
            "double_z", True, (True,), "the encoder gives the posterior's mean and log-variance"
        )
        level_resolutions |= {resolution // 2**i for i in range(levels)}
    if decoder:
        p.expect("give_pre_end", False, (False,), "the decoder ends with norm, SiLU, conv_out")
        p.expect("tanh_out", False, (False,), "the decoder output is not squashed")
        level_resolutions |= {resolution // 2 ** (levels - 1) * 2**i for i in range(levels)}
    inside = sorted(level_resolutions & set(p.integers("attn_resolutions")))
    if inside:
        raise ConfigError(
            f"{p.where('attn_resolutions')} puts attention inside the levels (resolution "
            f"{inside}); svd_core's VAE has attention only in its middle block"
        )
    return sizes


def _sgm_vae(p: _SgmParams) -> tuple[dict[str, Any], list[tuple[str, dict, str]]]:
    """VAEConfig fields of the first stage's decoder, and its ddconfigs as (path, sizes, role)."""
    if p.target == AUTOENCODER_KL:
        # svd*_image_decoder.yaml: one ddconfig for the encoder and the plain 2D Decoder.
        ddconfig = _sgm_autoencoder_ddconfig(p)
        sizes = _sgm_ddconfig(ddconfig, encoder=True, decoder=True)
        return dict(temporal_decoder=False), [(ddconfig.path, sizes, "encoder and decoder")]
    # svd.yaml: AutoencodingEngine with an Encoder and a VideoDecoder, and no quant convs.
    encoder = p.sub("encoder_config")
    decoder = p.sub("decoder_config")
    decoder.expect("merge_strategy", "learned", ("learned",), "the blends are sigmoid(mix_factor)")
    decoder.expect(
        "time_mode", "conv-only", ("conv-only",), "temporal layers in res blocks and conv_out only"
    )
    fields = dict(
        temporal_decoder=True,
        temporal_kernel_size=_temporal_kernel(decoder, 3),
        merge_factor=decoder.number("alpha", 0.0),
    )
    return fields, [
        (encoder.path, _sgm_ddconfig(encoder, encoder=True, decoder=False), "encoder"),
        (decoder.path, _sgm_ddconfig(decoder, encoder=False, decoder=True), "decoder"),
    ]


def _vae_sizes(ddconfigs: list[tuple[str, dict, str]]) -> dict[str, Any]:
    """The VAEConfig sizes all the autoencoder configs agree on.

    svd_core builds one VAE: the encoder of the conditioning autoencoder and the first stage's
    decoder (and writes the encoder again as the first stage's when saving), so their widths must
    match. in_channels matters for encoders, out_ch for the decoder.
    """
    sizes: dict[str, tuple[Any, str]] = {}  # sgm name -> (value, where it was first read)
    for path, values, role in ddconfigs:
        for key, value in values.items():
            if (key == "in_channels" and "encoder" not in role) or (
                key == "out_ch" and "decoder" not in role
            ):
                continue  # sgm ignores it in this role
            first, first_path = sizes.setdefault(key, (value, path))
            if value != first:
                raise ConfigError(
                    f"the autoencoder configs disagree: {path}.{key} is {value!r} but "
                    f"{first_path}.{key} is {first!r}; svd_core builds one VAE from them"
                )
    return {_DDCONFIG_TO_VAE[key]: value for key, (value, _) in sizes.items()}


def _sgm_image_encoder(arch: Any, extension: Any, where: str) -> ImageEncoderConfig:
    """ImageEncoderConfig for the open_clip architecture, or the sizes of the svd_core section."""
    given = None
    if extension is not None:
        section = extension.get("image_encoder") if isinstance(extension, dict) else None
        if not isinstance(section, dict):
            raise ConfigError(
                f"svd_core must be a mapping with an image_encoder mapping, got {extension!r}"
            )
        given = _dataclass_from_dict(ImageEncoderConfig, section, "svd_core.image_encoder")
    if arch == VIT_H_14:
        if given is not None and given != ImageEncoderConfig():
            raise ConfigError(
                f"{where} is {VIT_H_14!r}, but svd_core.image_encoder gives other sizes; "
                "name the open_clip architecture those sizes belong to"
            )
        return ImageEncoderConfig()
    if given is None:
        raise ConfigError(
            f"{where} is {arch!r}; svd_core knows the sizes of {VIT_H_14!r} (SVD's image encoder) "
            "only: give the sizes of this vision tower in a top-level section "
            "`svd_core: {image_encoder: {image_size: ..., patch_size: ..., width: ..., layers: ..., "
            "heads: ..., mlp_dim: ..., embed_dim: ...}}`"
        )
    return given


def _sgm_sampling(engine: _SgmParams, version: str) -> dict[str, Any]:
    """SVDConfig's sampling fields from the sampler config, frames and steps as sgm picks them."""
    default = SVDConfig()
    num_frames, num_steps = SGM_VERSION_DEFAULTS.get(
        version, (default.num_frames, default.num_steps)
    )
    if engine.get("sampler_config", None) is None:
        return dict(num_frames=num_frames, num_steps=num_steps)  # SVDConfig's other defaults
    sampler = engine.sub("sampler_config")
    sampler.expect("s_churn", 0.0, (0.0,), "the official Euler steps add no noise")
    discretization = sampler.sub("discretization_config")
    discretization.expect("rho", 7.0, (7.0,), "SVDConfig keeps EDM's rho of 7")
    if sampler.get("guider_config", None) is None:
        raise ConfigError(
            f"{sampler.where('guider_config')} is missing: sgm would then sample without "
            "classifier-free guidance (IdentityGuider), which SVDConfig cannot express"
        )
    guider = sampler.sub("guider_config")
    return dict(
        num_frames=guider.integer("num_frames", None) or num_frames,
        num_steps=sampler.integer("num_steps", None) or num_steps,
        min_guidance=guider.number("min_scale", 1.0),
        max_guidance=guider.number("max_scale"),
        sigma_min=discretization.number("sigma_min", 0.002),
        sigma_max=discretization.number("sigma_max", 80.0),
    )
