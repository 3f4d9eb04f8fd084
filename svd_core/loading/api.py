"""`svd_core.load` and `svd_core.save`: every layout, both directions, lazily and strictly.

Loading builds the model with its parameters on the meta device (no memory), checks the whole
checkpoint against the key map from the file headers alone, then reads one tensor at a time from the
memory-mapped file (no copy where the dtype matches; converted or concatenated tensors are read into
memory of their own, see files.TensorReader) and assigns it: peak memory stays near the size of the
loaded weights.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import SVDConfig
from ..io import atomic_folder
from ..model import SVDModel
from . import diffusers_layout, official
from .files import (
    TORCH_DTYPES,
    CheckpointError,
    TensorReader,
    open_tensors,
    read_header,
    read_metadata,
    write_safetensors,
)
from .keymap import KeyMap, KeyMapError

logger = logging.getLogger("svd_core")

LAYOUTS = ("official", "diffusers")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadReport:
    """What `load` found: the layout, the preset and how it was inferred, and the unused tensors."""

    source: str
    layout: str
    config_name: str
    inferred: str
    files: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    checkpoint_dtypes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """A few readable lines."""
        lines = [
            f"source:  {self.source}",
            f"layout:  {self.layout}",
            f"preset:  {self.config_name} ({self.inferred})",
            f"dtypes:  {', '.join(f'{k} x{v}' for k, v in sorted(self.checkpoint_dtypes.items()))}",
        ]
        if self.ignored:
            groups: dict[str, int] = {}
            for reason in self.ignored.values():
                groups[reason] = groups.get(reason, 0) + 1
            lines.append(f"unused:  {len(self.ignored)} tensors")
            lines += [f"  - {count} x {reason}" for reason, count in sorted(groups.items())]
        return "\n".join(lines)


def empty_model(config: SVDConfig) -> SVDModel:
    """An SVDModel whose tensors live on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"):
        return SVDModel(config)


def _materialize_constants(model: SVDModel) -> None:
    """Tensors that no checkpoint holds: the CLIP normalization constants come from the config."""
    encoder, cfg = model.image_encoder, model.config.image_encoder
    encoder.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    encoder.std = torch.tensor(cfg.std).view(1, 3, 1, 1)


def _fill(
    model: nn.Module,
    key_map: KeyMap,
    handle: TensorReader,
    dtype: torch.dtype | None,
    prefix: str = "",
    only: tuple[str, ...] | None = None,
) -> None:
    """Assign every tensor of `key_map` (our names relative to `prefix`) into `model`, one at a time.

    A tensor stored whole in `dtype` becomes a view of the memory-mapped file (no copy). Any other
    (another dtype, or a fused projection stored split) gets memory of its own, and each stored
    tensor is read into its place there: `rule.to_theirs` of the new tensor gives those places
    as views (the parts of a Cat, the transpose of a Transpose). No temporary copies, and no page
    of the file counted in resident memory beside its copy (see TensorReader).
    dtype None: each tensor in the dtype of the placeholder it replaces. only: fill just the
    tensors whose full name starts with one of these prefixes (e.g. ("unet.",)).
    """
    for ours, rule in key_map.entries.items():
        if only is not None and not (prefix + ours).startswith(only):
            continue
        module_name, _, attr = (prefix + ours).rpartition(".")
        module = model.get_submodule(module_name)
        old = module._parameters.get(attr)
        placeholder = old if old is not None else module._buffers[attr]
        target = placeholder.dtype if dtype is None else dtype
        if len(rule.keys) == 1 and handle.dtype(rule.keys[0]) == target:
            tensor = rule.to_ours([handle.get_tensor(rule.keys[0])])
            if tensor.shape != placeholder.shape:  # read_into checks this itself
                raise CheckpointError(
                    f"{str(handle.path)!r}: tensor {rule.keys[0]!r} has shape "
                    f"{list(tensor.shape)}, {prefix + ours} needs {list(placeholder.shape)}; "
                    "was the file replaced after it was checked?"
                )
        else:
            tensor = torch.empty(placeholder.shape, dtype=target)
            for key, place in zip(rule.keys, rule.to_theirs(tensor), strict=True):
                handle.read_into(key, place)
        if old is not None:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=old.requires_grad)
        else:
            module._buffers[attr] = tensor


