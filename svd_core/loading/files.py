"""Safetensors files: a validating header reader, lazy tensor access, atomic writing."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_file

# Safetensors dtype names -> bytes per element.
_ITEM_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be read as what it claims to be."""


def read_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) of a safetensors file, checked against the file's size.

    Raises CheckpointError for a missing file, a file that is not safetensors (bad header length or
    JSON) and a truncated file (tensor data past the end), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{str(path)!r} is not a safetensors file: it has only {size} bytes"
            )
        (header_len,) = struct.unpack("<Q", head)
        if header_len == 0 or header_len > min(size - 8, 100_000_000):
            raise CheckpointError(
                f"{str(path)!r} is not a safetensors file (header length {header_len} does not fit "
                f"in a file of {size} bytes); expected a .safetensors checkpoint"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{str(path)!r} is not a safetensors file: its header is not JSON"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{str(path)!r} is not a safetensors file: its header is not a JSON object"
        )
    data_size = size - 8 - header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{str(path)!r}: corrupted header entry for tensor {name!r}"
            ) from None
        expected = _ITEM_SIZES.get(dtype, 0) * _numel(shape)
        if end > data_size:
            raise CheckpointError(
                f"{str(path)!r} is truncated: tensor {name!r} ends at byte {end} of the data section, "
                f"which has only {data_size} bytes; download the file again"
            )
        if dtype in _ITEM_SIZES and end - start != expected:
            raise CheckpointError(
                f"{str(path)!r}: tensor {name!r} has {end - start} bytes, expected {expected}"
            )
        tensors[name] = (dtype, shape)
    return tensors


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The free-form string metadata of a safetensors file (after `read_header` validated it)."""
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        metadata = json.loads(handle.read(header_len)).get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


@contextmanager
def open_tensors(path: str | os.PathLike) -> Iterator:
    """A memory-mapped safetensors file: `handle.get_tensor(name)` reads one tensor when asked."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        yield handle


def write_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write tensors to `path` atomically (a temporary file renamed into place)."""
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    with atomic_file(path) as temporary:
        save_file(contiguous, temporary, metadata=metadata)
    return Path(path)


TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
