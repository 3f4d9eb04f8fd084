"""Reading sgm yaml configs (svd_core.loading.read_sgm_yaml, SVDConfig.from_sgm_yaml): the official
configs give our presets, other widths give the model of the equivalent explicit SVDConfig, and
unknown fields, targets and values are errors that name them."""

from __future__ import annotations

import copy

import diffusers
import pytest
import torch
import yaml
from open_clip.model import _build_vision_tower
from safetensors.torch import load_file, save_file

import svd_core.cli
from svd_core import ConfigError, ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig
from svd_core.loading import read_sgm_yaml, save
from svd_core.loading.official import official_map
from svd_core.model import SVDModel

torch.set_num_threads(1)

# Stability-AI/generative-models scripts/sampling/configs/svd.yaml, every field as published.
SVD_YAML = """\
model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    scale_factor: 0.18215
    disable_first_stage_autocast: True
    ckpt_path: checkpoints/svd.safetensors
    denoiser_config:
      target: sgm.modules.diffusionmodules.denoiser.Denoiser
      params:
        scaling_config:
          target: sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise
    network_config:
      target: sgm.modules.diffusionmodules.video_model.VideoUNet
      params:
        adm_in_channels: 768
        num_classes: sequential
        use_checkpoint: True
        in_channels: 8
        out_channels: 4
        model_channels: 320
        attention_resolutions: [4, 2, 1]
        num_res_blocks: 2
        channel_mult: [1, 2, 4, 4]
        num_head_channels: 64
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
        spatial_transformer_attn_type: softmax-xformers
        extra_ff_mix_layer: True
        use_spatial_context: True
        merge_strategy: learned_with_images
        video_kernel_size: [3, 1, 1]
    conditioner_config:
      target: sgm.modules.GeneralConditioner
      params:
        emb_models:
        - is_trainable: False
          input_key: cond_frames_without_noise
          target: sgm.modules.encoders.modules.FrozenOpenCLIPImagePredictionEmbedder
          params:
            n_cond_frames: 1
            n_copies: 1
            open_clip_embedding_config:
              target: sgm.modules.encoders.modules.FrozenOpenCLIPImageEmbedder
              params:
                freeze: True
        - input_key: fps_id
          is_trainable: False
          target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
          params:
            outdim: 256
        - input_key: motion_bucket_id
          is_trainable: False
          target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
          params:
            outdim: 256
        - input_key: cond_frames
          is_trainable: False
          target: sgm.modules.encoders.modules.VideoPredictionEmbedderWithEncoder
          params:
            disable_encoder_autocast: True
            n_cond_frames: 1
            n_copies: 1
            is_ae: True
            encoder_config:
              target: sgm.models.autoencoder.AutoencoderKLModeOnly
              params:
                embed_dim: 4
                monitor: val/rec_loss
                ddconfig:
                  attn_type: vanilla-xformers
                  double_z: True
                  z_channels: 4
                  resolution: 256
                  in_channels: 3
                  out_ch: 3
                  ch: 128
                  ch_mult: [1, 2, 4, 4]
                  num_res_blocks: 2
                  attn_resolutions: []
                  dropout: 0.0
                lossconfig:
                  target: torch.nn.Identity
        - input_key: cond_aug
          is_trainable: False
          target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
          params:
            outdim: 256
    first_stage_config:
      target: sgm.models.autoencoder.AutoencodingEngine
      params:
        loss_config:
          target: torch.nn.Identity
        regularizer_config:
          target: sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer
        encoder_config:
          target: sgm.modules.diffusionmodules.model.Encoder
          params:
            attn_type: vanilla
            double_z: True
            z_channels: 4
            resolution: 256
            in_channels: 3
            out_ch: 3
            ch: 128
            ch_mult: [1, 2, 4, 4]
            num_res_blocks: 2
            attn_resolutions: []
            dropout: 0.0
        decoder_config:
          target: sgm.modules.autoencoding.temporal_ae.VideoDecoder
          params:
            attn_type: vanilla
            double_z: True
            z_channels: 4
            resolution: 256
            in_channels: 3
            out_ch: 3
            ch: 128
            ch_mult: [1, 2, 4, 4]
            num_res_blocks: 2
            attn_resolutions: []
            dropout: 0.0
            video_kernel_size: [3, 1, 1]
    sampler_config:
      target: sgm.modules.diffusionmodules.sampling.EulerEDMSampler
      params:
        discretization_config:
          target: sgm.modules.diffusionmodules.discretizer.EDMDiscretization
          params:
            sigma_max: 700.0
        guider_config:
          target: sgm.modules.diffusionmodules.guiders.LinearPredictionGuider
          params:
            max_scale: 2.5
            min_scale: 1.0
"""