@dataclass(frozen=True)
class WeightFile:
    """One weight file of a checkpoint: its path, its key map, and what the map's names lack to be
    SVDModel names ("" for the official file, "unet." for the diffusers UNet file, ...)."""

    path: Path
    key_map: KeyMap
    prefix: str = ""


class LazyWeights:
    """Where a low-memory model (`load(..., low_memory=True)`) reads each part's weights from.

    `load(model, module_names)` fills those submodules from the checkpoint's files as `load` does
    (views of a memory map where the dtype matches: the pages are read from disk on first use;
    converted tensors in memory of their own), each tensor in its placeholder's dtype (so a
    `model.unet.to(torch.bfloat16)` before is honoured), then moves them to `device`.
    `release(model, module_names)` puts meta placeholders of the same shape and dtype back: the
    tensors are freed, and the memory map with them once no part views it.
    """

    def __init__(self, files: list[WeightFile], device: str | torch.device = "cpu") -> None:
        self.files = files
        self.device = torch.device(device)

    def load(self, model: nn.Module, module_names: tuple[str, ...]) -> None:
        """Read the weights of `module_names` (e.g. ("unet",)) into `model`."""
        only = tuple(name + "." for name in module_names)
        for file in self.files:
            if not any((file.prefix + ours).startswith(only) for ours in file.key_map.entries):
                continue
            with open_tensors(file.path) as handle:
                _fill(model, file.key_map, handle, None, file.prefix, only)
        modules = dict(model.named_modules())
        for name in module_names:
            if name in modules:
                modules[name].to(self.device)

    def release(self, model: nn.Module, module_names: tuple[str, ...]) -> None:
        """Replace the weights of `module_names` by meta placeholders (same shapes and dtypes)."""
        only = tuple(name + "." for name in module_names)
        for file in self.files:
            for ours in file.key_map.entries:
                if not (file.prefix + ours).startswith(only):
                    continue
                module_name, _, attr = (file.prefix + ours).rpartition(".")
                module = model.get_submodule(module_name)
                old = module._parameters.get(attr)
                if old is not None:
                    placeholder = torch.empty_like(old, device="meta")
                    module._parameters[attr] = nn.Parameter(placeholder, old.requires_grad)
                else:
                    module._buffers[attr] = torch.empty_like(module._buffers[attr], device="meta")


def _check_all_filled(model: SVDModel) -> None:
    _materialize_constants(model)
    empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise CheckpointError(f"{len(empty)} parameters were not filled: {empty[:5]}")


