"""Write a random checkpoint of full size, once, for the benchmarks: official file and diffusers folder.

    python benchmarks/make_weights.py [--preset svd_xt] [--dtypes float16 float32] [--cache DIR]

Under `<cache>/<preset>/` (default cache ~/.cache/svd_core_bench, or $SVD_CORE_BENCH_CACHE):
`<preset>_fp16.safetensors`, `<preset>_fp32.safetensors` (the official single-file layout, with the
duplicate conditioning encoder, as `svd_core.save` writes it) and `diffusers/` (the diffusers folder
with every component's weights as `*.safetensors` in float32 and `*.fp16.safetensors`).

The values are small normal noise: a benchmark of loading needs the shapes and dtypes, not trained
weights. Each of our parameters gets its own noise, seeded by its name, so every file holds the
same model. Nothing is built in memory: the file header is computed from the key maps and the
meta-device model's shapes, then one parameter at a time is drawn, laid out as the checkpoint
stores it (split, transposed, ...) and written. This is the layout `svd_core.save` writes
(tests/test_benchmarks.py compares them), without `save`'s need for the whole model in memory.
Files that exist with the expected header are kept; new files appear atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `svd_core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svd_core import SVDConfig
from svd_core.io import atomic_file
from svd_core.loading import diffusers_layout, official
from svd_core.loading.api import empty_model
from svd_core.loading.files import CheckpointError, read_header, read_metadata
from svd_core.loading.keymap import KeyMap

DEFAULT_CACHE = Path(
    os.environ.get("SVD_CORE_BENCH_CACHE", Path.home() / ".cache" / "svd_core_bench")
)
DTYPES = {"float16": (torch.float16, "F16", "fp16"), "float32": (torch.float32, "F32", "fp32")}
LAYOUTS = ("official", "diffusers")
PRESETS = ("svd", "svd_xt", "svd_xt_1_1", "tiny")
NOISE_STD = 0.02


@dataclass(frozen=True)
class Placed:
    """One checkpoint tensor: where its bytes go, and which of our parameters (and part) it holds."""

    name: str
    shape: tuple[int, ...]
    ours: str
    part: int  # index into rule.to_theirs(our tensor)
    start: int  # byte offset in the data section
    end: int


def noise(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 normal noise (std NOISE_STD) for our parameter `name`, the same in every file."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator).mul_(NOISE_STD)


def plan_file(
    key_map: KeyMap,
    our_shapes: dict[str, tuple[int, ...]],
    item_size: int,
    copies: tuple[str, str] | None = None,
) -> list[Placed]:
    """The tensors of one file in write order, with byte ranges, from the key map alone.

    copies (source prefix, target prefix): checkpoint tensors under the source prefix are also
    written under the target prefix (the official file's duplicate conditioning encoder).
    """
    placed: list[Placed] = []
    offset = 0
    for ours, rule in key_map.entries.items():
        for part, (key, shape) in enumerate(
            zip(rule.keys, rule.their_shapes(our_shapes[ours]), strict=True)
        ):
            names = [key]
            if copies and key.startswith(copies[0]):
                names.append(copies[1] + key[len(copies[0]) :])
            for name in names:
                size = item_size * _numel(shape)
                placed.append(Placed(name, tuple(shape), ours, part, offset, offset + size))
                offset += size
    return placed


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _header_bytes(placed: list[Placed], dtype_name: str, metadata: dict[str, str]) -> bytes:
    header = {"__metadata__": metadata}
    for p in placed:
        header[p.name] = {
            "dtype": dtype_name,
            "shape": list(p.shape),
            "data_offsets": [p.start, p.end],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw


def _is_complete(path: Path, placed: list[Placed], dtype_name: str, metadata: dict) -> bool:
    """Whether `path` already holds exactly this file (same tensors, shapes, dtype and metadata)."""
    try:
        header = read_header(path)  # checks the size against every tensor: no truncated file passes
        if read_metadata(path) != metadata:
            return False
    except CheckpointError:
        return False
    return header == {p.name: (dtype_name, p.shape) for p in placed}


def write_random_file(
    path: Path,
    key_map: KeyMap,
    our_shapes: dict[str, tuple[int, ...]],
    dtype: str,
    metadata: dict[str, str],
    copies: tuple[str, str] | None = None,
    prefix: str = "",
) -> bool:
    """Write one safetensors file of noise in `key_map`'s layout, streaming parameter by parameter.

    prefix: what our names in `key_map` lack to be SVDModel names ("unet." for the diffusers UNet
    map), so that each parameter's noise is the same in every layout. Memory: one parameter at a time (the largest is tens of MB). Returns False if the file was
    already complete and kept, True if written.
    """
    torch_dtype, dtype_name, _ = DTYPES[dtype]
    item_size = torch.empty((), dtype=torch_dtype).element_size()
    placed = plan_file(key_map, our_shapes, item_size, copies)
    if _is_complete(path, placed, dtype_name, metadata):
        return False
    by_ours: dict[str, list[Placed]] = {}
    for p in placed:
        by_ours.setdefault(p.ours, []).append(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temporary, open(temporary, "wb") as out:
        out.write(_header_bytes(placed, dtype_name, metadata))
        for ours, places in by_ours.items():  # write order = plan order: offsets are sequential
            rule = key_map.entries[ours]
            parts = rule.to_theirs(noise(prefix + ours, our_shapes[ours]))
            for p in places:
                tensor = parts[p.part].to(torch_dtype).contiguous().reshape(-1)
                out.write(tensor.view(torch.uint8).numpy().data)
    return True


def official_path(cache: Path, preset: str, dtype: str) -> Path:
    """Where the official-layout file of `preset` in `dtype` lives under `cache`."""
    return Path(cache) / preset / f"{preset}_{DTYPES[dtype][2]}.safetensors"


def diffusers_path(cache: Path, preset: str) -> Path:
    """Where the diffusers folder of `preset` lives under `cache` (both dtypes, as variants)."""
    return Path(cache) / preset / "diffusers"


def variant(dtype: str) -> str | None:
    """The diffusers variant name of a dtype's weight files: "fp16", or None for float32."""
    return "fp16" if dtype == "float16" else None


def make_weights(
    cache: str | os.PathLike = DEFAULT_CACHE,
    preset: str = "svd_xt",
    dtypes: tuple[str, ...] = ("float16", "float32"),
    layouts: tuple[str, ...] = LAYOUTS,
    log=print,
) -> dict[str, Path]:
    """Write what is missing of the random `preset` checkpoint; return {"official-float16": path, ...}.

    dtypes: "float16", "float32". layouts: "official" (one file per dtype), "diffusers" (one folder,
    float32 weights plain and float16 weights as the "fp16" variant).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    for layout in layouts:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    config: SVDConfig = getattr(SVDConfig, preset)()
    shapes = {name: tuple(t.shape) for name, t in empty_model(config).state_dict().items()}
    paths = {}
    for dtype in dtypes:
        if "official" in layouts:
            path = official_path(cache, preset, dtype)
            metadata = {"format": "pt", "svd_core_config": config.to_json()}
            wrote = write_random_file(
                path,
                official.official_map(config),
                shapes,
                dtype,
                metadata,
                copies=official.DUPLICATE_ENCODER,
            )
            log(f"{'wrote' if wrote else 'kept '} {path}")
            paths[f"official-{dtype}"] = path
        if "diffusers" in layouts:
            folder = diffusers_path(cache, preset)
            diffusers_layout.write_folder_configs(folder, config)
            for component, key_map in diffusers_layout.diffusers_maps(config).items():
                stem = diffusers_layout.WEIGHT_STEMS[component]
                name = f"{stem}.{variant(dtype)}" if variant(dtype) else stem
                path = folder / component / f"{name}.safetensors"
                prefix = component + "."
                component_shapes = {
                    k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)
                }
                wrote = write_random_file(
                    path, key_map, component_shapes, dtype, {"format": "pt"}, prefix=prefix
                )
                log(f"{'wrote' if wrote else 'kept '} {path}")
            paths[f"diffusers-{dtype}"] = folder
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--preset", default="svd_xt", choices=PRESETS)
    parser.add_argument(
        "--dtypes", nargs="+", default=["float16", "float32"], choices=sorted(DTYPES)
    )
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    make_weights(args.cache, args.preset, tuple(args.dtypes), tuple(args.layouts))


if __name__ == "__main__":
    main()
