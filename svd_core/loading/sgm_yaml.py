"""Reading an official sgm YAML config (Stability-AI/generative-models) into an SVDConfig.

sgm describes the model as a tree of `target:` classes and their `params`. `read_sgm_yaml` walks the
tree of SVD's configs (scripts/sampling/configs/svd*.yaml) as sgm's constructors would: it checks
every `target:`, reads by name each field that shapes what svd_core builds or samples (a missing one
takes the default of sgm's constructor), checks the fields that svd_core builds one way only
(`ONE_WAY`), and accepts the fields that change nothing (`NO_EFFECT`). Anything else is a
ConfigError naming its dotted path: a field nobody reads (a typo, or an sgm option svd_core does not
know), a class svd_core does not read, a value it cannot build.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ..config import (
    MERGE_STRATEGIES,
    ConfigError,
    ImageEncoderConfig,
    SVDConfig,
    UNetConfig,
    VAEConfig,
)


def read_sgm_yaml(path: str | Path, name: str | None = None) -> SVDConfig:
    """The SVDConfig of an official sgm inference config, or of a variant of it with other sizes.

    It reads the VideoUNet's sizes (attention_resolutions [4, 2, 1] become attention_levels
    (0, 1, 2)), the autoencoders' ddconfig, the first stage's decoder (VideoDecoder: the temporal
    decoder; AutoencoderKL: the plain image decoder), the widths of the conditioning embedders, the
    scale_factor, the EDM sigmas and the guidance scales. What the yaml does not hold:
    - frames and steps: picked by the file's stem as the official sampling script picks them by
      version (`FRAMES_AND_STEPS`; SVDConfig's defaults for other stems), unless the yaml sets
      `guider_config.params.num_frames` or `sampler_config.params.num_steps`;
    - the vision tower's sizes: the yaml names an open_clip architecture, and SVD's "ViT-H-14" is
      ImageEncoderConfig's default. For another tower give its sizes in a top-level section, which
      sgm ignores: `svd_core: {image_encoder: {width: 64, layers: 2, ...}}` (ImageEncoderConfig
      fields);
    - fps, motion bucket, cond_aug, resolution and decode chunk: SVDConfig's defaults, which are
      the official script's.

    name: the config's name; default the file's stem (`svd.yaml` -> "svd"). Errors are
    ConfigErrors that name the file and the dotted path of the field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sgm yaml config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{str(path)!r} is not valid YAML: {error}") from None
    try:
        if not isinstance(data, dict) or "model" not in data:
            raise ConfigError(
                "the top level must be a mapping with a `model:` entry (sgm's layout)"
            )
        root = _Params(data, "", "sgm's layout")
        config = _read_model(root, name or path.stem, version=path.stem)
        _raise_unknown(root.unknown())  # every other field was read, or is in NO_EFFECT
        return config
    except ConfigError as error:
        raise ConfigError(f"sgm yaml {str(path)!r}: {error}") from None


# ---- what an SVD config holds ---------------------------------------------------------------------

# The sgm classes svd_core reads, each in the place SVD's configs put it.
DIFFUSION_ENGINE = "sgm.models.diffusion.DiffusionEngine"
OPENAI_WRAPPER = "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper"  # DiffusionEngine's default
VIDEO_UNET = "sgm.modules.diffusionmodules.video_model.VideoUNet"
DENOISER = "sgm.modules.diffusionmodules.denoiser.Denoiser"
V_SCALING_EDM = "sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise"
CONDITIONERS = ("sgm.modules.GeneralConditioner", "sgm.modules.encoders.modules.GeneralConditioner")
CLIP_EMBEDDER = "sgm.modules.encoders.modules.FrozenOpenCLIPImagePredictionEmbedder"
CLIP_TOWER = "sgm.modules.encoders.modules.FrozenOpenCLIPImageEmbedder"
TIMESTEP_EMBEDDER = "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"
LATENT_EMBEDDER = "sgm.modules.encoders.modules.VideoPredictionEmbedderWithEncoder"
AUTOENCODER_MODE_ONLY = "sgm.models.autoencoder.AutoencoderKLModeOnly"
AUTOENCODER_KL = "sgm.models.autoencoder.AutoencoderKL"  # the image-decoder configs' first stage
AUTOENCODING_ENGINE = "sgm.models.autoencoder.AutoencodingEngine"
ENCODER = "sgm.modules.diffusionmodules.model.Encoder"
VIDEO_DECODER = "sgm.modules.autoencoding.temporal_ae.VideoDecoder"
EULER_EDM_SAMPLER = "sgm.modules.diffusionmodules.sampling.EulerEDMSampler"
EDM_DISCRETIZATION = "sgm.modules.diffusionmodules.discretizer.EDMDiscretization"
LINEAR_GUIDER = "sgm.modules.diffusionmodules.guiders.LinearPredictionGuider"
DDCONFIG = "ddconfig"  # the sizes of an autoencoder's Encoder and Decoder, a plain mapping

# The conditioner of every SVD config, in order: the order fixes the layout of the added-condition
# vector (fps_id, motion_bucket_id, cond_aug) and the checkpoint's conditioner.embedders.N prefixes.
_SVD_EMBEDDERS = (
    ("cond_frames_without_noise", CLIP_EMBEDDER),
    ("fps_id", TIMESTEP_EMBEDDER),
    ("motion_bucket_id", TIMESTEP_EMBEDDER),
    ("cond_frames", LATENT_EMBEDDER),
    ("cond_aug", TIMESTEP_EMBEDDER),
)

# sgm classes (or families of them, by prefix) that users try in these places, and what to do.
_INSTEAD = {
    "sgm.modules.diffusionmodules.model.Decoder": "a plain Decoder under AutoencodingEngine has no "
    "post_quant_conv, unlike svd_core's image decoder, which is sgm's AutoencoderKL of "
    "svd_image_decoder.yaml",
    "sgm.modules.diffusionmodules.sampling.": "SVDConfig holds no sampler: svd_core samples with "
    "Euler (EulerEDMSampler, as the official configs do); choose another when sampling: "
    "SVDPipeline(...)(sampler=...) or svd-core generate --sampler",
    "sgm.modules.diffusionmodules.guiders.": "SVDConfig holds the linear guidance of "
    "LinearPredictionGuider; choose another schedule when sampling: "
    "SVDPipeline(...)(guidance='triangle' or 'constant')",
}

_REQUIRED = object()  # marks an sgm field without a default
# In every ddconfig, also where sgm's Encoder or Decoder takes a field and ignores it.
_DDCONFIG_ONE_WAY = (
    ("attn_resolutions", _REQUIRED, ([],), "svd_core's VAE has no attention inside the levels"),
    ("resamp_with_conv", True, (True,), "the levels resample with convolutions"),
    ("use_linear_attn", False, (False,), "the middle block's attention is softmax"),
    ("attn_type", "vanilla", ("vanilla", "vanilla-xformers"), "both are the same attention"),
    ("double_z", True, (True,), "the encoder gives the posterior's mean and log-variance"),
    ("give_pre_end", False, (False,), "the decoder ends with norm, SiLU, conv_out"),
    ("tanh_out", False, (False,), "the decoder output is not squashed"),
)
_EMBEDDING = "the image embedding is one vector"
_ONE_IMAGE = "one conditioning image"
# The fields svd_core builds one way only, checked when their class is read:
# class -> (field, sgm's default, the values svd_core builds, why).
ONE_WAY: dict[str, tuple[tuple[str, Any, tuple, str], ...]] = {
    DIFFUSION_ENGINE: (
        ("network_wrapper", None, (None, OPENAI_WRAPPER), "svd_core calls its UNet as sgm does"),
    ),
    VIDEO_UNET: (
        ("num_classes", None, ("sequential",), "the added-condition vector goes through label_emb"),
        ("use_linear_in_transformer", False, (True,), "the transformers project with Linear"),
        ("use_spatial_context", False, (True,), "the temporal transformers cross-attend the image"),
        ("extra_ff_mix_layer", False, (True,), "the temporal transformers start with feed-forward"),
        ("disable_temporal_crossattention", False, (False,), "the temporal ones cross-attend"),
        ("spatial_transformer_attn_type", "softmax", ("softmax", "softmax-xformers"), "same math"),
        ("merge_strategy", "fixed", MERGE_STRATEGIES, "the strategies of sgm's AlphaBlender"),
        ("dims", 2, (2,), "the UNet is 2D per frame"),
        ("conv_resample", True, (True,), "the levels resample with convolutions"),
        ("use_scale_shift_norm", False, (False,), "the res blocks add the embedding"),
        ("resblock_updown", False, (False,), "the levels resample with their own convolutions"),
        ("time_downup", False, (False,), "the frame count stays the same through the UNet"),
    ),
    CLIP_EMBEDDER: (("n_cond_frames", _REQUIRED, (1,), _ONE_IMAGE),),
    CLIP_TOWER: (
        ("antialias", True, (True,), "the CLIP resize blurs before it shrinks, as sgm's does"),
        ("unsqueeze_dim", False, (False,), _EMBEDDING),
        ("repeat_to_max_len", False, (False,), _EMBEDDING),
        ("output_tokens", False, (False,), _EMBEDDING),
        ("num_image_crops", 0, (0,), _ONE_IMAGE),
    ),
    LATENT_EMBEDDER: (
        ("n_cond_frames", _REQUIRED, (1,), _ONE_IMAGE),
        ("is_ae", False, (True,), "the image is encoded by encoder, quant_conv, mode"),
        ("scale_factor", 1.0, (1.0,), "the conditioning latent is not scaled"),
        ("sigma_sampler_config", None, (None,), "svd_core adds the cond_aug noise to the image"),
        ("sigma_cond_config", None, (None,), "the embedder returns the latent alone"),
    ),
    DDCONFIG: _DDCONFIG_ONE_WAY,
    ENCODER: _DDCONFIG_ONE_WAY,
    VIDEO_DECODER: (
        *_DDCONFIG_ONE_WAY,
        ("merge_strategy", "learned", ("learned",), "the blends are sigmoid(mix_factor)"),
        ("time_mode", "conv-only", ("conv-only",), "temporal layers in res blocks and conv_out"),
    ),
    EULER_EDM_SAMPLER: (("s_churn", 0.0, (0.0,), "the official Euler steps add no noise"),),
    EDM_DISCRETIZATION: (("rho", 7.0, (7.0,), "SVDConfig keeps EDM's rho of 7"),),
}

# The fields that change nothing svd_core builds or samples, by why. Each field that does is read
# by name at its class, so one list serves the whole tree; these are accepted with any value.
NO_EFFECT: dict[str, list[str]] = {
    "training only (data and trainer sections, losses, optimizers, EMA, condition dropout)": (
        "data lightning optimizer_config scheduler_config loss_fn_config loss_config lossconfig "
        "use_ema ema_decay_rate ema_decay input_key log_keys no_cond_log monitor lr_g_factor "
        "trainable_ae_params ae_optimizer_args trainable_disc_params disc_optimizer_args "
        "disc_start_iter diff_boost_factor additional_decode_keys dropout is_trainable freeze "
        "ucg_rate legacy_ucg_value"
    ).split(),
    "where sgm loads weights from; svd_core.load takes the checkpoint": (
        "ckpt_path ckpt_engine version"
    ).split(),
    "placement, autocast, compilation, checkpointing and batching switches; the same result": (
        "device init_device disable_first_stage_autocast disable_encoder_autocast compile_model "
        "use_checkpoint en_and_decode_n_samples_a_time max_batch_size verbose"
    ).split(),
    "repeats the condition over the frames, as svd_core does itself": ["n_copies"],
    # num_heads_upsample: VideoUNet stores it, never uses it; time_context_dim: replaced by
    # context_dim under use_spatial_context; max_length: only with repeat_to_max_len or
    # num_image_crops; resolution: places the ddconfig's attn_resolutions; s_tmin, s_tmax,
    # s_noise: only with s_churn > 0; regularizer_config: acts in the first stage's encode(), which
    # sampling never calls; additional_cond_keys: SVD's conditions are always all guided.
    "inert at the values svd_core requires": (
        "num_heads_upsample time_context_dim max_length resolution s_tmin s_tmax s_noise "
        "regularizer_config additional_cond_keys"
    ).split(),
}
_NO_EFFECT = {field for fields in NO_EFFECT.values() for field in fields}

# sgm ddconfig field -> VAEConfig field; every ddconfig of the file must agree on them.
_DDCONFIG_SIZES = {
    "ch": "base_channels",
    "ch_mult": "channel_mult",
    "num_res_blocks": "num_res_blocks",
    "z_channels": "latent_channels",
    "in_channels": "in_channels",
    "out_ch": "out_channels",
}
# scripts/sampling/simple_video_sample.py picks frames and steps by version (the yaml has neither);
# svd_xt_1_1.yaml is svd_xt.yaml with other weights, and the scripts that run it use svd_xt's.
FRAMES_AND_STEPS = {
    "svd": (14, 25),
    "svd_image_decoder": (14, 25),
    "svd_xt": (25, 30),
    "svd_xt_1_1": (25, 30),
    "svd_xt_image_decoder": (25, 30),
}
VIT_H_14 = "ViT-H-14"  # open_clip's name for SVD's image encoder, ImageEncoderConfig's defaults


# ---- reading the tree -----------------------------------------------------------------------------


class _Params:
    """The `params` of one sgm class (or a plain mapping), read as sgm's constructor reads them: a
    missing field takes sgm's default. The class's ONE_WAY fields are checked on creation. It
    remembers the fields read and the mappings opened inside, so that `unknown` can name every
    field nobody read."""

    def __init__(self, values: Any, path: str, owner: str, target: str | None = None) -> None:
        if values is None:
            values = {}  # `params:` may be absent or empty
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must be a mapping, got {values!r}")
        self.values, self.path, self.owner, self.target = values, path, owner, target
        self.read: set[str] = set()
        self.inner: list[_Params] = []
        for key, default, allowed, why in ONE_WAY.get(target, ()):
            value = self.get(key, default)
            if value not in allowed:
                given = "" if key in values else " (not given: sgm's default)"
                shown = " or ".join(repr(a) for a in allowed)
                raise ConfigError(
                    f"{self.where(key)} is {value!r}{given}; svd_core builds only {shown}: {why}"
                )

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        self.read.add(key)
        if key in self.values:
            return self.values[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self.where(key)} is missing; {self.owner} requires it")
        return default

    def integer(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.get(key, default)
        if type(value) is not int and not (value is None and default is None):  # True: no width
            raise ConfigError(f"{self.where(key)} must be an integer, got {value!r}")
        return value

    def number(self, key: str, default: Any = _REQUIRED) -> float:
        value = self.get(key, default)
        if type(value) not in (int, float):
            raise ConfigError(f"{self.where(key)} must be a number, got {value!r}")
        return float(value)

    def integers(self, key: str, default: Any = _REQUIRED) -> tuple[int, ...]:
        value = self.get(key, default)
        if not isinstance(value, (list, tuple)) or any(type(v) is not int for v in value):
            raise ConfigError(f"{self.where(key)} must be a list of integers, got {value!r}")
        return tuple(value)

    def numbers(self, key: str, default: Any = _REQUIRED) -> tuple[float, ...]:
        value = self.get(key, default)
        if not isinstance(value, (list, tuple)) or any(type(v) not in (int, float) for v in value):
            raise ConfigError(f"{self.where(key)} must be a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)

    def mapping(self, key: str, owner: str | None = None, target: str | None = None) -> _Params:
        """The plain mapping in field `key` (a ddconfig, the svd_core section)."""
        self.inner.append(_Params(self.get(key), self.where(key), owner or self.owner, target))
        return self.inner[-1]

    def sub(self, key: str, *targets: str) -> _Params:
        """The params of the {target, params} config in field `key`; its target is one of these."""
        return self.open(self.get(key), self.where(key), targets)

    def open(self, node: Any, path: str, targets: tuple[str, ...]) -> _Params:
        """The params of the {target, params} config `node` at `path` (a field or a list entry)."""
        if not isinstance(node, dict):
            raise ConfigError(f"{path} must be a mapping with a target, got {node!r}")
        # input_key: a conditioner entry's, read with the order of the embedders
        _raise_unknown(
            [f"{path}.{k}" for k in node if not _known(k, "target", "params", "input_key")]
        )
        target = node.get("target")
        if target not in targets:
            instead = "".join(
                f"; {why}" for pre, why in _INSTEAD.items() if str(target).startswith(pre)
            )
            raise ConfigError(
                f"{path}.target is {target!r}, a class svd_core does not read in this place: here "
                f"svd_core reads {' or '.join(targets)}{instead}"
            )
        owner = f"sgm's {target.rsplit('.')[-1]}"
        self.inner.append(_Params(node.get("params"), f"{path}.params", owner, target))
        return self.inner[-1]

    def unknown(self) -> list[str]:
        """The dotted paths of the fields here and inside that nobody read and NO_EFFECT lacks."""
        mine = [self.where(key) for key in self.values if not _known(key, *self.read)]
        return mine + [path for inner in self.inner for path in inner.unknown()]


def _known(key: str, *read: str) -> bool:
    return key in read or key in _NO_EFFECT


def _raise_unknown(paths: list[str]) -> None:
    if paths:
        shown = ", ".join(paths[:5]) + ("" if len(paths) <= 5 else f", ... ({len(paths)} in all)")
        raise ConfigError(
            f"unknown fields {shown}; check their spelling: svd_core reads the fields of the sgm "
            "classes of SVD's configs and accepts those in svd_core.loading.sgm_yaml.NO_EFFECT"
        )


def _read_model(root: _Params, name: str, version: str) -> SVDConfig:
    engine = root.sub("model", DIFFUSION_ENGINE)
    # v-prediction with EDM preconditioning, c_noise = 0.25 ln(sigma)
    engine.sub("denoiser_config", DENOISER).sub("scaling_config", V_SCALING_EDM)
    network = engine.sub("network_config", VIDEO_UNET)
    unet, adm_in_channels = _unet(network)
    if engine.get("conditioner_config", None) is None:
        raise ConfigError(
            f"{engine.where('conditioner_config')} is missing: SVD is conditioned on an image, "
            "its fps, motion bucket and noise augmentation"
        )
    addition_dim, arch, cond_autoencoder = _conditioner(
        engine.sub("conditioner_config", *CONDITIONERS)
    )
    if adm_in_channels != 3 * addition_dim:
        raise ConfigError(
            f"{network.where('adm_in_channels')} is {adm_in_channels}, but the fps_id, "
            f"motion_bucket_id and cond_aug embedders give 3 x {addition_dim} = {3 * addition_dim}"
        )
    vae = _vae(
        cond_autoencoder, engine.sub("first_stage_config", AUTOENCODING_ENGINE, AUTOENCODER_KL)
    )
    image_encoder = _image_encoder(root, *arch)
    if image_encoder.embed_dim != unet["context_dim"]:
        raise ConfigError(
            f"{network.where('context_dim')} is {unet['context_dim']}, but the image encoder "
            f"({arch[0]}) embeds to {image_encoder.embed_dim}"
        )
    return SVDConfig(
        name=name,
        unet=UNetConfig(**unet, addition_embed_dim=addition_dim),
        vae=VAEConfig(**vae, scaling_factor=engine.number("scale_factor", 1.0)),
        image_encoder=image_encoder,
        **_sampling(engine, version),
    )


def _unet(p: _Params) -> tuple[dict[str, Any], int]:
    """UNetConfig's fields (less addition_embed_dim) and adm_in_channels from VideoUNet's params."""
    model_channels = p.integer("model_channels")
    channel_mult = p.integers("channel_mult", (1, 2, 4, 8))
    last = len(channel_mult) - 1
    # sgm puts transformers where the downsampling factor 2**level is in attention_resolutions.
    resolutions = p.integers("attention_resolutions")
    attention_levels = tuple(level for level in range(last + 1) if 2**level in resolutions)
    # The middle block always has a transformer, at the last level's width.
    widths = sorted({model_channels * channel_mult[level] for level in (*attention_levels, last)})

    head_channels, num_heads = p.integer("num_head_channels", -1), p.integer("num_heads", -1)
    if head_channels == -1:
        if num_heads == -1:
            raise ConfigError(f"{p.path}: give num_head_channels or num_heads, as sgm requires")
        # A fixed head count: one head width only if every transformer is as wide.
        if len(widths) != 1 or widths[0] % num_heads:
            raise ConfigError(
                f"{p.where('num_heads')} is {num_heads} at transformer widths {widths}; "
                "svd_core's UNetConfig fixes the head width (num_head_channels) instead"
            )
        head_channels = widths[0] // num_heads

    # transformer_depth: one for all levels or one per level; the middle's defaults to the last.
    if isinstance(p.get("transformer_depth", 1), list):
        per_level = p.integers("transformer_depth")
    else:
        per_level = (p.integer("transformer_depth", 1),) * (last + 1)
    if len(per_level) != last + 1:
        raise ConfigError(
            f"{p.where('transformer_depth')} has {len(per_level)} entries for {last + 1} levels"
        )
    depths = {f"level {level}": per_level[level] for level in attention_levels}
    depths["middle"] = p.integer("transformer_depth_middle", per_level[-1])
    if len(set(depths.values())) != 1:
        raise ConfigError(
            f"{p.where('transformer_depth')}: the transformers have depths {depths}; svd_core's "
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
        transformer_depth=depths["middle"],
        context_dim=p.integer("context_dim"),
        temporal_kernel_size=_temporal_kernel(p),
        merge_strategy=p.get("merge_strategy", "fixed"),
        merge_factor=p.number("merge_factor", 0.5),
        max_time_embed_period=p.integer("max_ddpm_temb_period", 10000),
    )
    return unet, p.integer("adm_in_channels")  # num_classes "sequential" needs it


def _temporal_kernel(p: _Params) -> int:
    """The frames a temporal convolution spans, from sgm's `video_kernel_size`."""
    value, where = p.get("video_kernel_size", 3), p.where("video_kernel_size")
    if isinstance(value, list) and value[1:] == [1, 1] and type(value[0]) is int:
        return value[0]
    if type(value) is not int:
        raise ConfigError(f"{where} must be [k, 1, 1], got {value!r}")
    if value != 1:  # sgm passes an integer k to Conv3d: a k x k x k kernel
        given = "" if "video_kernel_size" in p.values else " (not given: sgm's default)"
        raise ConfigError(
            f"{where} is {value}{given}, which makes sgm build {value}x{value}x{value} "
            "convolutions over (frames, height, width); svd_core's temporal ones are k x 1 x 1, "
            f"as [{value}, 1, 1]"
        )
    return 1


def _conditioner(p: _Params) -> tuple[int, tuple[Any, str], _Params]:
    """From GeneralConditioner's params: the added-condition width, the open_clip architecture
    (and its path), and the autoencoder that encodes the conditioning image."""
    entries, where = p.get("emb_models"), p.where("emb_models")
    found = tuple(
        (e.get("input_key"), e.get("target")) if isinstance(e, dict) else (None, None)
        for e in (entries if isinstance(entries, list) else [])
    )
    if found != _SVD_EMBEDDERS:
        shown = [f"{key} ({str(target).rsplit('.')[-1]})" for key, target in found]
        expected = [f"{key} ({target.rsplit('.')[-1]})" for key, target in _SVD_EMBEDDERS]
        raise ConfigError(
            f"{where} has the embedders {shown}; svd_core's model takes exactly {expected}, in "
            "this order (it fixes the added-condition vector and the checkpoint's embedder "
            "prefixes)"
        )
    clip, fps, motion, latent, augmentation = (
        p.open(entry, f"{where}[{i}]", (target,))
        for i, (entry, (_, target)) in enumerate(zip(entries, _SVD_EMBEDDERS, strict=True))
    )
    tower = clip.sub("open_clip_embedding_config", CLIP_TOWER)
    widths = {e.where("outdim"): e.integer("outdim") for e in (fps, motion, augmentation)}
    if len(set(widths.values())) != 1:
        raise ConfigError(
            f"the added conditions have different widths {widths}; svd_core embeds fps_id, "
            "motion_bucket_id and cond_aug at one width (UNetConfig.addition_embed_dim)"
        )
    arch = (tower.get("arch", VIT_H_14), tower.where("arch"))
    return widths[fps.where("outdim")], arch, latent.sub("encoder_config", AUTOENCODER_MODE_ONLY)


def _vae(cond_autoencoder: _Params, first_stage: _Params) -> dict[str, Any]:
    """VAEConfig's fields (less scaling_factor) from the autoencoder that encodes the conditioning
    image and the first stage, whose decoder svd_core builds.

    svd_core builds one VAE: the encoder of the conditioning autoencoder and the first stage's
    decoder (and writes the encoder again as the first stage's when saving), so all their
    ddconfigs must agree on the sizes.
    """
    ddconfigs = [_ddconfig(cond_autoencoder)]
    if first_stage.target == AUTOENCODER_KL:
        # svd*_image_decoder.yaml: one ddconfig for the encoder and the plain 2D Decoder.
        fields = dict(temporal_decoder=False)
        ddconfigs.append(_ddconfig(first_stage))
    else:  # svd.yaml: AutoencodingEngine with an Encoder and a VideoDecoder, and no quant convs
        decoder = first_stage.sub("decoder_config", VIDEO_DECODER)
        ddconfigs += [first_stage.sub("encoder_config", ENCODER), decoder]
        fields = dict(
            temporal_decoder=True,
            temporal_kernel_size=_temporal_kernel(decoder),
            merge_factor=decoder.number("alpha", 0.0),
        )
    first: dict[str, tuple[Any, str]] = {}  # sgm name -> (value, the ddconfig that gave it first)
    for p in ddconfigs:
        for key in _DDCONFIG_SIZES:
            value = p.integers(key, (1, 2, 4, 8)) if key == "ch_mult" else p.integer(key)
            value_before, path = first.setdefault(key, (value, p.path))
            if value != value_before:
                raise ConfigError(
                    f"the autoencoder configs disagree: {p.where(key)} is {value!r} but "
                    f"{path}.{key} is {value_before!r}; svd_core builds one VAE from them"
                )
    return fields | {_DDCONFIG_SIZES[key]: value for key, (value, _) in first.items()}


def _ddconfig(autoencoder: _Params) -> _Params:
    """The ddconfig of an sgm AutoencoderKL(ModeOnly), whose quant convs keep the latent width."""
    ddconfig = autoencoder.mapping("ddconfig", target=DDCONFIG)
    embed_dim, z_channels = autoencoder.integer("embed_dim"), ddconfig.integer("z_channels")
    if embed_dim != z_channels:
        raise ConfigError(
            f"{autoencoder.where('embed_dim')} is {embed_dim} but z_channels is {z_channels}; "
            "svd_core's quant_conv and post_quant_conv keep the latent width"
        )
    return ddconfig


def _image_encoder(root: _Params, arch: Any, where: str) -> ImageEncoderConfig:
    """ImageEncoderConfig for the open_clip architecture, or the sizes of the svd_core section."""
    given = None
    if root.get("svd_core", None) is not None:
        section = root.mapping("svd_core", "the svd_core section").mapping("image_encoder")
        # Each field is read as the type of its default: an integer, a number, a list of numbers.
        read = {int: section.integer, float: section.number, tuple: section.numbers}
        fields = dataclasses.fields(ImageEncoderConfig)
        given = ImageEncoderConfig(
            **{f.name: read[type(f.default)](f.name, f.default) for f in fields}
        )
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
            "only: give the sizes of this vision tower in a top-level section `svd_core: "
            "{image_encoder: {image_size: ..., patch_size: ..., width: ..., layers: ..., heads: "
            "..., mlp_dim: ..., embed_dim: ...}}`"
        )
    return given


def _sampling(engine: _Params, version: str) -> dict[str, Any]:
    """SVDConfig's sampling fields from the sampler config, frames and steps as sgm picks them."""
    default = SVDConfig()
    num_frames, num_steps = FRAMES_AND_STEPS.get(version, (default.num_frames, default.num_steps))
    if engine.get("sampler_config", None) is None:
        return dict(num_frames=num_frames, num_steps=num_steps)  # SVDConfig's other defaults
    sampler = engine.sub("sampler_config", EULER_EDM_SAMPLER)
    discretization = sampler.sub("discretization_config", EDM_DISCRETIZATION)
    if sampler.get("guider_config", None) is None:
        raise ConfigError(
            f"{sampler.where('guider_config')} is missing: sgm would then sample without "
            "classifier-free guidance (IdentityGuider), which SVDConfig cannot express"
        )
    guider = sampler.sub("guider_config", LINEAR_GUIDER)
    return dict(
        num_frames=guider.integer("num_frames", None) or num_frames,
        num_steps=sampler.integer("num_steps", None) or num_steps,
        min_guidance=guider.number("min_scale", 1.0),
        max_guidance=guider.number("max_scale"),
        sigma_min=discretization.number("sigma_min", 0.002),
        sigma_max=discretization.number("sigma_max", 80.0),
    )
