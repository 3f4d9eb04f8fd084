"""A parity run: options, the models (a checkpoint or seeded random weights), and `run_parity`."""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..config import SVDConfig
from ..loading.clip_maps import diffusers_clip_map
from ..loading.unet_maps import diffusers_unet_map
from ..loading.vae_maps import diffusers_vae_map
from ..model import SVDModel
from ..version import __version__
from .blocks import DETAILS
from .components import COMPONENTS, NEEDS_VAE, RUNNERS, Setup, conditioning_image
from .reference import (
    adopted_norm_eps,
    apply_dtype_policy,
    build_reference,
    reference_versions,
    vae_without_counterpart,
)
from .report import ComponentResult, ParityReport

REFERENCES = ("diffusers",)
NUMERICS = ("official", "diffusers")
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
# float64 compares the networks only: svd_core's sampler and pipeline run in float32 or half
# precision, so a float64 sampling run would compare float32 on our side with float64 on theirs.
# It is for questions of definition (which eps, which formula), measured below float32 round-off.
FLOAT64_COMPONENTS = ("image_encoder", "vae_encode", "unet", "vae_decode")
RANDOM_PREFIX = "random:"
# Presets for random weights: `random:NAME` builds SVDConfig.NAME() with seeded random weights.
RANDOM_PRESETS = {
    "tiny": SVDConfig.tiny,
    "tiny_demo": SVDConfig.tiny_demo,
    "svd": SVDConfig.svd,
    "svd_xt": SVDConfig.svd_xt,
    "svd_xt_1_1": SVDConfig.svd_xt_1_1,
    "svd_image_decoder": SVDConfig.svd_image_decoder,
    "svd_xt_image_decoder": SVDConfig.svd_xt_image_decoder,
}
# Default size of the run: the model's own when no side exceeds this, else DEFAULT_LARGE_SIZE, so
# that a full-size model is compared in seconds on a GPU and minutes on a CPU, not hours.
MAX_DEFAULT_SIDE = 256
DEFAULT_LARGE_SIZE = (128, 128)
MAX_DEFAULT_FRAMES = 8

# Relative tolerance (max |ours - ref| / max |ref|) of each component's output, per dtype. The VAE
# comparisons run in float32 whatever the dtype (svd_core's pipeline keeps its VAE there).
# float32: about 1e-4 for a whole network (DESIGN.md); measured on random tiny weights with
# numerics="diffusers" between 0 (VAE encoder) and 3.5e-6 (VAE decoder; UNet 2.3e-6), and 1e-5
# for the 3-step sampling run, which amplifies round-off through its steep schedule
# (numerics="official": 5e-4).
# Half precision, measured on random tiny weights, seeds 0 and 1, both numerics, with headroom:
# bfloat16 image encoder 5e-3, UNet 2.3e-2, sampler step 3.5e-3, sampling run 1.4e-1 (PSNR 39 dB;
# diffusers also decodes in bfloat16); float16 7e-4, 3.8e-3, 4.5e-4, 1.7e-2 (PSNR 56 dB).
# float64 keeps the float32 tolerances: the VAEs still run in float32 and diffusers' CLIP
# preprocessing too (measured: image encoder 1.5e-7, VAE decoder 3.5e-6, UNet 3.5e-15).
DEFAULT_TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {
        "image_encoder": 1e-4,
        "vae_encode": 1e-4,
        "unet": 1e-4,
        "vae_decode": 1e-4,
        "sampler_step": 1e-4,
        "sampling_run": 1e-3,
    },
    torch.bfloat16: {
        "image_encoder": 2e-2,
        "vae_encode": 1e-4,
        "unet": 5e-2,
        "vae_decode": 1e-4,
        "sampler_step": 2e-2,
        "sampling_run": 2.5e-1,
    },
    torch.float16: {
        "image_encoder": 5e-3,
        "vae_encode": 1e-4,
        "unet": 1e-2,
        "vae_decode": 1e-4,
        "sampler_step": 5e-3,
        "sampling_run": 5e-2,
    },
    torch.float64: {
        "image_encoder": 1e-4,
        "vae_encode": 1e-4,
        "unet": 1e-4,
        "vae_decode": 1e-4,
    },
}


