"""The reference side: diffusers' StableVideoDiffusionPipeline holding our model's weights.

diffusers and transformers are test-time references, imported here lazily: svd_core never imports
them at import time. The reference gets the weights through our own writer,
`svd_core.save(model, folder, layout="diffusers")`, then diffusers' `from_pretrained`; so any
checkpoint `svd_core.load` reads (an official single file too) can be compared.

A model whose VAE diffusers cannot build (`vae_without_counterpart`: e.g. tiny_demo's, with 8
GroupNorm groups where diffusers' temporal VAE fixes 32) has no diffusers folder. Its reference is
the pipeline without a VAE: diffusers' UNet and CLIP vision model built from the configs the
writer uses, filled strictly through the same key maps. Its UNet, image encoder and sampler step
can be compared; what runs the VAE cannot.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..config import SVDConfig
from ..loading import save
from ..loading.clip_maps import diffusers_clip_map, transformers_clip_config
from ..loading.diffusers_layout import FEATURE_EXTRACTOR_CONFIG, SCHEDULER_CONFIG
from ..loading.keymap import KeyMap
from ..loading.unet_maps import diffusers_unet_config, diffusers_unet_map
from ..loading.vae_maps import diffusers_vae_config

INSTALL_HINT = "pip install diffusers transformers (or pip install 'svd-core[dev]')"
DIFFUSERS_CLIP_SIZE = 224  # diffusers' pipeline resizes the CLIP input to this, whatever the model


class ReferenceUnavailableError(ImportError):
    """diffusers or transformers is not installed."""


def import_reference():
    """Import diffusers (and transformers, which it needs for SVD), or say how to install them."""
    try:
        import diffusers
        import transformers  # noqa: F401
    except ImportError as error:
        raise ReferenceUnavailableError(
            f"the parity check needs the reference implementation ({error}); {INSTALL_HINT}"
        ) from None
    return diffusers


def reference_versions() -> dict[str, str]:
    """Versions of the reference libraries."""
    import diffusers
    import transformers

    return {"diffusers": diffusers.__version__, "transformers": transformers.__version__}


@contextmanager
def quiet_reference() -> Iterator[None]:
    """Hide diffusers' and transformers' progress bars and warnings (e.g. its advice, on every
    `.to(dtype)`, to cast at loading instead); both are restored on exit."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [
        (module, module.is_progress_bar_enabled(), module.get_verbosity())
        for module in (diffusers_logging, transformers_logging)
    ]
    for module, _, _ in states:
        module.disable_progress_bar()
        module.set_verbosity_error()
    try:
        yield
    finally:
        for module, enabled, verbosity in states:
            module.set_verbosity(verbosity)
            if enabled:
                module.enable_progress_bar()


def vae_without_counterpart(config: SVDConfig) -> str | None:
    """Why diffusers cannot build `config`'s VAE (e.g. tiny_demo's 8 GroupNorm groups), or None."""
    try:
        diffusers_vae_config(config.vae)
    except ValueError as error:
        return str(error)
    return None


def build_reference(model, device: str | torch.device | None = None):
    """diffusers' StableVideoDiffusionPipeline with `model`'s weights, in float32, on `device`.

    The scheduler takes the model's sigma_min / sigma_max (the folder `save` writes carries the
    official 0.002 / 700, which other configs, e.g. tiny_demo, do not use). For a model whose VAE
    diffusers cannot build, the pipeline's `vae` is None (module docstring).
    """
    diffusers = import_reference()
    cfg = model.config
    if vae_without_counterpart(cfg) is not None:
        pipe = _reference_without_vae(model)
    else:
        with tempfile.TemporaryDirectory(prefix="svd_core_parity_") as folder, quiet_reference():
            path = save(model, Path(folder) / "reference", layout="diffusers", dtype=torch.float32)
            pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(path)
    pipe.scheduler = type(pipe.scheduler).from_config(
        pipe.scheduler.config, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max
    )
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe


def _reference_without_vae(model):
    """The pipeline with `model`'s UNet and image encoder and no VAE (module docstring), float32."""
    import diffusers
    import transformers

    cfg = model.config
    unet = diffusers.UNetSpatioTemporalConditionModel(**diffusers_unet_config(cfg.unet))
    clip_config = transformers.CLIPVisionConfig(**transformers_clip_config(cfg.image_encoder))
    image_encoder = transformers.CLIPVisionModelWithProjection(clip_config)
    for theirs, ours, key_map in (
        (unet, model.unet, diffusers_unet_map(cfg.unet)),
        (image_encoder, model.image_encoder, diffusers_clip_map(cfg.image_encoder)),
    ):
        state = {name: tensor.float() for name, tensor in ours.state_dict().items()}
        theirs.load_state_dict(key_map.to_theirs(state), strict=True)
        theirs.eval()  # as from_pretrained leaves it
    return diffusers.StableVideoDiffusionPipeline(
        vae=None,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
        feature_extractor=transformers.CLIPImageProcessor.from_dict(FEATURE_EXTRACTOR_CONFIG),
    )


def apply_dtype_policy(model, reference, dtype: torch.dtype) -> None:
    """Both sides as their pipelines run: UNet and image encoder in `dtype`, the VAE in float32."""
    with quiet_reference():
        for network in (model.unet, model.image_encoder, reference.unet, reference.image_encoder):
            network.to(dtype)
        model.vae.to(torch.float32)
        if reference.vae is not None:  # None: diffusers cannot build this VAE
            reference.vae.to(torch.float32)


@contextmanager
def vae_in_pipeline_dtype(reference, dtype: torch.dtype) -> Iterator[None]:
    """Within the block, diffusers' VAE runs in `dtype`, as its pipeline runs it.

    diffusers' pipeline has one dtype for all networks: it decodes the latents in their dtype
    (float16 encodes in float32 when the VAE's force_upcast is set). The VAE comparisons run
    both VAEs in float32; the sampling run lets diffusers run as it does. Restored on exit.
    """
    previous = reference.vae.dtype
    with quiet_reference():
        reference.vae.to(dtype)
    try:
        yield
    finally:
        with quiet_reference():
            reference.vae.to(previous)


@contextmanager
def clip_input_size(size: int) -> Iterator[None]:
    """Make diffusers' pipeline resize the CLIP input to `size` instead of its fixed 224.

    Needed only for models whose image encoder is not 224 px (the tiny presets); the function is
    diffusers' own, called with another size. Restored on exit.
    """
    from diffusers.pipelines.stable_video_diffusion import pipeline_stable_video_diffusion as module

    original = module._resize_with_antialiasing
    if size != DIFFUSERS_CLIP_SIZE:
        module._resize_with_antialiasing = lambda image, _, **kwargs: original(
            image, (size, size), **kwargs
        )
    try:
        yield
    finally:
        module._resize_with_antialiasing = original


def _norms_with_counterparts(
    ours: nn.Module, theirs: nn.Module, key_map: KeyMap
) -> Iterator[tuple[nn.Module, nn.Module]]:
    """(our norm, its reference norm) for every GroupNorm / LayerNorm, matched by its weight."""
    for name, module in ours.named_modules():
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and f"{name}.weight" in key_map.entries:
            their_key = key_map.entries[f"{name}.weight"].keys[0]
            yield module, theirs.get_submodule(their_key.rpartition(".")[0])


def differing_norm_eps(ours: nn.Module, theirs: nn.Module, key_map: KeyMap) -> list[str]:
    """Our names of the norms whose epsilon differs from the reference's counterpart."""
    modules = {id(module): name for name, module in ours.named_modules()}
    return [
        modules[id(mine)]
        for mine, reference in _norms_with_counterparts(ours, theirs, key_map)
        if mine.eps != reference.eps
    ]


@contextmanager
def adopted_norm_eps(pairs: list[tuple[nn.Module, nn.Module, KeyMap]]) -> Iterator[int]:
    """Within the block, each of our norms uses its reference counterpart's epsilon.

    `pairs` lists (our network, reference network, key map). Yields how many norms changed; the
    official values are restored on exit. This is how numerics="diffusers" takes diffusers'
    GroupNorm eps of 1e-6 in some UNet res blocks (the official value is 1e-5 everywhere).
    """
    changed = []
    for ours, theirs, key_map in pairs:
        for mine, reference in _norms_with_counterparts(ours, theirs, key_map):
            if mine.eps != reference.eps:
                changed.append((mine, mine.eps))
                mine.eps = reference.eps
    try:
        yield len(changed)
    finally:
        for module, eps in changed:
            module.eps = eps