# svd_image_decoder.yaml and svd_xt_image_decoder.yaml replace the first stage with this one.
IMAGE_DECODER_FIRST_STAGE = """\
    first_stage_config:
      target: sgm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          attn_type: vanilla-xformers
          double_z: True
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
"""

VERSIONS = ["svd", "svd_xt", "svd_xt_1_1", "svd_image_decoder", "svd_xt_image_decoder"]


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def official_yaml(version: str) -> str:
    """The text of scripts/sampling/configs/{version}.yaml: svd.yaml with the differences of each.

    The svd_xt files guide from 1.5 to 3.0 instead of 1.0 to 2.5; the image-decoder files have
    sgm's AutoencoderKL as first stage; each names its own checkpoint.
    """
    text = _replace_once(SVD_YAML, "checkpoints/svd.", f"checkpoints/{version}.")
    if version.startswith("svd_xt"):
        text = _replace_once(text, "max_scale: 2.5", "max_scale: 3.0")
        text = _replace_once(text, "min_scale: 1.0", "min_scale: 1.5")
    if version.endswith("_image_decoder"):
        start, end = text.index("    first_stage_config:"), text.index("    sampler_config:")
        text = text[:start] + IMAGE_DECODER_FIRST_STAGE + text[end:]
    return text


def write(tmp_path, tree_or_text, stem: str = "config", suffix: str = ".yaml"):
    path = tmp_path / f"{stem}{suffix}"
    if isinstance(tree_or_text, str):
        path.write_text(tree_or_text)
    else:
        path.write_text(yaml.safe_dump(tree_or_text, sort_keys=False))
    return path


def svd_tree(version: str = "svd") -> dict:
    return yaml.safe_load(official_yaml(version))


def unet_params(tree: dict) -> dict:
    return tree["model"]["params"]["network_config"]["params"]


def embedders(tree: dict) -> list:
    return tree["model"]["params"]["conditioner_config"]["params"]["emb_models"]


def ddconfigs(tree: dict) -> list[dict]:
    """The autoencoder configs of the svd.yaml tree: conditioning encoder, first-stage encoder,
    first-stage video decoder."""
    first_stage = tree["model"]["params"]["first_stage_config"]["params"]
    return [
        embedders(tree)[3]["params"]["encoder_config"]["params"]["ddconfig"],
        first_stage["encoder_config"]["params"],
        first_stage["decoder_config"]["params"],
    ]


def sampler_params(tree: dict) -> dict:
    return tree["model"]["params"]["sampler_config"]["params"]


# ---- the official configs -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_official_configs_give_our_presets(version, tmp_path):
    config = SVDConfig.from_sgm_yaml(write(tmp_path, official_yaml(version), stem=version))
    assert config == getattr(SVDConfig, version)()


def test_the_loader_and_the_config_method_read_the_same(tmp_path):
    path = write(tmp_path, official_yaml("svd_xt"), stem="svd_xt")
    assert read_sgm_yaml(path) == SVDConfig.from_sgm_yaml(path) == SVDConfig.svd_xt()
    assert read_sgm_yaml(path, name="mine") == SVDConfig.from_sgm_yaml(path, name="mine")


def test_frames_and_steps_follow_the_version_like_the_official_script(tmp_path):
    # simple_video_sample.py picks them by version; svd_xt.yaml under another name gets our defaults.
    text = official_yaml("svd_xt")
    xt = SVDConfig.from_sgm_yaml(write(tmp_path, text, stem="svd_xt"), name="mine")
    assert (xt.name, xt.num_frames, xt.num_steps) == ("mine", 25, 30)
    renamed = SVDConfig.from_sgm_yaml(write(tmp_path, text, stem="my_finetune"))
    assert (renamed.name, renamed.num_frames, renamed.num_steps) == ("my_finetune", 14, 25)
    assert (renamed.min_guidance, renamed.max_guidance) == (1.5, 3.0)