NUMERICS_NOTES = {
    "diffusers": "numerics=diffusers: svd_core takes diffusers' choices wherever the official code "
    "differs (GroupNorm eps, CLIP resize, float64 schedule, guidance on the output; "
    "svd_core.parity.differences), so any difference left is an implementation's. "
    "`--numerics official` compares svd_core's default, official numerics.",
    "official": "numerics=official: svd_core computes as the official code does; the differences "
    "include the documented official-vs-diffusers ones (`--known-differences` measures them).",
}
HALF_PRECISION_NOTE = (
    "Half precision: the VAE comparisons run both VAEs in float32; in the sampling run diffusers "
    "holds its VAE and latents in the pipeline's dtype, svd_core keeps them in float32."
)
FLOAT64_NOTE = (
    "float64: both UNets and both image encoders run in float64, the VAEs in float32 (diffusers' "
    "CLIP preprocessing too), so the UNet's difference is free of float32 round-off: what is left "
    "is a difference of definition."
)


class ParityError(ValueError):
    """Bad parity arguments (the command line shows these as one line, exit code 2)."""


@dataclass(frozen=True)
class ParityOptions:
    """What to compare and how. None means: derived from the model (see `resolved`)."""

    height: int | None = None  # pixels; default the model's size, or 128 for full-size models
    width: int | None = None
    num_frames: int | None = None  # default min(model frames, 8)
    num_steps: int = 3  # steps of the sampling run (the sampler step is the first of them)
    seed: int = 0  # input draws (and random weights)
    dtype: torch.dtype = torch.float32  # UNet and image encoder; the VAE stays float32
    # (float64: the network components only, FLOAT64_COMPONENTS)
    numerics: str = "diffusers"  # our side: "diffusers" (its choices) or "official" (sgm)
    components: tuple[str, ...] = COMPONENTS
    tolerances: Mapping[str, float] = field(default_factory=dict)  # overrides per component
    detail: str = "fine"  # "fine" or "blocks" (svd_core.parity.blocks)
    image: str | None = None  # conditioning image file; default a seeded synthetic one
    against: str = "diffusers"
    known_differences: bool = False  # also measure the documented differences

    def __post_init__(self) -> None:
        for name in ("height", "width", "num_frames"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ParityError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ParityError(f"num_steps must be a positive integer, got {self.num_steps!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ParityError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.dtype not in DEFAULT_TOLERANCES:
            raise ParityError(f"dtype must be one of {list(DTYPES)}, got {self.dtype}")
        if self.numerics not in NUMERICS:
            raise ParityError(f"numerics must be one of {NUMERICS}, got {self.numerics!r}")
        if self.against not in REFERENCES:
            raise ParityError(
                f"unknown reference {self.against!r}; svd_core compares against {REFERENCES}"
            )
        if self.detail not in DETAILS:
            raise ParityError(f"detail must be one of {DETAILS}, got {self.detail!r}")
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not self.components:
            raise ParityError(
                f"unknown components {unknown or '(none given)'}; choose from {list(COMPONENTS)}"
            )
        if self.dtype == torch.float64:
            sampling = [c for c in self.components if c not in FLOAT64_COMPONENTS]
            if sampling:
                raise ParityError(
                    f"dtype float64 compares the networks only, not {sampling}: svd_core's "
                    f"sampler runs in float32 or half precision; choose components from "
                    f"{list(FLOAT64_COMPONENTS)} (--components {','.join(FLOAT64_COMPONENTS)})"
                )
        for name, value in self.tolerances.items():
            if name not in COMPONENTS:
                raise ParityError(
                    f"tolerance for unknown component {name!r}; components are {list(COMPONENTS)}"
                )
            if not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise ParityError(f"tolerance of {name} must be a positive number, got {value!r}")

    def tolerance(self, component: str) -> float:
        """The relative tolerance of `component`: the override, or the default for the dtype."""
        return float(self.tolerances.get(component, DEFAULT_TOLERANCES[self.dtype][component]))

    def resolved(self, config: SVDConfig) -> ParityOptions:
        """Options with every None filled in from `config`, the size checked against the model,
        and the components checked against what diffusers can build of it."""
        _check_vae_components(self.components, config.name, vae_without_counterpart(config))
        height, width = self.height, self.width
        if height is None or width is None:
            small = max(config.height, config.width) <= MAX_DEFAULT_SIDE
            default = (config.height, config.width) if small else DEFAULT_LARGE_SIZE
            height = default[0] if height is None else height
            width = default[1] if width is None else width
        multiple = size_multiple(config)
        if height % multiple or width % multiple:
            raise ParityError(
                f"size {height}x{width} does not fit the {config.name} model: height and width "
                f"must be multiples of {multiple} (the VAE's factor {config.vae.downscale_factor} "
                f"x the UNet's {multiple // config.vae.downscale_factor}); e.g. "
                f"{max(multiple, height // multiple * multiple)}x"
                f"{max(multiple, width // multiple * multiple)}"
            )
        frames = self.num_frames or min(config.num_frames, MAX_DEFAULT_FRAMES)
        return dataclasses.replace(self, height=height, width=width, num_frames=frames)


def _check_vae_components(components: tuple[str, ...], name: str, problem: str | None) -> None:
    """ParityError when a component that runs the reference's VAE is asked for and `problem` says
    why the reference has none; the error names the components that can still be compared."""
    needing = [c for c in components if c in NEEDS_VAE]
    if problem is None or not needing:
        return
    others = ",".join(c for c in COMPONENTS if c not in NEEDS_VAE)
    raise ParityError(
        f"{problem}: {', '.join(needing)} cannot be compared for the {name} model; compare the "
        f"others with --components {others}"
    )


def size_multiple(config: SVDConfig) -> int:
    """Image sides must be multiples of this: the VAE's downscaling times the UNet's."""
    return config.size_multiple


def parse_size(text: str) -> tuple[int, int]:
    """'576x1024' -> (576, 1024); anything else is a ParityError that says what is expected."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ParityError(f"size must be HEIGHTxWIDTH in pixels, e.g. 576x1024, got {text!r}")
    height, width = (int(p) for p in parts)
    if height < 1 or width < 1:
        raise ParityError(f"size must be positive, got {text!r}")
    return height, width


# ---- models --------------------------------------------------------------------------------------


def is_random_source(source: str) -> bool:
    """Whether `source` names seeded random weights (`random:PRESET`) rather than a checkpoint."""
    return str(source).startswith(RANDOM_PREFIX)


def random_config(source: str) -> SVDConfig:
    """The preset config named by `random:PRESET`."""
    name = str(source)[len(RANDOM_PREFIX) :]
    if name not in RANDOM_PRESETS:
        raise ParityError(
            f"unknown preset in {source!r}; use random:NAME with NAME one of {list(RANDOM_PRESETS)}"
        )
    return RANDOM_PRESETS[name]()


def random_model(config: SVDConfig, seed: int = 0) -> SVDModel:
    """An SVDModel whose every parameter is drawn from a CPU generator seeded with `seed`.

    Matrices and kernels ~ N(0, (0.5 / sqrt(fan_in))^2); norm scales ~ 1 + N(0, 0.05^2); all other
    vectors (biases, blend logits, CLIP's class token) ~ N(0, 0.05^2). Unlike the usual zero
    initialisation of output convs and blend logits, every block then changes its output, so a
    block that computes something else shows in the comparison, and the video varies over frames.
    """
    generator = torch.Generator().manual_seed(seed)
    model = SVDModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim >= 2:
                parameter.copy_(noise * 0.5 * parameter[0].numel() ** -0.5)
            else:
                offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                parameter.copy_(noise * 0.05 + offset)
    return model.eval()


def load_for_parity(
    source: str, seed: int = 0, config: SVDConfig | None = None, variant: str | None = None
) -> SVDModel:
    """Our model from `source` (anything `svd_core.load` takes, or `random:PRESET`), float32, CPU.

    `config` overrides the checkpoint's inferred config, or the preset of random weights.
    """
    if is_random_source(source):
        return random_model(config or random_config(source), seed)
    from ..loading import load

    return load(source, config=config, dtype=torch.float32, device="cpu", variant=variant)


def model_config(source: str, config: SVDConfig | None = None, variant: str | None = None):
    """The config of `source` without reading its weights (to check the arguments first)."""
    if config is not None:
        return config
    if is_random_source(source):
        return random_config(source)
    from ..loading import inspect_checkpoint

    model, _ = inspect_checkpoint(source, variant=variant)
    return model.config


# ---- the run -------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    """A readable name of the device the comparison ran on."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    processor = platform.processor() or platform.machine()
    return f"cpu ({processor}, {torch.get_num_threads()} threads)"


def run_parity(
    model: SVDModel,
    options: ParityOptions | None = None,
    source: str = "(model in memory)",
    reference=None,
    device: str | torch.device | None = None,
) -> ParityReport:
    """Compare `model` with diffusers on the same weights and inputs, component by component.

    model: an SVDModel in float32 (it is cast in place to the dtype policy: UNet and image encoder
    in options.dtype, the VAE in float32, as `SVDPipeline(model, dtype)` does; float64, which the
    pipeline does not offer, compares the networks only, to measure definitions free of float32
    round-off). reference: a
    diffusers StableVideoDiffusionPipeline holding the same weights; None builds it from `model`
    (svd_core.save in the diffusers layout, then from_pretrained). device: where both run (default
    the model's). Returns a ParityReport; `report.passed` says whether every component is within
    its tolerance. numerics="diffusers" switches our side to diffusers' choices where they differ
    from the official code (svd_core.parity.differences lists them). A model whose VAE diffusers
    cannot build (tiny_demo) compares image_encoder, unet and sampler_step only; asking for a
    component that runs the VAE raises ParityError.
    """
    options = ParityOptions() if options is None else options
    options = options.resolved(model.config)
    if reference is None:
        reference = build_reference(model)
    if reference.vae is None:  # a reference given without one
        _check_vae_components(options.components, model.config.name, "the reference has no VAE")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    reference.to(device)
    apply_dtype_policy(model, reference, options.dtype)
    cfg = model.config
    setup = Setup(
        model=model,
        reference=reference,
        height=options.height,
        width=options.width,
        num_frames=options.num_frames,
        num_steps=options.num_steps,
        seed=options.seed,
        dtype=options.dtype,
        numerics=options.numerics,
        detail=options.detail,
        image=conditioning_image(options.height, options.width, options.seed, options.image),
    )
    networks = [
        (model.unet, reference.unet, diffusers_unet_map(cfg.unet)),
        (model.image_encoder, reference.image_encoder, diffusers_clip_map(cfg.image_encoder)),
    ]
    if reference.vae is not None:
        networks.append((model.vae, reference.vae, diffusers_vae_map(cfg.vae)))
    results: list[ComponentResult] = []
    with adopted_norm_eps(networks if options.numerics == "diffusers" else []):
        for name in options.components:
            start = time.perf_counter()
            result = RUNNERS[name](setup)
            result.seconds = time.perf_counter() - start
            result.tolerance = options.tolerance(name)
            results.append(result)
    known = []
    if options.known_differences:  # each measurement sets the numerics it compares
        from .differences import measure_known_differences

        known = measure_known_differences(setup)
    header = {
        "model": f"{source} ({cfg.name})",
        "reference": options.against,
        **{name: version for name, version in reference_versions().items()},
        "torch": torch.__version__,
        "svd_core": __version__,
        "device": device_name(device),
        "dtype": str(options.dtype).replace("torch.", ""),
        "numerics": options.numerics,
        "size": f"{options.height}x{options.width}",
        "frames": str(options.num_frames),
        "steps": str(options.num_steps),
        "seed": str(options.seed),
        "detail": options.detail,
        "image": options.image or "synthetic (seeded)",
    }
    notes = [NUMERICS_NOTES[options.numerics]]
    if options.dtype == torch.float64:
        notes.append(FLOAT64_NOTE)
    elif options.dtype != torch.float32:
        notes.append(HALF_PRECISION_NOTE)
    return ParityReport(header, results, known, notes)
