"""Key maps of the image encoder (svd_core.clip.ImageEncoder) and the transformers config bridge.

Three layouts of the same OpenCLIP ViT-H/14 vision tower:

- open_clip's `VisionTransformer` state dict (`conv1.weight`,
  `transformer.resblocks.0.attn.in_proj_weight`, `proj`, ...): `open_clip_visual_map`;
- the official single file, which stores that dict under
  `conditioner.embedders.0.open_clip.model.visual.` beside six leftovers of the text tower:
  `official_clip_map`;
- diffusers' `image_encoder/` folder, a transformers `CLIPVisionModelWithProjection` (q, k, v stored
  split, the projection as a Linear): `diffusers_clip_map`.
"""

from __future__ import annotations

from typing import Any

from ..config import ImageEncoderConfig
from .keymap import Cat, KeyMap, Source, Transpose

OFFICIAL_CLIP_PREFIX = "conditioner.embedders.0.open_clip.model."

# sgm builds the whole open_clip CLIP model and deletes only its text transformer, so the file keeps
# these text-side tensors; the image encoder never reads them.
OFFICIAL_CLIP_TEXT_LEFTOVERS = {
    "token_embedding.weight": "text token embedding of the deleted CLIP text tower; unused",
    "positional_embedding": "text position embedding (77 tokens) of the deleted text tower; unused",
    "ln_final.weight": "final LayerNorm of the deleted text tower; unused",
    "ln_final.bias": "final LayerNorm of the deleted text tower; unused",
    "text_projection": "text-to-joint-space projection of the deleted text tower; unused",
    "logit_scale": "CLIP contrastive temperature; only used to compare text and images, unused",
}

# transformers < 4.31 saved this constant index buffer in the state dict; it is arange(num_tokens).
TRANSFORMERS_IGNORED = {
    "vision_model.embeddings.position_ids": "constant arange index buffer (older transformers)",
}


def open_clip_visual_map(config: ImageEncoderConfig) -> KeyMap:
    """Our names -> open_clip `VisionTransformer` state-dict names."""
    entries: dict[str, Source] = {
        "patch_embed.weight": "conv1.weight",
        "class_token": "class_embedding",
        "position_embedding": "positional_embedding",
        "norm_pre.weight": "ln_pre.weight",
        "norm_pre.bias": "ln_pre.bias",
        "norm_post.weight": "ln_post.weight",
        "norm_post.bias": "ln_post.bias",
        "projection.weight": Transpose(
            "proj"
        ),  # open_clip computes pooled @ proj, proj (width, embed)
    }
    block_parts = {
        "attn_norm": "ln_1",
        "attn.qkv": "attn.in_proj",  # fused, as ours: in_proj_weight / in_proj_bias
        "attn.out": "attn.out_proj",
        "mlp_norm": "ln_2",
        "mlp.proj_in": "mlp.c_fc",
        "mlp.proj_out": "mlp.c_proj",
    }
    for i in range(config.layers):
        for ours, theirs in block_parts.items():
            for kind in ("weight", "bias"):
                if theirs == "attn.in_proj":
                    name = f"transformer.resblocks.{i}.attn.in_proj_{kind}"
                else:
                    name = f"transformer.resblocks.{i}.{theirs}.{kind}"
                entries[f"blocks.{i}.{ours}.{kind}"] = name
    return KeyMap("open_clip visual", entries)


def official_clip_map(config: ImageEncoderConfig) -> KeyMap:
    """Our names -> full names in the official single-file checkpoint, text leftovers ignored."""
    visual = open_clip_visual_map(config).with_prefix(theirs=OFFICIAL_CLIP_PREFIX + "visual.")
    ignored = {OFFICIAL_CLIP_PREFIX + key: why for key, why in OFFICIAL_CLIP_TEXT_LEFTOVERS.items()}
    return KeyMap("official", visual.entries, ignored)


