"""TensorReader: views of the mapped file where the dtype matches, positional reads elsewhere.

The reference values come from safetensors' own reader (`safetensors.torch.load_file`).
"""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import svd_core
from svd_core import SVDConfig
from svd_core.loading import CheckpointError, save
from svd_core.loading.files import TensorReader, open_tensors
from svd_core.model import SVDModel

torch.set_num_threads(1)


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.safetensors"
    generator = torch.Generator().manual_seed(0)
    save_file(
        {
            "matrix": torch.randn(6, 4, generator=generator),
            "half": torch.randn(5, generator=generator).half(),
            "brain": torch.randn(3, 2, generator=generator).bfloat16(),
            "count": torch.arange(4, dtype=torch.int64),
            "empty": torch.zeros(0, 3),
        },
        path,
    )
    return path


def test_get_tensor_is_a_copy_on_write_view_of_the_file(small_file):
    reference = load_file(small_file)
    with open_tensors(small_file) as reader:
        matrix = reader.get_tensor("matrix")
        half = reader.get_tensor("half")
    assert torch.equal(matrix, reference["matrix"]) and half.dtype == torch.float16
    assert torch.equal(half, reference["half"])
    matrix += 1  # writes stay in memory: the file is never written
    assert torch.equal(matrix, reference["matrix"] + 1)
    assert torch.equal(load_file(small_file)["matrix"], reference["matrix"])


def test_read_into_converts_and_fills_strided_destinations(small_file):
    reference = load_file(small_file)
    with open_tensors(small_file) as reader:
        transposed = torch.empty(4, 6, dtype=torch.float64)
        reader.read_into("matrix", transposed.t())  # a non-contiguous destination
        as_float = torch.empty(3, 2)
        reader.read_into("brain", as_float)
        same = torch.empty(5, dtype=torch.float16)
        reader.read_into("half", same)
        counts = torch.empty(4, dtype=torch.int64)
        reader.read_into("count", counts)
        empty = torch.empty(0, 3)
        reader.read_into("empty", empty)
    assert torch.equal(transposed, reference["matrix"].double().t())
    assert torch.equal(as_float, reference["brain"].float())
    assert torch.equal(same, reference["half"])
    assert torch.equal(counts, torch.arange(4))


def test_reader_errors_name_the_file_and_the_tensor(small_file, tmp_path):
    reader = TensorReader(small_file)
    with pytest.raises(CheckpointError, match="has no tensor 'nope'"):
        reader.get_tensor("nope")
    with pytest.raises(CheckpointError, match=r"shape \[6, 4\], the destination \[4, 6\]"):
        reader.read_into("matrix", torch.empty(4, 6))
    reader.close()

    unsigned = tmp_path / "unsigned.safetensors"
    save_file({"u": torch.zeros(3, dtype=torch.uint16)}, unsigned)
    with open_tensors(unsigned) as reader, pytest.raises(CheckpointError, match="'U16'"):
        reader.dtype("u")


def test_a_file_cut_short_while_reading_is_a_checkpoint_error(small_file):
    reader = TensorReader(small_file)
    os.truncate(small_file, reader._data_start)  # after the header check, as a download might
    with pytest.raises(CheckpointError, match="ended inside tensor 'matrix'"):
        reader.read_into("matrix", torch.empty(6, 4))
    reader.close()


def test_a_loaded_model_is_writable_and_never_writes_to_its_file(tmp_path):
    torch.manual_seed(0)
    path = save(SVDModel(SVDConfig.tiny()), tmp_path / "svd_xt.safetensors")
    stored = load_file(path)
    model = svd_core.load(path)  # float32 as stored: parameters view the mapped file
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(2)  # exact in floating point
    after = load_file(path)
    assert after.keys() == stored.keys()
    assert all(torch.equal(after[k], t) for k, t in stored.items())
    changed = model.unet.conv_in.weight  # official name: input_blocks.0.0
    assert torch.equal(changed, 2 * stored["model.diffusion_model.input_blocks.0.0.weight"])


def test_loading_does_not_import_torch_dynamo(tmp_path):
    """Building the model on the meta device stays clear of ops that import torch._dynamo (~2 s)."""
    path = save(SVDModel(SVDConfig.tiny()), tmp_path / "svd_xt.safetensors")
    code = (
        "import sys, svd_core; svd_core.load(sys.argv[1]); sys.exit('torch._dynamo' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
