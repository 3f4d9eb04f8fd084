"""Loading and saving: official single files, diffusers folders, hub ids; strict, lazy, both directions.

Checkpoint faults are property-tested (hypothesis, derandomized): any corrupted header byte and a
truncation at any length load or raise a CheckpointError naming the file; so do damaged headers,
integer weights, renamed keys, a folder of another model, and a full disk while saving (which
leaves nothing). tests/README.md lists the hazards and the example counts."""

import errno
import json
import os
import re
import struct

import pytest
import torch
from helpers import EXAMPLES, OFFICIAL_KEYS, PROPERTY, disk_full, randomize
from hypothesis import example, given, settings
from hypothesis import strategies as st

import svd_core.cli
import svd_core.loading.files
from svd_core import ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig
from svd_core.loading import CheckpointError, inspect_checkpoint, load, save
from svd_core.loading.api import empty_model
from svd_core.loading.hub import download_command
from svd_core.loading.official import infer_official_config, official_map
from svd_core.model import SVDModel

pytestmark = pytest.mark.usefixtures("one_thread", "example_count")


def random_model(config: SVDConfig, seed: int = 0) -> SVDModel:
    """Every parameter random, so a mix-up of any two tensors shows."""
    torch.manual_seed(seed)
    model = SVDModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def tiny():
    return random_model(SVDConfig.tiny())


@pytest.fixture(scope="module")
def official_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "svd_xt.safetensors"
    return save(tiny, path, layout="official")


@pytest.fixture(scope="module")
def diffusers_folder(tiny, tmp_path_factory):
    return save(tiny, tmp_path_factory.mktemp("diffusers") / "svd", layout="diffusers")