def test_frames_and_steps_set_in_the_yaml_win(tmp_path):
    # The official script writes them into the config before building the sampler.
    tree = svd_tree("svd_xt")
    sampler_params(tree)["num_steps"] = 12
    sampler_params(tree)["guider_config"]["params"]["num_frames"] = 8
    config = SVDConfig.from_sgm_yaml(write(tmp_path, tree, stem="svd_xt"))
    assert (config.num_frames, config.num_steps) == (8, 12)


# Fields that real sgm configs hold and that change nothing svd_core builds or samples, at the
# classes that hold them: dotted paths into the svd.yaml tree ("" is the top level).
EMBEDDERS = "model.params.conditioner_config.params.emb_models"
AUTOENCODER_NO_EFFECT = (
    "lossconfig loss_config optimizer_config lr_g_factor trainable_ae_params ae_optimizer_args "
    "trainable_disc_params disc_optimizer_args disc_start_iter diff_boost_factor ema_decay monitor "
    "input_key additional_decode_keys ckpt_path ckpt_engine max_batch_size"
).split()
NO_EFFECT_FIELDS = {
    "": "data lightning",
    "model.params": "ckpt_path optimizer_config scheduler_config loss_fn_config use_ema "
    "ema_decay_rate input_key log_keys no_cond_log disable_first_stage_autocast compile_model "
    "en_and_decode_n_samples_a_time",
    "model.params.network_config.params": "dropout use_checkpoint num_heads_upsample "
    "time_context_dim",
    **{f"{EMBEDDERS}.{i}": "is_trainable ucg_rate legacy_ucg_value" for i in range(5)},
    f"{EMBEDDERS}.0.params": "n_copies",
    f"{EMBEDDERS}.0.params.open_clip_embedding_config.params": "version device init_device "
    "freeze ucg_rate max_length",
    f"{EMBEDDERS}.3.params": "n_copies disable_encoder_autocast en_and_decode_n_samples_a_time",
    f"{EMBEDDERS}.3.params.encoder_config.params": " ".join(AUTOENCODER_NO_EFFECT),
    "model.params.first_stage_config.params": " ".join(AUTOENCODER_NO_EFFECT),
    "model.params.sampler_config.params": "s_tmin s_tmax s_noise verbose device",
    "model.params.sampler_config.params.guider_config.params": "additional_cond_keys",
}
# svd.yaml's first stage is an AutoencodingEngine (the image-decoder files' is an AutoencoderKL).
ENGINE_NO_EFFECT_FIELDS = {
    "model.params.first_stage_config.params": "regularizer_config",
    "model.params.first_stage_config.params.encoder_config.params": "dropout",
    "model.params.first_stage_config.params.decoder_config.params": "dropout",
}


def _node(tree, path: str):
    """The mapping (or list) at a dotted path of a yaml tree ("" is the tree itself)."""
    node = tree
    for key in path.split(".") if path else []:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def test_fields_with_no_effect_are_accepted_with_any_value(tmp_path):
    """Each field that changes nothing, added where its class sits, leaves the preset as it is."""
    for version, placements in [
        ("svd", [NO_EFFECT_FIELDS, ENGINE_NO_EFFECT_FIELDS]),
        ("svd_image_decoder", [NO_EFFECT_FIELDS]),
    ]:
        tree = svd_tree(version)
        for fields in placements:
            for path, names in fields.items():
                value = {"anything": [1, 2]} if path == "" else "any value"
                _node(tree, path).update(dict.fromkeys(names.split(), value))
        config = SVDConfig.from_sgm_yaml(write(tmp_path, tree, stem=version))
        assert config == getattr(SVDConfig, version)()


# ---- other widths ---------------------------------------------------------------------------------