def _dtype_counts(header: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for dtype, _ in header.values():
        counts[dtype] = counts.get(dtype, 0) + 1
    return counts


# Weights may be stored in any float format (converted on reading); integer or boolean tensors
# where weights belong mean a quantized or damaged file, which a plain cast would turn into garbage.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def _check_float_dtypes(header: dict, ignored: dict, where: str) -> None:
    """Raise CheckpointError if a tensor the model uses is not stored as floats."""
    wrong = {
        name: d for name, (d, _) in header.items() if name not in ignored and d not in FLOAT_DTYPES
    }
    if wrong:
        shown = ", ".join(f"{name} ({d})" for name, d in sorted(wrong.items())[:5])
        raise CheckpointError(
            f"{where}: {len(wrong)} weight tensors are not floating point, e.g. {shown}; expected "
            f"one of {', '.join(FLOAT_DTYPES)} (a quantized or damaged checkpoint?)"
        )


def _model_shapes(model: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {
        name[len(prefix) :]: tuple(t.shape)
        for name, t in model.state_dict().items()
        if name.startswith(prefix)
    }


def _load_official(
    path: Path, config: SVDConfig | None, dtype: torch.dtype, read_weights: bool = True
) -> tuple[SVDModel, LoadReport]:
    header = read_header(path)
    shapes = {name: shape for name, (_, shape) in header.items()}
    if not official.looks_official(shapes):
        raise CheckpointError(
            f"{str(path)!r} is not an SVD checkpoint: no 'model.diffusion_model.*' tensors "
            f"(it has {len(shapes)} tensors, e.g. {sorted(shapes)[:3]})"
        )
    saved_config = read_metadata(path).get("svd_core_config")
    if config is not None:
        inferred = "given by the caller"
    elif saved_config is not None:  # files written by svd_core.save carry their exact config
        try:
            config = SVDConfig.from_json(saved_config)
        except ValueError as error:
            raise CheckpointError(
                f"{str(path)!r}: the svd_core config saved in the file is damaged ({error}); "
                "pass config= (svd-core --config) to load it anyway"
            ) from None
        inferred = "the config svd_core saved in the file"
    else:
        try:
            config, inferred = official.infer_official_config(shapes, path.name)
        except CheckpointError as error:
            raise CheckpointError(f"{str(path)!r}: {error}") from None
    key_map = official.official_map(config)
    model = empty_model(config)
    try:
        ignored = key_map.check(shapes, _model_shapes(model))
    except KeyMapError as error:
        raise KeyMapError(f"{str(path)!r}: {error}") from None
    _check_float_dtypes(header, ignored, repr(str(path)))
    if read_weights:
        with open_tensors(path) as handle:
            _fill(model, key_map, handle, dtype)
        _check_all_filled(model)
    report = LoadReport(
        str(path), "official", config.name, inferred, [str(path)], ignored, _dtype_counts(header)
    )
    return model, report


def _load_diffusers(
    folder: Path,
    config: SVDConfig | None,
    dtype: torch.dtype,
    variant: str | None,
    read_weights: bool = True,
) -> tuple[SVDModel, LoadReport]:
    if config is None:
        config, inferred = diffusers_layout.read_config(folder)
    else:
        inferred = "given by the caller"
    model = empty_model(config)
    report = LoadReport(str(folder), "diffusers", config.name, inferred)
    for component, key_map in diffusers_layout.diffusers_maps(config).items():
        path = diffusers_layout.weight_file(folder, component, variant)
        header = read_header(path)
        shapes = {name: shape for name, (_, shape) in header.items()}
        try:
            ignored = key_map.check(shapes, _model_shapes(model, component + "."))
        except ValueError as error:
            raise CheckpointError(f"{component}/{path.name}: {error}") from None
        _check_float_dtypes(header, ignored, repr(str(path)))
        if read_weights:
            with open_tensors(path) as handle:
                _fill(model, key_map, handle, dtype, prefix=component + ".")
        report.files.append(str(path))
        report.ignored.update({f"{component}/{k}": why for k, why in ignored.items()})
        for name, count in _dtype_counts(header).items():
            report.checkpoint_dtypes[name] = report.checkpoint_dtypes.get(name, 0) + count
    if read_weights:
        _check_all_filled(model)
    return model, report


def resolve_source(
    source: str | os.PathLike,
    variant: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
) -> Path:
    """A local file or folder for `source`: itself if it exists, else a hub repo id through the cache."""
    path = Path(source)
    if path.exists():
        return path
    text = str(source)
    if not REPO_ID.match(text) or text.endswith(".safetensors"):
        raise CheckpointError(
            f"{text!r} is not an existing file or folder, nor a hub repo id like 'org/name'"
        )
    from .hub import download

    return download(text, variant=variant, filename=filename, revision=revision)


def inspect_checkpoint(
    source: str | os.PathLike, config: SVDConfig | None = None, **hub_options
) -> tuple[SVDModel, LoadReport]:
    """Load on the meta device (no weights read): the checks and the report of `load`, for `svd-core info`."""
    hub = {"variant": None, "filename": None, "revision": None, **hub_options}
    return _load(source, config, torch.float32, hub, read_weights=False)


def load(
    source: str | os.PathLike,
    config: SVDConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    variant: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
    low_memory: bool = False,
) -> SVDModel:
    """Load an SVD model from an official single file, a diffusers folder or a hub repo id.

    config: None infers the preset from the checkpoint (shapes, the VAE decoder kind, and the file
    name where shapes cannot tell svd from svd_xt); give an SVDConfig for other sizes.
    dtype: the parameters' dtype (converted tensor by tensor while reading). device: where to put them.
    variant ("fp16"), filename (an official file inside a hub repo) and revision apply to hub ids
    and diffusers folders. Returns an SVDModel in eval mode; `model.load_report` says what was found.
    Raises CheckpointError (a ValueError) with the evidence for anything that does not fit.

    low_memory=True checks the whole checkpoint as always but reads no weights: each part (image
    encoder, VAE encoder, UNet, VAE decoder; `svd_core.model.PARTS`) is read from the file only
    inside `with model.resident(part):` and freed after it. SVDPipeline then holds one part at a
    time (peak memory: about the UNet's weights plus its activations, instead of all weights), and
    reads the parts again on every call (from the page cache after the first). The results are the
    same as a plain model's, bit for bit. The checkpoint's files must stay in place while the
    model is used. The device is fixed here (`model.to(device)` would meet the placeholders);
    `SVDPipeline(model, dtype=...)` still chooses the dtypes.
    """
    if not isinstance(low_memory, bool):
        raise ValueError(f"low_memory must be True or False, got {low_memory!r}")
    hub = {"variant": variant, "filename": filename, "revision": revision}
    model, report = _load(source, config, dtype, hub, read_weights=not low_memory)
    logger.info("loaded %s", report.summary())
    if low_memory:
        model.to(dtype)  # the meta placeholders: each part is read in its placeholder's dtype
        _materialize_constants(model)
        encoder = model.image_encoder
        encoder.mean, encoder.std = encoder.mean.to(device), encoder.std.to(device)
        model.use_lazy_weights(LazyWeights(_weight_files(model.config, report), device))
    else:
        model.to(device)
    model.eval()
    model.load_report = report
    return model


def _weight_files(config: SVDConfig, report: LoadReport) -> list[WeightFile]:
    """The files a load read (or would read), each with its key map, for LazyWeights."""
    if report.layout == "official":
        return [WeightFile(Path(report.files[0]), official.official_map(config))]
    maps = diffusers_layout.diffusers_maps(config)  # report.files is in this order
    return [
        WeightFile(Path(path), key_map, component + ".")
        for (component, key_map), path in zip(maps.items(), report.files, strict=True)
    ]


def _load(source, config, dtype, hub, read_weights: bool = True) -> tuple[SVDModel, LoadReport]:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    path = resolve_source(source, **hub)
    if path.is_dir():
        if not diffusers_layout.is_diffusers_folder(path):
            raise CheckpointError(
                f"{str(path)!r} is a folder but not a diffusers SVD folder (no unet/, vae/ or "
                "image_encoder/ with a config.json); for an official checkpoint give the .safetensors file"
            )
        return _load_diffusers(path, config, dtype, hub["variant"], read_weights)
    return _load_official(path, config, dtype, read_weights)


def save(
    model: SVDModel,
    path: str | os.PathLike,
    layout: str = "official",
    dtype: torch.dtype | None = None,
    variant: str | None = None,
) -> Path:
    """Write `model` as an official single file (`path` ends in .safetensors) or a diffusers folder.

    The official file also carries the conditioning encoder's copy under first_stage_model.encoder,
    as the official files do. dtype converts on the way (None keeps the model's); variant names the
    diffusers weight files (e.g. "fp16" -> diffusion_pytorch_model.fp16.safetensors). Files are
    written atomically. Returns the path.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if dtype is not None and (
        not isinstance(dtype, torch.dtype) or dtype not in TORCH_DTYPES.values()
    ):
        raise ValueError(f"dtype must be a float torch.dtype, got {dtype!r}")
    path = Path(path)
    state = model.state_dict()
    if dtype is not None:
        state = {name: tensor.to(dtype) for name, tensor in state.items()}
    config: SVDConfig = model.config
    metadata = {"format": "pt", "svd_core_config": config.to_json()}
    if layout == "official":
        if path.suffix != ".safetensors":
            raise ValueError(f"an official checkpoint is one .safetensors file; got {str(path)!r}")
        tensors = official.official_map(config).to_theirs(state)
        tensors.update(official.duplicate_encoder_keys(tensors))
        return write_safetensors(tensors, path, metadata)
    if path.suffix:
        raise ValueError(f"a diffusers checkpoint is a folder; got a file name {str(path)!r}")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # an existing folder: each file is replaced atomically, one after the other
        _write_diffusers_folder(path, config, state, variant)
        return path
    # A new folder is built under a temporary name and renamed into place: a failure or an
    # interrupt leaves no half-written folder behind.
    with atomic_folder(path) as temporary:
        _write_diffusers_folder(temporary, config, state, variant)
    return path


def _write_diffusers_folder(
    folder: Path, config: SVDConfig, state: dict, variant: str | None
) -> None:
    """The configs and the three weight files of a diffusers folder, each written atomically."""
    diffusers_layout.write_folder_configs(folder, config)
    for component, key_map in diffusers_layout.diffusers_maps(config).items():
        sub = {
            name[len(component) + 1 :]: t
            for name, t in state.items()
            if name.startswith(component + ".")
        }
        stem = diffusers_layout.WEIGHT_STEMS[component]
        name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
        write_safetensors(key_map.to_theirs(sub), folder / component / name, {"format": "pt"})