def test_official_round_trip_is_bit_exact(tiny, official_file):
    loaded = load(official_file, config=SVDConfig.tiny())
    assert_same_state(tiny, loaded)
    # ... and saving the loaded model writes the same tensors again.
    again = save(loaded, official_file.with_name("again.safetensors"))
    from safetensors.torch import load_file

    first, second = load_file(official_file), load_file(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_official_file_carries_the_duplicate_encoder_and_it_is_ignored_by_name(official_file):
    loaded = load(official_file, config=SVDConfig.tiny())
    ignored = loaded.load_report.ignored
    assert ignored and all(key.startswith("first_stage_model.encoder.") for key in ignored)
    assert all("conditioner.embedders.3" in why for why in ignored.values())


def test_diffusers_round_trip_is_bit_exact_and_config_is_read_from_json(tiny, diffusers_folder):
    loaded = load(diffusers_folder)
    assert_same_state(tiny, loaded)
    assert loaded.config.unet == tiny.config.unet
    assert loaded.config.vae == tiny.config.vae
    assert loaded.config.image_encoder == tiny.config.image_encoder


def test_official_to_diffusers_to_official(tiny, official_file, tmp_path):
    from_official = load(official_file, config=SVDConfig.tiny())
    folder = save(from_official, tmp_path / "d", layout="diffusers")
    back = save(load(folder), tmp_path / "o.safetensors", layout="official")
    assert_same_state(tiny, load(back, config=SVDConfig.tiny()))


def test_dtype_is_converted_while_loading(official_file):
    half = load(official_file, config=SVDConfig.tiny(), dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert half.image_encoder.mean.dtype == torch.float32  # constants, not weights


def test_loaded_model_has_no_meta_tensors_and_is_in_eval_mode(official_file):
    model = load(official_file, config=SVDConfig.tiny())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert not model.training


def test_diffusers_loads_our_folder_and_agrees_with_us(tiny, diffusers_folder):
    """diffusers' own classes read the folder we wrote; their components give our outputs."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    unet = UNetSpatioTemporalConditionModel.from_pretrained(
        diffusers_folder, subfolder="unet"
    ).eval()
    vae = AutoencoderKLTemporalDecoder.from_pretrained(diffusers_folder, subfolder="vae").eval()
    encoder = CLIPVisionModelWithProjection.from_pretrained(
        diffusers_folder, subfolder="image_encoder"
    ).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        pixels = torch.randn(2, 3, 56, 56)
        ours = tiny.image_encoder.encode_pixels(pixels)
        assert torch.allclose(encoder(pixel_values=pixels).image_embeds, ours, rtol=1e-5, atol=1e-5)
        image = torch.rand(2, 3, 64, 64) * 2 - 1
        assert torch.allclose(
            vae.encode(image).latent_dist.mode(), tiny.vae.encode(image), atol=1e-4
        )
        assert unet.conv_in.weight.shape == tiny.unet.state_dict()[_first_conv_name(tiny)].shape


def _first_conv_name(model: SVDModel) -> str:
    return next(name for name, t in model.unet.state_dict().items() if t.ndim == 4)


def test_a_folder_diffusers_saved_loads_with_identical_outputs(tmp_path):
    """diffusers writes the folder; we read it; the UNet outputs are identical."""
    from diffusers import UNetSpatioTemporalConditionModel

    from svd_core.loading.unet_maps import diffusers_unet_config

    source = random_model(SVDConfig.tiny(), seed=3)
    folder = save(source, tmp_path / "ours", layout="diffusers")
    unet = UNetSpatioTemporalConditionModel.from_pretrained(folder, subfolder="unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01)  # diffusers' weights now differ from `source`
    unet.save_pretrained(folder / "unet")
    assert diffusers_unet_config(SVDConfig.tiny().unet)  # the config it wrote is ours
    loaded = load(folder)
    for ours, theirs in zip(
        sorted(loaded.unet.state_dict().values(), key=lambda t: (t.shape, t.sum().item())),
        sorted(unet.state_dict().values(), key=lambda t: (t.shape, t.sum().item())),
        strict=True,
    ):
        assert torch.equal(ours.reshape(theirs.shape), theirs)


# ---- presets, inference, full size --------------------------------------------------------------


def official_shapes() -> dict[str, tuple[int, ...]]:
    with open(OFFICIAL_KEYS) as handle:
        return {k: tuple(v) for k, v in json.load(handle)["tensors"].items()}


def test_full_size_official_key_set_matches_every_tensor_of_the_official_file():
    shapes = official_shapes()
    config, how = infer_official_config(shapes, "svd_xt.safetensors")
    assert config.name == "svd_xt" and "file name" in how
    model = empty_model(config)
    ignored = official_map(config).check(
        shapes, {k: tuple(v.shape) for k, v in model.state_dict().items()}
    )
    # Used: everything of the UNet, the conditioning encoder + quant_conv, the decoder, the CLIP tower.
    assert len(shapes) - len(ignored) == len(model.state_dict())
    reasons = set(ignored.values())
    assert len(reasons) >= 3  # text-tower leftovers, duplicate encoder, unused conditioning decoder
    assert (
        sum(p.numel() for p in model.parameters()) == 1524623082 + 632076800 + 34163664 + 63579183
    )


@pytest.mark.parametrize(
    "filename,name",
    [
        ("svd.safetensors", "svd"),
        ("svd_xt.safetensors", "svd_xt"),
        ("svd_xt_1_1.safetensors", "svd_xt_1_1"),
    ],
)
def test_preset_is_inferred_from_the_file_name_where_shapes_cannot_tell(filename, name):
    config, how = infer_official_config(official_shapes(), filename)
    assert config.name == name and filename in how


def test_image_decoder_variant_is_inferred_from_the_shapes():
    shapes = {
        k: v
        for k, v in official_shapes().items()
        if ".time_stack." not in k or "diffusion_model" in k
    }
    shapes = {
        k: v
        for k, v in shapes.items()
        if not k.startswith("first_stage_model.decoder.") or "mix_factor" not in k
    }
    config, how = infer_official_config(shapes, "svd.safetensors")
    assert not config.vae.temporal_decoder and "image-decoder" in how


def test_info_inspects_without_reading_weights(official_file, capsys):
    model, report = inspect_checkpoint(official_file)
    assert next(model.parameters()).is_meta
    assert report.layout == "official" and "unused" in report.summary()
    assert svd_core.cli.main(["info", str(official_file)]) == 0
    out = capsys.readouterr().out
    assert "layout:  official" in out and "the config svd_core saved in the file" in out


def test_files_we_saved_carry_their_config_and_others_are_inferred(official_file, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    assert load(official_file).config == SVDConfig.tiny()
    bare = tmp_path / "svd.safetensors"
    save_file(load_file(official_file), bare)  # same tensors, no svd_core metadata
    with pytest.raises(CheckpointError, match="official presets"):
        load(bare)  # tiny widths: no official preset fits, and the error says to pass config=
    assert svd_core.cli.main(["info", str(bare)]) == 2
    assert "official presets" in capsys.readouterr().err


# ---- errors -------------------------------------------------------------------------------------


def test_not_safetensors_truncated_and_corrupted_files(tmp_path, official_file):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load(text)
    data = official_file.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load(truncated, config=SVDConfig.tiny())
    (header_len,) = struct.unpack("<Q", data[:8])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(data[:8] + b"{" * header_len + data[8 + header_len :])
    with pytest.raises(CheckpointError, match="header is not JSON"):
        load(corrupt)


def test_a_stable_diffusion_file_is_not_an_svd_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "v1-5-pruned.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(320, 320, 1, 1),
        },
        path,
    )
    with pytest.raises(
        CheckpointError, match="not an SVD checkpoint.*no temporal layers.*4 channels"
    ):
        load(path)
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an SVD checkpoint"):
        load(other)


def test_renamed_and_reshaped_keys_are_named(tmp_path, official_file):
    from safetensors.torch import load_file, save_file

    tensors = load_file(official_file)
    victim = sorted(k for k in tensors if k.startswith("model.diffusion_model."))[0]
    tensors["model.diffusion_model.renamed"] = tensors.pop(victim)
    path = tmp_path / "renamed.safetensors"
    save_file(tensors, path)
    with pytest.raises(CheckpointError) as info:
        load(path, config=SVDConfig.tiny())
    assert victim in str(info.value) and "model.diffusion_model.renamed" in str(info.value)

    tensors = load_file(official_file)
    key = next(k for k in tensors if k.endswith("proj_in.weight"))
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=f"{key}: checkpoint has \\[3, 3\\], model expects"):
        load(path, config=SVDConfig.tiny())


def test_missing_subfolder_and_missing_paths(tmp_path, diffusers_folder):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(diffusers_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(CheckpointError, match="missing subfolder.*vae"):
        load(broken)
    with pytest.raises(CheckpointError, match="not an existing file or folder"):
        load(tmp_path / "nowhere.safetensors")
    with pytest.raises(CheckpointError, match="not a diffusers SVD folder"):
        load(tmp_path)


def test_save_rejects_bad_layouts_and_paths(tiny, tmp_path):
    with pytest.raises(ValueError, match="layout"):
        save(tiny, tmp_path / "x.safetensors", layout="ckpt")
    with pytest.raises(ValueError, match="one .safetensors file"):
        save(tiny, tmp_path / "x.bin")
    with pytest.raises(ValueError, match="is a folder"):
        save(tiny, tmp_path / "x.safetensors", layout="diffusers")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save(tiny, tmp_path / "no" / "x.safetensors")


# ---- hub ids, through a local cache the test builds ---------------------------------------------


def build_hub_cache(cache, repo_id, files: dict) -> None:
    """Lay out the huggingface_hub cache for one repo: blobs, a snapshot of links, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for relative, source in files.items():
        target = repo / "snapshots" / commit / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())


def test_hub_repo_id_loads_offline_from_the_cache(
    tiny, diffusers_folder, official_file, tmp_path, monkeypatch
):
    cache = tmp_path / "hub"
    files = {
        str(p.relative_to(diffusers_folder)): p for p in diffusers_folder.rglob("*") if p.is_file()
    }
    files["svd_xt.safetensors"] = official_file
    build_hub_cache(cache, "someone/tiny-svd", files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert_same_state(tiny, load("someone/tiny-svd"))
    assert_same_state(
        tiny, load("someone/tiny-svd", filename="svd_xt.safetensors", config=SVDConfig.tiny())
    )
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache") as info:
        load("someone/not-cached")
    # the command the installed huggingface-hub really has (1.x: only `hf`)
    assert f"`{download_command()} someone/not-cached`" in str(info.value)


def test_the_download_command_is_the_one_the_installed_huggingface_hub_has():
    import shutil
    import sys
    from importlib.metadata import version
    from pathlib import Path

    command = download_command().split()[0]
    scripts = Path(sys.executable).parent  # where pip put huggingface-hub's console scripts
    assert (scripts / command).is_file() or shutil.which(command), (
        command,
        version("huggingface-hub"),
    )
    major = int(version("huggingface-hub").split(".")[0])
    if major >= 1:  # huggingface-cli is gone from 1.0 on
        assert command == "hf"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip archive", "plain pickle"])
@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".safetensors"])
def test_a_pickle_checkpoint_is_refused_as_a_pickle_with_how_to_convert_it(
    legacy, suffix, tmp_path
):
    path = tmp_path / f"model{suffix}"
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}}, path, _use_new_zipfile_serialization=not legacy
    )
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert "is a pickle checkpoint" in message and "header length" not in message
    assert "does not unpickle" in message and "can run any code" in message
    assert "weights_only=True" in message and "model.safetensors" in message
    assert "\n" not in message