# A small model, written out as an explicit SVDConfig ...
SMALL = SVDConfig(
    name="small",
    unet=UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_levels=(0, 1),
        head_channels=16,
        transformer_depth=2,
        context_dim=32,
        addition_embed_dim=16,
    ),
    vae=VAEConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2),
    image_encoder=ImageEncoderConfig(
        image_size=56, patch_size=14, width=64, layers=2, heads=4, mlp_dim=256, embed_dim=32
    ),
    num_frames=5,
    num_steps=4,
    sigma_max=80.0,  # EDMDiscretization's default, as the yaml below gives none
)


def small_tree() -> dict:
    """... and as an sgm yaml: svd.yaml with other widths."""
    tree = svd_tree()
    unet_params(tree).update(
        model_channels=32,
        channel_mult=[1, 2, 2],
        attention_resolutions=[2, 1],
        num_head_channels=16,
        transformer_depth=2,
        context_dim=32,
        adm_in_channels=48,
    )
    for index in (1, 2, 4):
        embedders(tree)[index]["params"]["outdim"] = 16
    for ddconfig in ddconfigs(tree):
        ddconfig.update(ch=32, ch_mult=[1, 2, 2, 2])
    sampler = sampler_params(tree)
    sampler["num_steps"] = 4
    sampler["guider_config"]["params"]["num_frames"] = 5
    del sampler["discretization_config"]["params"]["sigma_max"]
    # A vision tower of its own: sgm names it (an open_clip config registered by the user), and
    # the svd_core section gives its sizes.
    clip = embedders(tree)[0]["params"]["open_clip_embedding_config"]["params"]
    clip["arch"] = "ViT-small-test"
    tower = SMALL.image_encoder
    tree["svd_core"] = {
        "image_encoder": {
            "image_size": tower.image_size,
            "patch_size": tower.patch_size,
            "width": tower.width,
            "layers": tower.layers,
            "heads": tower.heads,
            "mlp_dim": tower.mlp_dim,
            "embed_dim": tower.embed_dim,
        }
    }
    return tree


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_other_widths_build_the_model_of_the_explicit_config(tmp_path):
    config = SVDConfig.from_sgm_yaml(write(tmp_path, small_tree(), stem="small"))
    assert config == SMALL
    with torch.device("meta"):
        ours, explicit = SVDModel(config), SVDModel(SMALL)
        # The references at these widths, their arguments written from the yaml by hand.
        unet = diffusers.UNetSpatioTemporalConditionModel(
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2
            + ("DownBlockSpatioTemporal",),
            up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2,
            block_out_channels=(32, 64, 64),
            addition_time_embed_dim=16,
            projection_class_embeddings_input_dim=48,
            layers_per_block=2,
            cross_attention_dim=32,
            transformer_layers_per_block=2,
            num_attention_heads=(2, 4, 4),
        )
        vae = diffusers.AutoencoderKLTemporalDecoder(
            down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(32, 64, 64, 64),
            layers_per_block=2,
            latent_channels=4,
        )
        tower = _build_vision_tower(
            32, {"image_size": 56, "layers": 2, "width": 64, "head_width": 16, "patch_size": 14}
        )
    counts = ours.parameter_counts()
    assert counts == explicit.parameter_counts()
    assert counts["unet"] == _parameters(unet)
    assert counts["vae"] == _parameters(vae)
    assert counts["image_encoder"] == _parameters(tower)
    assert official_map(config).checkpoint_keys() == official_map(SMALL).checkpoint_keys()


def test_per_level_depths_and_head_counts_that_one_value_describes(tmp_path):
    tree = svd_tree()
    params = unet_params(tree)
    # Depths per level: only the attention levels (0, 1, 2) and the middle (the last entry) count.
    params["transformer_depth"] = [2, 2, 2, 2]
    assert SVDConfig.from_sgm_yaml(write(tmp_path, tree)).unet.transformer_depth == 2
    params["transformer_depth"] = [1, 1, 1, 2]
    params["transformer_depth_middle"] = 1
    assert SVDConfig.from_sgm_yaml(write(tmp_path, tree)).unet.transformer_depth == 1
    # A head count instead of a head width: one head width when every transformer is as wide.
    params.update(channel_mult=[4, 4, 4, 4], num_heads=20)
    del params["num_head_channels"]
    assert SVDConfig.from_sgm_yaml(write(tmp_path, tree)).unet.head_channels == 1280 // 20