def diffusers_clip_map(config: ImageEncoderConfig) -> KeyMap:
    """Our names -> transformers `CLIPVisionModelWithProjection` names (diffusers image_encoder/).

    The transformers model stores q, k, v split; ours is fused, so each is a Cat of three.
    """
    entries: dict[str, Source] = {
        "patch_embed.weight": "vision_model.embeddings.patch_embedding.weight",
        "class_token": "vision_model.embeddings.class_embedding",
        "position_embedding": "vision_model.embeddings.position_embedding.weight",
        "norm_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' spelling
        "norm_pre.bias": "vision_model.pre_layrnorm.bias",
        "norm_post.weight": "vision_model.post_layernorm.weight",
        "norm_post.bias": "vision_model.post_layernorm.bias",
        "projection.weight": "visual_projection.weight",
    }
    for i in range(config.layers):
        layer = f"vision_model.encoder.layers.{i}"
        for kind in ("weight", "bias"):
            entries[f"blocks.{i}.attn_norm.{kind}"] = f"{layer}.layer_norm1.{kind}"
            entries[f"blocks.{i}.attn.qkv.{kind}"] = Cat(
                *(f"{layer}.self_attn.{p}_proj.{kind}" for p in ("q", "k", "v"))
            )
            entries[f"blocks.{i}.attn.out.{kind}"] = f"{layer}.self_attn.out_proj.{kind}"
            entries[f"blocks.{i}.mlp_norm.{kind}"] = f"{layer}.layer_norm2.{kind}"
            entries[f"blocks.{i}.mlp.proj_in.{kind}"] = f"{layer}.mlp.fc1.{kind}"
            entries[f"blocks.{i}.mlp.proj_out.{kind}"] = f"{layer}.mlp.fc2.{kind}"
    return KeyMap("diffusers image_encoder", entries, TRANSFORMERS_IGNORED)


# ---- transformers config bridge --------------------------------------------------------------

# transformers' CLIPVisionConfig defaults: a key absent from config.json takes these values.
_TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# Keys that do not change the forward pass at inference (bookkeeping, init, dropout, dtype).
_TRANSFORMERS_HARMLESS = {
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
    "initializer_range", "initializer_factor", "attention_dropout", "dropout",
    "output_hidden_states", "output_attentions", "return_dict", "use_return_dict",
    "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "tie_word_embeddings", "name_or_path", "tf_legacy_loss", "use_bfloat16", "pruned_heads",
    "torchscript", "add_cross_attention", "cross_attention_hidden_size", "tokenizer_class",
    "prefix", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "finetuning_task", "is_decoder",
    "output_scores", "return_dict_in_generate",
}  # fmt: skip


def clip_config_from_transformers(config_dict: dict[str, Any]) -> ImageEncoderConfig:
    """ImageEncoderConfig from a `CLIPVisionConfig` dict (diffusers' image_encoder/config.json).

    Missing keys take transformers' defaults. Raises ValueError for what this encoder cannot
    reproduce: another activation than exact GELU, other than 3 input channels, unknown keys.
    The CLIP mean/std are not in this file (the feature extractor's are); the defaults are used.
    """
    if config_dict.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ValueError(
            f"expected a CLIPVisionConfig (model_type 'clip_vision_model'), got model_type "
            f"{config_dict.get('model_type')!r}; pass image_encoder/config.json"
        )
    known = _TRANSFORMERS_DEFAULTS.keys() | _TRANSFORMERS_HARMLESS
    unknown = sorted(k for k in config_dict if k not in known and not k.startswith("_"))
    if unknown:
        raise ValueError(f"CLIPVisionConfig has keys this encoder does not understand: {unknown}")
    c = {**_TRANSFORMERS_DEFAULTS, **config_dict}
    if c["hidden_act"] != "gelu":
        raise ValueError(
            f"CLIPVisionConfig hidden_act {c['hidden_act']!r} is not supported; the OpenCLIP ViT "
            "uses exact GELU ('gelu')"
        )
    if c["num_channels"] != 3:
        raise ValueError(f"CLIPVisionConfig num_channels must be 3 (RGB), got {c['num_channels']}")
    return ImageEncoderConfig(
        image_size=c["image_size"],
        patch_size=c["patch_size"],
        width=c["hidden_size"],
        layers=c["num_hidden_layers"],
        heads=c["num_attention_heads"],
        mlp_dim=c["intermediate_size"],
        embed_dim=c["projection_dim"],
        layer_norm_eps=c["layer_norm_eps"],
    )


def transformers_clip_config(config: ImageEncoderConfig) -> dict[str, Any]:
    """Keyword arguments for transformers' `CLIPVisionConfig` of the same network."""
    return {
        "model_type": "clip_vision_model",
        "hidden_size": config.width,
        "intermediate_size": config.mlp_dim,
        "projection_dim": config.embed_dim,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_channels": 3,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "hidden_act": "gelu",
        "layer_norm_eps": config.layer_norm_eps,
    }