def test_an_image_model_is_named_as_one_without_contradicting_itself():
    shapes = {k: v for k, v in official_shapes().items() if ".time_stack." not in k}
    with pytest.raises(CheckpointError) as info:  # 8 input channels, like SVD's
        infer_official_config(shapes, "model.safetensors")
    message = str(info.value)
    assert "no temporal layers" in message and "image model" in message
    assert "channels" not in message  # nothing to say about them: they are SVD's 8
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    shapes[conv_in] = (320, 4, 3, 3)  # Stable Diffusion's 4
    with pytest.raises(CheckpointError, match="takes 4 channels where SVD's takes 8"):
        infer_official_config(shapes, "model.safetensors")


# ---- checkpoint faults ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A 1.6 MB model (every block kind, smaller than tiny) and its official file, for the tests
    that write a corrupted copy of a checkpoint per example."""
    config = SVDConfig(
        name="micro",
        unet=UNetConfig(
            model_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(0,),
            head_channels=16,
            context_dim=16,
            addition_embed_dim=8,
            num_groups=8,
        ),
        vae=VAEConfig(base_channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, num_groups=4),
        image_encoder=ImageEncoderConfig(
            image_size=28, patch_size=14, width=16, layers=1, heads=2, mlp_dim=32, embed_dim=16
        ),
    )
    model = SVDModel(config).eval()
    randomize(model, seed=0)  # no zero tensors: a mixed-up or damaged weight always shows
    return model, save(model, tmp_path_factory.mktemp("micro") / "micro.safetensors")


def one_line_error(capsys) -> str:
    """The CLI's stderr: exactly one line, 'svd-core: error: ...'."""
    err = capsys.readouterr().err
    assert err.startswith("svd-core: error:") and err.count("\n") == 1, err
    return err