# ---- errors ---------------------------------------------------------------------------------------


def _set(path: str, value):
    """A change to the svd.yaml tree: set (or with value DELETE, remove) one dotted path."""

    def change(tree):
        *parents, last = path.split(".")
        node = _node(tree, ".".join(parents))
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _both(first, second):
    def change(tree):
        first(tree)
        second(tree)

    return change


DELETE = object()
UNET = "model.params.network_config.params"
CONDITIONING = "model.params.conditioner_config.params.emb_models"
COND_AE = f"{CONDITIONING}.3.params.encoder_config.params"
FIRST_STAGE = "model.params.first_stage_config.params"
SAMPLER = "model.params.sampler_config.params"


@pytest.mark.parametrize(
    "change,named",
    [
        (_set("extra", 1), "unknown fields extra"),
        (_set(f"{UNET}.model_chanels", 320), f"{UNET}.model_chanels"),
        (_set("model.params.network_config.parms", {}), "model.params.network_config.parms"),
        (_set(f"{CONDITIONING}.1.weight", 1), "emb_models[1].weight"),
        (
            _set(f"{COND_AE}.ddconfig.chh", 64),
            "emb_models[3].params.encoder_config.params.ddconfig.chh",
        ),
        (_set(f"{SAMPLER}.guider_config.params.scale", 2.0), "guider_config.params.scale"),
        (_set("svd_core", {"image_encoder": {"depth": 2}}), "svd_core.image_encoder.depth"),
    ],
)
def test_unknown_fields_are_named_by_their_dotted_path(change, named, tmp_path):
    tree = svd_tree()
    change(tree)
    with pytest.raises(ConfigError, match="unknown fields") as error:
        SVDConfig.from_sgm_yaml(write(tmp_path, tree))
    assert named in str(error.value)


def test_many_unknown_fields_show_the_first_few_and_a_count(tmp_path):
    tree = svd_tree()
    unet_params(tree).update({f"typo_{i}": i for i in range(7)})
    with pytest.raises(ConfigError, match=r"typo_0.*typo_4, \.\.\. \(7 in all\)") as error:
        SVDConfig.from_sgm_yaml(write(tmp_path, tree))
    assert "typo_5" not in str(error.value)


@pytest.mark.parametrize(
    "change,named",
    [
        (
            _set("model.params.network_config.target", "sgm.modules.diffusionmodules.UNetModel"),
            "'sgm.modules.diffusionmodules.UNetModel', a class svd_core does not read",
        ),
        (
            _set(
                f"{SAMPLER}.guider_config.target",
                "sgm.modules.diffusionmodules.guiders.TrianglePredictionGuider",
            ),
            "guidance='triangle'",
        ),
        (
            _set(
                "model.params.sampler_config.target",
                "sgm.modules.diffusionmodules.sampling.HeunEDMSampler",
            ),
            "svd-core generate --sampler",
        ),
        (
            _set(
                f"{FIRST_STAGE}.decoder_config.target", "sgm.modules.diffusionmodules.model.Decoder"
            ),
            "no post_quant_conv",
        ),
        (
            _set("model.params.network_config.target", "sgm.models.autoencoder.AutoencoderKL"),
            "here svd_core reads sgm.modules.diffusionmodules.video_model.VideoUNet",
        ),
    ],
)
def test_targets_we_do_not_read_are_named(change, named, tmp_path):
    tree = svd_tree()
    change(tree)
    with pytest.raises(ConfigError, match="target is") as error:
        SVDConfig.from_sgm_yaml(write(tmp_path, tree))
    assert named in str(error.value)


