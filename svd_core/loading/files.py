"""Safetensors files: a validating header reader, lazy tensor access, atomic writing."""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..io import atomic_file

# Safetensors dtype names -> bytes per element.
_ITEM_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be read as what it claims to be."""


def _refuse_pickle(path: Path, head: bytes) -> None:
    """CheckpointError for a pickle checkpoint (torch.save's zip archive, or a plain pickle).

    svd_core never unpickles a file: unpickling runs whatever code the file names, so a checkpoint
    from the internet could do anything. torch.load(..., weights_only=True) unpickles tensors
    only, refusing any other code; the message says how to convert with it, once.
    """
    zip_archive = head.startswith(b"PK\x03\x04")  # torch.save since PyTorch 1.6: a zip of pickles
    plain_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # PROTO opcode
    if not (zip_archive or plain_pickle):
        return
    kind = "a PyTorch zip archive (torch.save)" if zip_archive else "a Python pickle"
    target = path.with_suffix(".safetensors")
    raise CheckpointError(
        f"{str(path)!r} is a pickle checkpoint ({kind}), not safetensors. svd_core does not "
        "unpickle files, because unpickling can run any code the file contains. If you trust "
        'where it came from, convert it once: python -c "import torch, safetensors.torch as st; '
        f"sd = torch.load({str(path)!r}, weights_only=True); sd = sd.get('state_dict', sd); "
        f'st.save_file({{k: v.contiguous() for k, v in sd.items()}}, {str(target)!r})" '
        f"(weights_only=True loads tensors and refuses code), then pass {str(target)!r}"
    )


def read_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) of a safetensors file, checked against the file's size.

    Raises CheckpointError for a missing file, a pickle checkpoint (.ckpt, .pt: refused, with how
    to convert it), a file that is not safetensors (bad header length or JSON) and a truncated file
    (tensor data past the end), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        _refuse_pickle(path, head)
        if len(head) < 8:
            raise CheckpointError(
                f"{str(path)!r} is not a safetensors file: it has only {size} bytes"
            )
        (header_len,) = struct.unpack("<Q", head)
        if header_len == 0 or header_len > min(size - 8, 100_000_000):
            raise CheckpointError(
                f"{str(path)!r} is not a safetensors file, or is truncated (header length "
                f"{header_len} does not fit in a file of {size} bytes); expected a whole "
                ".safetensors checkpoint"
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
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(
            f"{str(path)!r}: corrupted header: __metadata__ must map strings to strings"
        )
    tensors, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, start, end = _header_entry(path, name, info)
        expected = _ITEM_SIZES[dtype] * _numel(shape)
        if end > data_size:
            raise CheckpointError(
                f"{str(path)!r} is truncated: tensor {name!r} ends at byte {end} of the data section, "
                f"which has only {data_size} bytes; download the file again"
            )
        if end - start != expected:
            raise CheckpointError(
                f"{str(path)!r}: tensor {name!r} has {end - start} bytes, expected {expected}"
            )
        tensors[name] = (dtype, shape)
        spans.append((start, end, name))
    # The safetensors format packs the tensors back to back, without gaps, to the end of the file.
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise CheckpointError(
                f"{str(path)!r}: corrupted header: tensor {name!r} starts at byte {start} of the "
                f"data section, expected {position} (tensors must be stored back to back)"
            )
        position = end
    if position != data_size:
        raise CheckpointError(
            f"{str(path)!r}: corrupted file: {data_size - position} bytes after the last tensor "
            "(the header does not describe the whole file); download the file again"
        )
    return tensors


def _header_entry(path: Path, name: str, info) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of one header entry, each checked for type and sign."""
    try:
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{str(path)!r}: corrupted header entry for tensor {name!r}"
        ) from None
    if dtype not in _ITEM_SIZES:
        raise CheckpointError(
            f"{str(path)!r}: tensor {name!r} has dtype {dtype!r}, which svd_core does not read "
            f"(known: {', '.join(_ITEM_SIZES)})"
        )
    numbers = [*shape, *offsets] if isinstance(shape, list) and isinstance(offsets, list) else None
    if (
        numbers is None
        or len(offsets) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(
            f"{str(path)!r}: corrupted header entry for tensor {name!r}: shape {shape!r} and "
            f"data_offsets {offsets!r} must be non-negative integers, [start, end] with start <= end"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


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


# Safetensors dtype names -> the torch dtype a tensor is read as.
_READ_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


class TensorReader:
    """A safetensors file read one tensor at a time: mapped where it can be, copied where it must.

    `get_tensor(name)` is a view of a private memory map of the file: no copy, the pages are read
    from disk on first use, and writing to the tensor copies the page (the file never changes).
    `read_into(name, out)` fills a tensor of the caller's with positional file reads, converting
    the dtype, never through the map. Resident memory counts a mapped page once touched, so
    copying out of the map would count every copied tensor twice, as the file's pages and as the
    copy (measured: 3.2x the loaded weights for a float32 file loaded as float16). Conversions go
    through one reused buffer, so nothing but the caller's tensors stays allocated. Errors (a file
    changed or damaged after `read_header` checked it) are CheckpointErrors naming the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        read_header(self.path)  # validates the whole header against the file size
        self._file = open(self.path, "rb", buffering=0)
        (header_len,) = struct.unpack("<Q", self._file.read(8))
        header = json.loads(self._file.read(header_len))
        self._data_start = 8 + header_len
        self._entries = {
            name: _header_entry(self.path, name, info)
            for name, info in header.items()
            if name != "__metadata__"
        }
        self._map: mmap.mmap | None = None  # made on the first get_tensor
        self._buffer = torch.empty(0, dtype=torch.uint8)  # reused by conversions

    def keys(self) -> list[str]:
        """The tensor names in the file."""
        return list(self._entries)

    def dtype(self, name: str) -> torch.dtype:
        """The torch dtype tensor `name` is stored in."""
        stored = self._entry(name)[0]
        if stored not in _READ_DTYPES:
            raise CheckpointError(
                f"{str(self.path)!r}: tensor {name!r} has dtype {stored!r}, which svd_core does "
                f"not read (readable: {', '.join(_READ_DTYPES)})"
            )
        return _READ_DTYPES[stored]

    def get_tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` as stored: a view of the file's private memory map (no copy)."""
        dtype, (_, shape, start, end) = self.dtype(name), self._entry(name)
        if end == start:
            return torch.empty(shape, dtype=dtype)
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        flat = torch.frombuffer(
            self._map,
            dtype=dtype,
            count=(end - start) // dtype.itemsize,
            offset=self._data_start + start,
        )
        return flat.view(shape)

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Read tensor `name` into `out` (same shape, any dtype and strides) by positional reads."""
        dtype, (_, shape, start, end) = self.dtype(name), self._entry(name)
        if tuple(out.shape) != shape:
            raise CheckpointError(
                f"{str(self.path)!r}: tensor {name!r} has shape {list(shape)}, "
                f"the destination {list(out.shape)}"
            )
        if out.dtype == dtype and out.is_contiguous():  # straight into the destination's bytes
            self._read_bytes(out.reshape(-1).view(torch.uint8), name, start, end)
            return
        if self._buffer.numel() < end - start:
            self._buffer = torch.empty(end - start, dtype=torch.uint8)
        raw = self._buffer[: end - start]
        self._read_bytes(raw, name, start, end)
        out.copy_(raw.view(dtype).view(shape))

    def _entry(self, name: str) -> tuple[str, tuple[int, ...], int, int]:
        if name not in self._entries:
            raise CheckpointError(f"{str(self.path)!r} has no tensor {name!r}")
        return self._entries[name]

    def _read_bytes(self, target: torch.Tensor, name: str, start: int, end: int) -> None:
        """Fill the uint8 tensor `target` with bytes [start, end) of the data section."""
        if end == start:
            return
        buffer = memoryview(target.numpy())
        self._file.seek(self._data_start + start)
        filled = 0
        while filled < end - start:  # one read returns at most ~2 GiB on Linux
            count = self._file.readinto(buffer[filled:])
            if not count:
                raise CheckpointError(
                    f"{str(self.path)!r} ended inside tensor {name!r}: the file was truncated or "
                    "replaced while loading; download it again"
                )
            filled += count

    def close(self) -> None:
        """Close the file; the map lives on as long as tensors view it."""
        self._file.close()
        self._map = None
        self._buffer = torch.empty(0, dtype=torch.uint8)


@contextmanager
def open_tensors(path: str | os.PathLike) -> Iterator[TensorReader]:
    """A safetensors file opened as a TensorReader: `get_tensor` (mapped), `read_into` (copied)."""
    reader = TensorReader(path)
    try:
        yield reader
    finally:
        reader.close()


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