def header_span(data: bytes) -> int:
    (length,) = struct.unpack("<Q", data[:8])
    return 8 + length


def rewrite_header(data: bytes, change) -> bytes:
    """The file with its JSON header passed through `change(header) -> header`."""
    end = header_span(data)
    header = change(json.loads(data[8:end]))
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[end:]


def assert_clear_checkpoint_error(path, capsys, match: str = "") -> str:
    """load raises a CheckpointError naming the file; `svd-core info` says it in one line, exit 2."""
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert path.name in message and re.search(match, message), message
    capsys.readouterr()
    assert svd_core.cli.main(["info", str(path)]) == 2
    assert path.name in one_line_error(capsys)
    return message


@given(position=st.integers(0, 10**9), byte=st.integers(0, 255))
@settings(PROPERTY, max_examples=60)
def test_any_corrupted_header_byte_loads_or_raises_a_checkpoint_error(
    position, byte, micro, tmp_path
):
    EXAMPLES["corrupted header bytes"] += 1
    model, checkpoint = micro
    data = bytearray(checkpoint.read_bytes())
    position %= header_span(bytes(data))  # the length prefix or the JSON header
    data[position] = byte
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    try:
        loaded = load(path)
    except CheckpointError as error:  # every failure: a CheckpointError that names the file
        assert "corrupt.safetensors" in str(error), error
        return
    # A change the format allows (a letter of the saved metadata, a space): the same weights.
    EXAMPLES["corrupted header bytes that still load"] += 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@given(length=st.integers(0, 10**9))
@example(length=0)
@example(length=7)
@example(length=8)
@settings(PROPERTY, max_examples=40)
def test_a_checkpoint_truncated_anywhere_raises_a_checkpoint_error(length, micro, tmp_path):
    EXAMPLES["truncated files"] += 1
    data = micro[1].read_bytes()
    length %= len(data)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:length])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*(truncated|only \d+ bytes)"):
        load(path)