@pytest.mark.parametrize(
    "change,message",
    [
        (
            _set(f"{UNET}.use_spatial_context", False),
            "use_spatial_context is False; svd_core builds only True",
        ),
        (_set(f"{UNET}.use_linear_in_transformer", DELETE), "not given: sgm's default"),
        (_set(f"{UNET}.video_kernel_size", 3), "3x3x3 convolutions"),
        (_set(f"{UNET}.merge_strategy", "mean"), "merge_strategy is 'mean'"),
        (_set(f"{UNET}.transformer_depth", [1, 2, 1, 1]), "the transformers have depths"),
        (_set(f"{UNET}.num_head_channels", DELETE), "give num_head_channels or num_heads"),
        (
            _both(_set(f"{UNET}.num_head_channels", DELETE), _set(f"{UNET}.num_heads", 5)),
            "num_heads is 5 at transformer widths [320, 640, 1280]",
        ),
        (_set(f"{UNET}.model_channels", DELETE), f"{UNET}.model_channels is missing"),
        (_set(f"{UNET}.model_channels", "320"), "model_channels must be an integer, got '320'"),
        (_set(f"{UNET}.adm_in_channels", 512), "adm_in_channels is 512, but the fps_id"),
        (_set(f"{UNET}.context_dim", 768), "context_dim is 768, but the image encoder"),
        (_set(f"{CONDITIONING}.1.input_key", "motion_bucket_id"), "in this order"),
        (_set(f"{CONDITIONING}.2.params.outdim", 128), "different widths"),
        (_set(f"{CONDITIONING}.3.params.is_ae", False), "is_ae is False"),
        (_set(f"{CONDITIONING}.3.params.sigma_sampler_config", {"target": "x"}), "cond_aug noise"),
        (_set(f"{COND_AE}.embed_dim", 8), "embed_dim is 8 but z_channels is 4"),
        (
            _set(f"{CONDITIONING}.0.params.open_clip_embedding_config.params.arch", "ViT-L-14"),
            "svd_core: {image_encoder:",
        ),
        (
            _set("svd_core", {"image_encoder": {"layers": 2}}),
            "is 'ViT-H-14', but svd_core.image_encoder gives other sizes",
        ),
        (_set(f"{FIRST_STAGE}.decoder_config.params.time_mode", "all"), "time_mode is 'all'"),
        (_set(f"{FIRST_STAGE}.decoder_config.params.attn_resolutions", [32]), "attention inside"),
        (
            _set(f"{FIRST_STAGE}.decoder_config.params.ch", 64),
            f"{FIRST_STAGE}.decoder_config.params.ch is 64 but {CONDITIONING}[3]",
        ),
        (_set(f"{SAMPLER}.s_churn", 0.5), "s_churn is 0.5"),
        (_set(f"{SAMPLER}.guider_config", DELETE), "IdentityGuider"),
        (_set(f"{SAMPLER}.discretization_config.params.rho", 5.0), "rho is 5.0"),
    ],
)
def test_values_we_cannot_build_are_clear_errors(change, message, tmp_path):
    tree = svd_tree()
    change(tree)
    with pytest.raises(ConfigError) as error:
        SVDConfig.from_sgm_yaml(write(tmp_path, tree))
    assert message in str(error.value)
    assert str(tmp_path) in str(error.value)  # the error names the file


def test_files_that_are_not_sgm_configs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        SVDConfig.from_sgm_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SVDConfig.from_sgm_yaml(write(tmp_path, "model: [\n"))
    with pytest.raises(ConfigError, match="`model:` entry"):
        SVDConfig.from_sgm_yaml(write(tmp_path, "- 1\n- 2\n"))


# ---- command line ---------------------------------------------------------------------------------


def test_cli_info_reads_the_sizes_from_an_sgm_yaml(tmp_path, capsys):
    model = SVDModel(SMALL)
    ours = save(model, tmp_path / "ours.safetensors")
    bare = tmp_path / "small.safetensors"
    save_file(load_file(ours), bare)  # the same tensors without svd_core's config in the metadata
    assert svd_core.cli.main(["info", str(bare)]) == 2  # no preset has these widths
    capsys.readouterr()

    config = write(tmp_path, small_tree(), stem="small", suffix=".yml")
    assert svd_core.cli.main(["info", str(bare), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    for count in model.parameter_counts().values():
        assert f"{count:,}" in out

    broken = copy.deepcopy(small_tree())
    unet_params(broken)["model_chanels"] = 32
    path = write(tmp_path, broken, stem="broken")
    assert svd_core.cli.main(["info", str(bare), "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{UNET}.model_chanels" in error
