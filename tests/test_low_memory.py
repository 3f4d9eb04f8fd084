"""The low-memory mode: `svd_core.load(..., low_memory=True)` reads each part's weights only while
it runs. Each test checks that the result is the plain path's and that the parts really are
released (placeholders on the meta device, the freed tensors gone), never by resident memory."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from helpers import random_model

import svd_core
import svd_core.cli
from svd_core import SVDPipeline
from svd_core.loading import save
from svd_core.model import PARTS, NotResidentError, SVDModel

# The same weights and the same operations in the same order: a low-memory run must give the plain
# run's frames exactly, for either way of running the guidance branches. (Batched against one after
# the other differ by float32 round-off: tests/test_pipeline.py, BATCH_ATOL.)
FRAMES, STEPS, SIZE = 3, 2, 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("low_memory")
    model = random_model()
    official = save(model, folder / "tiny.safetensors")
    official_fp16 = save(model, folder / "tiny_fp16.safetensors", dtype=torch.float16)
    diffusers = save(model, folder / "diffusers", layout="diffusers")
    return {"official": official, "official_fp16": official_fp16, "diffusers": diffusers}


@pytest.fixture(scope="module")
def image():
    generator = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, SIZE, SIZE, generator=generator) * 2 - 1


def run(model, image, dtype=None, **kwargs):
    # The size too: a diffusers folder does not carry the tiny preset's 64x64 default.
    options = dict(num_frames=FRAMES, num_steps=STEPS, height=SIZE, width=SIZE, seed=0)
    options["progress"] = False
    return SVDPipeline(model, dtype=dtype)(image, **{**options, **kwargs})


def held_parts(model: SVDModel) -> set[str]:
    """The parts whose weights are in memory now (not meta placeholders)."""
    return {
        part
        for part in PARTS
        if any(not p.is_meta for m in model.part_modules(part) for p in m.parameters())
    }


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_low_memory_load_reads_no_weights_until_a_part_is_used(files, layout):
    model = svd_core.load(files[layout], low_memory=True)
    assert model.low_memory and held_parts(model) == set()
    assert all(p.is_meta for p in model.parameters())
    assert not model.image_encoder.mean.is_meta  # the CLIP constants come from the config
    plain = svd_core.load(files[layout])
    assert model.parameter_counts() == plain.parameter_counts()
    with model.resident("unet"):
        assert held_parts(model) == {"unet"}
        expected = plain.unet.state_dict()
        for name, tensor in model.unet.state_dict().items():
            assert torch.equal(tensor, expected[name]), name
    assert held_parts(model) == set()


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_low_memory_video_equals_the_plain_one(files, image, layout):
    plain = svd_core.load(files[layout])
    lazy = svd_core.load(files[layout], low_memory=True)
    expected = run(plain, image, batch_guidance=True)
    same_batching = run(lazy, image, batch_guidance=True)
    assert torch.equal(same_batching.float_frames, expected.float_frames)
    assert torch.equal(same_batching.latents, expected.latents)
    # The default for a low-memory model: the guidance branches one after the other, exactly as
    # a plain model runs them with batch_guidance=False (which tests/test_pipeline.py compares
    # with the batched branches: float32 round-off).
    sequential = run(lazy, image)
    assert torch.equal(
        sequential.float_frames, run(plain, image, batch_guidance=False).float_frames
    )
    assert held_parts(lazy) == set()


def test_each_part_is_in_memory_only_while_it_runs_and_is_freed_after(files, image):
    model = svd_core.load(files["official"], low_memory=True)
    seen: dict[str, list[set[str]]] = {part: [] for part in PARTS}
    freed_after: list[weakref.ref] = []

    def record(part):
        def hook(module, args):
            seen[part].append(held_parts(model))
            freed_after.append(weakref.ref(next(module.parameters())))

        return hook

    handles = [
        model.image_encoder.register_forward_pre_hook(record("image_encoder")),
        model.vae.encoder.register_forward_pre_hook(record("vae_encoder")),
        model.unet.register_forward_pre_hook(record("unet")),
        model.vae.decoder.register_forward_pre_hook(record("vae_decoder")),
    ]
    try:
        run(model, image)
    finally:
        for handle in handles:
            handle.remove()
    assert seen["image_encoder"] == [{"image_encoder"}]
    assert seen["vae_encoder"] == [{"vae_encoder"}]
    assert seen["unet"] == [{"unet"}] * (2 * STEPS)  # sequential guidance: 2 calls per step
    assert seen["vae_decoder"] == [{"vae_decoder"}]
    gc.collect()
    assert freed_after and all(ref() is None for ref in freed_after)  # no tensor was kept
    assert held_parts(model) == set()


def test_weights_converted_on_reading_are_freed_too(files, image):
    """A float16 file read as float32: each part's tensors are copies of their own, not views."""
    model = svd_core.load(files["official_fp16"], low_memory=True)
    plain = svd_core.load(files["official_fp16"])
    with model.resident("vae_decoder"):
        weight = model.vae.decoder.conv_in.weight
        assert weight.dtype == torch.float32 and torch.equal(
            weight, plain.vae.decoder.conv_in.weight
        )
        ref = weakref.ref(weight)
        del weight
    gc.collect()
    assert ref() is None
    assert torch.equal(
        run(model, image, batch_guidance=True).float_frames,
        run(plain, image, batch_guidance=True).float_frames,
    )