def test_corrupted_headers_name_the_file_and_the_fault(micro, tmp_path, capsys):
    data = micro[1].read_bytes()
    first = next(k for k in json.loads(data[8 : header_span(data)]) if k != "__metadata__")

    def entry(change):
        return lambda header: {**header, first: change(dict(header[first]))}

    cases = {
        "trailing bytes": (data + b"extra", r"5 bytes after the last tensor"),
        "gap": (
            rewrite_header(
                data,
                entry(
                    lambda e: {
                        **e,
                        "data_offsets": [e["data_offsets"][0] + 4, e["data_offsets"][1] + 4],
                    }
                ),
            ),
            rf"{re.escape(first)}",
        ),
        "unknown dtype": (
            rewrite_header(data, entry(lambda e: {**e, "dtype": "F7"})),
            r"dtype 'F7'",
        ),
        "offsets of text": (
            rewrite_header(data, entry(lambda e: {**e, "data_offsets": ["0", "8"]})),
            r"non-negative integers",
        ),
        "negative shape": (
            rewrite_header(data, entry(lambda e: {**e, "shape": [-1]})),
            r"non-negative",
        ),
        "metadata not strings": (
            rewrite_header(data, lambda h: {**h, "__metadata__": {"svd_core_config": 3}}),
            r"__metadata__",
        ),
        "damaged saved config": (
            rewrite_header(data, lambda h: {**h, "__metadata__": {"svd_core_config": "{oops"}}),
            r"svd_core config saved in the file is damaged.*--config",
        ),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(content)
        assert_clear_checkpoint_error(path, capsys, match)


def test_integer_weights_are_refused_and_float_formats_are_converted(micro, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    original, checkpoint = micro
    tensors = load_file(checkpoint)
    metadata = {"svd_core_config": original.config.to_json()}
    key = next(k for k in tensors if k.endswith("proj_in.weight"))
    quantized = dict(tensors, **{key: (tensors[key] * 127).round().to(torch.int8)})
    path = tmp_path / "int8.safetensors"
    save_file(quantized, path, metadata=metadata)
    message = assert_clear_checkpoint_error(path, capsys, "not floating point")
    assert f"{key} (I8)" in message
    # float16, bfloat16 and float8 files are converted to the dtype asked for, tensor by tensor
    for dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn):
        stored = {k: v.to(dtype) for k, v in tensors.items()}
        path = tmp_path / f"{str(dtype)[6:]}.safetensors"
        save_file(stored, path, metadata=metadata)
        loaded = dict(load(path).named_parameters())
        for name, parameter in original.named_parameters():
            assert loaded[name].dtype == torch.float32
            assert torch.equal(loaded[name], parameter.to(dtype).float()), name


def test_key_map_errors_of_an_official_file_name_the_file(micro, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    tensors = load_file(micro[1])
    victim = sorted(k for k in tensors if k.startswith("model.diffusion_model."))[0]
    tensors["model.diffusion_model.renamed"] = tensors.pop(victim)
    path = tmp_path / "renamed.safetensors"
    save_file(tensors, path, metadata={"svd_core_config": micro[0].config.to_json()})
    message = assert_clear_checkpoint_error(path, capsys, "missing from the checkpoint")
    assert victim in message


def test_a_diffusers_folder_of_another_model_says_so(tmp_path, model, capsys):
    folder = save(model, tmp_path / "sd", layout="diffusers")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["_class_name"] = "UNet2DConditionModel"
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"unet/config.json.*UNet2DConditionModel.*another model"
    ):
        load(folder)
    assert svd_core.cli.main(["info", str(folder)]) == 2
    assert "another model" in one_line_error(capsys)
    config["_class_name"] = "UNetSpatioTemporalConditionModel"
    config["block_out_channels"] = 5  # a mistyped value
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unet/config.json.*TypeError"):
        load(folder)


def test_full_disk_while_saving_a_checkpoint_leaves_nothing(model, tmp_path, monkeypatch):
    real_save_file = svd_core.loading.files.save_file
    calls = []

    def save_file_then_full(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) >= 2:  # the first file fits, the second fills the disk halfway
            with open(filename, "wb") as handle:
                handle.write(b"\x00" * 1000)
            disk_full()
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(svd_core.loading.files, "save_file", save_file_then_full)
    with pytest.raises(OSError) as info:
        save(model, tmp_path / "folder", layout="diffusers")  # a new folder: all or nothing
    assert info.value.errno == errno.ENOSPC and "diffusion_pytorch_model" in str(info.value)
    assert os.listdir(tmp_path) == []
    calls.append("the next call fails")
    with pytest.raises(OSError, match=r"could not write.*tiny.safetensors.*No space left"):
        save(model, tmp_path / "tiny.safetensors")
    assert os.listdir(tmp_path) == []