def test_the_pipeline_dtype_applies_to_a_low_memory_model(files, image):
    plain = svd_core.load(files["official"])
    lazy = svd_core.load(files["official"], low_memory=True)
    dtypes = []
    lazy.unet.register_forward_pre_hook(
        lambda module, args: dtypes.append(next(module.parameters()).dtype)
    )
    expected = run(plain, image, dtype=torch.bfloat16, batch_guidance=True)
    got = run(lazy, image, dtype=torch.bfloat16, batch_guidance=True)
    assert set(dtypes) == {torch.bfloat16}
    assert torch.equal(got.float_frames, expected.float_frames)


def test_a_released_part_refuses_to_run_instead_of_computing_garbage(files):
    model = svd_core.load(files["official"], low_memory=True)
    image = torch.zeros(1, 3, SIZE, SIZE)
    with pytest.raises(NotResidentError, match=r"model.resident\('vae_encoder'\)"):
        model.vae.encode(image)
    with pytest.raises(NotResidentError, match="image_encoder"):
        model.image_encoder(image)
    pixels = torch.zeros(1, 3, 56, 56)
    with pytest.raises(NotResidentError, match="image_encoder"):  # the ViT alone, too
        model.image_encoder.encode_pixels(pixels)
    with model.resident("vae_encoder"):
        assert model.vae.encode(image).shape == (1, 4, SIZE // 8, SIZE // 8)


def test_resident_blocks_nest_and_release_on_errors(files):
    model = svd_core.load(files["official"], low_memory=True)
    with model.resident("unet"):
        with model.resident("unet", "vae_decoder"):
            assert held_parts(model) == {"unet", "vae_decoder"}
        assert held_parts(model) == {"unet"}  # still inside the outer block
    assert held_parts(model) == set()
    with pytest.raises(KeyError), model.resident("image_encoder"):
        raise KeyError("inside")
    assert held_parts(model) == set()


def test_resident_names_the_parts_and_does_nothing_for_a_plain_model(files):
    plain = svd_core.load(files["official"])
    weight = next(plain.unet.parameters())
    with plain.resident("unet"):
        pass
    assert held_parts(plain) == set(PARTS)
    assert next(plain.unet.parameters()) is weight
    for model in (plain, svd_core.load(files["official"], low_memory=True)):
        with (
            pytest.raises(ValueError, match="part must be one of .*got 'vae'"),
            model.resident("vae"),
        ):
            pass
    with pytest.raises(ValueError, match="low_memory must be True or False"):
        svd_core.load(files["official"], low_memory="yes")


def _frames(folder) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.iterdir())]).astype(int)


def test_cli_generate_low_memory(files, tmp_path, monkeypatch):
    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), np.uint8)).save(
        image
    )
    loads = []
    load = svd_core.loading.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("low_memory"))
        return load(*args, **kwargs)

    monkeypatch.setattr(svd_core.loading, "load", spy)
    args = ["generate", str(image), "--model", str(files["official"]), "--frames", str(FRAMES)]
    args += ["--steps", str(STEPS), "--seed", "0", "--quiet", "--height", "64", "--width", "64"]
    assert svd_core.cli.main([*args, "-o", str(tmp_path / "plain")]) == 0
    assert svd_core.cli.main([*args, "-o", str(tmp_path / "low"), "--low-memory"]) == 0
    assert loads == [False, True]
    plain, low = _frames(tmp_path / "plain"), _frames(tmp_path / "low")
    assert plain.shape == low.shape == (FRAMES, SIZE, SIZE, 3)
    # --low-memory runs the guidance branches one after the other: float32 round-off, far below
    # one uint8 step (1/255), can still move a pixel across a rounding boundary, by one step
    assert np.abs(plain - low).max() <= 1


def test_a_checkpoint_replaced_after_loading_is_an_error_not_a_wrong_shape(files, tmp_path):
    import dataclasses

    path = tmp_path / "model.safetensors"
    path.write_bytes(files["official"].read_bytes())
    model = svd_core.load(path, low_memory=True)
    config = model.config
    wider = dataclasses.replace(config, unet=dataclasses.replace(config.unet, model_channels=64))
    svd_core.save(SVDModel(wider), path)  # the same key names, other shapes
    with (
        pytest.raises(svd_core.CheckpointError, match="has shape .* needs"),
        model.resident("unet"),
    ):
        pass
    assert held_parts(model) == set()
